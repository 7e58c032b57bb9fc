"""The VF driver: runs in a VM and asks the PF, over the mailbox, for what the PF driver asks
the agent. A facade over its parts: `VfMailbox` (vf_mailbox.py: requests, resends, the PF's
notices once each) and `VfStates` (vf_states.py: the xdo_dev_state_* operations and the
states they keep).

Theory of operation: the VF starts by sending REQUEST_RESOURCES; once the PF grants them it
asks GET_CAPS and is READY with the answer. Its `features` follow the answer's CRYPTO flag
(the VF's trust): ESP_FEATURES, or none, so that the stack carries an untrusted VM's states
in software without asking (as a Linux netdev without NETIF_F_HW_ESP); a GET_CAPS that fails
leaves them off. The driver keeps the states it offloaded: after a reset, its own (`reset`,
which removes the VF's SAs with one DEL_SAS first) or the PF's (EVENT_PF_RESET), it asks for
resources and caps again and re-adds them; one that cannot be re-added is reported as
OffloadLost and the stack carries it in software.

The PF's notices are acted on once per msg_id and answered as the PF expects. A copy of
EVENT_PF_RESET while the VF still waits for its resources means the PF has not seen the
REQUEST_RESOURCES (its acknowledgment): the VF sends that same message again. EVENT_SA_EXPIRE
and EVENT_CRYPTO are answered (0x87 / 0x8C, same msg_id) every time they arrive; the first
becomes, once, a StateExpired event for the stack. EVENT_CRYPTO OFF clears the features,
removes every SA of the VF (DEL_SAS, ALL) and reports each offloaded state OffloadLost
(-EACCES): the stack carries it in software from then on. ON sets the features again, for new
states only (Linux never moves a state back to the device). An EVENT_CRYPTO older than one
acted on (overtaken on the mailbox) is ignored; one that arrives while the VF waits for its
caps overrides their CRYPTO flag (it is the newer word).

    state      input                        next
    STARTING   REQUEST_RESOURCES granted    STARTING (GET_CAPS)
    STARTING   REQUEST_RESOURCES failed     STARTING (states not offloaded fail with its rc)
    STARTING   GET_CAPS answered            READY (features; with crypto, parked adds sent and
                                            kept states re-added; without, parked adds
                                            -EOPNOTSUPP and kept states OffloadLost)
    STARTING   GET_CAPS refused NOT_READY   STARTING (asked again MAILBOX_TIMEOUT later, at
                                            most CAPS_RETRIES times; then as failed)
    STARTING   GET_CAPS failed              READY (without crypto, as above)
    STARTING   xdo_dev_state_add            STARTING (parked until the caps are known)
    STARTING   EVENT_CRYPTO                 STARTING (overrides the caps to come)
    READY      xdo_dev_state_add            READY (ADD_SA, waited for; without crypto
                                            -EOPNOTSUPP at once)
    READY      xdo_dev_state_delete         READY (DEL_SA; _free waits for its reply)
    READY      xdo_dev_state_update_stats   READY (READ_SA, waited for: the agent's counters)
    READY      xdo_dev_state_advance_esn    READY (UPDATE_SA, not waited for)
    READY      EVENT_CRYPTO OFF             READY (no features, DEL_SAS ALL, OffloadLost each)
    READY      EVENT_CRYPTO ON              READY (features)
    any        reset                        STARTING (DEL_SAS ALL when READY with crypto, then
                                            RESET, then REQUEST_RESOURCES)
    any        EVENT_PF_RESET               STARTING (REQUEST_RESOURCES)

An answer to an ADD_SA, GET_CAPS or REQUEST_RESOURCES sent before a reset is ignored: the SA
is the PF's clean-up's to remove, and the state is re-added after the reset.
"""

from __future__ import annotations

from ipsec_offload.driver.control import Errno
from ipsec_offload.driver.ring import (
    ESP_FEATURES,
    DriverEvent,
    ExtAck,
    NetdevFeature,
    OffloadState,
    RingDriver,
    StateExpired,
)
from ipsec_offload.driver.vf_mailbox import (
    MAILBOX_RESENDS,
    MAILBOX_TIMEOUT,
    NOTICES_KEPT,
    Then,
    VfCounters,
    VfMailbox,
)
from ipsec_offload.driver.vf_states import Kek, VfDriverState, VfStates
from ipsec_offload.errors import ParseError
from ipsec_offload.wire.config import SaStats
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.mailbox import (
    CryptoState,
    DelSas,
    MailboxMessage,
    MbxOpcode,
    VfCaps,
    decode_crypto_event,
    decode_del_sas_result,
    decode_handle,
    decode_sa_expire,
    decode_vf_caps,
    encode_del_sas,
    parse_mailbox,
)

__all__ = [
    "CAPS_RETRIES",
    "MAILBOX_RESENDS",
    "MAILBOX_TIMEOUT",
    "NOTICES_KEPT",
    "Kek",
    "VfCounters",
    "VfDriver",
    "VfDriverState",
]

CAPS_RETRIES = 5
"""GET_CAPS asked again after a NOT_READY answer (the PF does not know the agent's caps yet),
MAILBOX_TIMEOUT apart, before the VF comes up without inline crypto."""

_ALL_SAS = encode_del_sas(DelSas(all_sas=True))


class VfDriver(RingDriver):
    """The driver of one VF."""

    def __init__(
        self,
        vf_id: int,
        mac: bytes,
        vlans: tuple[VlanTag, ...] = (),
        *,
        kek: Kek | None = None,
    ) -> None:
        super().__init__(mac, vlans)
        self.vf_id = vf_id
        self.quota = 0
        self.caps: VfCaps | None = None
        """The PF's latest GET_CAPS answer (None: not known, or the question failed)."""
        self.features = ESP_FEATURES
        """ESP_FEATURES while inline crypto is on for the VF (and until its first caps, so
        that the stack's adds are asked, and parked), none while it is off."""
        self.vf_counters = VfCounters()
        self.mailbox = VfMailbox(self.vf_counters)
        self.vf_states = VfStates(
            self.mailbox,
            self.vf_counters,
            self.sa_index,
            self._emit,
            lambda done, now: self.wait(done, now),
            lambda: self.crypto,
            kek,
        )
        self._resources_request: bytes | None = None
        """The REQUEST_RESOURCES waiting for its grant (sent again on a copy of
        EVENT_PF_RESET)."""
        self._caps_tries = 0
        self._caps_retry: float | None = None
        """When GET_CAPS is asked again after NOT_READY (None: not due)."""
        self._crypto_told: bool | None = None
        """What an EVENT_CRYPTO said since the latest GET_CAPS was sent (None: nothing)."""
        self._crypto_msg_id: int | None = None
        """The msg_id of the latest EVENT_CRYPTO acted on: an older one is overtaken."""

    def _emit(self, event: DriverEvent) -> None:
        """An event for the stack (`events()` takes the list: never bind its `append`)."""
        self._events.append(event)

    @property
    def state(self) -> VfDriverState:
        """STARTING (adds are parked) or READY."""
        return self.vf_states.state

    @property
    def kek(self) -> Kek | None:
        """The key-encryption key the VF wraps its keys under (None: keys in the clear)."""
        return self.vf_states.kek

    @property
    def crypto(self) -> bool:
        """Inline crypto is on for the VF (as far as it knows)."""
        return NetdevFeature.HW_ESP in self.features

    # -- the lifecycle ----------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Driver load: ask the PF for resources."""
        self.mailbox.now = now
        self.vf_states.state = VfDriverState.STARTING
        self._caps_tries, self._caps_retry = 0, None
        self._resources_request = self._send(MbxOpcode.REQUEST_RESOURCES, b"", self._granted)

    def reset(self, now: float) -> None:
        """Driver reload inside the VM: its SAs removed in one DEL_SAS (when it may hold any),
        then RESET; once the PF answered it (its clean-up of the VF's domain is under way),
        ask for resources again, as iavf waits for its reset."""
        self.mailbox.now = now
        bulk = self.state == VfDriverState.READY and self.crypto
        self._lose_offloads()

        def send_reset(_rc: int = 0, _body: bytes = b"") -> None:
            self.mailbox.request(
                MbxOpcode.RESET, b"", lambda _rc, _body: self.start(self.mailbox.now)
            )

        if bulk:
            self._delete_all(send_reset)
        else:
            send_reset()

    def _lose_offloads(self) -> None:
        """A reset: the agent loses the VF's SAs; answers to earlier requests are stale."""
        self.vf_states.lose()
        self.mailbox.reset()
        self._caps_retry = None

    def _send(self, opcode: MbxOpcode, body: bytes, then: Then) -> bytes:
        """A request whose answer means nothing after a reset."""
        return self.mailbox.request(opcode, body, then, until_reset=True)

    def next_timer(self) -> float | None:
        """When `handle_timer` next has work: a request's deadline, or a GET_CAPS retry."""
        timers = (self.mailbox.next_timer(), self._caps_retry)
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Send again what is late, give up what used its resends, ask GET_CAPS when due."""
        self.mailbox.handle_timer(now)
        if self._caps_retry is not None and self._caps_retry <= now:
            self._ask_caps()

    def mailbox_messages(self) -> list[bytes]:
        """Take the messages queued for the PF."""
        return self.mailbox.messages()

    def mailbox_receive(self, data: bytes, now: float) -> None:
        """A message from the PF: a reply or a notice."""
        self.mailbox.now = now
        try:
            message = parse_mailbox(data)
        except ParseError:
            self.vf_counters.mailbox_bad += 1
            return
        if message.opcode == MbxOpcode.EVENT_PF_RESET:
            self._pf_reset(message)
        elif message.opcode == MbxOpcode.EVENT_SA_EXPIRE:
            self._sa_expire(message)
        elif message.opcode == MbxOpcode.EVENT_CRYPTO:
            self._crypto_event(message)
        else:
            self.mailbox.complete(message)

    def _pf_reset(self, message: MailboxMessage) -> None:
        """EVENT_PF_RESET: the PF forgot the VF (its SAs are gone from the agent); start
        again. A copy while the resources are awaited: the PF missed the REQUEST_RESOURCES."""
        if self.mailbox.notice_copy(message.msg_id):
            if self.state == VfDriverState.STARTING and self._resources_request is not None:
                self.mailbox.send_again(self._resources_request)
            return
        self._lose_offloads()
        self.mailbox.abandon()
        self.vf_states.forget_deletes()  # the PF forgot them: gone from the agent
        self._crypto_msg_id = None  # a reloaded PF may number its notices afresh
        self.start(self.mailbox.now)

    def _sa_expire(self, message: MailboxMessage) -> None:
        """EVENT_SA_EXPIRE: answer it (each copy), tell the stack once."""
        try:
            expiry = decode_sa_expire(message.body)
        except ParseError:
            self.vf_counters.mailbox_bad += 1
            return
        self.mailbox.acknowledge(message)
        if not self.mailbox.notice_copy(message.msg_id) and self.vf_states.holds(expiry.handle):
            self._events.append(StateExpired(expiry.handle, expiry.kind))

    def _granted(self, rc: int, body: bytes) -> None:
        self._resources_request = None
        if rc:
            self.vf_states.no_resources(rc)
            return
        try:
            self.quota = decode_handle(body)
        except ParseError:
            self.vf_counters.mailbox_bad += 1
            return
        self._ask_caps()

    def _ask_caps(self) -> None:
        self._caps_retry = None
        self._crypto_told = None
        self.vf_counters.caps_asked += 1
        self._send(MbxOpcode.GET_CAPS, b"", self._caps_answered)

    def _caps_answered(self, rc: int, body: bytes) -> None:
        """GET_CAPS answered: READY, with inline crypto as the answer (or a newer
        EVENT_CRYPTO) says."""
        if rc == -Errno.EBUSY and self._caps_tries < CAPS_RETRIES:
            self._caps_tries += 1
            self._caps_retry = self.mailbox.now + MAILBOX_TIMEOUT
            return
        self.caps = None
        if rc == 0:
            try:
                self.caps = decode_vf_caps(body)
            except ParseError:
                self.vf_counters.mailbox_bad += 1
        if self.caps is None:
            self.vf_counters.caps_failed += 1
        crypto = self.caps is not None and self.caps.crypto
        if self._crypto_told is not None:
            crypto = self._crypto_told
        self.features = ESP_FEATURES if crypto else NetdevFeature(0)
        self.vf_states.up(crypto)

    def _crypto_event(self, message: MailboxMessage) -> None:
        """EVENT_CRYPTO: answer it (each copy); act on it once, unless a newer one was."""
        try:
            told = decode_crypto_event(message.body)
        except ParseError:
            self.vf_counters.mailbox_bad += 1
            return
        self.mailbox.acknowledge(message)
        if self.mailbox.notice_copy(message.msg_id):
            return
        if self._crypto_msg_id is not None and message.msg_id < self._crypto_msg_id:
            self.vf_counters.crypto_stale += 1
            return
        self._crypto_msg_id = message.msg_id
        on = told == CryptoState.ON
        self._crypto_told = on
        if on:
            self.vf_counters.crypto_on += 1
        else:
            self.vf_counters.crypto_off += 1
        if self.state != VfDriverState.READY:
            return  # the GET_CAPS answer to come is older: `_crypto_told` overrides it
        self.features = ESP_FEATURES if on else NetdevFeature(0)
        if not on:
            self._delete_all(self._bulk_deleted)
            self.vf_states.crypto_off()

    def _delete_all(self, then: Then) -> None:
        """DEL_SAS, ALL: every SA the VF holds, in one message."""
        self.vf_counters.bulk_deletes += 1
        self.mailbox.request(MbxOpcode.DEL_SAS, _ALL_SAS, then)

    def _bulk_deleted(self, rc: int, body: bytes) -> None:
        try:
            if rc == 0:
                decode_del_sas_result(body)
                return
        except ParseError:
            self.vf_counters.mailbox_bad += 1
        self.vf_counters.bulk_delete_failed += 1

    # -- the xdo_dev_* operations (vf_states.py) --------------------------------------------

    def xdo_dev_state_add(self, state: OffloadState, extack: ExtAck, now: float) -> int:
        """Offload a state, waiting for the PF: 0 or a negative errno (`extack` says why)."""
        return self.vf_states.xdo_dev_state_add(state, extack, now)

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Start removing an offloaded state (DEL_SA); returns at once."""
        self.vf_states.xdo_dev_state_delete(handle, now)

    def xdo_dev_state_free(self, handle: int, now: float) -> None:
        """Wait for the state's DEL_SA, then forget it."""
        self.vf_states.xdo_dev_state_free(handle, now)

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> SaStats | None:
        """The agent's counters of an offloaded state (READ_SA), waited for (None: none)."""
        return self.vf_states.xdo_dev_state_update_stats(handle, now)

    def xdo_dev_state_advance_esn(self, handle: int, esn: int, now: float) -> None:
        """Tell the PF an offloaded state's ESN (UPDATE_SA); returns at once (Linux calls
        it in softirq context, where it may not sleep)."""
        self.vf_states.xdo_dev_state_advance_esn(handle, esn, now)
