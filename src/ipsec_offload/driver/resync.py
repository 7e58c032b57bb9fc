"""Port-wide recovery: bringing the agent's SAD back in step with what the stacks offloaded.

Theory of operation: this part keeps the agent's SAD equal to the set of SAs the stacks hold
as offloaded (spec 9, invariant 4) across port-wide faults: a PF reset, an agent restart, and
replies lost for good.

**PF reset** (`pf_reset`; panic, driver reload) loses the driver's view of the agent. The
transactions under way are abandoned with their continuations, the ownership database is
emptied, and the PF flushes its port with REMOVE_ALL_SAS. Once the agent has answered, the PF
re-installs its own stack's states (`OwnStates.reinstall`: each ADD_SA is built then, SEQ read
from the stack's live state); one the agent refuses is reported as OffloadLost, so that the
stack carries it in software. The VFs are back in INIT at once (`VfProxy.pf_reset`: their
requests are refused meanwhile) and are told once the flush is answered (EVENT_PF_RESET,
`VfProxy.announce_pf_reset`, resent until the VF asks for resources again); each then re-adds
its own SAs through the mailbox. Had the VFs been told at once, a re-add could reach the agent
before a resend of a lost REMOVE_ALL_SAS, which would take it away while the VF's stack
believes it offloaded. A flush that fails (-ETIMEDOUT) leaves the old SAs in the agent: each
re-add then meets EXISTS and its state falls back to software, which is safe (its numbers
continue from the stack's counter).

**Agent restart** (`agent_restarted`): the agent's SAD is empty. The PF learns of it from the
agent's AGENT_STARTED event, or from a BOOT_ID in a GET_CAPS answer other than the one it
knows: it asks GET_CAPS every `caps_interval` seconds (`next_timer` / `handle_timer`), so a
restart whose event was lost is found all the same. It then does what a PF reset does without
the flush (there is nothing to flush): transactions under way are abandoned (their requests
went to an agent that is gone, or reached the new one and are found by the reconciliation
below), the ownership database is emptied and rebuilt from the re-adds' replies, the PF's own
states are re-installed with their live SEQ (OffloadLost for one that fails), and every VF is
told with EVENT_PF_RESET, so that it re-adds its states with its stack's live SEQ (a VF cannot
tell the two apart, and needs not). Meanwhile the stacks' traffic goes on in software: a state
whose SA index the driver forgot is not `xdo_dev_offload_ok`.

**Reconciliation** (`reconcile`): an ADD_SA that completed with -ETIMEDOUT (every reply lost)
may have added its SA all the same; the stack was told the add failed and removed the state, so
the SA sits in the agent known to nobody (an orphan). A REMOVE_SA of a stack's delete that
timed out may have left its SA there likewise: the stack frees the state whatever the answer,
so the ownership entry goes too. After such a time-out (a clean-up's too, once it gave up),
and after a restart or a PF reset, the PF lists the agent's SAs (LIST_SAS, paging with the
cursor) and removes (REMOVE_SA) each that is in no ownership entry and that no ADD_SA under
way would add (its reply may still come), and lists once more at the next GET_CAPS probe, for
an ADD_SA delayed on the link past its time-out. The listing covers the whole port, not each known
domain: an SA of a domain the PF no longer knows is an orphan too. A missed reply is therefore
never adopted late: the stack already saw the add fail, so the SA goes, and nothing offloaded
is left that no stack holds (no orphan, and no counter the stack does not drive: no nonce
twice). The other way round, an SA of the PF's own stack that was in the agent before
the listing began and that the listing does not show is lost (a crafted flush, say): it is
re-installed with its live SEQ, or demoted to software (`OwnStates.lose`). A VF's SA missing
from the listing is not yet handled (the VF would have to re-add that one state).

Spec 1.1 only: the restart detection and the reconciliation act only with an agent whose
GET_CAPS answer carried a BOOT_ID (a spec 1.0 agent knows neither LIST_SAS nor events), and the
reconciliation only with the ownership database (the naive design has nothing to compare
with). `resync=False` (`--naive resync`) switches both off: a restarted agent's SAD stays empty
while the stacks believe their SAs offloaded, and orphans stay.
"""

from __future__ import annotations

from ipsec_offload.driver.cleanup import DomainCleanup
from ipsec_offload.driver.control import AgentControl, Errno
from ipsec_offload.driver.own_states import OwnStates
from ipsec_offload.driver.ownership import PF_OWNER, OwnershipDb
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.driver.vf_proxy import VfProxy
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import (
    Caps,
    ListSasRequest,
    Opcode,
    Tlv,
    decode_list_sas_reply,
    encode_list_sas_request,
    encode_sa_index,
)

CAPS_INTERVAL = 1.0
"""Seconds between the PF's GET_CAPS probes for a new BOOT_ID (spec 9: every second)."""


class Resync:
    """Recovery of the whole port: the PF's reset, the agent's restart, orphans."""

    def __init__(
        self,
        control: AgentControl,
        db: OwnershipDb,
        own_states: OwnStates,
        vf_proxy: VfProxy,
        cleanup: DomainCleanup,
        counters: PfCounters,
        *,
        resync: bool = True,
        caps_interval: float | None = None,
    ) -> None:
        if caps_interval is not None and not caps_interval > 0:
            raise UsageError("caps_interval is a number of seconds above 0, or None")
        self.resync = resync
        self.caps_interval = caps_interval
        self.boot_id: int | None = None
        """The BOOT_ID of the agent the PF's view is of (None: not known yet)."""
        self._control = control
        self._db = db
        self._own_states = own_states
        self._vf_proxy = vf_proxy
        self._cleanup = cleanup
        self._counters = counters
        self._next_probe: float | None = None
        self._listing = False
        self._list_again = False
        self._recheck = False
        """A reconciliation asks for one more listing, at the next GET_CAPS probe."""
        self._expected: set[int] = set()
        """The PF's own SA indexes the listing under way must show."""
        self._listed_indexes: set[int] = set()

    # -- PF reset --------------------------------------------------------------------------

    def pf_reset(self, now: float) -> None:
        """The PF driver reloads: flush the port, re-add the PF's own SAs once the agent has
        answered, tell every VF. Transactions under way are abandoned."""
        self._counters.pf_resets += 1
        self._abandon()
        own = self._own_states.lose_all()

        def then(rc: int, _tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            for state in own:
                self._own_states.reinstall(state, now)
            self._vf_proxy.announce_pf_reset(now)
            self.reconcile(now)

        self._control.request(Opcode.REMOVE_ALL_SAS, (), now, then)
        self._vf_proxy.pf_reset(now)

    def _abandon(self) -> None:
        self._control.abandon()
        self._db.clear()
        self._listing = self._list_again = False

    # -- agent restart ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The PF loaded and asked GET_CAPS: the periodic probe starts (with `caps_interval`)."""
        if self.resync and self.caps_interval is not None:
            self._next_probe = now + self.caps_interval

    def next_timer(self) -> float | None:
        """When the next GET_CAPS probe is due (None: no probing)."""
        return self._next_probe

    def handle_timer(self, now: float) -> None:
        """Send the GET_CAPS probe when due."""
        if self._next_probe is None or now < self._next_probe:
            return
        assert self.caps_interval is not None
        self._next_probe = now + self.caps_interval
        self._control.probe(now, report=False)
        if self._recheck:
            self._recheck = False
            self._list_sad(now)

    def caps_seen(self, caps: Caps, now: float) -> None:
        """A GET_CAPS answer: a BOOT_ID other than the known one is a restart."""
        if not self.resync or caps.boot_id is None:
            return
        if self.boot_id is None:
            self.boot_id = caps.boot_id
        elif caps.boot_id != self.boot_id:
            self._counters.restarts_by_caps += 1
            self.agent_restarted(caps.boot_id, now)

    def agent_started(self, boot_id: int, now: float) -> None:
        """The agent's AGENT_STARTED event (a restart already found by GET_CAPS is not
        handled twice)."""
        if not self.resync or boot_id == self.boot_id:
            return
        if self.boot_id is None and len(self._db) == 0 and not self._own_states.held():
            self.boot_id = boot_id  # the first boot the PF hears of, with nothing to lose
            return
        self.agent_restarted(boot_id, now)

    def agent_restarted(self, boot_id: int, now: float) -> None:
        """The agent restarted with an empty SAD: re-install every offloaded SA of every
        domain with its SEQ (the PF's here, the VFs' through the mailbox)."""
        self.boot_id = boot_id
        self._counters.agent_restarts += 1
        self._abandon()
        for state in self._own_states.lose_all():
            self._own_states.reinstall(state, now)
        self._vf_proxy.pf_reset(now)
        self._vf_proxy.announce_pf_reset(now)
        # the new agent's caps (and a first probe that was abandoned above is made again)
        self._control.probe(now, report=self._control.caps is None)
        self.reconcile(now)

    # -- reconciliation --------------------------------------------------------------------

    def reconcile(self, now: float) -> None:
        """List the agent's SAs and remove those nobody owns (after a lost ADD_SA reply, a
        restart or a PF reset). A listing under way is followed by a new one, and the next
        GET_CAPS probe lists once more: an ADD_SA delayed on the link beyond its time-out can
        reach the agent after this listing."""
        caps = self._control.caps
        if not self.resync or not self._cleanup.ownership_db:
            return
        if caps is None or caps.boot_id is None:
            return  # a spec 1.0 agent: no LIST_SAS
        self._recheck = True
        self._list_sad(now)

    def _list_sad(self, now: float) -> None:
        if self._listing:
            self._list_again = True
            return
        self._listing = True
        self._counters.reconciliations += 1
        self._expected = {e.sa_index for e in self._db.owned_by(PF_OWNER)}
        self._listed_indexes = set()
        self._list(None, now)

    def _list(self, cursor: int | None, now: float) -> None:
        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            try:
                reply = decode_list_sas_reply(tlvs) if rc == 0 and tlvs is not None else None
            except ParseError:
                reply = None
            if reply is None:
                self._counters.reconcile_failed += 1
                self._listed(now)
                return
            owned = self._db.indexes()
            under_way = self._control.adds_under_way()
            self._listed_indexes.update(entry.sa_index for entry in reply.entries)
            for entry in reply.entries:
                if entry.sa_index in owned:
                    continue
                if (entry.direction, entry.spi, entry.dst) in under_way:
                    continue  # its ADD_SA's reply may still come
                self._remove_orphan(entry.sa_index, now)
            if reply.next_cursor:
                self._list(reply.next_cursor, now)
            else:
                self._reinstall_lost(now)
                self._listed(now)

        request = encode_list_sas_request(ListSasRequest(cursor=cursor))
        self._control.request(Opcode.LIST_SAS, request, now, then)

    def _reinstall_lost(self, now: float) -> None:
        """The PF's own SAs that were in the agent before the listing began (their ADD_SA was
        answered) and that it did not show are lost (say, a crafted flush): re-installed,
        or demoted to software. An SA being deleted meanwhile is not lost."""
        for index in sorted(self._expected - self._listed_indexes):
            entry = self._db.by_index(index)
            if entry is None or entry.owner != PF_OWNER:
                continue  # deleted, or the index changed hands, meanwhile
            if self._own_states.lose(entry.handle, now):  # its re-add's reply comes later
                self._db.remove(index)
                self._counters.sas_lost += 1

    def _listed(self, now: float) -> None:
        self._listing = False
        if self._list_again:
            self._list_again = False
            self._list_sad(now)

    def _remove_orphan(self, index: int, now: float) -> None:
        def then(rc: int, _tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            if rc in (0, -Errno.ENOENT):
                self._counters.orphans_removed += 1

        self._control.request(Opcode.REMOVE_SA, encode_sa_index(index), now, then)
