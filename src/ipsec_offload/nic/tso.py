"""TSO: the NIC cuts one large ESP-offload send into segments (spec section 7).

Theory of operation. A Tx descriptor with a non-zero MSS carries one large send that the stack
built for an offloaded SA,

    Eth | IP | ESP header | IV | L4 header | payload  (as long as the IP length field allows)

with the Tx metadata word in its L2TAG fields. The FVL learns the layout of a TSO send from its
TSO context descriptor; the model learns it from the frame and the metadata word, which say the
same: L3_OFFSET and ESP_OFFSET locate the IP and ESP headers (checked against the frame, never
trusted) and NEXT_HEADER names the L4 protocol after the IV. TCP (6) and UDP (17) are
segmented; anything else, and any TSO request without OFFLOAD=1 metadata, is refused (the
caller counts the drop by its `TsoDrop` reason).

The payload after the L4 header is cut into pieces of MSS bytes (the MSS counts L4 payload, the
L4 header is replicated on every segment). Each segment gets

- the Ethernet header, the IP header (IPv4 options or IPv6 extension headers included), the ESP
  header and the IV of the large send, copied exactly: the same sequence number and the same
  IV on every segment. The agent's IVDB (spec section 7) gives each its own fresh number;
- IPv4: its total length, identification (the large send's plus the segment's index) and
  header checksum; IPv6: its payload length;
- TCP: the header with the sequence number advanced by the payload bytes before the segment,
  FIN and PSH kept only on the last segment, CWR only on the first, and the checksum over the
  segment's pseudo-header, header and payload;
- UDP (USO, Linux's UDP_SEGMENT): the header with the segment's length and checksum, so every
  segment is a datagram of its own;
- the metadata word, which the NIC inserts as the tag of every segment.

Lengths and checksums of the large send are recomputed, not checked (a stack hands them down
unfinished). The functions are pure: bytes in, segments or the reason for a drop out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.esp import ESP_HEADER_LEN, ESP_IV_LEN
from ipsec_offload.wire.ethernet import EtherType, parse_ethernet
from ipsec_offload.wire.ip import (
    IPV6_HEADER_LEN,
    IpProto,
    IPv4Header,
    IPv6Header,
    build_ipv4,
    build_ipv6,
    ipv6_upper_layer,
    parse_ipv4,
    parse_ipv6,
)
from ipsec_offload.wire.metadata import TxMetadata, parse_tx_metadata
from ipsec_offload.wire.transport import (
    UDP_HEADER_LEN,
    TcpFlags,
    TcpHeader,
    UdpHeader,
    build_tcp,
    build_udp,
    parse_tcp,
    parse_udp,
)

__all__ = ["MAX_MSS", "L4Header", "TsoDrop", "segment_l4", "tcp_segment_flags", "tso_segment"]

MAX_MSS = 0xFFFF
"""The largest MSS a Tx descriptor can carry in the model (a 16-bit field)."""

_NO_METADATA = -1
_SEQ_MASK = 0xFFFF_FFFF
_IP_ID_MASK = 0xFFFF
_FIRST_ONLY = TcpFlags.CWR
_LAST_ONLY = TcpFlags.FIN | TcpFlags.PSH

L4Header = TcpHeader | UdpHeader
"""The L4 headers TSO replicates."""


class TsoDrop(IntEnum):
    """Why the NIC refused a TSO descriptor (nothing of it is sent)."""

    BAD_MSS = 1
    """The MSS is outside 1 .. MAX_MSS."""
    NO_OFFLOAD = 2
    """No Tx metadata with OFFLOAD=1 (no L2TAG word, OFFLOAD=0, or the VSI's port tag): the
    model segments ESP-offload sends only."""
    BAD_METADATA = 3
    """The metadata word has reserved bits set (spec section 3)."""
    BAD_OFFSETS = 4
    """L3_OFFSET or ESP_OFFSET disagrees with the frame."""
    MALFORMED = 5
    """The Ethernet, IP, ESP or L4 headers do not parse, the IP packet is not ESP or is a
    fragment, or the UDP length disagrees with the IP length."""
    UNSUPPORTED_L4 = 6
    """NEXT_HEADER is neither TCP nor UDP (tunnel-mode sends are segmented by the stack)."""


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the parts of a large send are, as offsets in the frame."""

    ip: IPv4Header | IPv6Header
    l3: int
    esp: int
    l4: int
    end: int


def tcp_segment_flags(flags: TcpFlags, first: bool, last: bool) -> TcpFlags:
    """The TCP flags of one segment of a larger send: FIN and PSH only on the last segment,
    CWR only on the first, the others on every segment."""
    if not first:
        flags &= ~_FIRST_ONLY
    if not last:
        flags &= ~_LAST_ONLY
    return flags


def segment_l4(
    header: L4Header, payload: bytes | memoryview, mss: int, src: bytes, dst: bytes
) -> list[bytes]:
    """Cut `payload` into pieces of `mss` bytes, each behind its own copy of `header`.

    TCP headers get the sequence number and flags of their place (`tcp_segment_flags`), UDP
    headers their length; every segment's checksum is computed with the pseudo-header of
    `src` and `dst`. An empty payload gives one segment. The NIC's TSO and the stack's
    software segmentation both use this, so they cut alike.
    """
    if mss < 1:
        raise UsageError(f"MSS {mss}: give the payload bytes per segment, at least 1")
    count = max(1, -(-len(payload) // mss))
    segments = []
    for index in range(count):
        chunk = payload[index * mss : (index + 1) * mss]
        if isinstance(header, TcpHeader):
            fixed = replace(
                header,
                seq=(header.seq + index * mss) & _SEQ_MASK,
                flags=tcp_segment_flags(header.flags, index == 0, index == count - 1),
            )
            segments.append(build_tcp(fixed, chunk, src, dst))
        else:
            segments.append(build_udp(header, chunk, src, dst))
    return segments


def tso_segment(frame: bytes, word: int | None, mss: int) -> list[bytes] | TsoDrop:
    """The segments of one large send (`frame` without metadata tag, `word` the metadata word
    the NIC will tag each segment with), or why the NIC refuses it."""
    if not 1 <= mss <= MAX_MSS:
        return TsoDrop.BAD_MSS
    if word is None:
        return TsoDrop.NO_OFFLOAD
    try:
        meta = parse_tx_metadata(word)
    except ParseError:
        return TsoDrop.BAD_METADATA
    if not meta.offload:
        return TsoDrop.NO_OFFLOAD
    layout = _locate(frame, meta)
    if isinstance(layout, TsoDrop):
        return layout
    body = memoryview(frame)[layout.l4 : layout.end]
    header: L4Header
    try:
        if meta.next_header == IpProto.TCP:
            header = parse_tcp(body)
            start = header.header_len
        elif meta.next_header == IpProto.UDP:
            header = parse_udp(body)
            start = UDP_HEADER_LEN
            if header.length != len(body):
                return TsoDrop.MALFORMED
        else:
            return TsoDrop.UNSUPPORTED_L4
    except ParseError:
        return TsoDrop.MALFORMED
    ip = layout.ip
    l2 = frame[: layout.l3]
    fixed_len = ip.header_len if isinstance(ip, IPv4Header) else IPV6_HEADER_LEN
    extensions = frame[layout.l3 + fixed_len : layout.esp]
    esp_iv = frame[layout.esp : layout.l4]
    frames = []
    for index, l4 in enumerate(segment_l4(header, body[start:], mss, ip.src, ip.dst)):
        ip_len = layout.l4 - layout.l3 + len(l4)
        frames.append(b"".join((l2, _ip_header(ip, index, ip_len), extensions, esp_iv, l4)))
    return frames


def _locate(frame: bytes, meta: TxMetadata) -> _Layout | TsoDrop:
    """Find IP, ESP and L4 headers, checking the metadata's offsets against them."""
    try:
        eth = parse_ethernet(frame, _NO_METADATA)
        l3 = eth.header_len
        if meta.l3_offset != l3:
            return TsoDrop.BAD_OFFSETS
        mv = memoryview(frame)[l3:]
        ip: IPv4Header | IPv6Header
        if eth.ethertype == EtherType.IPV4:
            ip = parse_ipv4(mv, verify_checksum=False)
            if ip.is_fragment:
                return TsoDrop.MALFORMED
            protocol, esp, end = ip.protocol, ip.header_len, ip.total_length
        elif eth.ethertype == EtherType.IPV6:
            ip = parse_ipv6(mv)
            protocol, esp = ipv6_upper_layer(mv)
            end = IPV6_HEADER_LEN + ip.payload_length
        else:
            return TsoDrop.MALFORMED
    except ParseError:
        return TsoDrop.MALFORMED
    if protocol != IpProto.ESP:
        return TsoDrop.MALFORMED
    if meta.esp_offset * 4 != esp:
        return TsoDrop.BAD_OFFSETS
    l4 = esp + ESP_HEADER_LEN + ESP_IV_LEN
    if l4 > end:
        return TsoDrop.MALFORMED
    return _Layout(ip, l3, l3 + esp, l3 + l4, l3 + end)


def _ip_header(ip: IPv4Header | IPv6Header, index: int, ip_len: int) -> bytes:
    """The fixed IP header of segment `index`, `ip_len` bytes long with its IP header."""
    if isinstance(ip, IPv4Header):
        ident = (ip.identification + index) & _IP_ID_MASK
        return build_ipv4(replace(ip, total_length=ip_len, identification=ident))
    return build_ipv6(replace(ip, payload_length=ip_len - IPV6_HEADER_LEN))
