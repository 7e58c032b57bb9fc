"""The agent's events (spec 9), routed to whom they concern.

Theory of operation: the config channel answers each EVENT the agent sends and hands it here
once (`AgentControl.on_event`). AGENT_STARTED goes to the port's recovery (`Resync`: the SAD
is empty, every offloaded SA is re-installed). SOFT_EXPIRE, HARD_EXPIRE and SEQ_SOFT_LIMIT name
an SA index, which the ownership database turns into its owner and the owner's handle: the
PF's own state becomes a `StateExpired` event for the PF's stack; a VF's, an EVENT_SA_EXPIRE
mailbox message to the VF (`VfProxy.sa_expired`), which the VF driver turns into the same event
for its stack. An expiry of an index nobody owns is counted and dropped.

An event from an agent boot other than the one the PF's view is of (its BOOT_ID) tells of a
restart first: the PF re-installs everything, and an expiry from that boot is dropped (its SA
index is of a SAD the PF is rebuilding; the re-installed SA starts its lifetime again in the
agent, and the stack keeps its own lifetime counts).
"""

from __future__ import annotations

from collections.abc import Callable

from ipsec_offload.driver.ownership import PF_OWNER, OwnershipDb
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.driver.resync import Resync
from ipsec_offload.driver.ring import DriverEvent, StateExpired
from ipsec_offload.driver.vf_proxy import VfProxy
from ipsec_offload.wire.config import Event, EventType
from ipsec_offload.wire.mailbox import ExpireKind


class AgentEvents:
    """Routes each event of the agent: a restart to the recovery, an expiry to its owner."""

    def __init__(
        self,
        db: OwnershipDb,
        resync: Resync,
        vf_proxy: VfProxy,
        emit: Callable[[DriverEvent], None],
        counters: PfCounters,
    ) -> None:
        self._db = db
        self._resync = resync
        self._vf_proxy = vf_proxy
        self._emit = emit
        self._counters = counters

    def on_event(self, event: Event, now: float) -> None:
        """One event of the agent, answered already and seen for the first time."""
        if event.event_type == EventType.AGENT_STARTED:
            self._resync.agent_started(event.boot_id, now)
            return
        known = self._resync.boot_id
        if self._resync.resync and known is not None and event.boot_id != known:
            self._counters.events_ignored += 1
            self._resync.agent_started(event.boot_id, now)
            return
        entry = None if event.sa_index is None else self._db.by_index(event.sa_index)
        if entry is None:
            self._counters.events_ignored += 1
            return
        kind = ExpireKind(int(event.event_type))
        self._counters.expiries += 1
        if entry.owner == PF_OWNER:
            self._emit(StateExpired(entry.handle, kind))
        else:
            self._vf_proxy.sa_expired(entry.owner, entry.handle, kind, now)
