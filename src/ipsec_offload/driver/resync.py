"""Port-wide recovery: bringing the agent's SAD back in step with what the stacks offloaded.

Theory of operation: a PF reset (panic, driver reload) loses the driver's view of the agent.
The transactions under way are abandoned with their continuations, the ownership database is
emptied, and the PF flushes its port with REMOVE_ALL_SAS. Once the agent has answered, the PF
re-installs its own stack's states (`OwnStates.reinstall`: each ADD_SA is built then, SEQ read
from the stack's live state); one the agent refuses is reported as OffloadLost, so that the
stack carries it in software. The VFs are back in INIT at once (`VfProxy.pf_reset`: their
requests are refused meanwhile) and are told once the flush is answered (EVENT_PF_RESET,
`VfProxy.announce_pf_reset`); each then re-adds its own SAs through the mailbox. Had the VFs
been told at once, a re-add could reach the agent before a resend of a lost REMOVE_ALL_SAS,
which would take it away while the VF's stack believes it offloaded. A flush that fails
(-ETIMEDOUT) leaves the old SAs in the agent: each re-add then meets EXISTS and its state
falls back to software, which is safe (its numbers continue from the stack's counter).

This is the part of the PF that keeps the agent's SAD equal to the set of SAs the stacks hold
as offloaded (spec 9, invariant 4) across port-wide faults.
"""

from __future__ import annotations

from ipsec_offload.driver.control import AgentControl
from ipsec_offload.driver.own_states import OwnStates
from ipsec_offload.driver.ownership import OwnershipDb
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.driver.vf_proxy import VfProxy
from ipsec_offload.wire.config import Opcode, Tlv


class Resync:
    """Recovery of the whole port: the PF's reset."""

    def __init__(
        self,
        control: AgentControl,
        db: OwnershipDb,
        own_states: OwnStates,
        vf_proxy: VfProxy,
        counters: PfCounters,
    ) -> None:
        self._control = control
        self._db = db
        self._own_states = own_states
        self._vf_proxy = vf_proxy
        self._counters = counters

    def pf_reset(self, now: float) -> None:
        """The PF driver reloads: flush the port, re-add the PF's own SAs once the agent has
        answered, tell every VF. Transactions under way are abandoned."""
        self._counters.pf_resets += 1
        self._control.abandon()
        self._db.clear()
        own = self._own_states.lose_all()

        def then(rc: int, _tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            for state in own:
                self._own_states.reinstall(state, now)
            self._vf_proxy.announce_pf_reset()

        self._control.request(Opcode.REMOVE_ALL_SAS, (), now, then)
        self._vf_proxy.pf_reset(now)
