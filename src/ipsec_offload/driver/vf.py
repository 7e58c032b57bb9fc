"""The VF driver: runs in a VM and asks the PF, over the mailbox, for what the PF driver asks
the agent.

Theory of operation: the VF starts by sending REQUEST_RESOURCES and is READY once the PF grants
them. `xdo_dev_state_add` / `_delete` become ADD_SA / DEL_SA mailbox messages (with key
protection the key material travels wrapped under the VF's key-encryption key, RFC 5649, so
the PF forwards a blob it cannot read); each reply becomes the call's return value. The
driver keeps the states it offloaded: after a reset, its own (`reset`) or the PF's
(EVENT_PF_RESET), it asks for resources again and re-adds them; one that cannot be re-added
is reported as OffloadLost and the stack carries it in software.

    state      input                         next
    STARTING   REQUEST_RESOURCES granted     READY (send parked adds, re-add kept states)
    STARTING   xdo_dev_state_add             STARTING (parked until resources come)
    READY      xdo_dev_state_add/_delete     READY (mailbox request)
    any        reset / EVENT_PF_RESET        STARTING (RESET?, REQUEST_RESOURCES)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from ipsec_offload.crypto.keywrap import wrap_key
from ipsec_offload.driver.control import Errno
from ipsec_offload.driver.ring import (
    OffloadLost,
    OffloadState,
    RingDriver,
    StateAddDone,
    StateDeleteDone,
    StatsDone,
    add_sa_request,
)
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import encode_add_sa
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.mailbox import (
    MailboxMessage,
    MbxOpcode,
    build_mailbox,
    decode_handle,
    encode_handle,
    encode_handle_tlvs,
    parse_mailbox,
)

_Then = Callable[[int, bytes], None]
"""A mailbox request's continuation: (return code, reply body)."""


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
        self._pending: dict[int, _Then] = {}
        self._next_msg_id = 1
        self._out: list[bytes] = []

    # -- the mailbox ------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Driver load: ask the PF for resources."""
        self.state = VfDriverState.STARTING
        self._send(MbxOpcode.REQUEST_RESOURCES, b"", self._granted)

    def reset(self, now: float) -> None:
        """Driver reload inside the VM: RESET, then ask for resources again."""
        self._lose_offloads()
        self._send(MbxOpcode.RESET, b"", lambda _rc, _body: None)
        self.start(now)

    def _send(self, opcode: MbxOpcode, body: bytes, then: _Then) -> None:
        msg_id = self._next_msg_id
        self._next_msg_id = msg_id % 0xFFFFFFFF + 1
        self._pending[msg_id] = then
        self.vf_counters.mailbox_sent += 1
        self._out.append(build_mailbox(MailboxMessage(opcode, msg_id, body)))

    def mailbox_messages(self) -> list[bytes]:
        """Take the messages queued for the PF."""
        out, self._out = self._out, []
        return out

    def mailbox_receive(self, data: bytes, now: float) -> None:
        """A message from the PF: a reply or an event."""
        try:
            message = parse_mailbox(data)
        except ParseError:
            self.vf_counters.mailbox_bad += 1
            return
        if message.opcode == MbxOpcode.EVENT_PF_RESET:
            self._lose_offloads()
            self._pending.clear()
            self.start(now)
            return
        then = self._pending.pop(message.msg_id, None) if message.is_reply else None
        if then is None:
            self.vf_counters.mailbox_stray += 1
            return
        then(-message.status, message.body)

    def _granted(self, rc: int, body: bytes) -> None:
        if rc:
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
                self._offload(state, readd=False)
            elif state.handle not in self.sa_index:
                self.vf_counters.readds += 1
                self._offload(state, readd=True)

    def _lose_offloads(self) -> None:
        self.sa_index.clear()
        self.state = VfDriverState.STARTING

    # -- the xdo_dev_* operations -----------------------------------------------------------

    def xdo_dev_state_add(self, state: OffloadState, now: float) -> None:
        """Ask the PF to offload a state; completes with StateAddDone."""
        if state.handle in self._states:
            raise UsageError(f"xfrm state {state.handle} is already offloaded")
        self._states[state.handle] = state
        if self.state != VfDriverState.READY:
            self._parked.add(state.handle)  # sent once the PF grants resources
            return
        self._offload(state, readd=False)

    def _offload(self, state: OffloadState, *, readd: bool) -> None:
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
                lost = OffloadLost(state.handle, rc) if readd else None
                self._events.append(lost or StateAddDone(state.handle, rc, None))
                return
            self.sa_index[state.handle] = index
            self._events.append(StateAddDone(state.handle, 0, index))

        body = encode_handle_tlvs(state.handle, encode_add_sa(request))
        self._send(MbxOpcode.ADD_SA, body, then)

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Ask the PF to remove an offloaded state; completes with StateDeleteDone."""
        if handle not in self.sa_index:
            self._events.append(StateDeleteDone(handle, -Errno.ENOENT))
            return

        def then(rc: int, _body: bytes) -> None:
            self._events.append(StateDeleteDone(handle, rc))

        self._send(MbxOpcode.DEL_SA, encode_handle(handle), then)

    def xdo_dev_state_free(self, handle: int) -> None:
        self.sa_index.pop(handle, None)
        self._states.pop(handle, None)

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> None:
        """The mailbox has no statistics message: -EOPNOTSUPP (the stack keeps its own)."""
        self._events.append(StatsDone(handle, -Errno.EOPNOTSUPP, None))
