"""UDP, ICMP/ICMPv6 echo and TCP headers with their pseudo-header checksums."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.ip import IpProto, internet_checksum

__all__ = [
    "ICMP_ECHO_LEN",
    "TCP_MIN_HEADER_LEN",
    "UDP_HEADER_LEN",
    "IcmpEcho",
    "IcmpType",
    "Icmpv6Type",
    "TcpFlags",
    "TcpHeader",
    "UdpHeader",
    "build_icmp_echo",
    "build_tcp",
    "build_udp",
    "parse_icmp_echo",
    "parse_tcp",
    "parse_udp",
    "pseudo_header",
    "transport_checksum",
    "udp_fields",
    "verify_transport_checksum",
]

UDP_HEADER_LEN = 8
ICMP_ECHO_LEN = 8
TCP_MIN_HEADER_LEN = 20
_TCP_MAX_HEADER_LEN = 60
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")
_TCP = struct.Struct("!HHIIHHHH")
_PSEUDO4 = struct.Struct("!4s4sBBH")
_PSEUDO6 = struct.Struct("!16s16sI3xB")
_CHECKSUM = struct.Struct("!H")
_UDP_CHECKSUM_AT = 6
_ICMP_CHECKSUM_AT = 2
_TCP_CHECKSUM_AT = 16
_TCP_FLAGS_MASK = 0x0FFF
# Enum members bound once: reading one off its class per packet costs a descriptor call.
_PROTO_ICMP, _PROTO_ICMPV6 = IpProto.ICMP, IpProto.ICMPV6
_PROTO_TCP, _PROTO_UDP = IpProto.TCP, IpProto.UDP


class IcmpType(IntEnum):
    """ICMPv4 echo types (RFC 792)."""

    ECHO_REPLY = 0
    ECHO_REQUEST = 8


class Icmpv6Type(IntEnum):
    """ICMPv6 echo types (RFC 4443 section 4)."""

    ECHO_REQUEST = 128
    ECHO_REPLY = 129


_ECHO_TYPES_V4 = frozenset(IcmpType)
_ECHO_TYPES_V6 = frozenset(Icmpv6Type)
_ECHO_TYPES = _ECHO_TYPES_V4 | _ECHO_TYPES_V6


class TcpFlags(IntFlag):
    """The low 12 bits of TCP header word 13-14 (RFC 9293 3.1, RFC 3168, RFC 3540)."""

    FIN = 0x001
    SYN = 0x002
    RST = 0x004
    PSH = 0x008
    ACK = 0x010
    URG = 0x020
    ECE = 0x040
    CWR = 0x080
    NS = 0x100


_NO_FLAGS = TcpFlags(0)


@dataclass(frozen=True, slots=True)
class UdpHeader:
    """A UDP header (RFC 768); `build_udp` computes length and checksum."""

    src_port: int
    dst_port: int
    length: int = 0
    checksum: int = 0


@dataclass(frozen=True, slots=True)
class IcmpEcho:
    """An ICMP or ICMPv6 echo request/reply header; `build_icmp_echo` computes the checksum."""

    type: int
    code: int = 0
    ident: int = 0
    seq: int = 0
    checksum: int = 0


@dataclass(frozen=True, slots=True)
class TcpHeader:
    """A TCP header (RFC 9293 3.1); the data offset follows from `options`."""

    src_port: int
    dst_port: int
    seq: int = 0
    ack: int = 0
    flags: TcpFlags = _NO_FLAGS
    window: int = 0xFFFF
    urgent: int = 0
    options: bytes = b""
    checksum: int = 0

    @property
    def header_len(self) -> int:
        """20 bytes plus the options."""
        return TCP_MIN_HEADER_LEN + len(self.options)


def _check_addresses(src: bytes, dst: bytes) -> None:
    if len(src) not in (4, 16) or len(src) != len(dst):
        raise UsageError(
            f"addresses of {len(src)} and {len(dst)} bytes; give two IPv4 (4) or two IPv6 (16)"
        )


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The IPv4 (RFC 768) or IPv6 (RFC 8200 8.1) pseudo-header, chosen by address length."""
    _check_addresses(src, dst)
    if not 0 <= proto <= 0xFF:
        raise UsageError(f"protocol {proto} does not fit 8 bits")
    limit = 0xFFFF if len(src) == 4 else 0xFFFF_FFFF
    if not 0 <= length <= limit:
        raise UsageError(f"upper-layer length {length}; use 0..{limit}")
    if len(src) == 4:
        return _PSEUDO4.pack(src, dst, 0, proto, length)
    return _PSEUDO6.pack(src, dst, length, proto)


def transport_checksum(
    src: bytes, dst: bytes, proto: int, segment: bytes | bytearray | memoryview
) -> int:
    """Internet checksum of `segment` (header and payload) with its pseudo-header.

    ICMP (protocol 1) has no pseudo-header (RFC 792). With the checksum field zeroed the result
    is the value to store; over a segment with a correct checksum it is 0.
    """
    if proto == _PROTO_ICMP:
        _check_addresses(src, dst)
        return internet_checksum(segment)
    return internet_checksum(pseudo_header(src, dst, proto, len(segment)) + bytes(segment))


def verify_transport_checksum(
    src: bytes, dst: bytes, proto: int, segment: bytes | bytearray | memoryview
) -> bool:
    """True when the segment's checksum is correct, or absent (zero) in UDP over IPv4."""
    if proto == _PROTO_UDP and len(src) == 4 and len(segment) >= UDP_HEADER_LEN:
        (stored,) = _CHECKSUM.unpack_from(segment, _UDP_CHECKSUM_AT)
        if stored == 0:
            # RFC 768: zero means the sender computed no checksum
            _check_addresses(src, dst)
            return True
    return transport_checksum(src, dst, proto, segment) == 0


def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise UsageError(f"{name} {value} does not fit {bits} bits; use 0..{(1 << bits) - 1}")


def _with_checksum(
    header: bytes, payload: bytes | memoryview, src: bytes, dst: bytes, proto: int, at: int
) -> bytes:
    segment = bytearray(header)
    segment += payload
    checksum = transport_checksum(src, dst, proto, segment)
    if proto == _PROTO_UDP and checksum == 0:
        # RFC 768: a computed zero is sent as all ones
        checksum = 0xFFFF
    _CHECKSUM.pack_into(segment, at, checksum)
    return bytes(segment)


def udp_fields(buf: bytes | memoryview) -> tuple[int, int, int, int]:
    """`parse_udp` as a tuple, for the data path: (source port, destination port, length,
    checksum)."""
    size = len(buf)
    if size < UDP_HEADER_LEN:
        # RFC 768: the header is 8 bytes
        raise ParseError("udp", f"{size} bytes is shorter than the 8-byte header", size)
    src_port, dst_port, length, checksum = _UDP.unpack_from(buf)
    if not UDP_HEADER_LEN <= length <= size:
        # RFC 768: length counts header and data
        raise ParseError("udp", f"length {length} outside 8..{size}", 4)
    return src_port, dst_port, length, checksum


def parse_udp(buf: bytes | memoryview) -> UdpHeader:
    """Parse the UDP header at the start of `buf` (the whole datagram, possibly padded)."""
    return UdpHeader(*udp_fields(memoryview(buf)))


def build_udp(h: UdpHeader, payload: bytes | memoryview, src: bytes, dst: bytes) -> bytes:
    """Encode header and payload; length and checksum are computed (h's are ignored)."""
    _check_range("UDP source port", h.src_port, 16)
    _check_range("UDP destination port", h.dst_port, 16)
    length = UDP_HEADER_LEN + len(payload)
    if length > 0xFFFF:
        raise UsageError(f"UDP payload of {len(payload)} bytes; at most 65527 fit")
    header = _UDP.pack(h.src_port, h.dst_port, length, 0)
    return _with_checksum(header, payload, src, dst, _PROTO_UDP, _UDP_CHECKSUM_AT)


def parse_icmp_echo(buf: bytes | memoryview) -> IcmpEcho:
    """Parse an ICMP (types 0, 8) or ICMPv6 (types 128, 129) echo header."""
    mv = memoryview(buf)
    size = len(mv)
    if size < ICMP_ECHO_LEN:
        # RFC 792 / RFC 4443 4.1: echo header is 8 bytes
        raise ParseError("icmp", f"{size} bytes is shorter than the 8-byte echo header", size)
    icmp_type, code, checksum, ident, seq = _ICMP.unpack_from(mv)
    if icmp_type not in _ECHO_TYPES:
        # RFC 792 / RFC 4443 4.1: echo types 0, 8, 128, 129
        raise ParseError("icmp", f"type {icmp_type} is not an echo request or reply", 0)
    return IcmpEcho(icmp_type, code, ident, seq, checksum)


def build_icmp_echo(h: IcmpEcho, payload: bytes | memoryview, src: bytes, dst: bytes) -> bytes:
    """Encode an echo message; ICMPv4 for 4-byte addresses, ICMPv6 for 16-byte ones."""
    _check_addresses(src, dst)
    v6 = len(src) == 16
    if h.type not in (_ECHO_TYPES_V6 if v6 else _ECHO_TYPES_V4):
        family = "ICMPv6 128/129" if v6 else "ICMP 0/8"
        raise UsageError(f"echo type {h.type} with these addresses; use {family}")
    _check_range("ICMP code", h.code, 8)
    _check_range("ICMP identifier", h.ident, 16)
    _check_range("ICMP sequence number", h.seq, 16)
    header = _ICMP.pack(h.type, h.code, 0, h.ident, h.seq)
    proto = _PROTO_ICMPV6 if v6 else _PROTO_ICMP
    return _with_checksum(header, payload, src, dst, proto, _ICMP_CHECKSUM_AT)


def parse_tcp(buf: bytes | memoryview) -> TcpHeader:
    """Parse the TCP header (options included) at the start of `buf`."""
    mv = memoryview(buf)
    size = len(mv)
    if size < TCP_MIN_HEADER_LEN:
        # RFC 9293 3.1: the fixed header is 20 bytes
        raise ParseError("tcp", f"{size} bytes is shorter than the 20-byte header", size)
    src_port, dst_port, seq, ack, word, window, checksum, urgent = _TCP.unpack_from(mv)
    header_len = (word >> 12) * 4
    if header_len < TCP_MIN_HEADER_LEN:
        # RFC 9293 3.1: data offset is at least 5 words
        raise ParseError("tcp", f"data offset {header_len // 4} is below 5", 12)
    if header_len > size:
        # RFC 9293 3.1: options fill the data offset
        raise ParseError("tcp", f"header of {header_len} bytes is truncated", size)
    return TcpHeader(
        src_port=src_port,
        dst_port=dst_port,
        seq=seq,
        ack=ack,
        flags=TcpFlags(word & _TCP_FLAGS_MASK),
        window=window,
        urgent=urgent,
        options=bytes(mv[TCP_MIN_HEADER_LEN:header_len]),
        checksum=checksum,
    )


def build_tcp(h: TcpHeader, payload: bytes | memoryview, src: bytes, dst: bytes) -> bytes:
    """Encode header and payload with the checksum computed (h.checksum is ignored)."""
    _check_range("TCP source port", h.src_port, 16)
    _check_range("TCP destination port", h.dst_port, 16)
    _check_range("TCP sequence number", h.seq, 32)
    _check_range("TCP acknowledgment number", h.ack, 32)
    _check_range("TCP flags", h.flags, 12)
    _check_range("TCP window", h.window, 16)
    _check_range("TCP urgent pointer", h.urgent, 16)
    if len(h.options) % 4 or h.header_len > _TCP_MAX_HEADER_LEN:
        raise UsageError(
            f"TCP options of {len(h.options)} bytes; pad them to a multiple of 4, at most 40"
        )
    word = (h.header_len // 4) << 12 | h.flags
    fixed = _TCP.pack(h.src_port, h.dst_port, h.seq, h.ack, word, h.window, 0, h.urgent)
    return _with_checksum(fixed + h.options, payload, src, dst, _PROTO_TCP, _TCP_CHECKSUM_AT)
