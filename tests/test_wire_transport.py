"""UDP, ICMP/ICMPv6 echo and TCP headers and their checksums."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.transport import (
    IcmpEcho,
    IcmpType,
    Icmpv6Type,
    TcpFlags,
    TcpHeader,
    UdpHeader,
    build_icmp_echo,
    build_tcp,
    build_udp,
    parse_icmp_echo,
    parse_tcp,
    parse_udp,
    pseudo_header,
    transport_checksum,
    udp_fields,
    verify_transport_checksum,
)

A4 = bytes([10, 0, 0, 1])
B4 = bytes([10, 0, 0, 2])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")


def test_udp_known_bytes_nat_keepalive() -> None:
    # RFC 3948 NAT-keepalive, 10.0.0.1:4500 -> 10.0.0.2:4500, payload ff:
    # 0a00+0001+0a00+0002+0011+0009 + 1194+1194+0009+ff00 = 0x1364e -> 0x364f, checksum 0xc9b0
    wire = build_udp(UdpHeader(4500, 4500), b"\xff", A4, B4)
    assert wire.hex() == "119411940009c9b0ff"
    assert parse_udp(wire) == UdpHeader(4500, 4500, 9, 0xC9B0)
    assert verify_transport_checksum(A4, B4, IpProto.UDP, wire)
    assert transport_checksum(A4, B4, IpProto.UDP, wire) == 0


def test_udp_over_ipv6_known_bytes() -> None:
    wire = build_udp(UdpHeader(1, 2), b"hello", A6, B6)
    assert wire.hex() == "00010002000d608a68656c6c6f"


def test_tcp_known_bytes_syn_with_mss() -> None:
    h = TcpHeader(12345, 80, seq=1, flags=TcpFlags.SYN, options=bytes.fromhex("020405b4"))
    wire = build_tcp(h, b"", A4, B4)
    assert wire.hex() == "3039005000000001000000006002ffff539a0000020405b4"
    assert parse_tcp(wire) == replace(h, checksum=0x539A)
    assert h.header_len == 24


def test_icmp_known_bytes() -> None:
    wire = build_icmp_echo(IcmpEcho(IcmpType.ECHO_REQUEST, ident=0x1234, seq=1), b"abcd", A4, B4)
    assert wire.hex() == "080021041234000161626364"
    assert verify_transport_checksum(A4, B4, IpProto.ICMP, wire)
    echo = IcmpEcho(Icmpv6Type.ECHO_REQUEST, ident=0x1234, seq=1)
    wire6 = build_icmp_echo(echo, b"abcd", A6, B6)
    assert wire6.hex() == "80004d481234000161626364"
    assert parse_icmp_echo(wire6) == replace(echo, checksum=0x4D48)
    assert verify_transport_checksum(A6, B6, IpProto.ICMPV6, wire6)


def test_pseudo_headers() -> None:
    assert pseudo_header(A4, B4, 17, 9).hex() == "0a0000010a00000200110009"
    assert pseudo_header(A6, B6, 58, 12) == A6 + B6 + bytes.fromhex("0000000c0000003a")


def test_udp_computed_zero_is_sent_as_ffff() -> None:
    first = build_udp(UdpHeader(7, 7), b"\0\0", A4, B4)
    payload = first[6:8]
    wire = build_udp(UdpHeader(7, 7), payload, A4, B4)
    assert wire[6:8] == b"\xff\xff"
    assert verify_transport_checksum(A4, B4, IpProto.UDP, wire)


def test_udp_zero_checksum_means_none_only_over_ipv4() -> None:
    wire = bytes.fromhex("0007000700090000") + b"x"
    assert verify_transport_checksum(A4, B4, IpProto.UDP, wire)
    assert not verify_transport_checksum(A6, B6, IpProto.UDP, wire)


@pytest.mark.parametrize(
    ("proto", "build", "header", "src", "dst"),
    [
        (IpProto.UDP, build_udp, UdpHeader(1, 2), A4, B4),
        (IpProto.UDP, build_udp, UdpHeader(1, 2), A6, B6),
        (IpProto.TCP, build_tcp, TcpHeader(1, 2), A4, B4),
        (IpProto.TCP, build_tcp, TcpHeader(1, 2), A6, B6),
        (IpProto.ICMP, build_icmp_echo, IcmpEcho(IcmpType.ECHO_REPLY), A4, B4),
        (IpProto.ICMPV6, build_icmp_echo, IcmpEcho(Icmpv6Type.ECHO_REPLY), A6, B6),
    ],
)
def test_checksum_failure_detected(
    proto: int, build: object, header: object, src: bytes, dst: bytes
) -> None:
    assert callable(build)
    wire = bytearray(build(header, b"payload", src, dst))
    assert verify_transport_checksum(src, dst, proto, wire)
    wire[-1] ^= 0x40
    assert not verify_transport_checksum(src, dst, proto, wire)
    if proto != IpProto.ICMP:
        assert not verify_transport_checksum(src, B4 if len(src) == 4 else A6, proto, wire)


ports = st.integers(0, 0xFFFF)
addresses = st.sampled_from([(A4, B4), (A6, B6), (B4, A4), (B6, A6)])


@given(ports, ports, st.binary(max_size=40), addresses)
def test_udp_round_trip(sport: int, dport: int, payload: bytes, addrs: tuple[bytes, bytes]) -> None:
    wire = build_udp(UdpHeader(sport, dport), payload, *addrs)
    parsed = parse_udp(wire)
    assert parsed == UdpHeader(sport, dport, 8 + len(payload), parsed.checksum)
    assert parsed.checksum != 0
    assert wire[8:] == payload
    assert verify_transport_checksum(*addrs, IpProto.UDP, wire)
    for cut in range(len(wire)):
        with pytest.raises(ParseError):
            parse_udp(wire[:cut])


tcp_headers = st.builds(
    TcpHeader,
    src_port=ports,
    dst_port=ports,
    seq=st.integers(0, 0xFFFF_FFFF),
    ack=st.integers(0, 0xFFFF_FFFF),
    flags=st.integers(0, 0xFFF).map(TcpFlags),
    window=ports,
    urgent=ports,
    options=st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]),
)


@given(tcp_headers, st.binary(max_size=40), addresses)
def test_tcp_round_trip(h: TcpHeader, payload: bytes, addrs: tuple[bytes, bytes]) -> None:
    wire = build_tcp(h, payload, *addrs)
    parsed = parse_tcp(wire)
    assert parsed == replace(h, checksum=parsed.checksum)
    assert wire[parsed.header_len :] == payload
    assert verify_transport_checksum(*addrs, IpProto.TCP, wire)
    for cut in range(h.header_len):
        with pytest.raises(ParseError):
            parse_tcp(wire[:cut])


@given(
    st.sampled_from([(IcmpType.ECHO_REQUEST, A4, B4), (Icmpv6Type.ECHO_REPLY, A6, B6)]),
    st.integers(0, 255),
    ports,
    ports,
    st.binary(max_size=40),
)
def test_icmp_round_trip(
    family: tuple[int, bytes, bytes], code: int, ident: int, seq: int, payload: bytes
) -> None:
    icmp_type, src, dst = family
    h = IcmpEcho(icmp_type, code, ident, seq)
    wire = build_icmp_echo(h, payload, src, dst)
    parsed = parse_icmp_echo(wire)
    assert parsed == replace(h, checksum=parsed.checksum)
    proto = IpProto.ICMP if len(src) == 4 else IpProto.ICMPV6
    assert verify_transport_checksum(src, dst, proto, wire)
    for cut in range(8):
        with pytest.raises(ParseError):
            parse_icmp_echo(wire[:cut])


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_parse_error(data: bytes) -> None:
    for parser in (parse_udp, parse_tcp, parse_icmp_echo):
        try:
            parser(data)
        except ParseError as exc:
            assert exc.layer in ("udp", "tcp", "icmp")


@pytest.mark.parametrize(
    ("parser", "wire", "offset"),
    [
        (parse_udp, bytes.fromhex("0001000200070000"), 4),
        (parse_udp, bytes.fromhex("0001000200090000"), 4),
        (parse_tcp, bytes.fromhex("0001000200000000000000004000ffff00000000"), 12),
        (parse_tcp, bytes.fromhex("0001000200000000000000006000ffff00000000"), 20),
        (parse_icmp_echo, bytes.fromhex("0300000000000000"), 0),
    ],
)
def test_malformed(parser: object, wire: bytes, offset: int) -> None:
    assert callable(parser)
    with pytest.raises(ParseError) as info:
        parser(wire)
    assert info.value.offset == offset


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_udp(UdpHeader(0x10000, 1), b"", A4, B4), "source port"),
        (lambda: build_udp(UdpHeader(1, 1), bytes(65528), A6, B6), "payload"),
        (lambda: build_udp(UdpHeader(1, 1), b"", A4, B6), "addresses"),
        (lambda: build_tcp(TcpHeader(1, 1, options=b"\1"), b"", A4, B4), "options"),
        (lambda: build_tcp(TcpHeader(1, 1, seq=1 << 32), b"", A4, B4), "sequence"),
        (lambda: build_tcp(TcpHeader(1, 1, flags=TcpFlags(0x1000)), b"", A4, B4), "flags"),
        (lambda: build_icmp_echo(IcmpEcho(IcmpType.ECHO_REQUEST), b"", A6, B6), "ICMPv6"),
        (lambda: build_icmp_echo(IcmpEcho(Icmpv6Type.ECHO_REQUEST), b"", A4, B4), "ICMP 0/8"),
        (lambda: transport_checksum(A4[:3], B4, 17, b""), "addresses"),
        (lambda: pseudo_header(A4, B4, 17, 0x10000), "length"),
    ],
)
def test_build_rejects_impossible_values(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(UsageError, match=message):
        call()


@pytest.fixture(scope="module")
def scapy_all() -> Any:
    return pytest.importorskip("scapy.all")


@pytest.mark.interop
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ports,
    ports,
    st.integers(0, 0xFFFF_FFFF),
    st.integers(0, 0x1FF),
    st.binary(max_size=32),
    addresses,
)
def test_checksums_match_scapy(
    scapy_all: Any,
    sport: int,
    dport: int,
    seq: int,
    flags: int,
    payload: bytes,
    addrs: tuple[bytes, bytes],
) -> None:
    src, dst = addrs
    if len(src) == 4:
        ip = scapy_all.IP(src=".".join(map(str, src)), dst=".".join(map(str, dst)))
    else:
        ip = scapy_all.IPv6(src=src.hex(":", 2), dst=dst.hex(":", 2))
    tcp = build_tcp(TcpHeader(sport, dport, seq, seq ^ 1, TcpFlags(flags)), payload, src, dst)
    theirs = ip / scapy_all.TCP(
        sport=sport, dport=dport, seq=seq, ack=seq ^ 1, flags=flags, window=0xFFFF
    )
    assert tcp == bytes(theirs / payload)[len(ip) :]
    udp = build_udp(UdpHeader(sport, dport), payload, src, dst)
    assert udp == bytes(ip / scapy_all.UDP(sport=sport, dport=dport) / payload)[len(ip) :]


@given(st.binary(max_size=24))
def test_udp_fields_are_parse_udp(buf: bytes) -> None:
    try:
        header = parse_udp(buf)
    except ParseError as error:
        with pytest.raises(ParseError) as again:
            udp_fields(memoryview(buf))
        assert (again.value.what, again.value.offset) == (error.what, error.offset)
        return
    fields = (header.src_port, header.dst_port, header.length, header.checksum)
    assert udp_fields(memoryview(buf)) == udp_fields(buf) == fields
