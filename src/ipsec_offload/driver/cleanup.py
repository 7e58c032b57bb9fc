"""The clean-up of a SAD domain: removing one owner's SAs from the agent (spec section 6).

Theory of operation: the agent removes one SA or all SAs of a port, nothing in between, so the
PF removes a domain's SAs one REMOVE_SA at a time, the ownership database telling which are
the domain's. NOT_FOUND counts as removed (the agent no longer holds the SA); any other
outcome, a time-out included, is retried, CLEANUP_RETRIES attempts in all, then given up and
counted. Either way the entry then leaves the database, and the caller's continuation runs
once per SA: the caller (the VF proxy) knows when the agent has answered for the whole domain,
and only then answers the VF.

Without the ownership database (`ownership_db=False`, the deck's naive design) nothing records
which SAs were the domain's: they stay in the agent, counted as orphans.
"""

from __future__ import annotations

from collections.abc import Callable

from ipsec_offload.driver.control import AgentControl, Errno
from ipsec_offload.driver.ownership import Ownership, OwnershipDb
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.wire.config import Opcode, Tlv, encode_sa_index

CLEANUP_RETRIES = 3
"""Attempts at removing one SA of a domain before the PF gives up on it."""


class DomainCleanup:
    """Removes a domain's SAs from the agent, then from the ownership database."""

    def __init__(
        self,
        control: AgentControl,
        db: OwnershipDb,
        counters: PfCounters,
        *,
        ownership_db: bool,
    ) -> None:
        self.ownership_db = ownership_db
        self._control = control
        self._db = db
        self._counters = counters

    def clean_up(self, entries: list[Ownership], now: float, then: Callable[[float], None]) -> int:
        """Remove these SAs; `then(now)` runs once for each, when the agent confirmed its
        removal or the PF gave up on it. Returns how many removals are under way (none in the
        naive design, which only forgets the entries)."""
        if not self.ownership_db:
            for entry in entries:
                self._db.remove(entry.sa_index)
            self._counters.orphans_left += len(entries)
            return 0
        for entry in entries:
            self._remove(entry.sa_index, now, then, CLEANUP_RETRIES)
        return len(entries)

    def _remove(self, index: int, now: float, then: Callable[[float], None], tries: int) -> None:
        def removed(rc: int, _tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            if rc in (0, -Errno.ENOENT):
                self._db.remove(index)
                self._counters.cleanup_removed += 1
            elif tries > 1:
                self._remove(index, now, then, tries - 1)
                return
            else:
                self._db.remove(index)
                self._counters.cleanup_failed += 1
            then(now)

        self._control.request(Opcode.REMOVE_SA, encode_sa_index(index), now, removed)
