"""The VF driver: runs in a VM and asks the PF, over the mailbox, for what the PF driver asks
the agent.

Theory of operation: the VF starts by sending REQUEST_RESOURCES and is READY once the PF grants
them. `xdo_dev_state_add` / `_delete` become ADD_SA / DEL_SA mailbox messages (with key
protection the key material travels wrapped under the VF's key-encryption key, RFC 5649, so
the PF forwards a blob it cannot read); each reply becomes the call's return value. The
driver keeps the states it offloaded: after a reset, its own (`reset`) or the PF's
(EVENT_PF_RESET), it asks for resources again and re-adds them; one that cannot be re-added
is reported as OffloadLost and the stack carries it in software.

Every request waits for its reply and is sent again (the same msg_id) when the reply is
`MAILBOX_TIMEOUT` late, `MAILBOX_RESENDS` times at most, then completes with -ETIMEDOUT (spec
9: the mailbox may lose a message; the PF takes a copy of a message it has once). After its
own RESET the VF asks for resources only once the PF answered the RESET.

The PF's own messages (EVENT_PF_RESET, EVENT_SA_EXPIRE) are notices it resends until the VF
acknowledges them (spec 9: the mailbox may lose a message): the VF acts on each msg_id once.
A copy of EVENT_PF_RESET while the VF still waits for its resources means the PF has not seen
the REQUEST_RESOURCES (its acknowledgment): the VF sends that same message again. EVENT_SA_EXPIRE
is answered (0x87, same msg_id) every time it arrives and becomes, once, a StateExpired event
for the stack.

    state      input                         next
    STARTING   REQUEST_RESOURCES granted     READY (send parked adds, re-add kept states)
    STARTING   xdo_dev_state_add             STARTING (parked until resources come)
    READY      xdo_dev_state_add/_delete     READY (mailbox request)
    any        reset                         STARTING (RESET, then REQUEST_RESOURCES)
    any        EVENT_PF_RESET                STARTING (REQUEST_RESOURCES)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from ipsec_offload.crypto.keywrap import wrap_key
from ipsec_offload.driver.control import Errno
from ipsec_offload.driver.ring import (
    ExtAck,
    OffloadLost,
    OffloadState,
    OffloadType,
    RingDriver,
    StateAddDone,
    StateExpired,
    add_sa_request,
    errno_text,
)
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import SaStats, encode_add_sa
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.mailbox import (
    MailboxMessage,
    MbxOpcode,
    SaUpdate,
    build_mailbox,
    decode_handle,
    decode_sa_expire,
    encode_handle,
    encode_handle_tlvs,
    encode_sa_update,
    parse_mailbox,
)

_Then = Callable[[int, bytes], None]
"""A mailbox request's continuation: (return code, reply body)."""

MAILBOX_TIMEOUT = 0.01
"""Seconds a request waits for its reply before it is sent again (spec 9: the mailbox may
lose a message; the PF takes a copy of a message it has once)."""
MAILBOX_RESENDS = 5
"""Resends of a request before it completes with -ETIMEDOUT."""


@dataclass(slots=True)
class _Request:
    """A request waiting for its reply."""

    then: _Then
    data: bytes
    deadline: float
    resends: int = 0


NOTICES_KEPT = 64
"""How many of the PF's latest notice msg_ids the VF remembers, to act on each once."""


class VfDriverState(IntEnum):
    STARTING = 0
    READY = 1


@dataclass(frozen=True, slots=True)
class Kek:
    """A key-encryption key the VF shares with the agent (spec section 6)."""

    kek_id: int
    key: bytes


@dataclass(slots=True)
class VfCounters:
    mailbox_sent: int = 0
    mailbox_bad: int = 0
    mailbox_stray: int = 0
    readds: int = 0
    notice_copies: int = 0
    """Copies of a PF notice already acted on (the PF resent it)."""
    mailbox_resent: int = 0
    mailbox_timeouts: int = 0


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
        self.kek = kek
        self.state = VfDriverState.STARTING
        self.quota = 0
        self.vf_counters = VfCounters()
        self._states: dict[int, OffloadState] = {}
        self._parked: set[int] = set()
        self._adding: dict[int, int | None] = {}
        """Handles whose xdo_dev_state_add waits: None, then the return value."""
        self._deleting: set[int] = set()
        """Handles whose DEL_SA is under way (xdo_dev_state_free waits for it)."""
        self._pending: dict[int, _Request] = {}
        self._now = 0.0
        """The time of the latest call that gave one (continuations have none of their own)."""
        self._next_msg_id = 1
        self._out: list[bytes] = []
        self._notices_seen: OrderedDict[int, None] = OrderedDict()
        self._resources_request: bytes | None = None
        """The REQUEST_RESOURCES waiting for its grant (sent again on a copy of
        EVENT_PF_RESET)."""

    # -- the mailbox ------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Driver load: ask the PF for resources."""
        self._now = now
        self.state = VfDriverState.STARTING
        self._resources_request = self._send(MbxOpcode.REQUEST_RESOURCES, b"", self._granted)

    def reset(self, now: float) -> None:
        """Driver reload inside the VM: RESET, and once the PF answered it (its clean-up of
        the VF's domain is under way), ask for resources again, as iavf waits for its reset."""
        self._now = now
        self._lose_offloads()
        self._send(MbxOpcode.RESET, b"", lambda _rc, _body: self.start(self._now))

    def _send(self, opcode: MbxOpcode, body: bytes, then: _Then) -> bytes:
        msg_id = self._next_msg_id
        self._next_msg_id = msg_id % 0xFFFFFFFF + 1
        data = build_mailbox(MailboxMessage(opcode, msg_id, body))
        self._pending[msg_id] = _Request(then, data, self._now + MAILBOX_TIMEOUT)
        self.vf_counters.mailbox_sent += 1
        self._out.append(data)
        return data

    def next_timer(self) -> float | None:
        """When `handle_timer` next has work: the earliest request's deadline."""
        return min((r.deadline for r in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> None:
        """Send again each request whose reply is late (the same msg_id); one that used its
        resends completes with -ETIMEDOUT."""
        self._now = now
        for msg_id, request in list(self._pending.items()):
            if request.deadline > now or self._pending.get(msg_id) is not request:
                continue
            if request.resends < MAILBOX_RESENDS:
                request.resends += 1
                request.deadline = now + MAILBOX_TIMEOUT
                self.vf_counters.mailbox_resent += 1
                self._out.append(request.data)
                continue
            del self._pending[msg_id]
            self.vf_counters.mailbox_timeouts += 1
            request.then(-Errno.ETIMEDOUT, b"")

    def mailbox_messages(self) -> list[bytes]:
        """Take the messages queued for the PF."""
        out, self._out = self._out, []
        return out

    def mailbox_receive(self, data: bytes, now: float) -> None:
        """A message from the PF: a reply or an event."""
        self._now = now
        try:
            message = parse_mailbox(data)
        except ParseError:
            self.vf_counters.mailbox_bad += 1
            return
        if message.opcode == MbxOpcode.EVENT_PF_RESET:
            if self._notice_copy(message.msg_id):
                if self.state == VfDriverState.STARTING and self._resources_request is not None:
                    self.vf_counters.mailbox_sent += 1
                    self._out.append(self._resources_request)
                return
            self._lose_offloads()
            self._pending.clear()
            self._deleting.clear()  # the PF forgot them: gone from the agent
            self.start(now)
            return
        if message.opcode == MbxOpcode.EVENT_SA_EXPIRE:
            self._sa_expire(message)
            return
        request = self._pending.pop(message.msg_id, None) if message.is_reply else None
        if request is None:
            self.vf_counters.mailbox_stray += 1
            return
        request.then(-message.status, message.body)

    def _notice_copy(self, msg_id: int) -> bool:
        """Whether the PF's notice `msg_id` was acted on already (else it is from now on)."""
        if msg_id in self._notices_seen:
            self.vf_counters.notice_copies += 1
            return True
        self._notices_seen[msg_id] = None
        if len(self._notices_seen) > NOTICES_KEPT:
            self._notices_seen.popitem(last=False)
        return False

    def _sa_expire(self, message: MailboxMessage) -> None:
        """EVENT_SA_EXPIRE: answer it (each copy), tell the stack once."""
        try:
            expiry = decode_sa_expire(message.body)
        except ParseError:
            self.vf_counters.mailbox_bad += 1
            return
        reply = MailboxMessage(MbxOpcode.EVENT_SA_EXPIRE | MbxOpcode.REPLY, message.msg_id)
        self._out.append(build_mailbox(reply))
        if self._notice_copy(message.msg_id):
            return
        if expiry.handle in self._states:
            self._events.append(StateExpired(expiry.handle, expiry.kind))

    def _granted(self, rc: int, body: bytes) -> None:
        self._resources_request = None
        if rc:
            parked, self._parked = self._parked, set()
            for handle in parked:
                self._states.pop(handle, None)
                self._added(handle, rc, None)
            return
        try:
            self.quota = decode_handle(body)
        except ParseError:
            self.vf_counters.mailbox_bad += 1
            return
        self.state = VfDriverState.READY
        parked, self._parked = self._parked, set()
        for state in list(self._states.values()):
            if state.handle in parked:
                self._offload(state)
            elif state.handle not in self.sa_index:
                self.vf_counters.readds += 1
                self._offload(state)

    def _lose_offloads(self) -> None:
        self.sa_index.clear()
        self.state = VfDriverState.STARTING

    # -- the xdo_dev_* operations -----------------------------------------------------------

    def xdo_dev_state_add(self, state: OffloadState, extack: ExtAck, now: float) -> int:
        """Ask the PF to offload a state and wait for its answer (sent once the PF granted
        resources, if it has not yet): 0, or a negative errno with a message in `extack`."""
        self._now = now
        handle = state.handle
        if handle in self._states:
            raise UsageError(f"xfrm state {handle} is already offloaded")
        if state.offload_type != OffloadType.CRYPTO:
            extack.set("Unsupported ipsec offload type")
            return -Errno.EINVAL
        self._states[handle] = state
        self._adding[handle] = None
        if self.state != VfDriverState.READY:
            self._parked.add(handle)  # sent once the PF grants resources
        else:
            self._offload(state)
        self.wait(lambda: self._adding[handle] is not None, now)
        rc = self._adding.pop(handle)
        assert rc is not None
        if rc:
            extack.set_weak(errno_text(rc))
        return rc

    def _offload(self, state: OffloadState) -> None:
        wrapped, kek_id = None, None
        if self.kek is not None:
            wrapped, kek_id = wrap_key(self.kek.key, state.key_material), self.kek.kek_id
        request = add_sa_request(state, wrapped_key=wrapped, kek_id=kek_id)

        def then(rc: int, body: bytes) -> None:
            index = None
            if rc == 0:
                try:
                    index = decode_handle(body)
                except ParseError:
                    rc = -Errno.EINVAL
            if index is None:
                self._states.pop(state.handle, None)
            else:
                self.sa_index[state.handle] = index
            self._added(state.handle, rc, index)

        body = encode_handle_tlvs(state.handle, encode_add_sa(request))
        self._send(MbxOpcode.ADD_SA, body, then)

    def _added(self, handle: int, rc: int, index: int | None) -> None:
        """An add is answered: to the xdo_dev_state_add that waits for it, or, for a re-add
        nobody waits for, as an event (StateAddDone, OffloadLost when it failed)."""
        if handle in self._adding:
            self._adding[handle] = rc
        else:
            self._events.append(OffloadLost(handle, rc) if rc else StateAddDone(handle, 0, index))

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Ask the PF to remove an offloaded state (DEL_SA); returns at once."""
        self._now = now
        if handle not in self.sa_index or handle in self._deleting:
            return
        self._deleting.add(handle)

        def then(_rc: int, _body: bytes) -> None:
            self._deleting.discard(handle)

        self._send(MbxOpcode.DEL_SA, encode_handle(handle), then)

    def xdo_dev_state_free(self, handle: int, now: float) -> None:
        """Wait for the state's DEL_SA to be answered (or given up), then forget it."""
        if handle in self._deleting:
            self.wait(lambda: handle not in self._deleting, now)
        self.sa_index.pop(handle, None)
        self._states.pop(handle, None)

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> SaStats | None:
        """The mailbox has no statistics message yet: None (the stack keeps its own)."""
        return None

    def xdo_dev_state_advance_esn(self, handle: int, esn: int, now: float) -> None:
        """Tell the PF an inbound ESN state's new high-order half (UPDATE_SA); not waited
        for, as Linux's callback may not sleep."""
        self._now = now
        if handle in self.sa_index:
            self._send(MbxOpcode.UPDATE_SA, encode_sa_update(SaUpdate(handle, esn)), _ignore)


def _ignore(_rc: int, _body: bytes) -> None:
    """The continuation of a request nobody waits for."""
