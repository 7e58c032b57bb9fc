"""The PF driver's counters, one set shared by its parts (`PfDriver.pf_counters`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PfCounters:
    """What the PF driver counts beyond its rings and its config channel."""

    mailbox_in: int = 0
    mailbox_errors: int = 0
    """Mailbox replies with an error status."""
    mailbox_ignored: int = 0
    """Messages from an unknown or DISABLED VF, and inputs VF_TRANSITIONS has no step for."""
    mailbox_duplicates: int = 0
    """Copies of a message already taken (same msg_id): answered with its reply, not acted on."""
    cleanup_removed: int = 0
    cleanup_failed: int = 0
    """SAs of a cleaned-up domain the agent would not remove, given up after the retries."""
    orphans_left: int = 0
    """SAs left in the agent by a clean-up without the ownership database."""
    pf_resets: int = 0
