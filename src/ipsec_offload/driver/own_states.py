"""The PF host stack's own offloaded states: the PF driver's xdo_dev_state_* calls.

Theory of operation: each call becomes one agent transaction whose continuation turns the
reply into the call's event (StateAddDone, StateDeleteDone, StatsDone) with its return value.
An add that the agent's capabilities rule out (algorithm, replay window) is refused with
-EOPNOTSUPP without asking the agent. Every ADD_SA carries the PF's SAD domain (its MAC and
VLANs, `with_sa_key`), and its SA is recorded in the ownership database as the PF's.

The states stay here from xdo_dev_state_add to xdo_dev_state_free, so that the PF can
re-install them after the agent lost them (`reinstall`). Every ADD_SA, the first and each
re-install, is built when it is sent from the stack's live state (`add_sa_request` reads
`OffloadState.handover_seq`), so the agent never starts below the stack's sequence numbers
(spec 9). A re-install that fails is reported as OffloadLost: the stack carries the state in
software from then on.
"""

from __future__ import annotations

from collections.abc import Callable

from ipsec_offload.driver.control import AgentControl, Errno, reply_sa_index, reply_sa_stats
from ipsec_offload.driver.ownership import PF_OWNER, Ownership, OwnershipDb, with_sa_key
from ipsec_offload.driver.ring import (
    DriverEvent,
    OffloadLost,
    OffloadState,
    StateAddDone,
    StateDeleteDone,
    StatsDone,
    add_sa_request,
)
from ipsec_offload.errors import UsageError
from ipsec_offload.wire.config import (
    Direction,
    Opcode,
    Tlv,
    encode_add_sa,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import VlanTag, vlan_key


class OwnStates:
    """The xfrm states the PF's own stack offloaded, and the xdo_dev_state_* calls on them."""

    def __init__(
        self,
        control: AgentControl,
        db: OwnershipDb,
        sa_index: dict[int, int],
        emit: Callable[[DriverEvent], None],
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
        self._mac = mac
        self._vlans = vlans
        self._states: dict[int, OffloadState] = {}
        self._deleting: set[int] = set()
        """Handles whose REMOVE_SA is under way."""

    def xdo_dev_state_add(self, state: OffloadState, now: float) -> None:
        """Offload a state; completes with StateAddDone (rc 0 or a negative errno)."""
        if state.handle in self._sa_index or state.handle in self._states:
            raise UsageError(f"xfrm state {state.handle} is already offloaded")
        refusal = self._refuse(state)
        if refusal:
            self._emit(StateAddDone(state.handle, refusal, None))
            return
        self._states[state.handle] = state
        self._add(state, now, lost_on_failure=False)

    def reinstall(self, state: OffloadState, now: float) -> None:
        """Add a state the agent no longer holds again; completes with StateAddDone, or
        OffloadLost when the agent refuses it."""
        self._add(state, now, lost_on_failure=True)

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
        way is gone from the agent as asked: its delete completes now (its transaction was
        abandoned)."""
        self._sa_index.clear()
        for handle in sorted(self._deleting):
            self._emit(StateDeleteDone(handle, 0))
        deleting, self._deleting = self._deleting, set()
        return [state for state in self._states.values() if state.handle not in deleting]

    def _add(self, state: OffloadState, now: float, *, lost_on_failure: bool) -> None:
        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            index = reply_sa_index(tlvs) if rc == 0 else None
            if index is None:
                rc = rc or -Errno.EINVAL
                self._states.pop(state.handle, None)
                event = OffloadLost(state.handle, rc) if lost_on_failure else None
                self._emit(event or StateAddDone(state.handle, rc, None))
                return
            self._sa_index[state.handle] = index
            self._db.add(Ownership(index, PF_OWNER, state.handle, self._mac, vlan_key(self._vlans)))
            self._emit(StateAddDone(state.handle, 0, index))

        request = with_sa_key(
            add_sa_request(state), self._mac, self._vlans, extended_key=self.extended_key
        )
        self._control.request(Opcode.ADD_SA, encode_add_sa(request), now, then)

    def _refuse(self, state: OffloadState) -> int:
        """-EOPNOTSUPP for what the agent's capabilities rule out, without asking it."""
        caps = self._control.caps
        if caps is None:
            return 0
        if state.algorithm not in caps.algorithms:
            return -Errno.EOPNOTSUPP
        if state.direction == Direction.INBOUND and state.replay_window > caps.max_replay_window:
            return -Errno.EOPNOTSUPP
        return 0

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Remove an offloaded state from the agent; completes with StateDeleteDone."""
        index = self._sa_index.get(handle)
        if index is None:
            self._emit(StateDeleteDone(handle, -Errno.ENOENT))
            return

        def then(rc: int, _tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            self._deleting.discard(handle)
            if rc in (0, -Errno.ENOENT, -Errno.ETIMEDOUT):
                # timed out, the stack frees the state all the same: the SA, if the agent
                # still has it, is an orphan for the reconciliation (resync.py)
                self._db.remove(index)
            self._emit(StateDeleteDone(handle, rc))

        self._deleting.add(handle)
        self._control.request(Opcode.REMOVE_SA, encode_sa_index(index), now, then)

    def xdo_dev_state_free(self, handle: int) -> None:
        """Forget a state after its delete completed (Linux frees driver memory here)."""
        self._sa_index.pop(handle, None)
        self._states.pop(handle, None)
        self._deleting.discard(handle)

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> None:
        """Fetch the agent's counters of a state; completes with StatsDone."""
        index = self._sa_index.get(handle)
        if index is None:
            self._emit(StatsDone(handle, -Errno.ENOENT, None))
            return

        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            self._emit(StatsDone(handle, *reply_sa_stats(rc, tlvs)))

        self._control.request(Opcode.GET_SA_STATS, encode_sa_index(index), now, then)
