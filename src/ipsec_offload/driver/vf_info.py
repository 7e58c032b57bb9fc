"""What the PF knows of each of its VFs: the state the lifecycle table (`vf_proxy.py`) keeps it
in, and the bookkeeping its messages need (`vf_sas.py`)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum

from ipsec_offload.wire.ethernet import VlanTag


class VfState(IntEnum):
    """A VF's state as the PF sees it (the rows of VF_TRANSITIONS)."""

    DISABLED = 0
    INIT = 1
    ACTIVE = 2
    RESETTING = 3
    REMOVING = 4


@dataclass(slots=True)
class VfInfo:
    """What the PF knows of one VF."""

    vf_id: int
    vsi_id: int
    mac: bytes
    vlans: tuple[VlanTag, ...]
    trusted: bool = True
    quota: int = 128
    state: VfState = VfState.INIT
    inflight: int = 0
    """Agent transactions under way that change the VF's SAs (adds and removes)."""
    requests: int = 0
    """The VF's mailbox requests waiting for the agent (at most REQUESTS_IN_FLIGHT)."""
    deferred_request: int | None = None
    """msg_id of a REQUEST_RESOURCES waiting for the clean-up to finish."""
    pending_handles: set[int] = field(default_factory=set)
    answered: OrderedDict[int, bytes | None] = field(default_factory=OrderedDict)
    """The VF's recent msg_ids -> the reply sent (None: not yet), so that a duplicated
    message is answered once (spec 9: a mailbox message may arrive twice)."""
