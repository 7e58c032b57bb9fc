"""The agent's Security Association Database (spec section 5).

Theory of operation: the SAD is a fixed table of `capacity` entries addressed by an SA index
(1..capacity; 0 means "no SA" in the Rx metadata). Two hash indexes give O(1) lookup at any
size: the extended key (direction, SPI, destination, local MAC, VLAN stack) for SAs added with
domain fields, and the naive key (direction, SPI, destination) for SAs added without them,
which match any MAC and VLAN. A lookup tries the extended key first. Free indexes are handed
out lowest first, so runs are deterministic.

The indexes are keyed by flat tuples of the packet's own fields (no `Domain` in them), so that
a lookup builds one tuple and hashes and compares it in C. Where the compiled fast path is
built, a fixed hash table of the same keys (`SadTable`) sits beside the dict: the fast path
looks packets up there, the Python reference path in the dict, and both change together.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from ipsec_offload.agent.fastpath import SadTable
from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.errors import UsageError
from ipsec_offload.wire.config import Algorithm, Direction, EventType
from ipsec_offload.wire.ethernet import VlanKey


class Domain(NamedTuple):
    """A SAD domain: the VSI's MAC address and VLAN stack (spec section 5). A tuple, so that
    the hairpin table finds a frame's (MAC, VLAN key) without building one."""

    mac: bytes
    vlans: VlanKey


SaKey = tuple[Direction, int, bytes, Domain | None]
"""An SA's key as the config channel names it: direction, SPI, destination, domain."""
PacketKey = tuple[Direction, int, bytes, bytes, VlanKey]
"""What a packet offers a lookup: direction, SPI, destination, local MAC, VLAN stack."""
_IndexKey = tuple[Direction, int, bytes] | PacketKey
"""The key of the hash index: the naive key, or the extended key with the domain spread out."""


def _index_key(key: SaKey) -> _IndexKey:
    direction, spi, dst, domain = key
    if domain is None:
        return (direction, spi, dst)
    return (direction, spi, dst, domain.mac, domain.vlans)


@dataclass(slots=True)
class SecurityAssociation:
    """One SAD entry with its live state (sequence/IV database, replay window, counters)."""

    index: int
    port: int
    direction: Direction
    spi: int
    dst: bytes
    src: bytes | None
    algorithm: Algorithm
    key_material: bytes = field(repr=False)
    domain: Domain | None
    esn: bool
    ivdb: int
    replay: ReplayWindow | None
    lifetime_packets: int
    lifetime_bytes: int
    packets: int = 0
    bytes: int = 0
    errors: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])
    _aead: EspAead | None = field(default=None, repr=False)
    soft_lifetime_packets: int = 0
    """Soft limits (spec 9, SOFT_LIFETIME_*; 0 none): reaching one raises SOFT_EXPIRE once."""
    soft_lifetime_bytes: int = 0
    raised: set[EventType] = field(default_factory=set)
    """The SA's events already raised (SOFT_EXPIRE, HARD_EXPIRE, SEQ_SOFT_LIMIT: once each)."""
    watch_packets: int = 0
    """The packet count at which this SA reaches its next threshold (a soft limit not yet
    raised, or the hard one; 0 none). The compiled fast path hands back every frame that would
    bring the SA there, so that the reference path counts it and raises the event."""
    watch_bytes: int = 0
    """Likewise in bytes."""
    watch_seq: int = 0
    """Outbound: the sequence number from which SEQ_SOFT_LIMIT is raised (2^31, 2^63 with
    ESN), 0 once it has been (inbound: always 0)."""

    def __post_init__(self) -> None:
        self.rewatch()

    def rewatch(self) -> None:
        """Compute the watch thresholds from the limits and the events already raised."""
        soft = EventType.SOFT_EXPIRE not in self.raised
        self.watch_packets = _first_limit(
            self.lifetime_packets, self.soft_lifetime_packets if soft else 0
        )
        self.watch_bytes = _first_limit(
            self.lifetime_bytes, self.soft_lifetime_bytes if soft else 0
        )
        self.watch_seq = (
            SEQ_SOFT_LIMIT[self.esn]
            if self.direction == Direction.OUTBOUND and EventType.SEQ_SOFT_LIMIT not in self.raised
            else 0
        )

    def soft_expired(self) -> bool:
        """True once a soft lifetime (packets or bytes; 0 means none) has been reached."""
        return bool(
            (self.soft_lifetime_packets and self.packets >= self.soft_lifetime_packets)
            or (self.soft_lifetime_bytes and self.bytes >= self.soft_lifetime_bytes)
        )

    def lifetime_events(self) -> list[EventType]:
        """The lifetime events this SA has just reached and not raised yet (SOFT_EXPIRE
        before HARD_EXPIRE), marked raised; called after a packet is counted."""
        reached = []
        if EventType.SOFT_EXPIRE not in self.raised and self.soft_expired():
            reached.append(EventType.SOFT_EXPIRE)
        if EventType.HARD_EXPIRE not in self.raised and self.expired():
            reached.append(EventType.HARD_EXPIRE)
        if reached:
            self.raised.update(reached)
            self.rewatch()
        return reached

    @property
    def key(self) -> SaKey:
        return (self.direction, self.spi, self.dst, self.domain)

    @property
    def aead(self) -> EspAead:
        """The cipher context, created when the SA first carries traffic."""
        if self._aead is None:
            self._aead = EspAead(self.algorithm, self.key_material)
        return self._aead

    def expired(self) -> bool:
        """True once a hard lifetime (packets or bytes; 0 means none) has been reached."""
        return bool(
            (self.lifetime_packets and self.packets >= self.lifetime_packets)
            or (self.lifetime_bytes and self.bytes >= self.lifetime_bytes)
        )


SEQ_SOFT_LIMIT = {False: 1 << 31, True: 1 << 63}
"""An outbound SA that uses this sequence number has used 2^31 of 2^32 numbers (2^63 of 2^64
with ESN): SEQ_SOFT_LIMIT (spec 9)."""


def _first_limit(a: int, b: int) -> int:
    """The lower of two limits where 0 means none."""
    if a and b:
        return min(a, b)
    return a or b


class SadFull(Exception):
    """Internal signal: no free index (the agent answers NO_SPACE)."""


class SecurityAssociationDatabase:
    """Fixed-size SAD with O(1) lookup by extended or naive key."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: dict[int, SecurityAssociation] = {}
        self._by_key: dict[_IndexKey, SecurityAssociation] = {}
        self._free: list[int] = []
        self._next_unused = 1
        try:
            self._table = None if SadTable is None else SadTable(capacity)
        except MemoryError:
            raise UsageError(
                f"a SAD of {capacity} entries: its compiled index cannot be mapped here"
                " (address space limited?); give a smaller sad_size"
            ) from None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def table(self) -> SadTable | None:
        """The SAD's hash table as the compiled fast path holds it (None without it)."""
        return self._table

    def __iter__(self) -> Iterator[SecurityAssociation]:
        return iter(sorted(self._entries.values(), key=lambda sa: sa.index))

    def get(self, index: int) -> SecurityAssociation | None:
        return self._entries.get(index)

    def contains_key(self, key: SaKey) -> bool:
        return _index_key(key) in self._by_key

    def allocate_index(self) -> int:
        """The lowest free index; raises SadFull when every entry is in use."""
        if self._free:
            return self._free[0]
        if self._next_unused > self.capacity:
            raise SadFull
        return self._next_unused

    def insert(self, sa: SecurityAssociation) -> None:
        if self._free and self._free[0] == sa.index:
            heapq.heappop(self._free)
        elif sa.index == self._next_unused:
            self._next_unused += 1
        else:
            raise ValueError(f"SA index {sa.index} was not allocated")
        key = _index_key(sa.key)
        self._entries[sa.index] = sa
        self._by_key[key] = sa
        if self._table is not None:
            self._table.insert(key, sa, sa.index)

    def remove(self, index: int) -> SecurityAssociation | None:
        sa = self._entries.pop(index, None)
        if sa is not None:
            key = _index_key(sa.key)
            del self._by_key[key]
            if self._table is not None:
                self._table.remove(key)
            heapq.heappush(self._free, index)
        return sa

    def lookup_burst(self, keys: list[PacketKey]) -> list[int]:
        """The SA index (0: none) of each packet key of a burst, as the engine's lookup stage
        yields it: in the SAD table, which brings the whole burst's home lines into the cache
        before it probes them (or one by one in the dict, where the compiled fast path is not
        built)."""
        if self._table is not None:
            return self._table.lookup_burst(keys)
        return [0 if (sa := self.lookup(*key)) is None else sa.index for key in keys]

    def lookup(
        self, direction: Direction, spi: int, dst: bytes, mac: bytes, vlans: VlanKey
    ) -> SecurityAssociation | None:
        """Find the SA for a packet: extended key first, then the naive key."""
        by_key = self._by_key
        sa = by_key.get((direction, spi, dst, mac, vlans))
        if sa is None:
            sa = by_key.get((direction, spi, dst))
        return sa
