"""IPv4, IPv6, extension headers and the Internet checksum."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire import ip
from ipsec_offload.wire.ip import (
    IpProto,
    IPv4Header,
    IPv6Header,
    build_ipv4,
    build_ipv6,
    ipv4_checksum,
    ipv4_header,
    ipv6_upper_layer,
    parse_ipv4,
    parse_ipv6,
    reference_internet_checksum,
)
from tools import require_built

# The IPv4 header checksum example on Wikipedia: 192.168.0.1 -> 192.168.0.199, UDP, 115 bytes.
KNOWN_V4 = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
KNOWN_V4_CHECKSUM = 0xB861
V6_SRC = bytes.fromhex("20010db8000000000000000000000001")
V6_DST = bytes.fromhex("20010db8000000000000000000000002")


Checksum = Callable[[bytes], int]


@pytest.fixture(scope="module", params=["compiled", "reference"])
def checksum(request: pytest.FixtureRequest) -> Checksum:
    """Each implementation of the Internet checksum: `_checksum.c` and the Python one."""
    if request.param == "reference":
        return reference_internet_checksum
    require_built(ip.internet_checksum is not reference_internet_checksum, "wire/_checksum.c")
    return ip.internet_checksum


def test_rfc1071_example(checksum: Checksum) -> None:
    # RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2 (ones' complement)
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"", 0xFFFF),
        (b"\x00\x00", 0xFFFF),
        (b"\x01", 0xFEFF),
        (b"\xff\xff", 0x0000),
        (b"\xff\xff\xff\xff", 0x0000),
        (b"\x80\x00\x80\x00", 0xFFFE),
        (b"\xff\xff" * 4097, 0x0000),
        (b"\xff" * 8191, 0x00FF),
    ],
)
def test_checksum_edge_cases(checksum: Checksum, data: bytes, value: int) -> None:
    assert checksum(data) == value


@given(data=st.binary(max_size=300), offset=st.integers(0, 7))
def test_checksum_matches_word_by_word_definition(
    checksum: Checksum, data: bytes, offset: int
) -> None:
    padded = data + b"\0" * (len(data) % 2)
    total = 0
    for (word,) in struct.iter_unpack("!H", padded):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    # at any alignment in memory, and from any buffer
    unaligned = memoryview(bytes(offset) + data)[offset:]
    assert checksum(data) == checksum(unaligned) == ~total & 0xFFFF


def test_known_ipv4_header_checksum() -> None:
    assert ipv4_checksum(KNOWN_V4) == KNOWN_V4_CHECKSUM
    h = IPv4Header(
        src=bytes([192, 168, 0, 1]),
        dst=bytes([192, 168, 0, 199]),
        protocol=IpProto.UDP,
        total_length=0x73,
    )
    wire = build_ipv4(h)
    assert wire == KNOWN_V4[:10] + b"\xb8\x61" + KNOWN_V4[12:]
    assert ipv4_checksum(wire) == 0
    parsed = parse_ipv4(wire + bytes(0x73 - 20))
    assert parsed == replace(h, checksum=KNOWN_V4_CHECKSUM)
    assert parsed.header_len == 20


def test_ipv4_with_options_known_bytes() -> None:
    h = IPv4Header(
        src=b"\x0a\x00\x00\x01",
        dst=b"\x0a\x00\x00\x02",
        protocol=IpProto.ESP,
        total_length=24,
        identification=0x1234,
        ttl=1,
        tos=0x10,
        flags_fragment=0,
        options=b"\x94\x04\x00\x00",  # RFC 2113 router alert
    )
    wire = build_ipv4(h)
    # words 4610+0018+1234+0132+0a00+0001+0a00+0002+9404 = 0x10195 -> 0x0196, checksum 0xfe69
    assert wire.hex() == "46100018123400000132fe690a0000010a00000294040000"
    assert parse_ipv4(wire).options == h.options


def test_ipv4_bad_checksum() -> None:
    wire = bytearray(build_ipv4(IPv4Header(b"\1\2\3\4", b"\5\6\7\x08", 6, 20)))
    wire[11] ^= 1
    with pytest.raises(ParseError) as info:
        parse_ipv4(bytes(wire))
    assert (info.value.layer, info.value.offset) == ("ipv4", 10)
    assert parse_ipv4(bytes(wire), verify_checksum=False).checksum == wire[10] << 8 | wire[11]


@pytest.mark.parametrize(
    ("wire", "offset"),
    [
        (bytes.fromhex("65000014000040004011") + bytes(10), 0),  # version 6
        (bytes.fromhex("44000014000040004011") + bytes(10), 0),  # IHL 4
        (bytes.fromhex("46000018000040004011") + bytes(10), 20),  # IHL 6, 20 bytes
        (bytes.fromhex("45000013000040004011") + bytes(10), 2),  # total length < 20
        (bytes.fromhex("45000015000040004011") + bytes(10), 2),  # total length > buffer
    ],
)
def test_ipv4_malformed(wire: bytes, offset: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_ipv4(wire, verify_checksum=False)
    assert info.value.offset == offset


v4_addr = st.binary(min_size=4, max_size=4)


@st.composite
def ipv4_packets(draw: st.DrawFn) -> tuple[IPv4Header, bytes]:
    options = draw(st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]))
    payload = draw(st.binary(max_size=30))
    h = IPv4Header(
        src=draw(v4_addr),
        dst=draw(v4_addr),
        protocol=draw(st.integers(0, 255)),
        total_length=20 + len(options) + len(payload),
        identification=draw(st.integers(0, 0xFFFF)),
        ttl=draw(st.integers(0, 255)),
        tos=draw(st.integers(0, 255)),
        flags_fragment=draw(st.integers(0, 0xFFFF)),
        options=options,
    )
    return h, payload


@given(ipv4_packets())
def test_ipv4_round_trip(packet: tuple[IPv4Header, bytes]) -> None:
    h, payload = packet
    wire = build_ipv4(h)
    assert len(wire) == h.header_len
    assert ipv4_checksum(wire) == 0
    parsed = parse_ipv4(wire + payload)
    assert parsed == replace(h, checksum=parsed.checksum)
    assert build_ipv4(parsed) == wire


@given(ipv4_packets())
def test_ipv4_every_truncation_is_a_parse_error(packet: tuple[IPv4Header, bytes]) -> None:
    h, payload = packet
    wire = build_ipv4(h) + payload
    for cut in range(len(wire)):
        with pytest.raises(ParseError):
            parse_ipv4(wire[:cut])


@given(st.binary(max_size=80), st.booleans())
def test_ipv4_random_bytes_raise_only_parse_error(data: bytes, verify: bool) -> None:
    try:
        parse_ipv4(data, verify_checksum=verify)
    except ParseError as exc:
        assert exc.layer == "ipv4"


def test_ipv4_is_fragment() -> None:
    base = IPv4Header(b"\0" * 4, b"\0" * 4, 50, 20)
    assert not base.is_fragment
    assert replace(base, flags_fragment=0x2000).is_fragment
    assert replace(base, flags_fragment=0x4001).is_fragment


@pytest.mark.parametrize(
    ("h", "message"),
    [
        (IPv4Header(b"\0" * 3, b"\0" * 4, 6, 20), "src"),
        (IPv4Header(b"\0" * 4, b"\0" * 16, 6, 20), "dst"),
        (IPv4Header(b"\0" * 4, b"\0" * 4, 6, 22, options=b"\1\1"), "options"),
        (IPv4Header(b"\0" * 4, b"\0" * 4, 6, 64, options=b"\1" * 44), "options"),
        (IPv4Header(b"\0" * 4, b"\0" * 4, 256, 20), "protocol"),
        (IPv4Header(b"\0" * 4, b"\0" * 4, 6, 19), "total length"),
        (IPv4Header(b"\0" * 4, b"\0" * 4, 6, 65536), "total length"),
        (IPv4Header(b"\0" * 4, b"\0" * 4, 6, 20, ttl=-1), "TTL"),
    ],
)
def test_ipv4_build_rejects_impossible_values(h: IPv4Header, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_ipv4(h)


def test_ipv6_known_bytes() -> None:
    h = IPv6Header(
        src=V6_SRC,
        dst=V6_DST,
        next_header=IpProto.ESP,
        payload_length=8,
        hop_limit=255,
        traffic_class=0xAB,
        flow_label=0x12345,
    )
    wire = build_ipv6(h)
    assert wire.hex() == "6ab12345000832ff" + V6_SRC.hex() + V6_DST.hex()
    assert parse_ipv6(wire + bytes(8)) == h


v6_addr = st.binary(min_size=16, max_size=16)
ipv6_headers = st.builds(
    IPv6Header,
    src=v6_addr,
    dst=v6_addr,
    next_header=st.integers(0, 255),
    payload_length=st.integers(0, 40),
    hop_limit=st.integers(0, 255),
    traffic_class=st.integers(0, 255),
    flow_label=st.integers(0, 0xFFFFF),
)


@given(ipv6_headers)
def test_ipv6_round_trip_and_truncations(h: IPv6Header) -> None:
    wire = build_ipv6(h) + bytes(h.payload_length)
    assert parse_ipv6(wire) == h
    for cut in range(len(wire)):
        with pytest.raises(ParseError):
            parse_ipv6(wire[:cut])


@given(st.binary(max_size=120))
def test_ipv6_random_bytes_raise_only_parse_error(data: bytes) -> None:
    for parser in (parse_ipv6, ipv6_upper_layer):
        try:
            parser(data)
        except ParseError as exc:
            assert exc.layer == "ipv6"


def test_ipv6_bad_version_and_length() -> None:
    wire = bytearray(build_ipv6(IPv6Header(V6_SRC, V6_DST, 59, 0)))
    with pytest.raises(ParseError, match="payload length") as info:
        parse_ipv6(bytes(wire[:4]) + b"\x00\x01" + bytes(wire[6:]))
    assert info.value.offset == 4
    wire[0] = 0x40
    with pytest.raises(ParseError, match="version"):
        parse_ipv6(bytes(wire))


def _ipv6(next_header: int, body: bytes) -> bytes:
    return build_ipv6(IPv6Header(V6_SRC, V6_DST, next_header, len(body))) + body


def test_ipv6_upper_layer_walks_extension_headers() -> None:
    hop_by_hop = bytes([IpProto.ROUTING, 0]) + bytes(6)
    routing = bytes([IpProto.DSTOPTS, 1]) + bytes(14)
    dst_opts = bytes([IpProto.ESP, 0]) + bytes(6)
    packet = _ipv6(IpProto.HOPOPT, hop_by_hop + routing + dst_opts + bytes(8))
    assert ipv6_upper_layer(packet) == (IpProto.ESP, 40 + 8 + 16 + 8)


def test_ipv6_upper_layer_stops_at_fragment_and_none() -> None:
    packet = _ipv6(IpProto.DSTOPTS, bytes([IpProto.FRAGMENT, 0]) + bytes(6) + bytes(8))
    assert ipv6_upper_layer(packet) == (IpProto.FRAGMENT, 48)
    assert ipv6_upper_layer(_ipv6(IpProto.NONE, b"")) == (IpProto.NONE, 40)
    assert ipv6_upper_layer(_ipv6(IpProto.UDP, bytes(8))) == (IpProto.UDP, 40)


@pytest.mark.parametrize(
    ("next_header", "body", "offset"),
    [
        (IpProto.ROUTING, b"\x32", 40),  # one byte of a routing header
        (IpProto.DSTOPTS, bytes([IpProto.ESP, 1]) + bytes(6), 40),  # says 16, has 8
        (IpProto.DSTOPTS, bytes([IpProto.HOPOPT, 0]) + bytes(14), 48),  # hop-by-hop not first
    ],
)
def test_ipv6_upper_layer_malformed(next_header: int, body: bytes, offset: int) -> None:
    with pytest.raises(ParseError) as info:
        ipv6_upper_layer(_ipv6(next_header, body))
    assert info.value.offset == offset


@pytest.mark.parametrize(
    ("h", "message"),
    [
        (IPv6Header(V6_SRC[:4], V6_DST, 59, 0), "src"),
        (IPv6Header(V6_SRC, V6_DST, 59, 0x10000), "payload length"),
        (IPv6Header(V6_SRC, V6_DST, 59, 0, flow_label=1 << 20), "flow label"),
        (IPv6Header(V6_SRC, V6_DST, 59, 0, traffic_class=256), "traffic class"),
    ],
)
def test_ipv6_build_rejects_impossible_values(h: IPv6Header, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_ipv6(h)


@given(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 255),
    st.integers(20, 0xFFFF),
    st.integers(0, 0xFFFF),
)
def test_ipv4_header_is_build_ipv4(
    src: bytes, dst: bytes, protocol: int, total_length: int, ident: int
) -> None:
    expected = build_ipv4(IPv4Header(src, dst, protocol, total_length, ident))
    assert ipv4_header(src, dst, protocol, total_length, ident) == expected
    assert ipv4_checksum(expected) == 0


@pytest.mark.parametrize(
    ("src", "protocol", "total_length", "ident", "message"),
    [
        (bytes(3), 17, 20, 0, "src"),
        (bytes(4), 256, 20, 0, "protocol"),
        (bytes(4), 17, 19, 0, "total length"),
        (bytes(4), 17, 0x10000, 0, "total length"),
        (bytes(4), 17, 20, 0x10000, "identification"),
    ],
)
def test_ipv4_header_refuses_what_build_ipv4_refuses(
    src: bytes, protocol: int, total_length: int, ident: int, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        ipv4_header(src, bytes(4), protocol, total_length, ident)
