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
    fifo_full: int = 0
    """VF requests refused FIFO_FULL: too many of that VF's were waiting for the agent."""
    sa_updates: int = 0
    """ESN advances taken without agent traffic (the agent tracks its ESNs itself): the PF's
    own states' xdo_dev_state_advance_esn and the VFs' UPDATE_SA requests."""
    vf_bulk_removed: int = 0
    """SAs the agent removed for a VF's own DEL_SAS (a list, or all of its SAs)."""
    cleanup_removed: int = 0
    cleanup_failed: int = 0
    """SAs of a cleaned-up domain the agent would not remove, given up after the retries."""
    orphans_left: int = 0
    """SAs left in the agent by a clean-up without the ownership database."""
    pf_resets: int = 0
    agent_restarts: int = 0
    """Agent restarts the PF learnt of (AGENT_STARTED, or a new BOOT_ID in GET_CAPS)."""
    restarts_by_caps: int = 0
    """Of those, the ones a GET_CAPS answer revealed (the AGENT_STARTED event was lost)."""
    expiries: int = 0
    """SOFT_EXPIRE, HARD_EXPIRE and SEQ_SOFT_LIMIT events passed on to a stack."""
    events_ignored: int = 0
    """Expiry events of an SA index nobody owns, or from an agent boot the PF has moved past."""
    reconciliations: int = 0
    """LIST_SAS listings of the agent's SAD compared with the ownership database."""
    reconcile_failed: int = 0
    """Listings given up: a LIST_SAS failed or its reply did not decode."""
    orphans_removed: int = 0
    """SAs found in the agent that no ownership entry and no add under way explain, removed."""
    sas_lost: int = 0
    """The PF's own SAs a listing did not show (gone from the agent): re-installed."""
    notices_resent: int = 0
    """EVENT_PF_RESET, EVENT_SA_EXPIRE and EVENT_CRYPTO mailbox messages sent again,
    unanswered."""
    notices_unanswered: int = 0
    """Those given up after their resends."""
