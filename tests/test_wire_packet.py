"""Finding the ESP packet in a whole frame (wire/packet.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.wire.esp import esp_header
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag, build_ethernet
from ipsec_offload.wire.ip import IpProto, IPv4Header, IPv6Header, build_ipv4, build_ipv6
from ipsec_offload.wire.packet import find_esp

DST, SRC = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")
V4 = (bytes((192, 0, 2, 1)), bytes((192, 0, 2, 2)))
V6 = (bytes(15) + b"\x01", bytes(15) + b"\x02")
ESP = esp_header(0x1234, 7) + struct.pack("!Q", (1 << 32) + 7) + b"sealed bytes"


def v4_frame(esp: bytes = ESP, flags_fragment: int = 0x4000, protocol: int = 50) -> bytes:
    ip = IPv4Header(*V4, protocol, 20 + len(esp), flags_fragment=flags_fragment)
    eth = EthernetHeader(DST, SRC, EtherType.IPV4, (VlanTag(0x88A8, 20), VlanTag(0x8100, 10)))
    return build_ethernet(eth) + build_ipv4(ip) + esp


def test_an_ipv4_esp_packet_behind_vlan_tags_with_padding_after_it() -> None:
    found = find_esp(v4_frame() + bytes(6))  # Ethernet padding is not the packet's
    assert found is not None
    assert (found.src, found.dst, found.spi, found.seq) == (*V4, 0x1234, 7)
    assert (found.iv, found.sealed) == ((1 << 32) + 7, b"sealed bytes")
    assert (found.eth.dst, found.eth.src, [t.vid for t in found.eth.vlans]) == (DST, SRC, [20, 10])


def test_an_ipv6_esp_packet_after_an_extension_header_behind_a_metadata_tag() -> None:
    options = bytes((IpProto.ESP, 0)) + bytes(6)  # destination options, 8 bytes
    ip = build_ipv6(IPv6Header(*V6, IpProto.DSTOPTS, len(options) + len(ESP)))
    eth = EthernetHeader(DST, SRC, EtherType.IPV6, metadata=0x8000_0000)
    frame = build_ethernet(eth, 0x9000) + ip + options + ESP
    found = find_esp(frame, meta_ethertype=0x9000)
    assert found is not None
    assert (found.src, found.spi, found.sealed, found.eth.metadata) == (
        V6[0],
        0x1234,
        b"sealed bytes",
        0x8000_0000,
    )
    assert find_esp(frame) is None  # 0x9000 is no EtherType of IP without the tag


@pytest.mark.parametrize(
    "frame",
    [
        v4_frame(protocol=IpProto.UDP),
        v4_frame(flags_fragment=0x2000),  # MF: the first of fragments
        v4_frame(esp=ESP[:15]),  # the IV is cut
        build_ethernet(EthernetHeader(DST, SRC, EtherType.ARP)) + bytes(28),
        v4_frame()[:30],
    ],
    ids=["udp", "fragment", "short", "arp", "truncated"],
)
def test_frames_without_a_whole_esp_header_and_iv_hold_none(frame: bytes) -> None:
    assert find_esp(frame) is None


@given(st.binary(max_size=120))
def test_random_bytes_give_none_or_a_packet_never_an_exception(data: bytes) -> None:
    find_esp(data)
    find_esp(v4_frame()[:34] + data)
