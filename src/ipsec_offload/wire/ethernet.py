"""Ethernet II header with the agent's metadata tag and up to two VLAN tags (spec section 3)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

from ipsec_offload.errors import ParseError, UsageError

__all__ = [
    "MAX_VLANS",
    "EtherType",
    "EthernetFields",
    "EthernetHeader",
    "VlanKey",
    "VlanTag",
    "build_ethernet",
    "ethernet_fields",
    "parse_ethernet",
    "vlan_key",
]

_LAYER = "ethernet"
_U16 = struct.Struct("!H")
_TAG = struct.Struct("!HH")
_META = struct.Struct("!HI")
_L2 = struct.Struct("!6s6sH")
"""Destination and source MAC, EtherType."""
_META_TAG = struct.Struct("!HIH")
"""The metadata tag and the EtherType after it."""
_VLAN_TAG = struct.Struct("!HHH")
"""A VLAN tag and the EtherType after it."""
_MAC_LEN = 6
_MIN_LEN = 2 * _MAC_LEN + 2

MAX_VLANS = 2
"""At most two VLAN tags (802.1ad Q-in-Q) follow the metadata tag."""


class EtherType(IntEnum):
    """EtherType and TPID values the model knows."""

    IPV4 = 0x0800
    ARP = 0x0806
    VLAN = 0x8100
    IPV6 = 0x86DD
    QINQ = 0x88A8
    META = 0x88B5
    CONFIG = 0x88B6


_VLAN_TPIDS = frozenset((EtherType.VLAN, EtherType.QINQ))


@dataclass(frozen=True, slots=True)
class VlanTag:
    """One 802.1Q (TPID 0x8100) or 802.1ad (TPID 0x88A8) tag."""

    tpid: int
    tci: int

    @property
    def vid(self) -> int:
        """VLAN identifier, the low 12 bits of the TCI."""
        return self.tci & 0x0FFF

    @property
    def pcp(self) -> int:
        """Priority code point, the top 3 bits of the TCI."""
        return self.tci >> 13

    @property
    def dei(self) -> bool:
        """Drop eligible indicator, bit 12 of the TCI."""
        return bool(self.tci & 0x1000)


def check_vlans(vlans: object, what: str) -> tuple[VlanTag, ...]:
    """`vlans` as a VLAN stack: a sequence of at most two VlanTag, each with an 802.1Q or
    802.1ad TPID and a 16-bit TCI; a UsageError naming `what` otherwise."""
    if isinstance(vlans, VlanTag) or not isinstance(vlans, tuple | list):
        raise UsageError(f"{what}: give the VLANs as a tuple of VlanTag, not {vlans!r}")
    for tag in vlans:
        if not isinstance(tag, VlanTag):
            raise UsageError(
                f"{what}: each VLAN is a VlanTag(tpid, tci), e.g. VlanTag(0x8100, 10), not {tag!r}"
            )
        if tag.tpid not in _VLAN_TPIDS or not 0 <= tag.tci <= 0xFFFF:
            raise UsageError(
                f"{what}: {tag!r} needs TPID 0x8100 or 0x88A8 and a TCI of 0 .. 0xFFFF"
            )
    if len(vlans) > MAX_VLANS:
        raise UsageError(f"{what}: at most {MAX_VLANS} VLAN tags, not {len(vlans)}")
    return tuple(vlans)


VlanKey: TypeAlias = tuple[tuple[int, int], ...]
"""A VLAN stack as a switch or the SAD compares it: (TPID, VID) per tag, outermost first."""


def vlan_key(vlans: tuple[VlanTag, ...]) -> VlanKey:
    """The (TPID, VID) pairs of a VLAN stack; priority and DEI do not name a VLAN."""
    if not vlans:
        return ()
    return tuple([(tag.tpid, tag.vid) for tag in vlans])


@dataclass(frozen=True, slots=True)
class EthernetHeader:
    """An Ethernet header; `ethertype` is the innermost one, after every tag."""

    dst: bytes
    src: bytes
    ethertype: int
    vlans: tuple[VlanTag, ...] = ()
    metadata: int | None = None

    @property
    def header_len(self) -> int:
        """Bytes from the destination MAC to the end of the innermost EtherType."""
        meta = 0 if self.metadata is None else _META.size
        return 2 * _MAC_LEN + meta + _TAG.size * len(self.vlans) + _U16.size


def check_ethertype(value: int, what: str) -> int:
    """`value` if it is an EtherType (16 bits); UsageError naming `what` if it is not."""
    if not 0 <= value <= 0xFFFF:
        raise UsageError(f"{what} must be an EtherType, 0 .. 0xFFFF, not {value:#x}")
    return value


EthernetFields: TypeAlias = tuple[bytes, bytes, int, tuple[VlanTag, ...], int | None, int]
"""What `ethernet_fields` returns: dst, src, ethertype, vlans, metadata, header length."""


def ethernet_fields(
    buf: bytes | memoryview, meta_ethertype: int = EtherType.META
) -> EthernetFields:
    """`parse_ethernet` as a tuple, for the data path: the header's fields in the order of
    `EthernetHeader` and then its length, without building the header object."""
    size = len(buf)
    if size < _MIN_LEN:
        # IEEE 802.3: two MAC addresses and an EtherType
        raise ParseError(_LAYER, f"frame of {size} bytes is shorter than 14", size)
    dst, src, ethertype = _L2.unpack_from(buf)
    offset = 2 * _MAC_LEN
    metadata: int | None = None
    if ethertype == meta_ethertype:
        # spec 3: META EtherType || u32 metadata, outermost tag only
        if size < offset + _META.size + _U16.size:
            raise ParseError(_LAYER, "truncated metadata tag", offset)
        _, metadata, ethertype = _META_TAG.unpack_from(buf, offset)
        offset += _META.size
    vlans: tuple[VlanTag, ...] = ()
    while ethertype in _VLAN_TPIDS:
        if len(vlans) == MAX_VLANS:
            # spec 3: at most two VLAN tags (802.1ad Q-in-Q)
            raise ParseError(_LAYER, f"more than {MAX_VLANS} VLAN tags", offset)
        if size < offset + _TAG.size + _U16.size:
            # IEEE 802.1Q / 802.1ad: TPID || TCI, then the next EtherType
            raise ParseError(_LAYER, "truncated VLAN tag", offset)
        tpid, tci, ethertype = _VLAN_TAG.unpack_from(buf, offset)
        vlans += (VlanTag(tpid, tci),)
        offset += _TAG.size
    return dst, src, ethertype, vlans, metadata, offset + _U16.size


def parse_ethernet(buf: bytes | memoryview, meta_ethertype: int = EtherType.META) -> EthernetHeader:
    """Parse the Ethernet header at the start of `buf`.

    A tag with `meta_ethertype` is the metadata tag only when it is the outermost tag; VLAN
    tags (TPID 0x8100 or 0x88A8) may follow it, at most two.
    """
    dst, src, ethertype, vlans, metadata, _ = ethernet_fields(buf, meta_ethertype)
    return EthernetHeader(dst, src, ethertype, vlans, metadata)


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise UsageError(f"{name} {value:#x} does not fit 16 bits; use 0..0xffff")


def build_ethernet(h: EthernetHeader, meta_ethertype: int = EtherType.META) -> bytes:
    """Encode the header only (MACs, metadata tag, VLAN tags, EtherType)."""
    for name, mac in (("dst", h.dst), ("src", h.src)):
        if len(mac) != _MAC_LEN:
            raise UsageError(f"{name} MAC has {len(mac)} bytes; give exactly 6")
    if len(h.vlans) > MAX_VLANS:
        raise UsageError(f"{len(h.vlans)} VLAN tags given; at most {MAX_VLANS} are allowed")
    _check_u16("ethertype", h.ethertype)
    _check_u16("metadata EtherType", meta_ethertype)
    parts = [h.dst, h.src]
    if h.metadata is not None:
        if not 0 <= h.metadata <= 0xFFFF_FFFF:
            raise UsageError(f"metadata {h.metadata:#x} does not fit 32 bits")
        parts.append(_META.pack(meta_ethertype, h.metadata))
    for tag in h.vlans:
        if tag.tpid not in _VLAN_TPIDS:
            raise UsageError(f"VLAN TPID {tag.tpid:#06x} is not 0x8100 or 0x88a8")
        _check_u16("VLAN TCI", tag.tci)
        parts.append(_TAG.pack(tag.tpid, tag.tci))
    parts.append(_U16.pack(h.ethertype))
    return b"".join(parts)
