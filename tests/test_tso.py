"""nic.tso and the NIC's TSO: one large ESP-offload send in, segments out (spec section 7).

Large sends are built here with the wire codecs, independently of the host stack. Each segment
must carry the large send's Ethernet header, ESP header and IV unchanged, and its own IP
length (and IPv4 identification and checksum) and L4 header (TCP sequence number, flags and
checksum; UDP length and checksum).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_offload.crypto.esp import explicit_iv
from ipsec_offload.errors import UsageError
from ipsec_offload.nic.descriptors import TxDescriptor
from ipsec_offload.nic.nic import Nic, SwitchMode, VsiKind
from ipsec_offload.nic.tso import (
    MAX_MSS,
    TsoDrop,
    segment_l4,
    tcp_segment_flags,
    tso_segment,
)
from ipsec_offload.wire.esp import EspHeader, build_esp
from ipsec_offload.wire.ethernet import (
    EthernetHeader,
    EtherType,
    build_ethernet,
    parse_ethernet,
)
from ipsec_offload.wire.ip import (
    IpProto,
    IPv4Header,
    IPv6Header,
    build_ipv4,
    build_ipv6,
    parse_ipv4,
    parse_ipv6,
)
from ipsec_offload.wire.metadata import TxMetadata, build_tx_metadata, parse_tx_metadata
from ipsec_offload.wire.transport import (
    TcpFlags,
    TcpHeader,
    UdpHeader,
    build_tcp,
    build_udp,
    parse_tcp,
    parse_udp,
    transport_checksum,
)

pytestmark = pytest.mark.usefixtures("nic_path")

SRC_MAC, DST_MAC = bytes.fromhex("020000000100"), bytes.fromhex("020000000200")
ADDRS = {
    4: (ipaddress.ip_address("192.0.2.1").packed, ipaddress.ip_address("192.0.2.2").packed),
    6: (ipaddress.ip_address("2001:db8::1").packed, ipaddress.ip_address("2001:db8::2").packed),
}
SPI, ESP_SEQ = 0x1234, 5
ESP_IV = build_esp(EspHeader(SPI, ESP_SEQ)) + explicit_iv(ESP_SEQ)
L2_LEN = 14
DST_OPTS = bytes((IpProto.ESP, 0, 1, 4, 0, 0, 0, 0))  # next header ESP, PadN of 4
ALL_FLAGS = TcpFlags.CWR | TcpFlags.ECE | TcpFlags.ACK | TcpFlags.PSH | TcpFlags.FIN
MAX_IP = 0xFFFF


def large_send(
    family: int,
    l4: int,
    payload: bytes,
    *,
    seq: int = 1000,
    flags: TcpFlags = ALL_FLAGS,
    ip_id: int = 7,
    tcp_options: bytes = b"",
    ipv6_ext: bytes = b"",
    next_header: int | None = None,
) -> tuple[bytes, int]:
    """A large send as a stack hands it down (frame without tag) and its metadata word."""
    src, dst = ADDRS[family]
    if l4 == IpProto.TCP:
        header = TcpHeader(40000, 80, seq, 77, flags, 4096, options=tcp_options)
        segment = build_tcp(header, payload, src, dst)
    else:
        segment = build_udp(UdpHeader(40000, 53), payload, src, dst)
    body = ESP_IV + segment
    if family == 4:
        ethertype = EtherType.IPV4
        ip = build_ipv4(IPv4Header(src, dst, IpProto.ESP, 20 + len(body), ip_id))
    else:
        ethertype = EtherType.IPV6
        first = IpProto.DSTOPTS if ipv6_ext else IpProto.ESP
        ip = build_ipv6(IPv6Header(src, dst, first, len(ipv6_ext) + len(body))) + ipv6_ext
    eth = build_ethernet(EthernetHeader(DST_MAC, SRC_MAC, ethertype))
    nh = l4 if next_header is None else next_header
    word = build_tx_metadata(TxMetadata(True, nh, L2_LEN, len(ip) // 4))
    return eth + ip + body, word


@dataclass(frozen=True)
class Seg:
    """One segment taken apart."""

    l2: bytes
    ip: IPv4Header | IPv6Header
    ip_len: int
    before_esp: bytes
    esp_iv: bytes
    l4: bytes


def take_apart(frame: bytes, family: int, ext_len: int = 0) -> Seg:
    ip: IPv4Header | IPv6Header
    if family == 4:
        ip = parse_ipv4(frame[L2_LEN:])  # verifies the header checksum
        ip_len, esp = ip.total_length, L2_LEN + ip.header_len
    else:
        ip = parse_ipv6(frame[L2_LEN:])
        ip_len, esp = 40 + ip.payload_length, L2_LEN + 40 + ext_len
    assert L2_LEN + ip_len == len(frame)
    before_esp = frame[L2_LEN + 40 : esp]
    return Seg(frame[:L2_LEN], ip, ip_len, before_esp, frame[esp : esp + 16], frame[esp + 16 :])


def l4_ok(family: int, proto: int, l4: bytes) -> bool:
    src, dst = ADDRS[family]
    return transport_checksum(src, dst, proto, l4) == 0


# -- TCP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("options", [b"", b"\x01\x01\x08\x0a" + bytes(8)])
def test_tcp_segments_copy_esp_and_iv_and_fix_ip_and_tcp(family: int, options: bytes) -> None:
    mss = 1000
    payload = bytes(i * 7 % 251 for i in range(3 * mss + 7))
    frame, word = large_send(family, IpProto.TCP, payload, tcp_options=options)
    segments = tso_segment(frame, word, mss)
    assert isinstance(segments, list)
    assert len(segments) == 4
    data = b""
    for index, raw in enumerate(segments):
        seg = take_apart(raw, family)
        assert seg.l2 == frame[:L2_LEN]
        assert seg.esp_iv == ESP_IV  # replicated exactly: same sequence number, same IV
        if isinstance(seg.ip, IPv4Header):
            assert seg.ip.identification == 7 + index
            assert seg.ip.flags_fragment == 0x4000
        tcp = parse_tcp(seg.l4)
        assert l4_ok(family, IpProto.TCP, seg.l4)
        assert (tcp.src_port, tcp.dst_port, tcp.ack, tcp.window) == (40000, 80, 77, 4096)
        assert tcp.options == options
        assert tcp.seq == 1000 + index * mss
        chunk = seg.l4[tcp.header_len :]
        assert len(chunk) == (mss if index < 3 else 7)
        data += chunk
        expected = TcpFlags.ECE | TcpFlags.ACK
        if index == 0:
            expected |= TcpFlags.CWR
        if index == 3:
            expected |= TcpFlags.FIN | TcpFlags.PSH
        assert tcp.flags == expected
    assert data == payload


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mss", [1, 3, 1001, 1397, 1460])
def test_exactly_one_mss_is_one_segment_equal_to_the_send(family: int, mss: int) -> None:
    payload = bytes(i % 256 for i in range(mss))
    frame, word = large_send(family, IpProto.TCP, payload)
    assert tso_segment(frame, word, mss) == [frame]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mss", [1, 3, 1001, 1397, 1460])
def test_one_byte_over_one_mss_is_two_segments(family: int, mss: int) -> None:
    payload = bytes(i % 253 for i in range(mss + 1))
    frame, word = large_send(family, IpProto.TCP, payload)
    segments = tso_segment(frame, word, mss)
    assert isinstance(segments, list) and len(segments) == 2
    first, last = (parse_tcp(take_apart(s, family).l4) for s in segments)
    assert (first.seq, last.seq) == (1000, 1000 + mss)
    tails = [take_apart(s, family).l4[20:] for s in segments]
    assert [len(t) for t in tails] == [mss, 1]
    assert b"".join(tails) == payload


@pytest.mark.parametrize(("family", "l4"), [(4, 6), (6, 6), (4, 17), (6, 17)])
def test_the_largest_send_the_ip_length_allows(family: int, l4: int) -> None:
    """64 KiB: the large send fills the 16-bit IP length field; MSS 1397 (not a multiple of 4)."""
    l4_header = 20 if l4 == IpProto.TCP else 8
    room = MAX_IP - (20 if family == 4 else 0) - 16 - l4_header
    payload = bytes(i * 31 % 256 for i in range(room))
    frame, word = large_send(family, l4, payload)
    assert len(frame) - L2_LEN == (MAX_IP if family == 4 else MAX_IP + 40)
    mss = 1397
    segments = tso_segment(frame, word, mss)
    assert isinstance(segments, list)
    assert len(segments) == -(-room // mss)
    data = b""
    for raw in segments:
        seg = take_apart(raw, family)
        assert seg.esp_iv == ESP_IV
        assert l4_ok(family, l4, seg.l4)
        data += seg.l4[l4_header:]
        assert len(seg.l4) - l4_header <= mss
    assert data == payload


def test_tcp_sequence_number_and_ipv4_identification_wrap() -> None:
    frame, word = large_send(4, IpProto.TCP, bytes(30), seq=0xFFFF_FFF0, ip_id=0xFFFF)
    segments = tso_segment(frame, word, 10)
    assert isinstance(segments, list)
    parts = [take_apart(s, 4) for s in segments]
    assert [parse_tcp(p.l4).seq for p in parts] == [0xFFFF_FFF0, 0xFFFF_FFFA, 4]
    assert [p.ip.identification for p in parts if isinstance(p.ip, IPv4Header)] == [0xFFFF, 0, 1]


def test_ipv6_extension_headers_before_esp_are_replicated() -> None:
    frame, word = large_send(6, IpProto.TCP, bytes(25), ipv6_ext=DST_OPTS)
    segments = tso_segment(frame, word, 10)
    assert isinstance(segments, list) and len(segments) == 3
    for raw in segments:
        seg = take_apart(raw, 6, len(DST_OPTS))
        assert seg.before_esp == DST_OPTS
        assert seg.esp_iv == ESP_IV
        assert l4_ok(6, IpProto.TCP, seg.l4)


def test_tcp_segment_flags() -> None:
    every = TcpFlags(0x1FF)
    assert tcp_segment_flags(every, True, True) == every
    assert tcp_segment_flags(every, True, False) == every & ~(TcpFlags.FIN | TcpFlags.PSH)
    assert tcp_segment_flags(every, False, True) == every & ~TcpFlags.CWR
    middle = every & ~(TcpFlags.FIN | TcpFlags.PSH | TcpFlags.CWR)
    assert tcp_segment_flags(every, False, False) == middle


# -- UDP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_udp_segments_are_datagrams_of_their_own(family: int) -> None:
    mss = 301
    payload = bytes(i % 256 for i in range(2 * mss + 5))
    frame, word = large_send(family, IpProto.UDP, payload)
    segments = tso_segment(frame, word, mss)
    assert isinstance(segments, list) and len(segments) == 3
    data = b""
    for index, raw in enumerate(segments):
        seg = take_apart(raw, family)
        assert seg.esp_iv == ESP_IV
        if isinstance(seg.ip, IPv4Header):
            assert seg.ip.identification == 7 + index
        udp = parse_udp(seg.l4)
        assert (udp.src_port, udp.dst_port, udp.length) == (40000, 53, len(seg.l4))
        assert l4_ok(family, IpProto.UDP, seg.l4)
        data += seg.l4[8:]
    assert data == payload


def test_segment_l4_empty_payload_gives_one_header_and_refuses_mss_zero() -> None:
    src, dst = ADDRS[4]
    header = TcpHeader(1, 2, 3, flags=TcpFlags.FIN)
    assert segment_l4(header, b"", 100, src, dst) == [build_tcp(header, b"", src, dst)]
    with pytest.raises(UsageError, match="at least 1"):
        segment_l4(header, b"abc", 0, src, dst)


# -- refusals -----------------------------------------------------------------------------


def _replace_word(word: int, **changes: int | bool) -> int:
    meta = parse_tx_metadata(word)
    fields = {
        "offload": meta.offload,
        "next_header": meta.next_header,
        "l3_offset": meta.l3_offset,
        "esp_offset": meta.esp_offset,
    }
    fields.update(changes)
    return build_tx_metadata(TxMetadata(**fields))  # type: ignore[arg-type]


def _refusals() -> list[tuple[str, bytes, int | None, int, TsoDrop]]:
    frame, word = large_send(4, IpProto.TCP, bytes(100))
    udp_frame, udp_word = large_send(4, IpProto.UDP, bytes(100))
    v6_frame, v6_word = large_send(6, IpProto.TCP, bytes(100))
    bad_udp_len = bytearray(udp_frame)
    bad_udp_len[L2_LEN + 20 + 16 + 4 : L2_LEN + 20 + 16 + 6] = (50).to_bytes(2, "big")
    not_esp = bytearray(frame)
    not_esp[L2_LEN + 9] = IpProto.UDP
    fragment = bytearray(frame)
    fragment[L2_LEN + 6] = 0x20  # MF
    arp = bytearray(frame)
    arp[12:14] = EtherType.ARP.to_bytes(2, "big")
    short_tcp, short_word = large_send(4, IpProto.UDP, bytes(4), next_header=IpProto.TCP)
    return [
        ("mss 0", frame, word, 0, TsoDrop.BAD_MSS),
        ("mss negative", frame, word, -5, TsoDrop.BAD_MSS),
        ("mss too large", frame, word, MAX_MSS + 1, TsoDrop.BAD_MSS),
        ("no word", frame, None, 10, TsoDrop.NO_OFFLOAD),
        ("OFFLOAD=0", frame, _replace_word(word, offload=False), 10, TsoDrop.NO_OFFLOAD),
        ("reserved bits", frame, word | 0x0100_0000, 10, TsoDrop.BAD_METADATA),
        ("L3_OFFSET", frame, _replace_word(word, l3_offset=18), 10, TsoDrop.BAD_OFFSETS),
        ("ESP_OFFSET", frame, _replace_word(word, esp_offset=6), 10, TsoDrop.BAD_OFFSETS),
        ("v6 ESP_OFFSET", v6_frame, _replace_word(v6_word, esp_offset=5), 10, TsoDrop.BAD_OFFSETS),
        ("ICMP", frame, _replace_word(word, next_header=IpProto.ICMP), 10, TsoDrop.UNSUPPORTED_L4),
        (
            "tunnel",
            frame,
            _replace_word(word, next_header=IpProto.IPIP),
            10,
            TsoDrop.UNSUPPORTED_L4,
        ),
        ("not ESP", bytes(not_esp), word, 10, TsoDrop.MALFORMED),
        ("fragment", bytes(fragment), word, 10, TsoDrop.MALFORMED),
        ("ARP", bytes(arp), word, 10, TsoDrop.MALFORMED),
        ("runt", frame[:10], word, 10, TsoDrop.MALFORMED),
        ("IP truncated", frame[: L2_LEN + 30], word, 10, TsoDrop.MALFORMED),
        ("UDP length", bytes(bad_udp_len), udp_word, 10, TsoDrop.MALFORMED),
        ("TCP header short", short_tcp, short_word, 10, TsoDrop.MALFORMED),
        ("IV cut", _with_ip_len(frame, 20 + 12), word, 10, TsoDrop.MALFORMED),
        ("no L4", _with_ip_len(frame, 20 + 16), word, 10, TsoDrop.MALFORMED),
    ]


def _with_ip_len(frame: bytes, total: int) -> bytes:
    """The frame cut to an IPv4 packet of `total` bytes with a consistent header."""
    ip = parse_ipv4(frame[L2_LEN:])
    header = build_ipv4(replace(ip, total_length=total))
    return frame[:L2_LEN] + header + frame[L2_LEN + 20 : L2_LEN + total]


@pytest.mark.parametrize(
    ("frame", "word", "mss", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in _refusals()],
)
def test_refused_sends_name_their_reason(
    frame: bytes, word: int | None, mss: int, reason: TsoDrop
) -> None:
    assert tso_segment(frame, word, mss) == reason


@settings(max_examples=300, deadline=None)
@given(
    frame=st.binary(max_size=200),
    word=st.none() | st.integers(0, 0xFFFF_FFFF),
    mss=st.integers(-2, 70000),
)
def test_arbitrary_bytes_never_raise(frame: bytes, word: int | None, mss: int) -> None:
    result = tso_segment(frame, word, mss)
    assert isinstance(result, list | TsoDrop)


@settings(max_examples=200, deadline=None)
@given(
    base=st.binary(min_size=60, max_size=120),
    offset=st.integers(0, 119),
    value=st.integers(0, 255),
)
def test_corrupted_large_sends_never_raise(base: bytes, offset: int, value: int) -> None:
    frame, word = large_send(4, IpProto.TCP, base)
    mutated = bytearray(frame)
    mutated[offset % len(frame)] = value
    result = tso_segment(bytes(mutated), word, 17)
    assert isinstance(result, list | TsoDrop)


@settings(max_examples=60, deadline=None)
@given(
    family=st.sampled_from([4, 6]),
    l4=st.sampled_from([IpProto.TCP, IpProto.UDP]),
    size=st.integers(0, 6000),
    mss=st.integers(1, 2000),
)
def test_segments_reassemble_and_respect_the_mss(family: int, l4: int, size: int, mss: int) -> None:
    payload = bytes(i % 241 for i in range(size))
    frame, word = large_send(family, l4, payload, seq=0xFFFF_F000)
    segments = tso_segment(frame, word, mss)
    assert isinstance(segments, list)
    assert len(segments) == max(1, -(-size // mss))
    header = 20 if l4 == IpProto.TCP else 8
    parts = [take_apart(s, family) for s in segments]
    assert all(p.esp_iv == ESP_IV and l4_ok(family, l4, p.l4) for p in parts)
    chunks = [p.l4[header:] for p in parts]
    assert all(len(c) == mss for c in chunks[:-1]) and len(chunks[-1]) <= mss
    assert b"".join(chunks) == payload
    if l4 == IpProto.TCP:
        seqs = [parse_tcp(p.l4).seq for p in parts]
        assert seqs == [(0xFFFF_F000 + i * mss) & 0xFFFF_FFFF for i in range(len(parts))]


# -- the NIC ------------------------------------------------------------------------------


def _nic(**kwargs: object) -> tuple[Nic, int]:
    nic = Nic(**kwargs)  # type: ignore[arg-type]
    vsi = nic.add_vsi(VsiKind.PF, SRC_MAC)
    return nic, vsi.vsi_id


def test_nic_tags_every_segment_and_counts() -> None:
    nic, vsi = _nic()
    payload = bytes(range(250)) * 10
    frame, word = large_send(4, IpProto.TCP, payload)
    out = nic.transmit(vsi, [TxDescriptor(frame, word, 1000), TxDescriptor(frame, word)])
    assert len(out.to_agent) == 4
    expected = tso_segment(frame, word, 1000)
    assert isinstance(expected, list)
    for tagged, segment in zip(out.to_agent, [*expected, frame], strict=True):
        assert parse_ethernet(tagged).metadata == word
        assert tagged[:12] + tagged[18:] == segment
    counters = nic.vsi(vsi).counters
    assert (counters.tso_sends, counters.tso_segments) == (1, 3)
    assert counters.tx_packets == 4
    assert counters.tx_bytes == sum(len(s) for s in expected) + len(frame)
    assert set(counters.tso_drops.values()) == {0}


def test_nic_counts_refused_tso_sends_by_reason() -> None:
    nic, vsi = _nic()
    frame, word = large_send(4, IpProto.TCP, bytes(3000))
    descs = [
        TxDescriptor(frame, None, 1000),
        TxDescriptor(frame, word | 0x0200_0000, 1000),
        TxDescriptor(frame, _replace_word(word, next_header=IpProto.ICMP), 1000),
        TxDescriptor(frame, word, MAX_MSS + 1),
    ]
    out = nic.transmit(vsi, descs)
    assert out.to_agent == [] and out.rx == []
    counters = nic.vsi(vsi).counters
    assert counters.tso_drops == {
        "BAD_MSS": 1,
        "NO_OFFLOAD": 1,
        "BAD_METADATA": 1,
        "BAD_OFFSETS": 0,
        "MALFORMED": 0,
        "UNSUPPORTED_L4": 1,
    }
    assert (counters.tx_packets, counters.tso_sends) == (0, 0)
    assert nic.dump()["vsis"][0]["counters"]["tso_drops"]["NO_OFFLOAD"] == 1


def test_port_tagged_vsi_gets_no_tso() -> None:
    """An untrusted VF's offload request is dropped before segmentation (the port tag would
    replace it); without a word of its own, the port tag (OFFLOAD=0) refuses the TSO."""
    nic, vsi = _nic()
    nic.set_port_tag(vsi, build_tx_metadata(TxMetadata(False)))
    frame, word = large_send(4, IpProto.TCP, bytes(3000))
    assert nic.transmit(vsi, [TxDescriptor(frame, word, 1000)]).to_agent == []
    counters = nic.vsi(vsi).counters
    assert (counters.tx_offload_refused, counters.tso_drops["NO_OFFLOAD"]) == (1, 0)
    assert nic.transmit(vsi, [TxDescriptor(frame, None, 1000)]).to_agent == []
    assert (counters.tx_offload_refused, counters.tso_drops["NO_OFFLOAD"]) == (1, 1)


def test_spoofed_tso_send_is_counted_as_spoofed_before_segmentation() -> None:
    nic, vsi = _nic()
    frame, word = large_send(4, IpProto.TCP, bytes(3000))
    spoofed = frame[:6] + bytes.fromhex("02000000ffff") + frame[12:]
    assert nic.transmit(vsi, [TxDescriptor(spoofed, word, 1000)]).to_agent == []
    counters = nic.vsi(vsi).counters
    assert (counters.tx_spoofed, counters.tso_sends) == (1, 0)


def test_veb_switches_each_segment_east_west_without_tag() -> None:
    nic, vsi = _nic(mode=SwitchMode.VEB)
    other = nic.add_vsi(VsiKind.VF, DST_MAC).vsi_id
    frame, word = large_send(6, IpProto.UDP, bytes(2500))
    out = nic.transmit(vsi, [TxDescriptor(frame, word, 1000)])
    assert out.to_agent == []
    assert [(v, d.l2tag) for v, d in out.rx] == [(other, None)] * 3
    assert nic.vsi(vsi).counters.tx_switched == 3
