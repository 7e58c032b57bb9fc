"""Admin queue commands: how the PF driver configures the NIC (the VF cannot send these)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SetPortTag:
    """Force a metadata word on every frame a VSI sends (None: stop forcing)."""

    vsi_id: int
    word: int | None


AdminCommand = SetPortTag
