"""The PF host stack's own offloaded states: the PF driver's xdo_dev_state_* calls.

Theory of operation: the calls keep Linux's contract (`struct xfrmdev_ops`). Each becomes one
agent transaction. xdo_dev_state_add waits for the agent's answer (the driver's `wait` runs the
port meanwhile, as a Linux driver sleeps on a completion) and returns 0 or a negative errno
with an extack message; xdo_dev_state_delete only sends REMOVE_SA (Linux may call it in atomic
context) and xdo_dev_state_free waits for its answer; xdo_dev_state_update_stats waits for
GET_SA_STATS and returns the agent's counters. An add that the agent's capabilities rule out
(algorithm, replay window) is refused with -EOPNOTSUPP without asking the agent, a packet
offload with -EINVAL, as ixgbe does. Every ADD_SA carries the PF's SAD domain (its MAC and
VLANs, `with_sa_key`), and its SA is recorded in the ownership database as the PF's.

The states stay here from xdo_dev_state_add to xdo_dev_state_free, so that the PF can
re-install them after the agent lost them (`reinstall`). Every ADD_SA, the first and each
re-install, is built when it is sent from the stack's live state (`add_sa_request` reads
`OffloadState.handover_seq`), so the agent never starts below the stack's sequence numbers
(spec 9). A re-install nobody waits for reports its outcome as an event: StateAddDone, or
OffloadLost when it fails (the stack carries the state in software from then on). A first add
whose transaction a reset abandoned is re-installed with the others, and that re-install's
answer is the one the waiting call returns.
"""

from __future__ import annotations

from collections.abc import Callable

from ipsec_offload.driver.control import AgentControl, Errno, reply_sa_index, reply_sa_stats
from ipsec_offload.driver.ownership import PF_OWNER, Ownership, OwnershipDb, with_sa_key
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
from ipsec_offload.errors import UsageError
from ipsec_offload.wire.config import (
    Direction,
    Opcode,
    SaStats,
    Tlv,
    encode_add_sa,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import VlanTag, vlan_key


class OwnStates:
    """The xfrm states the PF's own stack offloaded, and the xdo_dev_* calls on them."""

    def __init__(
        self,
        control: AgentControl,
        db: OwnershipDb,
        sa_index: dict[int, int],
        emit: Callable[[DriverEvent], None],
        wait: Waiter,
        mac: bytes,
        vlans: tuple[VlanTag, ...],
        *,
        extended_key: bool,
    ) -> None:
        self.extended_key = extended_key
        self._control = control
        self._db = db
        self._sa_index = sa_index
        self._emit = emit
        self._wait = wait
        self._mac = mac
        self._vlans = vlans
        self._states: dict[int, OffloadState] = {}
        self._adding: dict[int, int | None] = {}
        """Handles whose xdo_dev_state_add waits: None, then the return value."""
        self._deleting: set[int] = set()
        """Handles whose REMOVE_SA is under way (xdo_dev_state_free waits for it)."""
        self._reading: dict[int, list[SaStats | None]] = {}
        """Handles whose xdo_dev_state_update_stats waits: the answer, once in."""

    def xdo_dev_state_add(self, state: OffloadState, extack: ExtAck, now: float) -> int:
        """Offload a state: 0, or a negative errno with a message in `extack`."""
        handle = state.handle
        if handle in self._sa_index or handle in self._states:
            raise UsageError(f"xfrm state {handle} is already offloaded")
        refusal = self._refuse(state, extack)
        if refusal:
            return refusal
        self._states[handle] = state
        self._adding[handle] = None
        self._add(state, now)
        self._wait(lambda: self._adding[handle] is not None, now)
        rc = self._adding.pop(handle)
        assert rc is not None
        if rc:
            extack.set_weak(errno_text(rc))
        return rc

    def reinstall(self, state: OffloadState, now: float) -> None:
        """Add a state the agent no longer holds again; completes with StateAddDone, or
        OffloadLost when the agent refuses it (or returns to the xdo_dev_state_add that
        waits for it)."""
        self._add(state, now)

    def held(self) -> bool:
        """Whether the PF's stack has any state offloaded or on its way."""
        return bool(self._states)

    def lose(self, handle: int, now: float) -> bool:
        """The agent no longer holds this offloaded state (a listing did not show it):
        re-install it (StateAddDone, or OffloadLost when the agent refuses it). False, and
        nothing done, for a state that is not offloaded or is being deleted."""
        state = self._states.get(handle)
        if state is None or handle not in self._sa_index or handle in self._deleting:
            return False
        del self._sa_index[handle]
        self.reinstall(state, now)
        return True

    def lose_all(self) -> list[OffloadState]:
        """The agent holds none of the states any more (a PF reset, an agent restart): forget
        their SA indexes and return the states to re-install. A state whose delete was under
        way is gone from the agent as asked: its delete is done (its transaction was
        abandoned); a statistics read under way gets no answer."""
        self._sa_index.clear()
        deleting, self._deleting = self._deleting, set()
        for got in self._reading.values():
            got.append(None)
        return [state for state in self._states.values() if state.handle not in deleting]

    def _add(self, state: OffloadState, now: float) -> None:
        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            handle = state.handle
            index = reply_sa_index(tlvs) if rc == 0 else None
            if index is None:
                rc = rc or -Errno.EINVAL
                self._states.pop(handle, None)
            else:
                self._sa_index[handle] = index
                self._db.add(Ownership(index, PF_OWNER, handle, self._mac, vlan_key(self._vlans)))
            if handle in self._adding:
                self._adding[handle] = rc
            else:
                self._emit(OffloadLost(handle, rc) if rc else StateAddDone(handle, 0, index))

        request = with_sa_key(
            add_sa_request(state), self._mac, self._vlans, extended_key=self.extended_key
        )
        self._control.request(Opcode.ADD_SA, encode_add_sa(request), now, then)

    def _refuse(self, state: OffloadState, extack: ExtAck) -> int:
        """What the PF refuses without asking the agent: a packet offload (-EINVAL), what the
        agent's capabilities rule out (-EOPNOTSUPP: the stack falls back to software)."""
        if state.offload_type != OffloadType.CRYPTO:
            extack.set("Unsupported ipsec offload type")
            return -Errno.EINVAL
        caps = self._control.caps
        if caps is None:
            return 0
        if state.algorithm not in caps.algorithms:
            extack.set("Unsupported algorithm: the agent does not offer it")
            return -Errno.EOPNOTSUPP
        if state.direction == Direction.INBOUND and state.replay_window > caps.max_replay_window:
            extack.set(f"Replay window above the agent's {caps.max_replay_window}")
            return -Errno.EOPNOTSUPP
        return 0

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Start removing an offloaded state from the agent (REMOVE_SA); returns at once."""
        index = self._sa_index.get(handle)
        if index is None or handle in self._deleting:
            return

        def then(rc: int, _tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            self._deleting.discard(handle)
            if rc in (0, -Errno.ENOENT, -Errno.ETIMEDOUT):
                # timed out, the stack frees the state all the same: the SA, if the agent
                # still has it, is an orphan for the reconciliation (resync.py)
                self._db.remove(index)

        self._deleting.add(handle)
        self._control.request(Opcode.REMOVE_SA, encode_sa_index(index), now, then)

    def xdo_dev_state_free(self, handle: int, now: float) -> None:
        """Wait for the state's REMOVE_SA to be answered (or given up), then forget it."""
        if handle in self._deleting:
            self._wait(lambda: handle not in self._deleting, now)
        self._sa_index.pop(handle, None)
        self._states.pop(handle, None)

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> SaStats | None:
        """The agent's counters of a state (GET_SA_STATS, waited for); None when the state is
        not in the agent or the read failed."""
        index = self._sa_index.get(handle)
        if index is None:
            return None
        got = self._reading[handle] = []

        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            got.append(reply_sa_stats(rc, tlvs)[1])

        self._control.request(Opcode.GET_SA_STATS, encode_sa_index(index), now, then)
        self._wait(lambda: bool(got), now)
        del self._reading[handle]
        return got[0]
