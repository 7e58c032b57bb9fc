"""Admin queue commands: how the PF driver configures the NIC (the VF cannot send these)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SetPortTag:
    """Force a metadata word on every frame a VSI sends (None: stop forcing)."""

    vsi_id: int
    word: int | None


@dataclass(frozen=True, slots=True)
class SetTxEtherTypeFilter:
    """Drop every frame a VSI sends with one of these EtherTypes, before the switch (FVL's Tx
    EtherType filter, which keeps a VF's PAUSE frames off the port); empty: filter nothing."""

    vsi_id: int
    ethertypes: frozenset[int]


AdminCommand = SetPortTag | SetTxEtherTypeFilter
