"""Ethernet header, metadata tag and VLAN tags."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.ethernet import (
    EthernetHeader,
    EtherType,
    VlanTag,
    build_ethernet,
    parse_ethernet,
    vlan_key,
)

DST = bytes.fromhex("020000000001")
SRC = bytes.fromhex("020000000002")

vlan_tags = st.builds(
    VlanTag, st.sampled_from([EtherType.VLAN, EtherType.QINQ]), st.integers(0, 0xFFFF)
)


@st.composite
def headers(draw: st.DrawFn) -> EthernetHeader:
    vlans = tuple(draw(st.lists(vlan_tags, max_size=2)))
    metadata = draw(st.none() | st.integers(0, 0xFFFF_FFFF))
    forbidden = {EtherType.VLAN, EtherType.QINQ}
    if metadata is None and not vlans:
        forbidden.add(EtherType.META)
    ethertype = draw(st.integers(0, 0xFFFF).filter(lambda e: e not in forbidden))
    return EthernetHeader(
        dst=draw(st.binary(min_size=6, max_size=6)),
        src=draw(st.binary(min_size=6, max_size=6)),
        ethertype=ethertype,
        vlans=vlans,
        metadata=metadata,
    )


def test_known_bytes_metadata_and_two_vlans() -> None:
    h = EthernetHeader(
        dst=DST,
        src=SRC,
        ethertype=EtherType.IPV4,
        vlans=(VlanTag(EtherType.QINQ, 0x0064), VlanTag(EtherType.VLAN, 0xA00A)),
        metadata=0x80040E05,
    )
    wire = bytes.fromhex(
        "020000000001 020000000002 88b5 80040e05 88a8 0064 8100 a00a 0800".replace(" ", "")
    )
    assert build_ethernet(h) == wire
    assert parse_ethernet(wire + b"payload") == h
    assert h.header_len == len(wire) == 28


def test_known_bytes_untagged() -> None:
    wire = DST + SRC + b"\x86\xdd"
    h = parse_ethernet(wire)
    assert h == EthernetHeader(DST, SRC, EtherType.IPV6)
    assert h.header_len == 14
    assert build_ethernet(h) == wire


def test_vlan_tag_fields() -> None:
    tag = VlanTag(EtherType.VLAN, 0xB064)
    assert (tag.pcp, tag.dei, tag.vid) == (5, True, 0x064)
    assert vlan_key((VlanTag(EtherType.QINQ, 0xE005), tag)) == ((0x88A8, 5), (0x8100, 0x64))


def test_metadata_tag_only_outermost() -> None:
    wire = DST + SRC + bytes.fromhex("8100000a 88b5 80000000")
    h = parse_ethernet(wire)
    assert h.metadata is None
    assert h.vlans == (VlanTag(0x8100, 10),)
    assert h.ethertype == EtherType.META


def test_metadata_tag_inside_metadata_tag_is_ethertype() -> None:
    wire = DST + SRC + bytes.fromhex("88b5 00000000 88b5 80000000")
    h = parse_ethernet(wire)
    assert (h.metadata, h.ethertype, h.vlans) == (0, EtherType.META, ())


def test_custom_meta_ethertype() -> None:
    h = EthernetHeader(DST, SRC, EtherType.IPV4, metadata=7)
    wire = build_ethernet(h, meta_ethertype=0x9000)
    assert wire[12:14] == b"\x90\x00"
    assert parse_ethernet(wire, meta_ethertype=0x9000) == h
    assert parse_ethernet(wire).ethertype == 0x9000


def test_three_vlans_rejected() -> None:
    wire = DST + SRC + bytes.fromhex("88a80001 81000002 81000003 0800")
    with pytest.raises(ParseError) as info:
        parse_ethernet(wire)
    assert (info.value.layer, info.value.offset) == ("ethernet", 20)


@given(headers(), st.binary(max_size=20))
def test_round_trip(h: EthernetHeader, payload: bytes) -> None:
    wire = build_ethernet(h)
    assert len(wire) == h.header_len
    assert parse_ethernet(wire + payload) == h


@given(headers())
def test_every_truncation_is_a_parse_error(h: EthernetHeader) -> None:
    wire = build_ethernet(h)
    for cut in range(len(wire)):
        with pytest.raises(ParseError):
            parse_ethernet(wire[:cut])


@given(st.binary(max_size=40))
def test_random_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        h = parse_ethernet(memoryview(data))
    except ParseError as exc:
        assert exc.layer == "ethernet"
    else:
        assert h.header_len <= len(data)
        assert build_ethernet(h) == data[: h.header_len]


@pytest.mark.parametrize(
    ("h", "message"),
    [
        (EthernetHeader(DST[:5], SRC, 0x0800), "dst MAC"),
        (EthernetHeader(DST, SRC + b"\0", 0x0800), "src MAC"),
        (EthernetHeader(DST, SRC, 0x0800, (VlanTag(0x8100, 1),) * 3), "VLAN tags"),
        (EthernetHeader(DST, SRC, 0x0800, (VlanTag(0x9100, 1),)), "TPID"),
        (EthernetHeader(DST, SRC, 0x0800, (VlanTag(0x8100, 0x10000),)), "TCI"),
        (EthernetHeader(DST, SRC, 0x10000), "ethertype"),
        (EthernetHeader(DST, SRC, 0x0800, metadata=1 << 32), "metadata"),
    ],
)
def test_build_rejects_impossible_values(h: EthernetHeader, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_ethernet(h)
