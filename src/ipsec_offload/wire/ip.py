"""IPv4 and IPv6 headers, IPv6 extension-header walking and the Internet checksum."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from ipsec_offload.errors import ParseError, UsageError

__all__ = [
    "IPV4_MIN_HEADER_LEN",
    "IPV6_HEADER_LEN",
    "IPv4Fields",
    "IPv4Header",
    "IPv6Fields",
    "IPv6Header",
    "IpProto",
    "Ipv4Flags",
    "build_ipv4",
    "build_ipv6",
    "internet_checksum",
    "ipv4_checksum",
    "ipv4_fields",
    "ipv4_header",
    "ipv4_with_length",
    "ipv6_fields",
    "ipv6_upper_layer",
    "ipv6_with_length",
    "parse_ipv4",
    "parse_ipv6",
    "reference_internet_checksum",
]

IPV4_MIN_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
_IPV4_MAX_HEADER_LEN = 60
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_EXT = struct.Struct("!BB")
_U16 = struct.Struct("!H")
_FRAGMENT_OFFSET_MASK = 0x1FFF
_DEFAULT_TTL = 64
_DF = 0x4000


class IpProto(IntEnum):
    """IP protocol / IPv6 next-header numbers the model knows."""

    HOPOPT = 0
    ICMP = 1
    IPIP = 4
    TCP = 6
    UDP = 17
    IPV6 = 41
    ROUTING = 43
    FRAGMENT = 44
    ESP = 50
    ICMPV6 = 58
    NONE = 59
    DSTOPTS = 60


class Ipv4Flags(IntFlag):
    """The flag bits of the IPv4 flags/fragment-offset word (RFC 791)."""

    RESERVED = 0x8000
    DF = 0x4000
    MF = 0x2000


_EXTENSION_HEADERS = frozenset((IpProto.HOPOPT, IpProto.ROUTING, IpProto.DSTOPTS))


def reference_internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 checksum: the ones' complement of the ones' complement sum of 16-bit words.

    An odd length is padded with one zero byte. Over data that already holds a correct
    checksum the result is 0. `internet_checksum` is this, compiled where the package was
    built with a C compiler (`_checksum.c`).
    """
    value = int.from_bytes(data, "big")
    if len(data) % 2:
        value <<= 8
    # 2**16 == 1 (mod 0xffff): the folded ones' complement sum is the value modulo 0xffff,
    # except that a non-zero sum is written 0xffff rather than 0.
    total = value % 0xFFFF
    if total == 0 and value:
        total = 0xFFFF
    return ~total & 0xFFFF


try:
    from ipsec_offload.wire._checksum import internet_checksum
except ImportError:  # built without a C compiler
    internet_checksum = reference_internet_checksum


def ipv4_checksum(header: bytes | bytearray | memoryview) -> int:
    """RFC 1071 checksum of an IPv4 header; 0 when the header's checksum field is correct."""
    return internet_checksum(header)


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """An IPv4 header (RFC 791); `checksum` is as read, `build_ipv4` computes its own."""

    src: bytes
    dst: bytes
    protocol: int
    total_length: int
    identification: int = 0
    ttl: int = _DEFAULT_TTL
    tos: int = 0
    flags_fragment: int = _DF
    options: bytes = b""
    checksum: int = 0

    @property
    def header_len(self) -> int:
        """20 bytes plus the options."""
        return IPV4_MIN_HEADER_LEN + len(self.options)

    @property
    def is_fragment(self) -> bool:
        """True for any fragment: MF set or a non-zero fragment offset."""
        return bool(self.flags_fragment & (Ipv4Flags.MF | _FRAGMENT_OFFSET_MASK))


IPv4Fields = tuple[int, int, int, int, int, int, int, int, bytes, bytes]
"""What `ipv4_fields` returns: header length, TOS, total length, identification, flags and
fragment offset, TTL, protocol, checksum, source, destination."""


def ipv4_fields(
    buf: bytes | memoryview, offset: int = 0, verify_checksum: bool = True
) -> IPv4Fields:
    """`parse_ipv4` of the header at `offset` as a tuple, for the data path: the fields of
    the fixed header (the header length in place of version and IHL), without the options
    and without building the header object. `buf` must hold the whole packet."""
    size = len(buf) - offset
    if size < IPV4_MIN_HEADER_LEN:
        # RFC 791: the fixed header is 20 bytes
        raise ParseError("ipv4", f"{size} bytes is shorter than the 20-byte header", size)
    (ver_ihl, tos, total_length, ident, flags_fragment, ttl, proto, checksum, src, dst) = (
        _IPV4.unpack_from(buf, offset)
    )
    if ver_ihl >> 4 != 4:
        # RFC 791: version 4
        raise ParseError("ipv4", f"version is {ver_ihl >> 4}, not 4", 0)
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < IPV4_MIN_HEADER_LEN:
        # RFC 791: IHL is at least 5 words
        raise ParseError("ipv4", f"IHL {header_len // 4} is below 5", 0)
    if header_len > size:
        # RFC 791: options fill IHL words
        raise ParseError("ipv4", f"header of {header_len} bytes is truncated", size)
    if not header_len <= total_length <= size:
        # RFC 791: total length covers header and data
        raise ParseError(
            "ipv4", f"total length {total_length} outside {header_len}..{size} bytes", 2
        )
    # RFC 791 / RFC 1071: a header whose checksum is right sums to 0xffff in one's complement,
    # so its value is a multiple of 0xffff (2**16 == 1 mod 0xffff; the version makes it non-0)
    if verify_checksum and int.from_bytes(buf[offset : offset + header_len], "big") % 0xFFFF:
        raise ParseError("ipv4", f"bad header checksum {checksum:#06x}", 10)
    return (header_len, tos, total_length, ident, flags_fragment, ttl, proto, checksum, src, dst)


def parse_ipv4(buf: bytes | memoryview, verify_checksum: bool = True) -> IPv4Header:
    """Parse the IPv4 header at the start of `buf`, which must hold the whole packet."""
    (header_len, tos, total_length, ident, flags_fragment, ttl, proto, checksum, src, dst) = (
        ipv4_fields(buf, 0, verify_checksum)
    )
    return IPv4Header(
        src=src,
        dst=dst,
        protocol=proto,
        total_length=total_length,
        identification=ident,
        ttl=ttl,
        tos=tos,
        flags_fragment=flags_fragment,
        options=bytes(buf[IPV4_MIN_HEADER_LEN:header_len]),
        checksum=checksum,
    )


def ipv4_with_length(header: bytes | memoryview, total_length: int) -> bytes:
    """The IPv4 `header` (options included), whose checksum is right, with another total
    length: the bytes of `build_ipv4(replace(parse_ipv4(...), total_length=...))` without
    the objects, for the data path.

    The checksum is updated (RFC 1624), not recomputed: a right checksum makes the header's
    one's complement sum 0xffff, so the new checksum follows from the old one and the change
    of length alone. A wrong checksum stays wrong (`ipv4_fields` finds it first).
    """
    (ver_ihl, tos, old_length, ident, flags_fragment, ttl, proto, old_checksum, src, dst) = (
        _IPV4.unpack_from(header)
    )
    header_len = (ver_ihl & 0x0F) * 4
    if len(header) != header_len or not header_len <= total_length <= 0xFFFF:
        raise UsageError(
            f"IPv4 header of {len(header)} bytes (IHL says {header_len}) and total length"
            f" {total_length}: give the whole header and {header_len}..65535"
        )
    # Words add modulo 0xffff (2**16 == 1): the old sum is 0, the new one lacks the old
    # checksum and length and has the new length; the new checksum is its negation, the
    # residue 0..0xfffe that build_ipv4 writes.
    checksum = (old_checksum + old_length - total_length) % 0xFFFF
    fixed = _IPV4.pack(
        ver_ihl, tos, total_length, ident, flags_fragment, ttl, proto, checksum, src, dst
    )
    return fixed + header[IPV4_MIN_HEADER_LEN:] if header_len > IPV4_MIN_HEADER_LEN else fixed


def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise UsageError(f"{name} {value} does not fit {bits} bits; use 0..{(1 << bits) - 1}")


def build_ipv4(h: IPv4Header) -> bytes:
    """Encode the header (options included) with a freshly computed checksum."""
    for name, addr in (("src", h.src), ("dst", h.dst)):
        if len(addr) != 4:
            raise UsageError(f"IPv4 {name} address has {len(addr)} bytes; give exactly 4")
    if len(h.options) % 4 or h.header_len > _IPV4_MAX_HEADER_LEN:
        raise UsageError(
            f"IPv4 options of {len(h.options)} bytes; pad them to a multiple of 4, at most 40"
        )
    _check_range("IPv4 protocol", h.protocol, 8)
    _check_range("IPv4 TTL", h.ttl, 8)
    _check_range("IPv4 TOS", h.tos, 8)
    _check_range("IPv4 identification", h.identification, 16)
    _check_range("IPv4 flags/fragment", h.flags_fragment, 16)
    if not h.header_len <= h.total_length <= 0xFFFF:
        raise UsageError(
            f"IPv4 total length {h.total_length}; use {h.header_len}..65535 (header included)"
        )
    fields = (h.tos, h.total_length, h.identification, h.flags_fragment, h.ttl, h.protocol)
    return _ipv4_bytes(*fields, h.src, h.dst, h.options)


def ipv4_header(
    src: bytes, dst: bytes, protocol: int, total_length: int, identification: int = 0
) -> bytes:
    """`build_ipv4(IPv4Header(src, dst, protocol, total_length, identification))` without the
    object, for the data path: a 20-byte header with the default TTL, TOS and flags."""
    if (
        len(src) != 4
        or len(dst) != 4
        or not 0 <= protocol <= 0xFF
        or not 0 <= identification <= 0xFFFF
        or not IPV4_MIN_HEADER_LEN <= total_length <= 0xFFFF
    ):
        # build_ipv4 says which field is wrong
        return build_ipv4(IPv4Header(src, dst, protocol, total_length, identification))
    return _ipv4_bytes(0, total_length, identification, _DF, _DEFAULT_TTL, protocol, src, dst)


def _ipv4_bytes(
    tos: int,
    total_length: int,
    identification: int,
    flags_fragment: int,
    ttl: int,
    protocol: int,
    src: bytes,
    dst: bytes,
    options: bytes = b"",
) -> bytes:
    """The checked fields of an IPv4 header encoded, with their checksum."""
    ver_ihl = 0x40 | (IPV4_MIN_HEADER_LEN + len(options)) // 4
    # RFC 1071 without the bytes: the header's 16-bit words (checksum 0) summed modulo 0xffff,
    # where 2**16 == 1 lets an address or option count whole; the version makes the sum
    # non-zero, which internet_checksum writes 0xffff when it is 0 modulo 0xffff.
    words = (ver_ihl << 8 | tos) + total_length + identification + flags_fragment
    words += (ttl << 8 | protocol) + int.from_bytes(src) + int.from_bytes(dst)
    words += int.from_bytes(options)
    checksum = 0xFFFF - (words % 0xFFFF or 0xFFFF)
    fields = (ver_ihl, tos, total_length, identification, flags_fragment, ttl, protocol)
    return _IPV4.pack(*fields, checksum, src, dst) + options


@dataclass(frozen=True, slots=True)
class IPv6Header:
    """The fixed 40-byte IPv6 header (RFC 8200 section 3)."""

    src: bytes
    dst: bytes
    next_header: int
    payload_length: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0


IPv6Fields = tuple[int, int, int, int, bytes, bytes]
"""What `ipv6_fields` returns: the first word (version, traffic class, flow label), payload
length, next header, hop limit, source, destination."""


def ipv6_fields(buf: bytes | memoryview, offset: int = 0) -> IPv6Fields:
    """`parse_ipv6` of the header at `offset` as a tuple, for the data path. `buf` must hold
    the whole packet."""
    size = len(buf) - offset
    if size < IPV6_HEADER_LEN:
        # RFC 8200 3: the fixed header is 40 bytes
        raise ParseError("ipv6", f"{size} bytes is shorter than the 40-byte header", size)
    word, payload_length, next_header, hop_limit, src, dst = _IPV6.unpack_from(buf, offset)
    if word >> 28 != 6:
        # RFC 8200 3: version 6
        raise ParseError("ipv6", f"version is {word >> 28}, not 6", 0)
    if payload_length > size - IPV6_HEADER_LEN:
        # RFC 8200 3: payload length counts the bytes after the fixed header
        raise ParseError(
            "ipv6", f"payload length {payload_length} exceeds the {size - 40} bytes present", 4
        )
    return word, payload_length, next_header, hop_limit, src, dst


def parse_ipv6(buf: bytes | memoryview) -> IPv6Header:
    """Parse the IPv6 fixed header at the start of `buf`, which must hold the whole packet."""
    word, payload_length, next_header, hop_limit, src, dst = ipv6_fields(buf)
    return IPv6Header(
        src=src,
        dst=dst,
        next_header=next_header,
        payload_length=payload_length,
        hop_limit=hop_limit,
        traffic_class=(word >> 20) & 0xFF,
        flow_label=word & 0xFFFFF,
    )


def build_ipv6(h: IPv6Header) -> bytes:
    """Encode the fixed 40-byte header."""
    for name, addr in (("src", h.src), ("dst", h.dst)):
        if len(addr) != 16:
            raise UsageError(f"IPv6 {name} address has {len(addr)} bytes; give exactly 16")
    _check_range("IPv6 next header", h.next_header, 8)
    _check_range("IPv6 payload length", h.payload_length, 16)
    _check_range("IPv6 hop limit", h.hop_limit, 8)
    _check_range("IPv6 traffic class", h.traffic_class, 8)
    _check_range("IPv6 flow label", h.flow_label, 20)
    word = 6 << 28 | h.traffic_class << 20 | h.flow_label
    return _IPV6.pack(word, h.payload_length, h.next_header, h.hop_limit, h.src, h.dst)


def ipv6_with_length(header: bytes | memoryview, payload_length: int) -> bytes:
    """The IPv6 `header` (extension headers may follow the fixed one) with another payload
    length, for the data path: IPv6 has no header checksum."""
    _check_range("IPv6 payload length", payload_length, 16)
    return b"".join((header[:4], _U16.pack(payload_length), header[6:]))


def ipv6_upper_layer(buf: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """Walk hop-by-hop, routing and destination-options headers of the IPv6 packet at
    `offset` in `buf`.

    Returns (protocol, offset from the start of the IPv6 header) of the first header that is
    none of those three; a fragment header (44) is returned as it is.
    """
    _, payload_length, proto, _, _, _ = ipv6_fields(buf, offset)
    end = IPV6_HEADER_LEN + payload_length
    position = IPV6_HEADER_LEN
    while proto in _EXTENSION_HEADERS:
        if proto == IpProto.HOPOPT and position != IPV6_HEADER_LEN:
            # RFC 8200 4.1: hop-by-hop options only right after the fixed header
            raise ParseError("ipv6", "hop-by-hop options header not first", position)
        if position + _EXT.size > end:
            # RFC 8200 4.3-4.6: next header u8, length u8
            raise ParseError("ipv6", f"truncated extension header {proto}", position)
        next_proto, units = _EXT.unpack_from(buf, offset + position)
        length = (units + 1) * 8
        if position + length > end:
            # RFC 8200 4.3-4.6: length in 8-octet units, not counting the first 8
            raise ParseError("ipv6", f"extension header {proto} of {length} bytes", position)
        proto = next_proto
        position += length
    return proto, position
