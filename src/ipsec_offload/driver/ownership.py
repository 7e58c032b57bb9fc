"""The PF's SA ownership database (spec section 6): agent SA index -> domain, owner, handle.

An SA's domain is its owner's MAC and VLANs (spec section 5). The PF puts the domain on every
ADD_SA it sends (`with_sa_key`) and records here whose SA the agent gave each index to, so that
it can clean up one domain although the agent removes only one SA or a whole port.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ipsec_offload.wire.addr import mac_to_str
from ipsec_offload.wire.config import AddSaRequest
from ipsec_offload.wire.ethernet import VlanKey, VlanTag

PF_OWNER = -1
"""The owner id of the PF's own SAs; VFs are owners 0, 1, 2, ..."""


def with_sa_key(
    request: AddSaRequest, mac: bytes, vlans: tuple[VlanTag, ...], *, extended_key: bool
) -> AddSaRequest:
    """The request with the SA's key as the design wants it: the extended key adds the domain
    (MAC and VLANs); the naive key is only SPI, destination and protocol, so it carries no
    source address either."""
    if extended_key:
        return replace(request, local_mac=mac, vlans=vlans)
    return replace(request, src=None, local_mac=None, vlans=())


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who an SA in the agent belongs to."""

    sa_index: int
    owner: int
    handle: int
    mac: bytes
    vlans: VlanKey


class OwnershipDb:
    """SA index -> Ownership, with an index by owner and handle so clean-up of a domain and
    a VF's DEL_SA(handle) are lookups, not scans."""

    def __init__(self) -> None:
        self._by_index: dict[int, Ownership] = {}
        self._by_owner: dict[int, dict[int, Ownership]] = {}

    def __len__(self) -> int:
        return len(self._by_index)

    def add(self, entry: Ownership) -> None:
        self._by_index[entry.sa_index] = entry
        self._by_owner.setdefault(entry.owner, {})[entry.handle] = entry

    def remove(self, sa_index: int) -> Ownership | None:
        entry = self._by_index.pop(sa_index, None)
        if entry is not None:
            handles = self._by_owner[entry.owner]
            del handles[entry.handle]
            if not handles:
                del self._by_owner[entry.owner]
        return entry

    def by_index(self, sa_index: int) -> Ownership | None:
        return self._by_index.get(sa_index)

    def lookup(self, owner: int, handle: int) -> Ownership | None:
        return self._by_owner.get(owner, {}).get(handle)

    def owned_by(self, owner: int) -> list[Ownership]:
        return sorted(self._by_owner.get(owner, {}).values(), key=lambda e: e.sa_index)

    def clear(self) -> None:
        self._by_index.clear()
        self._by_owner.clear()

    def indexes(self) -> set[int]:
        return set(self._by_index)

    def dump(self) -> list[dict[str, Any]]:
        return [
            {
                "sa_index": e.sa_index,
                "owner": "PF" if e.owner == PF_OWNER else f"VF{e.owner}",
                "handle": e.handle,
                "domain": mac_to_str(e.mac) + "".join(f".{t:04x}:{v}" for t, v in e.vlans),
            }
            for e in sorted(self._by_index.values(), key=lambda e: e.sa_index)
        ]
