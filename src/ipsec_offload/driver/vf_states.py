"""The VF stack's states on the device: the VF driver's xdo_dev_state_* operations over the
mailbox, and what the VF's resets and trust do to the states it offloaded.

Theory of operation: `xdo_dev_state_add` / `_delete` / `_update_stats` / `_advance_esn`
become ADD_SA / DEL_SA / READ_SA / UPDATE_SA requests (`VfMailbox`). With key protection the
key material travels wrapped under the VF's key-encryption key (RFC 5649), so the PF forwards
a blob it cannot read. An add and a read wait for their reply (the driver's `wait` runs the
port meanwhile); the reply's status is the add's return value (an untrusted VF's ADD_SA is
refused EACCES: the state's add fails). A delete returns at once and `_free` waits for it;
an ESN update is not waited for (Linux calls it in softirq context).

Every state asked for is kept until freed, to be re-added after a reset. While the VF is
STARTING (no resources, or its caps not known yet) an add is parked. Once the caps are known
(`up`): with inline crypto, parked adds are sent and the kept states re-added (each carrying
its stack's live SEQ); without, a parked add returns -EOPNOTSUPP (the stack's software
fallback) with an extack saying the VF may not offload, and a kept state is reported
OffloadLost (-EACCES). While READY without crypto an add returns that -EOPNOTSUPP at once.
When crypto goes off (`crypto_off`) every offloaded state is reported OffloadLost (-EACCES)
and forgotten; an ADD_SA the PF answers with success after that is removed again (DEL_SA)
and treated the same way. A re-add that fails is reported OffloadLost with its errno.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from ipsec_offload.crypto.keywrap import wrap_key
from ipsec_offload.driver.control import Errno
from ipsec_offload.driver.ring import (
    DriverEvent,
    ExtAck,
    OffloadLost,
    OffloadState,
    OffloadType,
    StateAddDone,
    Waiter,
    add_sa_request,
    errno_text,
)
from ipsec_offload.driver.vf_mailbox import VfCounters, VfMailbox
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import SaStats, encode_add_sa
from ipsec_offload.wire.mailbox import (
    MbxOpcode,
    SaUpdate,
    decode_handle,
    decode_sa_read,
    encode_handle,
    encode_handle_tlvs,
    encode_sa_update,
)

UNTRUSTED = errno_text(-Errno.EACCES)
"""The extack of an add the VF refuses itself: inline crypto is off for it."""


class VfDriverState(IntEnum):
    STARTING = 0
    """No resources yet, or the caps not known yet: adds are parked."""
    READY = 1


@dataclass(frozen=True, slots=True)
class Kek:
    """A key-encryption key the VF shares with the agent (spec section 6)."""

    kek_id: int
    key: bytes


class VfStates:
    """The states a VF's stack asked it to offload."""

    def __init__(
        self,
        mailbox: VfMailbox,
        counters: VfCounters,
        sa_index: dict[int, int],
        emit: Callable[[DriverEvent], None],
        wait: Waiter,
        crypto: Callable[[], bool],
        kek: Kek | None,
    ) -> None:
        self.state = VfDriverState.STARTING
        self.kek = kek
        self._mailbox = mailbox
        self._counters = counters
        self._sa_index = sa_index
        """The driver's: the handle of each offloaded state -> its index in the agent SAD."""
        self._emit = emit
        self._wait = wait
        self._crypto = crypto
        """Whether inline crypto is on for the VF (the driver's features say)."""
        self._states: dict[int, OffloadState] = {}
        self._parked: set[int] = set()
        self._adding: dict[int, int | None] = {}
        """Handles whose xdo_dev_state_add waits: None, then the return value."""
        self._add_msgs: dict[int, str] = {}
        """The extack of a waiting add that the driver refused itself."""
        self._deleting: set[int] = set()
        """Handles whose DEL_SA is under way (xdo_dev_state_free waits for it)."""

    def holds(self, handle: int) -> bool:
        """Whether the stack's state `handle` is the VF's to offload."""
        return handle in self._states

    # -- what the VF's lifecycle does to them -----------------------------------------------

    def lose(self) -> None:
        """A reset: the agent loses the VF's SAs; adds are parked until `up`."""
        self._sa_index.clear()
        self.state = VfDriverState.STARTING

    def forget_deletes(self) -> None:
        """The PF forgot the VF (its reset): the DEL_SAs under way are done."""
        self._deleting.clear()

    def no_resources(self, rc: int) -> None:
        """REQUEST_RESOURCES failed: every state not offloaded fails with `rc`."""
        self._parked.clear()
        for handle in [h for h in self._states if h not in self._sa_index]:
            self._states.pop(handle)
            self._added(handle, rc, None)

    def up(self, crypto: bool) -> None:
        """The caps are known: READY; parked adds and kept states go to the PF with
        `crypto`, and are refused without."""
        self.state = VfDriverState.READY
        parked, self._parked = self._parked, set()
        for state in list(self._states.values()):
            if state.handle in self._sa_index:
                continue
            if not crypto:
                self._refuse_untrusted(state.handle)
                continue
            if state.handle not in parked:
                self._counters.readds += 1
            self._offload(state)

    def crypto_off(self) -> None:
        """Inline crypto went off: every offloaded state is lost (the stack carries it in
        software) and forgotten."""
        for handle in sorted(self._sa_index):
            self._refuse_untrusted(handle)
        self._sa_index.clear()

    def _refuse_untrusted(self, handle: int) -> None:
        """Inline crypto is off for the VF: a waiting add falls back to software
        (-EOPNOTSUPP, the extack saying why), a kept state is lost (OffloadLost, -EACCES)."""
        self._states.pop(handle, None)
        if handle in self._adding:
            self._add_msgs[handle] = UNTRUSTED
            self._adding[handle] = -Errno.EOPNOTSUPP
        else:
            self._counters.offloads_lost += 1
            self._emit(OffloadLost(handle, -Errno.EACCES))

    # -- the xdo_dev_* operations -----------------------------------------------------------

    def xdo_dev_state_add(self, state: OffloadState, extack: ExtAck, now: float) -> int:
        """Ask the PF to offload a state and wait for its answer (sent once the caps are
        known, if they are not yet): 0, or a negative errno with a message in `extack`;
        -EOPNOTSUPP (the stack's software fallback) while inline crypto is off for the VF."""
        self._mailbox.now = now
        handle = state.handle
        if handle in self._states:
            raise UsageError(f"xfrm state {handle} is already offloaded")
        if state.offload_type != OffloadType.CRYPTO:
            extack.set("Unsupported ipsec offload type")
            return -Errno.EINVAL
        if self.state == VfDriverState.READY and not self._crypto():
            extack.set(UNTRUSTED)
            return -Errno.EOPNOTSUPP
        self._states[handle] = state
        self._adding[handle] = None
        if self.state != VfDriverState.READY:
            self._parked.add(handle)  # sent once the caps are known
        else:
            self._offload(state)
        self._wait(lambda: self._adding[handle] is not None, now)
        rc = self._adding.pop(handle)
        msg = self._add_msgs.pop(handle, None)
        assert rc is not None
        if msg is not None:
            extack.set(msg)
        elif rc:
            extack.set_weak(errno_text(rc))
        return rc

    def _offload(self, state: OffloadState) -> None:
        wrapped, kek_id = None, None
        if self.kek is not None:
            wrapped, kek_id = wrap_key(self.kek.key, state.key_material), self.kek.kek_id
        request = add_sa_request(state, wrapped_key=wrapped, kek_id=kek_id)
        handle = state.handle

        def then(rc: int, body: bytes) -> None:
            index = None
            if rc == 0:
                try:
                    index = decode_handle(body)
                except ParseError:
                    rc = -Errno.EINVAL
            if index is not None and not self._crypto():
                # added before the PF heard of the VF's trust going off: removed again
                self._mailbox.request(MbxOpcode.DEL_SA, encode_handle(handle), _ignore)
                self._refuse_untrusted(handle)
                return
            if index is None:
                self._states.pop(handle, None)
            else:
                self._sa_index[handle] = index
            self._added(handle, rc, index)

        body = encode_handle_tlvs(handle, encode_add_sa(request))
        self._mailbox.request(MbxOpcode.ADD_SA, body, then, until_reset=True)

    def _added(self, handle: int, rc: int, index: int | None) -> None:
        """An add is answered: to the xdo_dev_state_add that waits for it, or, for a re-add
        nobody waits for, as an event (StateAddDone, OffloadLost when it failed)."""
        if handle in self._adding:
            self._adding[handle] = rc
        else:
            self._emit(OffloadLost(handle, rc) if rc else StateAddDone(handle, 0, index))

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Ask the PF to remove an offloaded state (DEL_SA); returns at once."""
        self._mailbox.now = now
        if handle not in self._sa_index or handle in self._deleting:
            return
        self._deleting.add(handle)

        def then(_rc: int, _body: bytes) -> None:
            self._deleting.discard(handle)

        self._mailbox.request(MbxOpcode.DEL_SA, encode_handle(handle), then)

    def xdo_dev_state_free(self, handle: int, now: float) -> None:
        """Wait for the state's DEL_SA to be answered (or given up), then forget it."""
        if handle in self._deleting:
            self._wait(lambda: handle not in self._deleting, now)
        self._sa_index.pop(handle, None)
        self._states.pop(handle, None)

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> SaStats | None:
        """The agent's counters of an offloaded state (READ_SA), waited for; None when the
        state is not offloaded or the read failed (refused, timed out, not decodable)."""
        self._mailbox.now = now
        if handle not in self._sa_index:
            return None
        read: list[SaStats | None] = []

        def then(rc: int, body: bytes) -> None:
            stats = None
            if rc == 0:
                try:
                    stats = decode_sa_read(body).stats
                except ParseError:
                    self._counters.mailbox_bad += 1
            if stats is None:
                self._counters.sa_read_failed += 1
            read.append(stats)

        self._counters.sa_reads += 1
        body = encode_handle(handle)
        self._mailbox.request(MbxOpcode.READ_SA, body, then, complete_on_abandon=True)
        self._wait(lambda: bool(read), now)
        return read[0]

    def xdo_dev_state_advance_esn(self, handle: int, esn: int, now: float) -> None:
        """Tell the PF an offloaded state's ESN (UPDATE_SA); returns at once."""
        self._mailbox.now = now
        if handle not in self._sa_index:
            return
        self._counters.esn_updates += 1

        def then(rc: int, _body: bytes) -> None:
            if rc:
                self._counters.esn_update_failed += 1

        self._mailbox.request(MbxOpcode.UPDATE_SA, encode_sa_update(SaUpdate(handle, esn)), then)


def _ignore(_rc: int, _body: bytes) -> None:
    pass
