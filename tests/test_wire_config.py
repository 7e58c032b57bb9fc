"""Config frames, TLVs and the typed message bodies (spec sections 4 and 9)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    Caps,
    ConfigMessage,
    ConfigStatus,
    Direction,
    Event,
    EventType,
    ListSasReply,
    ListSasRequest,
    LocalAddr,
    Opcode,
    SaEntry,
    SaStats,
    Tlv,
    TlvType,
    build_config,
    decode_add_sa,
    decode_caps,
    decode_count,
    decode_empty,
    decode_event,
    decode_list_sas_reply,
    decode_list_sas_request,
    decode_local_addr,
    decode_sa_entry,
    decode_sa_index,
    decode_sa_stats,
    encode_add_sa,
    encode_caps,
    encode_count,
    encode_event,
    encode_list_sas_reply,
    encode_list_sas_request,
    encode_local_addr,
    encode_sa_entry,
    encode_sa_index,
    encode_sa_stats,
    pack_list_sas_reply,
    parse_config,
    parse_config_header,
)
from ipsec_offload.wire.ethernet import EtherType, VlanTag

KEY128 = bytes(range(20))
DST4 = bytes([192, 168, 0, 2])

# An ADD_SA request written out from the spec 4 tables.
KNOWN_ADD_SA = bytes.fromhex(
    "01 01 00 00 00 00"  # version 1, ADD_SA, status, flags, port 0, reserved
    "0000002a"  # txn_id 42
    "0032"  # tlv_length 50
    "0002 0001 01"  # DIR outbound
    "0003 0004 00001234"  # SPI
    "0004 0004 c0a80002"  # DST_ADDR 192.168.0.2
    "0006 0001 01"  # ALG AES-GCM-128
    "0007 0014 000102030405060708090a0b0c0d0e0f10111213"  # KEY: key || salt
)


def test_known_add_sa_frame() -> None:
    msg = parse_config(KNOWN_ADD_SA)
    assert (msg.version, msg.opcode, msg.txn_id, msg.status, msg.port) == (1, 1, 42, 0, 0)
    assert not msg.is_reply
    req = decode_add_sa(msg.tlvs)
    assert req == AddSaRequest(Direction.OUTBOUND, 0x1234, DST4, Algorithm.AES_GCM_128, KEY128)
    assert build_config(ConfigMessage(Opcode.ADD_SA, 42, encode_add_sa(req))) == KNOWN_ADD_SA


def test_known_caps_reply() -> None:
    wire = bytes.fromhex(
        "01 87 00 00 03 00 00000007 000f"  # GET_CAPS | REPLY, OK, port 3, txn 7, 15 bytes
        "0011 000b 02 01 02 00000400 00001000"  # CAPS: 2 algorithms, SAD 1024, window 4096
    )
    caps = Caps((Algorithm.AES_GCM_128, Algorithm.AES_GCM_256), 1024, 4096)
    msg = ConfigMessage(Opcode.GET_CAPS | Opcode.REPLY, 7, encode_caps(caps), port=3)
    assert build_config(msg) == wire
    parsed = parse_config(wire)
    assert parsed == msg
    assert parsed.is_reply and parsed.base_opcode == Opcode.GET_CAPS
    assert decode_caps(parsed.tlvs) == caps


def test_known_stats_and_index_values() -> None:
    stats = SaStats(packets=3, bytes=0x0102030405060708, errors=(1, 2, 3, 4, 5))
    (tlv,) = encode_sa_stats(stats)
    assert (tlv.type, len(tlv.value)) == (0x0010, 56)
    assert tlv.value.hex() == "00000000000000030102030405060708" + "".join(
        f"{n:016x}" for n in (1, 2, 3, 4, 5)
    )
    assert encode_sa_index(0x0A0B0C0D) == (Tlv(0x0001, bytes.fromhex("0a0b0c0d")),)
    assert encode_count(3) == (Tlv(0x000F, b"\0\0\0\3"),)
    vlan = VlanTag(EtherType.VLAN, 0x2064)
    assert encode_local_addr(LocalAddr(bytes(6), (vlan,))) == (
        Tlv(0x0009, bytes(6)),
        Tlv(0x000A, bytes.fromhex("81002064")),
    )


def test_enums_and_algorithm_lengths() -> None:
    assert [int(o) for o in Opcode] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0x80]
    assert (Opcode.LIST_SAS, Opcode.EVENT) == (0x08, 0x09)
    assert [int(s) for s in ConfigStatus] == list(range(8))
    assert [int(t) for t in TlvType] == list(range(1, 0x19))
    assert [(t.name, int(t)) for t in TlvType if t >= 0x14] == [
        ("SA_ENTRY", 0x14),
        ("EVENT_TYPE", 0x15),
        ("BOOT_ID", 0x16),
        ("SOFT_LIFETIME_PACKETS", 0x17),
        ("SOFT_LIFETIME_BYTES", 0x18),
    ]
    assert [(e.name, int(e)) for e in EventType] == [
        ("AGENT_STARTED", 1),
        ("SOFT_EXPIRE", 2),
        ("HARD_EXPIRE", 3),
        ("SEQ_SOFT_LIMIT", 4),
    ]
    kek = bytes(16)
    for alg, key_len in ((Algorithm.AES_GCM_128, 16), (Algorithm.AES_GCM_256, 32)):
        assert alg.key_length == key_len
        assert alg.key_material_length == key_len + 4
        wrapped = aes_key_wrap_with_padding(kek, bytes(alg.key_material_length))
        assert alg.wrapped_key_length == len(wrapped)


def test_reply_opcode_helpers() -> None:
    msg = ConfigMessage(Opcode.REMOVE_SA | Opcode.REPLY, 1, (), ConfigStatus.NOT_FOUND)
    assert msg.is_reply and msg.base_opcode == Opcode.REMOVE_SA
    assert not ConfigMessage(Opcode.REMOVE_SA, 1, ()).is_reply


def test_other_version_parses_header_only() -> None:
    wire = bytes.fromhex("02 06 00 00 01 ff 12345678 ffff")
    msg = parse_config(wire)
    assert msg == ConfigMessage(Opcode.GET_SA_STATS, 0x12345678, (), port=1, version=2)
    assert parse_config_header(wire) == msg


def test_header_only_parse_ignores_body() -> None:
    assert parse_config_header(KNOWN_ADD_SA) == replace(parse_config(KNOWN_ADD_SA), tlvs=())


def test_ethernet_padding_after_tlvs_is_ignored() -> None:
    wire = build_config(ConfigMessage(Opcode.GET_CAPS, 9, ()))
    assert parse_config(wire + bytes(34)) == parse_config(wire)


@pytest.mark.parametrize(
    ("wire", "offset", "message"),
    [
        ("01 07 00 00 00", 5, "shorter than the 12-byte header"),
        ("01 07 00 00 00 01 00000001 0000", 5, "reserved"),
        ("01 07 00 00 00 00 00000001 0005 0001 00", 10, "tlv_length 5 exceeds the 3"),
        ("01 07 00 00 00 00 00000001 0003 0001 00", 12, "truncated TLV header"),
        ("01 07 00 00 00 00 00000001 0006 0001 0004 0000 0000", 12, "SA_INDEX value of 4"),
    ],
)
def test_malformed_frames(wire: str, offset: int, message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        parse_config(bytes.fromhex(wire))
    assert (info.value.layer, info.value.offset) == ("config", offset)


tlvs_strategy = st.lists(
    st.builds(Tlv, st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=6
).map(tuple)
messages = st.builds(
    ConfigMessage,
    opcode=st.integers(0, 255),
    txn_id=st.integers(0, 0xFFFF_FFFF),
    tlvs=tlvs_strategy,
    status=st.integers(0, 255),
    flags=st.integers(0, 255),
    port=st.integers(0, 255),
)


@given(messages)
def test_message_round_trip_and_truncations(msg: ConfigMessage) -> None:
    wire = build_config(msg)
    assert parse_config(memoryview(wire)) == msg
    for cut in range(len(wire)):
        with pytest.raises(ParseError):
            parse_config(wire[:cut])


@given(st.binary(max_size=48))
def test_random_bytes_raise_only_parse_error(data: bytes) -> None:
    for candidate in (data, b"\x01" + data, bytes.fromhex("010100000000") + data):
        try:
            msg = parse_config(candidate)
        except ParseError as exc:
            assert exc.layer == "config"
        else:
            assert msg.version != 1 or candidate.startswith(build_config(msg))


def _fixed(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)
vlan_tags = st.builds(
    VlanTag, st.sampled_from([EtherType.VLAN, EtherType.QINQ]), st.integers(0, 0xFFFF)
)


@st.composite
def add_sa_requests(draw: st.DrawFn) -> AddSaRequest:
    alg = draw(st.sampled_from(Algorithm))
    addr_len = draw(st.sampled_from([4, 16]))
    wrapped = draw(st.booleans())
    return AddSaRequest(
        direction=draw(st.sampled_from(Direction)),
        spi=draw(st.integers(1, 0xFFFF_FFFF)),
        dst=draw(_fixed(addr_len)),
        alg=alg,
        key=None if wrapped else draw(_fixed(alg.key_material_length)),
        wrapped_key=draw(_fixed(alg.wrapped_key_length)) if wrapped else None,
        kek_id=draw(u32) if wrapped else None,
        src=draw(st.none() | _fixed(addr_len)),
        local_mac=draw(st.none() | _fixed(6)),
        vlans=tuple(draw(st.lists(vlan_tags, max_size=2))),
        esn=draw(st.booleans()),
        seq=draw(st.none() | u64),
        replay_window=draw(st.none() | u32),
        lifetime_packets=draw(st.none() | u64),
        lifetime_bytes=draw(st.none() | u64),
        soft_lifetime_packets=draw(st.none() | u64),
        soft_lifetime_bytes=draw(st.none() | u64),
    )


@given(add_sa_requests(), st.randoms())
def test_add_sa_round_trip_in_any_order(req: AddSaRequest, rnd: random.Random) -> None:
    tlvs = encode_add_sa(req)
    assert decode_add_sa(tlvs) == req
    shuffled = list(tlvs)
    rnd.shuffle(shuffled)
    vlans = [t for t in tlvs if t.type == TlvType.VLAN]
    ordered = [t for t in shuffled if t.type != TlvType.VLAN] + vlans
    assert decode_add_sa(ordered) == req
    wire = build_config(ConfigMessage(Opcode.ADD_SA, 1, tlvs))
    assert decode_add_sa(parse_config(wire).tlvs) == req


def _mutations(tlvs: tuple[Tlv, ...]) -> st.SearchStrategy[list[Tlv]]:
    index = st.integers(0, len(tlvs) - 1)
    random_tlv = st.builds(Tlv, st.integers(0, 0x19), st.binary(max_size=40))
    return st.one_of(
        index.map(lambda i: [*tlvs[:i], *tlvs[i + 1 :]]),
        index.map(lambda i: [*tlvs, tlvs[i]]),
        st.tuples(index, st.binary(max_size=40)).map(
            lambda p: [*tlvs[: p[0]], Tlv(tlvs[p[0]].type, p[1]), *tlvs[p[0] + 1 :]]
        ),
        st.tuples(index, random_tlv).map(lambda p: [*tlvs[: p[0]], p[1], *tlvs[p[0] :]]),
    )


@given(st.data())
def test_mutated_add_sa_decodes_or_raises_parse_error(data: st.DataObject) -> None:
    tlvs = encode_add_sa(data.draw(add_sa_requests()))
    mutated = data.draw(_mutations(tlvs))
    try:
        req = decode_add_sa(mutated)
    except ParseError as exc:
        assert exc.layer == "config"
        wire = build_config(ConfigMessage(Opcode.ADD_SA, 1, tuple(mutated)))
        assert 12 <= exc.offset <= len(wire)
    else:
        assert decode_add_sa(encode_add_sa(req)) == req


def _base() -> list[Tlv]:
    req = AddSaRequest(Direction.OUTBOUND, 0x1234, DST4, Algorithm.AES_GCM_128, KEY128)
    return list(encode_add_sa(req))


def _without(tlv_type: TlvType) -> list[Tlv]:
    return [t for t in _base() if t.type != tlv_type]


def _with_value(tlv_type: TlvType, value: bytes) -> list[Tlv]:
    return [Tlv(t.type, value) if t.type == tlv_type else t for t in _base()]


VLAN = Tlv(TlvType.VLAN, bytes.fromhex("81000001"))
WRAPPED = Tlv(TlvType.WRAPPED_KEY, bytes(32))
KEK = Tlv(TlvType.KEK_ID, bytes(4))

BAD_ADD_SA: list[tuple[str, list[Tlv], str]] = [
    ("unknown type", [*_base(), Tlv(0x0099, b"")], "unknown TLV type 0x0099"),
    ("reply TLV", [*_base(), Tlv(TlvType.SA_INDEX, bytes(4))], "SA_INDEX does not belong"),
    ("no DIR", _without(TlvType.DIR), "missing TLV DIR"),
    ("no SPI", _without(TlvType.SPI), "missing TLV SPI"),
    ("no DST", _without(TlvType.DST_ADDR), "missing TLV DST_ADDR"),
    ("no ALG", _without(TlvType.ALG), "missing TLV ALG"),
    ("no key", _without(TlvType.KEY), "exactly one of KEY and WRAPPED_KEY"),
    ("two keys", [*_base(), WRAPPED, KEK], "exactly one of KEY and WRAPPED_KEY"),
    ("no KEK_ID", [*_without(TlvType.KEY), WRAPPED], "KEK_ID goes with WRAPPED_KEY"),
    ("stray KEK_ID", [*_base(), KEK], "KEK_ID goes with WRAPPED_KEY"),
    ("duplicate", [*_base(), Tlv(TlvType.SPI, b"\0\0\0\1")], "duplicate TLV SPI"),
    ("SPI length", _with_value(TlvType.SPI, b"\0\0\1"), "SPI value has 3 bytes, not 4"),
    ("SPI 0", _with_value(TlvType.SPI, bytes(4)), "SPI 0 is reserved"),
    ("DIR 2", _with_value(TlvType.DIR, b"\2"), "DIR 2 is neither 0 nor 1"),
    ("ALG 3", _with_value(TlvType.ALG, b"\3"), "unknown ALG 3"),
    ("KEY 36/128", _with_value(TlvType.KEY, bytes(36)), "KEY value has 36 bytes, not 20"),
    ("KEY 20/256", _with_value(TlvType.ALG, b"\2"), "KEY value has 20 bytes, not 36"),
    ("DST 5", _with_value(TlvType.DST_ADDR, bytes(5)), "DST_ADDR value has 5 bytes, not 4 or 16"),
    ("families", [*_base(), Tlv(TlvType.SRC_ADDR, bytes(16))], "different families"),
    ("3 VLANs", [*_base(), VLAN, VLAN, VLAN], "3 VLAN TLVs, at most 2"),
    ("VLAN TPID", [*_base(), Tlv(TlvType.VLAN, bytes(4))], "VLAN TPID 0x0000"),
    ("VLAN length", [*_base(), Tlv(TlvType.VLAN, bytes(2))], "VLAN value has 2 bytes"),
    ("ESN value", [*_base(), Tlv(TlvType.ESN, b"\1")], "ESN value has 1 bytes, not 0"),
    ("MAC length", [*_base(), Tlv(TlvType.LOCAL_MAC, bytes(5))], "LOCAL_MAC value has 5"),
    ("window", [*_base(), Tlv(TlvType.REPLAY_WINDOW, bytes(8))], "REPLAY_WINDOW value has 8"),
    ("SEQ", [*_base(), Tlv(TlvType.SEQ, bytes(4))], "SEQ value has 4 bytes, not 8"),
    (
        "soft packets",
        [*_base(), Tlv(TlvType.SOFT_LIFETIME_PACKETS, bytes(4))],
        "SOFT_LIFETIME_PACKETS value has 4 bytes, not 8",
    ),
    (
        "soft bytes",
        [*_base(), Tlv(TlvType.SOFT_LIFETIME_BYTES, bytes(9))],
        "SOFT_LIFETIME_BYTES value has 9 bytes, not 8",
    ),
    (
        "soft twice",
        [*_base(), *(Tlv(TlvType.SOFT_LIFETIME_BYTES, bytes(8)),) * 2],
        "duplicate TLV SOFT_LIFETIME_BYTES",
    ),
    ("SA_ENTRY", [*_base(), Tlv(TlvType.SA_ENTRY, bytes(22))], "SA_ENTRY does not belong"),
    ("BOOT_ID", [*_base(), Tlv(TlvType.BOOT_ID, bytes(8))], "BOOT_ID does not belong"),
    (
        "wrapped length",
        [*_without(TlvType.KEY), Tlv(TlvType.WRAPPED_KEY, bytes(24)), KEK],
        "WRAPPED_KEY value has 24 bytes, not 32",
    ),
]


@pytest.mark.parametrize(
    ("tlvs", "message"), [(t, m) for _, t, m in BAD_ADD_SA], ids=[n for n, _, _ in BAD_ADD_SA]
)
def test_decode_add_sa_rejects(tlvs: list[Tlv], message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        decode_add_sa(tlvs)
    assert info.value.layer == "config"


def test_decode_error_offsets_point_into_the_frame() -> None:
    tlvs = _with_value(TlvType.SPI, bytes(4))
    wire = build_config(ConfigMessage(Opcode.ADD_SA, 1, tuple(tlvs)))
    with pytest.raises(ParseError) as info:
        decode_add_sa(parse_config(wire).tlvs)
    assert wire[info.value.offset - 4 : info.value.offset] == b"\x00\x03\x00\x04"
    tlvs = [*_base(), Tlv(0x0099, b"")]
    wire = build_config(ConfigMessage(Opcode.ADD_SA, 1, tuple(tlvs)))
    with pytest.raises(ParseError) as info:
        decode_add_sa(parse_config(wire).tlvs)
    assert wire[info.value.offset :] == b"\x00\x99\x00\x00"
    with pytest.raises(ParseError) as info:
        decode_add_sa(_without(TlvType.ALG))
    assert info.value.offset == 12 + sum(4 + len(t.value) for t in _without(TlvType.ALG))


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (AddSaRequest(Direction.INBOUND, 1, DST4, Algorithm.AES_GCM_128), "exactly one"),
        (AddSaRequest(Direction.INBOUND, 0, DST4, Algorithm.AES_GCM_128, KEY128), "SPI 0"),
        (AddSaRequest(Direction.INBOUND, 1 << 32, DST4, Algorithm.AES_GCM_128, KEY128), "SPI"),
        (AddSaRequest(Direction.INBOUND, 1, DST4, Algorithm.AES_GCM_256, KEY128), "KEY value"),
        (
            AddSaRequest(Direction.INBOUND, 1, DST4, Algorithm.AES_GCM_128, KEY128, seq=-1),
            "SEQ",
        ),
        (
            AddSaRequest(
                Direction.INBOUND,
                1,
                DST4,
                Algorithm.AES_GCM_128,
                KEY128,
                vlans=(VlanTag(EtherType.VLAN, 1),) * 3,
            ),
            "VLAN",
        ),
    ],
)
def test_encode_add_sa_rejects_impossible_requests(req: AddSaRequest, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        encode_add_sa(req)


@given(u32)
def test_sa_index_and_count_round_trip(value: int) -> None:
    assert decode_sa_index(encode_sa_index(value)) == value
    assert decode_count(encode_count(value)) == value


@given(_fixed(6), st.lists(vlan_tags, max_size=2))
def test_local_addr_round_trip(mac: bytes, vlans: list[VlanTag]) -> None:
    addr = LocalAddr(mac, tuple(vlans))
    assert decode_local_addr(encode_local_addr(addr)) == addr


@given(u64, u64, st.tuples(u64, u64, u64, u64, u64))
def test_sa_stats_round_trip(
    packets: int, octets: int, errors: tuple[int, int, int, int, int]
) -> None:
    stats = SaStats(packets, octets, errors)
    assert decode_sa_stats(encode_sa_stats(stats)) == stats


@given(st.lists(st.sampled_from(Algorithm), max_size=5), u32, u32)
def test_caps_round_trip(algorithms: list[Algorithm], sad_size: int, window: int) -> None:
    caps = Caps(tuple(algorithms), sad_size, window)
    assert decode_caps(encode_caps(caps)) == caps


def test_caps_skip_unknown_algorithms() -> None:
    tlv = Tlv(TlvType.CAPS, bytes.fromhex("03 01 09 02 00000010 00000040"))
    assert decode_caps([tlv]) == Caps((Algorithm.AES_GCM_128, Algorithm.AES_GCM_256), 16, 64)


Decoder = Callable[[list[Tlv]], object]
SMALL_DECODERS: list[tuple[Decoder, TlvType, int]] = [
    (decode_sa_index, TlvType.SA_INDEX, 4),
    (decode_count, TlvType.COUNT, 4),
    (decode_sa_stats, TlvType.STATS, 56),
    (decode_local_addr, TlvType.LOCAL_MAC, 6),
    (decode_caps, TlvType.CAPS, 9),
]


@pytest.mark.parametrize(("decode", "tlv_type", "size"), SMALL_DECODERS)
def test_small_decoders_reject_bad_bodies(decode: Decoder, tlv_type: TlvType, size: int) -> None:
    good = Tlv(tlv_type, bytes(size))
    decode([good])
    bad_bodies = [
        [],
        [good, good],
        [good, Tlv(0x0099, b"")],
        [good, Tlv(TlvType.SPI, bytes(4))],
        [Tlv(tlv_type, bytes(size + 1))],
    ]
    for body in bad_bodies:
        with pytest.raises(ParseError):
            decode(body)


@pytest.mark.parametrize("value", ["", "01", "010100000001000000", "02010000000100000001"])
def test_caps_length_mismatch(value: str) -> None:
    with pytest.raises(ParseError, match="CAPS"):
        decode_caps([Tlv(TlvType.CAPS, bytes.fromhex(value))])


def test_decode_empty() -> None:
    decode_empty(())
    with pytest.raises(ParseError, match="does not belong"):
        decode_empty([Tlv(TlvType.SA_INDEX, bytes(4))])
    with pytest.raises(ParseError, match="unknown"):
        decode_empty([Tlv(0x1234, b"")])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_config(ConfigMessage(1, 1 << 32, ())), "txn_id"),
        (lambda: build_config(ConfigMessage(256, 1, ())), "opcode"),
        (lambda: build_config(ConfigMessage(1, 1, (), port=-1)), "port"),
        (lambda: build_config(ConfigMessage(1, 1, (Tlv(0x10000, b""),))), "TLV type"),
        (lambda: build_config(ConfigMessage(1, 1, (Tlv(1, bytes(0x10000)),))), "65535"),
        (lambda: build_config(ConfigMessage(1, 1, (Tlv(1, bytes(0x8000)),) * 2)), "tlv_length"),
        (lambda: encode_sa_index(1 << 32), "SA_INDEX"),
        (lambda: encode_count(-1), "COUNT"),
        (lambda: encode_local_addr(LocalAddr(bytes(5))), "LOCAL_MAC"),
        (lambda: encode_sa_stats(SaStats(0, 0, (0, 0, 0, 0))), "error counters"),  # type: ignore[arg-type]
        (lambda: encode_sa_stats(SaStats(-1, 0, (0, 0, 0, 0, 0))), "STATS"),
        (lambda: encode_caps(Caps((Algorithm.AES_GCM_128,), 1 << 32, 0)), "SAD size"),
        (lambda: encode_caps(Caps((7,), 1, 0)), "algorithm"),  # type: ignore[arg-type]
    ],
)
def test_encoders_reject_impossible_values(call: Callable[[], object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call()


# -- spec 1.1 (section 9): soft lifetimes, BOOT_ID, SA_ENTRY, LIST_SAS, EVENT -------------
#
# The expected bytes below are written out by hand from the spec 9 tables, not produced by
# the encoders.

DST6 = bytes.fromhex("20010db8000000000000000000000002")

KNOWN_ADD_SA_SOFT = bytes.fromhex(
    "01 01 00 00 00 00 0000002a"
    "004a"  # tlv_length 50 + 2 x 12 = 74
    "0002 0001 01"  # DIR outbound
    "0003 0004 00001234"  # SPI
    "0004 0004 c0a80002"  # DST_ADDR
    "0006 0001 01"  # ALG AES-GCM-128
    "0007 0014 000102030405060708090a0b0c0d0e0f10111213"  # KEY
    "0017 0008 00000000000003e8"  # SOFT_LIFETIME_PACKETS 1000
    "0018 0008 0000000000100000"  # SOFT_LIFETIME_BYTES 1 MiB
)


def test_known_add_sa_with_soft_lifetimes() -> None:
    req = AddSaRequest(
        Direction.OUTBOUND,
        0x1234,
        DST4,
        Algorithm.AES_GCM_128,
        KEY128,
        soft_lifetime_packets=1000,
        soft_lifetime_bytes=1 << 20,
    )
    assert decode_add_sa(parse_config(KNOWN_ADD_SA_SOFT).tlvs) == req
    assert build_config(ConfigMessage(Opcode.ADD_SA, 42, encode_add_sa(req))) == KNOWN_ADD_SA_SOFT
    # spec 1.0 requests, without them, still decode: None
    old = decode_add_sa(parse_config(KNOWN_ADD_SA).tlvs)
    assert (old.soft_lifetime_packets, old.soft_lifetime_bytes) == (None, None)


# SA index 3, outbound, SPI 0x1234, 192.168.0.2, next number 2^32 + 5
ENTRY4_VALUE = "00000003 01 00001234 04 c0a80002 0000000100000005"
ENTRY4 = SaEntry(3, Direction.OUTBOUND, 0x1234, DST4, (1 << 32) + 5)
# SA index 0x0a0b0c0d, inbound, SPI 0xfedcba98, 2001:db8::2, highest accepted 64
ENTRY6_VALUE = "0a0b0c0d 00 fedcba98 10 20010db8000000000000000000000002 0000000000000040"
ENTRY6 = SaEntry(0x0A0B0C0D, Direction.INBOUND, 0xFEDCBA98, DST6, 64)


def test_known_sa_entries() -> None:
    for value, entry, size in ((ENTRY4_VALUE, ENTRY4, 22), (ENTRY6_VALUE, ENTRY6, 34)):
        wire = bytes.fromhex(value)
        assert len(wire) == size
        assert decode_sa_entry(wire) == entry
        assert decode_sa_entry(memoryview(wire)) == entry
        assert encode_sa_entry(entry) == wire


def test_known_list_sas_request() -> None:
    wire = bytes.fromhex(
        "01 08 00 00 00 00 00000030 001a"  # LIST_SAS, txn 0x30, 26 bytes of TLVs
        "0009 0006 020000000010"  # LOCAL_MAC
        "000a 0004 81000064"  # VLAN 100
        "0001 0004 00000005"  # SA_INDEX: the cursor, 5
    )
    req = ListSasRequest(bytes.fromhex("020000000010"), (VlanTag(EtherType.VLAN, 100),), 5)
    msg = parse_config(wire)
    assert (msg.opcode, msg.txn_id) == (Opcode.LIST_SAS, 0x30)
    assert decode_list_sas_request(msg.tlvs) == req
    assert build_config(ConfigMessage(Opcode.LIST_SAS, 0x30, encode_list_sas_request(req))) == wire
    every = bytes.fromhex("01 08 00 00 00 00 00000031 0000")  # no domain, no cursor: all
    assert decode_list_sas_request(parse_config(every).tlvs) == ListSasRequest()
    assert build_config(ConfigMessage(8, 0x31, encode_list_sas_request(ListSasRequest()))) == every
    cursor_only = bytes.fromhex("01 08 00 00 00 00 00000032 0008 0001 0004 00000036")
    assert decode_list_sas_request(parse_config(cursor_only).tlvs) == ListSasRequest(cursor=54)


def test_known_list_sas_reply() -> None:
    wire = bytes.fromhex(
        "01 88 00 00 00 00 00000030 0048"  # LIST_SAS reply, OK, 72 bytes of TLVs
        f"0014 0016 {ENTRY4_VALUE}"  # SA_ENTRY, 22 bytes
        f"0014 0022 {ENTRY6_VALUE}"  # SA_ENTRY, 34 bytes
        "0001 0004 00000000"  # SA_INDEX: next cursor 0, the listing is complete
    )
    reply = ListSasReply((ENTRY4, ENTRY6), 0)
    msg = parse_config(wire)
    assert msg.is_reply and msg.base_opcode == Opcode.LIST_SAS
    assert decode_list_sas_reply(msg.tlvs) == reply
    built = ConfigMessage(Opcode.LIST_SAS | Opcode.REPLY, 0x30, encode_list_sas_reply(reply))
    assert build_config(built) == wire
    more = bytes.fromhex(
        f"01 88 00 00 00 00 00000030 0022 0014 0016 {ENTRY4_VALUE} 0001 0004 00000004"
    )
    assert decode_list_sas_reply(parse_config(more).tlvs) == ListSasReply((ENTRY4,), 4)
    empty = bytes.fromhex("01 88 00 00 00 00 00000030 0008 0001 0004 00000000")
    assert decode_list_sas_reply(parse_config(empty).tlvs) == ListSasReply((), 0)


def test_known_events_and_their_reply() -> None:
    soft = bytes.fromhex(
        "01 09 00 00 00 00 00000040 0019"  # EVENT, txn 0x40, 25 bytes of TLVs
        "0015 0001 02"  # EVENT_TYPE SOFT_EXPIRE
        "0016 0008 0123456789abcdef"  # BOOT_ID
        "0001 0004 00000007"  # SA_INDEX 7
    )
    started = bytes.fromhex(
        "01 09 00 00 00 00 00000041 0011"  # EVENT, txn 0x41, 17 bytes of TLVs
        "0015 0001 01"  # EVENT_TYPE AGENT_STARTED
        "0016 0008 fedcba9876543210"  # BOOT_ID
    )
    for wire, txn, event in (
        (soft, 0x40, Event(EventType.SOFT_EXPIRE, 0x0123456789ABCDEF, 7)),
        (started, 0x41, Event(EventType.AGENT_STARTED, 0xFEDCBA9876543210)),
    ):
        msg = parse_config(wire)
        assert (msg.opcode, msg.txn_id, msg.is_reply) == (Opcode.EVENT, txn, False)
        assert decode_event(msg.tlvs) == event
        assert build_config(ConfigMessage(Opcode.EVENT, txn, encode_event(event))) == wire
    ack = bytes.fromhex("01 89 00 00 00 00 00000040 0000")  # the PF's answer: empty, OK
    assert parse_config(ack) == ConfigMessage(Opcode.EVENT | Opcode.REPLY, 0x40, ())
    decode_empty(parse_config(ack).tlvs)


def test_known_caps_reply_with_boot_id() -> None:
    wire = bytes.fromhex(
        "01 87 00 00 00 00 00000007 001b"  # GET_CAPS reply, 27 bytes of TLVs
        "0011 000b 02 01 02 00000400 00001000"  # CAPS
        "0016 0008 00000000deadbeef"  # BOOT_ID
    )
    caps = Caps((Algorithm.AES_GCM_128, Algorithm.AES_GCM_256), 1024, 4096, 0xDEADBEEF)
    assert decode_caps(parse_config(wire).tlvs) == caps
    assert build_config(ConfigMessage(0x87, 7, encode_caps(caps))) == wire
    # a spec 1.0 agent's reply has no BOOT_ID: None (and BOOT_ID 0 is a BOOT_ID)
    old = bytes.fromhex("01 87 00 00 00 00 00000007 000f 0011 000b 02 01 02 00000400 00001000")
    assert decode_caps(parse_config(old).tlvs).boot_id is None
    zero = [*encode_caps(caps)[:1], Tlv(TlvType.BOOT_ID, bytes(8))]
    assert decode_caps(zero).boot_id == 0


sa_entries = st.builds(
    SaEntry,
    sa_index=u32,
    direction=st.sampled_from(Direction),
    spi=st.integers(1, 0xFFFF_FFFF),
    dst=st.sampled_from([4, 16]).flatmap(_fixed),
    seq=u64,
)


@given(sa_entries)
def test_sa_entry_round_trip(entry: SaEntry) -> None:
    value = encode_sa_entry(entry)
    assert len(value) == 18 + len(entry.dst)
    assert decode_sa_entry(value) == entry
    (tlv, _) = encode_list_sas_reply(ListSasReply((entry,), 0))
    assert tlv == Tlv(TlvType.SA_ENTRY, value)


@given(st.none() | _fixed(6), st.lists(vlan_tags, max_size=2), st.none() | u32)
def test_list_sas_request_round_trip(
    mac: bytes | None, vlans: list[VlanTag], cursor: int | None
) -> None:
    req = ListSasRequest(mac, tuple(vlans) if mac is not None else (), cursor)
    tlvs = encode_list_sas_request(req)
    assert decode_list_sas_request(tlvs) == req
    wire = build_config(ConfigMessage(Opcode.LIST_SAS, 1, tlvs))
    assert decode_list_sas_request(parse_config(wire).tlvs) == req


@st.composite
def ascending_entries(draw: st.DrawFn) -> list[SaEntry]:
    indexes = sorted(draw(st.sets(st.integers(1, 0xFFFF_FFFF), max_size=70)))
    return [replace(draw(sa_entries), sa_index=i) for i in indexes]


@given(ascending_entries(), st.integers(8 + 38 + 1, 1400))
def test_packed_list_sas_replies_round_trip(entries: list[SaEntry], limit: int) -> None:
    reply = pack_list_sas_reply(iter(entries), limit)
    n = len(reply.entries)
    assert list(reply.entries) == entries[:n]
    assert reply.next_cursor == (entries[n].sa_index if n < len(entries) else 0)
    tlvs = encode_list_sas_reply(reply)
    size = sum(4 + len(t.value) for t in tlvs)
    assert size <= limit
    if n < len(entries):  # the next entry would not have fitted
        assert size + 4 + 18 + len(entries[n].dst) > limit
    wire = build_config(ConfigMessage(Opcode.LIST_SAS | Opcode.REPLY, 1, tlvs))
    assert decode_list_sas_reply(parse_config(wire).tlvs) == reply


def _entries(start: int, count: int, dst: bytes) -> list[SaEntry]:
    return [SaEntry(i, Direction.INBOUND, 0x100 + i, dst, i) for i in range(start, start + count)]


def test_pack_list_sas_reply_fills_1400_bytes() -> None:
    # 36 IPv4 entries (26 bytes each) and 12 IPv6 ones (38) are 1392 bytes: with the
    # 8-byte cursor, exactly 1400
    exact = _entries(1, 36, DST4) + _entries(37, 12, DST6)
    reply = pack_list_sas_reply(exact)
    assert reply == ListSasReply(tuple(exact), 0)
    assert sum(4 + len(t.value) for t in encode_list_sas_reply(reply)) == 1400
    one_more = [*exact, *_entries(49, 1, DST4)]
    assert pack_list_sas_reply(one_more) == ListSasReply(tuple(exact), 49)
    # 53 IPv4 entries fit (1378 + 8 bytes), the 54th does not
    many = _entries(10, 60, DST4)
    assert pack_list_sas_reply(many) == ListSasReply(tuple(many[:53]), 63)
    # 36 IPv6 entries fit (1368 + 8), the 37th does not
    assert pack_list_sas_reply(_entries(1, 40, DST6)).next_cursor == 37
    assert pack_list_sas_reply([]) == ListSasReply((), 0)


def test_pack_list_sas_reply_reads_no_further_than_it_needs() -> None:
    read: list[int] = []

    def sad() -> Iterator[SaEntry]:
        for entry in _entries(1, 1000, DST6):
            read.append(entry.sa_index)
            yield entry

    assert pack_list_sas_reply(sad(), 100).next_cursor == 3
    assert read == [1, 2, 3]


@pytest.mark.parametrize(
    ("entries", "limit", "message"),
    [
        (_entries(5, 1, DST4) + _entries(5, 1, DST4), 1400, "ascending"),
        (_entries(5, 1, DST4) + _entries(4, 1, DST4), 1400, "ascending"),
        (_entries(1, 1, DST6), 45, "cannot hold one SA_ENTRY"),
        (_entries(1, 1, DST4), 1401, "max_tlv_bytes"),
        (_entries(1, 1, DST4), 8, "max_tlv_bytes"),
    ],
)
def test_pack_list_sas_reply_rejects(entries: list[SaEntry], limit: int, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        pack_list_sas_reply(entries, limit)


@given(st.sampled_from(EventType), u64, u32)
def test_event_round_trip(event_type: EventType, boot_id: int, sa_index: int) -> None:
    event = Event(event_type, boot_id, None if event_type is EventType.AGENT_STARTED else sa_index)
    tlvs = encode_event(event)
    assert decode_event(tlvs) == event
    assert decode_event(reversed(tlvs)) == event
    wire = build_config(ConfigMessage(Opcode.EVENT, 1, tlvs))
    assert decode_event(parse_config(wire).tlvs) == event


@given(st.lists(st.sampled_from(Algorithm), max_size=5), u32, u32, st.none() | u64)
def test_caps_with_boot_id_round_trip(
    algorithms: list[Algorithm], sad_size: int, window: int, boot_id: int | None
) -> None:
    caps = Caps(tuple(algorithms), sad_size, window, boot_id)
    tlvs = encode_caps(caps)
    assert len(tlvs) == (1 if boot_id is None else 2)
    assert decode_caps(tlvs) == caps
    assert decode_caps(reversed(tlvs)) == caps


def _value(text: str) -> bytes:
    return bytes.fromhex(text)


BAD_SA_ENTRY: list[tuple[str, str, int, str]] = [
    ("empty", "", 0, "SA_ENTRY value has 0 bytes, not 22 or 34"),
    ("21 bytes", ENTRY4_VALUE[:-2], 0, "has 21 bytes, not 22 or 34"),
    ("23 bytes", ENTRY4_VALUE + "00", 0, "has 23 bytes, not 22 or 34"),
    ("33 bytes", ENTRY6_VALUE[:-2], 0, "has 33 bytes"),
    ("35 bytes", ENTRY6_VALUE + "00", 0, "has 35 bytes"),
    ("DIR 2", "00000003 02 00001234 04 c0a80002 0000000000000001", 4, "DIR 2 is neither"),
    ("DIR 255", "00000003 ff 00001234 04 c0a80002 0000000000000001", 4, "DIR 255"),
    ("SPI 0", "00000003 01 00000000 04 c0a80002 0000000000000001", 5, "SPI 0 is reserved"),
    ("address length 0", "00000003 01 00001234 00 c0a80002 0000000000000001", 9, "length 0 is"),
    ("address length 5", "00000003 01 00001234 05 c0a80002 0000000000000001", 9, "length 5 is"),
    (
        "address length 16 in 22 bytes",
        "00000003 01 00001234 10 c0a80002 0000000000000001",
        9,
        "address length 16 does not match the 22-byte value",
    ),
    (
        "address length 4 in 34 bytes",
        "0a0b0c0d 00 fedcba98 04 20010db8000000000000000000000002 0000000000000040",
        9,
        "address length 4 does not match the 34-byte value",
    ),
]


@pytest.mark.parametrize(
    ("value", "where", "message"),
    [c[1:] for c in BAD_SA_ENTRY],
    ids=[c[0] for c in BAD_SA_ENTRY],
)
def test_decode_sa_entry_rejects(value: str, where: int, message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        decode_sa_entry(_value(value))
    assert (info.value.layer, info.value.offset) == ("config", where)
    # in a LIST_SAS reply the offset points into the frame
    tlv = Tlv(TlvType.SA_ENTRY, _value(value))
    wire = build_config(ConfigMessage(0x88, 1, (tlv, *encode_sa_index(0))))
    with pytest.raises(ParseError, match=message) as info:
        decode_list_sas_reply(parse_config(wire).tlvs)
    if where:  # a wrong length points at the TLV's length field
        assert info.value.offset == 16 + where
        assert wire[info.value.offset] == _value(value)[where]
    else:
        assert info.value.offset == 14


MAC = Tlv(TlvType.LOCAL_MAC, bytes.fromhex("020000000010"))
CURSOR = Tlv(TlvType.SA_INDEX, bytes.fromhex("00000005"))

BAD_LIST_SAS_REQUEST: list[tuple[str, list[Tlv], str]] = [
    ("cursor twice", [MAC, CURSOR, CURSOR], "duplicate TLV SA_INDEX"),
    ("MAC twice", [MAC, MAC], "duplicate TLV LOCAL_MAC"),
    ("cursor of 2 bytes", [Tlv(TlvType.SA_INDEX, b"\0\5")], "SA_INDEX value has 2 bytes, not 4"),
    ("cursor of 8 bytes", [Tlv(TlvType.SA_INDEX, bytes(8))], "SA_INDEX value has 8 bytes"),
    ("MAC of 5 bytes", [Tlv(TlvType.LOCAL_MAC, bytes(5))], "LOCAL_MAC value has 5 bytes"),
    ("3 VLANs", [MAC, VLAN, VLAN, VLAN], "3 VLAN TLVs, at most 2"),
    ("VLAN TPID", [MAC, Tlv(TlvType.VLAN, bytes(4))], "VLAN TPID 0x0000"),
    ("VLAN without MAC", [VLAN, CURSOR], "VLAN without LOCAL_MAC"),
    ("unknown type", [MAC, Tlv(0x0099, b"")], "unknown TLV type 0x0099"),
    ("SPI", [MAC, Tlv(TlvType.SPI, bytes(4))], "SPI does not belong"),
    ("SA_ENTRY", [Tlv(TlvType.SA_ENTRY, _value(ENTRY4_VALUE))], "SA_ENTRY does not belong"),
]


@pytest.mark.parametrize(
    ("tlvs", "message"),
    [c[1:] for c in BAD_LIST_SAS_REQUEST],
    ids=[c[0] for c in BAD_LIST_SAS_REQUEST],
)
def test_decode_list_sas_request_rejects(tlvs: list[Tlv], message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        decode_list_sas_request(tlvs)
    assert info.value.layer == "config"


E4 = Tlv(TlvType.SA_ENTRY, _value(ENTRY4_VALUE))  # SA 3
E6 = Tlv(TlvType.SA_ENTRY, _value(ENTRY6_VALUE))  # SA 0x0a0b0c0d
DONE = Tlv(TlvType.SA_INDEX, bytes(4))


def _cursor(index: int) -> Tlv:
    return Tlv(TlvType.SA_INDEX, index.to_bytes(4, "big"))


BAD_LIST_SAS_REPLY: list[tuple[str, list[Tlv], str]] = [
    ("no cursor", [E4, E6], "missing TLV SA_INDEX"),
    ("cursor twice", [E4, DONE, DONE], "duplicate TLV SA_INDEX"),
    ("cursor of 2 bytes", [E4, Tlv(TlvType.SA_INDEX, b"\0\0")], "SA_INDEX value has 2 bytes"),
    ("entry of 10 bytes", [Tlv(TlvType.SA_ENTRY, bytes(10)), DONE], "SA_ENTRY value has 10"),
    ("descending", [E6, E4, DONE], "index 3 after 168496141: not ascending"),
    ("same index", [E4, E4, DONE], "index 3 after 3: not ascending"),
    ("cursor at the last", [E4, _cursor(3)], "next cursor 3 is not above"),
    ("cursor behind", [E6, _cursor(4)], "next cursor 4 is not above"),
    ("LOCAL_MAC", [MAC, E4, DONE], "LOCAL_MAC does not belong"),
    ("unknown type", [E4, DONE, Tlv(0x0019, b"")], "unknown TLV type 0x0019"),
    # 2 x 38 + 51 x 26 + 8 bytes (the entries are not even looked at)
    ("1410 bytes", [E6, E6, *[E4] * 51, DONE], "1410 bytes of TLVs; LIST_SAS replies hold at most"),
]


@pytest.mark.parametrize(
    ("tlvs", "message"),
    [c[1:] for c in BAD_LIST_SAS_REPLY],
    ids=[c[0] for c in BAD_LIST_SAS_REPLY],
)
def test_decode_list_sas_reply_rejects(tlvs: list[Tlv], message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        decode_list_sas_reply(tlvs)
    assert info.value.layer == "config"


def test_list_sas_reply_size_limit_offsets() -> None:
    over = [E6, E6, *[E4] * 51, DONE]
    with pytest.raises(ParseError) as info:
        decode_list_sas_reply(over)
    # the 51st IPv4 entry is the first TLV to end past 1400 bytes of TLVs
    assert info.value.offset == 12 + 2 * 38 + 50 * 26
    # 1400 bytes exactly is a reply
    exact = [
        Tlv(TlvType.SA_ENTRY, encode_sa_entry(e))
        for e in _entries(1, 36, DST4) + _entries(37, 12, DST6)
    ]
    assert len(decode_list_sas_reply([*exact, DONE]).entries) == 48
    with pytest.raises(ParseError, match="1404 bytes"):
        decode_list_sas_reply([*exact, DONE, Tlv(TlvType.SA_ENTRY, b"")])


SOFT = Tlv(TlvType.EVENT_TYPE, b"\2")
STARTED = Tlv(TlvType.EVENT_TYPE, b"\1")
BOOT = Tlv(TlvType.BOOT_ID, bytes.fromhex("0123456789abcdef"))
SA7 = Tlv(TlvType.SA_INDEX, bytes.fromhex("00000007"))

BAD_EVENT: list[tuple[str, list[Tlv], str]] = [
    ("no EVENT_TYPE", [BOOT, SA7], "missing TLV EVENT_TYPE"),
    ("no BOOT_ID", [SOFT, SA7], "missing TLV BOOT_ID"),
    ("event type 0", [Tlv(TlvType.EVENT_TYPE, b"\0"), BOOT, SA7], "unknown EVENT_TYPE 0"),
    ("event type 5", [Tlv(TlvType.EVENT_TYPE, b"\5"), BOOT, SA7], "unknown EVENT_TYPE 5"),
    ("event type 255", [Tlv(TlvType.EVENT_TYPE, b"\xff"), BOOT], "unknown EVENT_TYPE 255"),
    (
        "EVENT_TYPE of 2 bytes",
        [Tlv(TlvType.EVENT_TYPE, b"\0\2"), BOOT, SA7],
        "EVENT_TYPE value has 2",
    ),
    ("EVENT_TYPE empty", [Tlv(TlvType.EVENT_TYPE, b""), BOOT, SA7], "EVENT_TYPE value has 0"),
    ("BOOT_ID of 4 bytes", [SOFT, Tlv(TlvType.BOOT_ID, bytes(4)), SA7], "BOOT_ID value has 4"),
    ("BOOT_ID of 16 bytes", [SOFT, Tlv(TlvType.BOOT_ID, bytes(16)), SA7], "BOOT_ID value has 16"),
    ("SA_INDEX of 8 bytes", [SOFT, BOOT, Tlv(TlvType.SA_INDEX, bytes(8))], "SA_INDEX value has 8"),
    ("EVENT_TYPE twice", [SOFT, SOFT, BOOT, SA7], "duplicate TLV EVENT_TYPE"),
    ("BOOT_ID twice", [SOFT, BOOT, BOOT, SA7], "duplicate TLV BOOT_ID"),
    ("SA_INDEX twice", [SOFT, BOOT, SA7, SA7], "duplicate TLV SA_INDEX"),
    ("started with an SA", [STARTED, BOOT, SA7], "SA_INDEX does not go with AGENT_STARTED"),
    ("expiry without SA", [SOFT, BOOT], "missing TLV SA_INDEX: SOFT_EXPIRE names an SA"),
    ("unknown type", [SOFT, BOOT, SA7, Tlv(0x0099, b"")], "unknown TLV type 0x0099"),
    ("COUNT", [SOFT, BOOT, SA7, Tlv(TlvType.COUNT, bytes(4))], "COUNT does not belong"),
]


@pytest.mark.parametrize(
    ("tlvs", "message"), [c[1:] for c in BAD_EVENT], ids=[c[0] for c in BAD_EVENT]
)
def test_decode_event_rejects(tlvs: list[Tlv], message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        decode_event(tlvs)
    assert info.value.layer == "config"
    wire = build_config(ConfigMessage(Opcode.EVENT, 1, tuple(tlvs)))
    assert 12 <= info.value.offset <= len(wire)


def test_decode_event_error_offsets_point_into_the_frame() -> None:
    wire = build_config(ConfigMessage(Opcode.EVENT, 1, (BOOT, Tlv(TlvType.EVENT_TYPE, b"\7"))))
    with pytest.raises(ParseError) as info:
        decode_event(parse_config(wire).tlvs)
    assert info.value.offset == 12 + 12 + 4 and wire[info.value.offset] == 7
    wire = build_config(ConfigMessage(Opcode.EVENT, 1, (STARTED, BOOT, SA7)))
    with pytest.raises(ParseError) as info:
        decode_event(parse_config(wire).tlvs)
    assert wire[info.value.offset :] == bytes.fromhex("0001 0004 00000007")


CAPS_TLV = Tlv(TlvType.CAPS, bytes.fromhex("01 01 00000010 00000040"))

BAD_CAPS: list[tuple[str, list[Tlv], str]] = [
    ("BOOT_ID twice", [CAPS_TLV, BOOT, BOOT], "duplicate TLV BOOT_ID"),
    ("BOOT_ID of 4 bytes", [CAPS_TLV, Tlv(TlvType.BOOT_ID, bytes(4))], "BOOT_ID value has 4"),
    ("BOOT_ID empty", [CAPS_TLV, Tlv(TlvType.BOOT_ID, b"")], "BOOT_ID value has 0"),
    ("BOOT_ID alone", [BOOT], "missing TLV CAPS"),
    ("EVENT_TYPE", [CAPS_TLV, BOOT, SOFT], "EVENT_TYPE does not belong"),
]


@pytest.mark.parametrize(
    ("tlvs", "message"), [c[1:] for c in BAD_CAPS], ids=[c[0] for c in BAD_CAPS]
)
def test_decode_caps_rejects(tlvs: list[Tlv], message: str) -> None:
    with pytest.raises(ParseError, match=message):
        decode_caps(tlvs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: encode_sa_entry(replace(ENTRY4, dst=bytes(5))), "address of 5 bytes"),
        (lambda: encode_sa_entry(replace(ENTRY4, spi=0)), "SPI 0"),
        (lambda: encode_sa_entry(replace(ENTRY4, spi=1 << 32)), "SA_ENTRY SPI"),
        (lambda: encode_sa_entry(replace(ENTRY4, direction=2)), "DIR 2"),  # type: ignore[arg-type]
        (lambda: encode_sa_entry(replace(ENTRY4, sa_index=-1)), "SA index"),
        (lambda: encode_sa_entry(replace(ENTRY4, seq=1 << 64)), "SA_ENTRY SEQ"),
        (lambda: encode_list_sas_request(ListSasRequest(vlans=(VlanTag(0x8100, 1),))), "LOCAL_MAC"),
        (lambda: encode_list_sas_request(ListSasRequest(cursor=1 << 32)), "SA_INDEX"),
        (lambda: encode_list_sas_request(ListSasRequest(bytes(7))), "LOCAL_MAC value has 7"),
        (lambda: encode_list_sas_reply(ListSasReply((ENTRY6, ENTRY4), 0)), "not ascending"),
        (lambda: encode_list_sas_reply(ListSasReply((ENTRY4,), 2)), "next cursor 2"),
        (lambda: encode_list_sas_reply(ListSasReply((ENTRY4,), -1)), "SA_INDEX"),
        (
            lambda: encode_list_sas_reply(ListSasReply(tuple(_entries(1, 54, DST4)), 0)),
            "1412 bytes of TLVs",
        ),
        (lambda: encode_event(Event(EventType.AGENT_STARTED, 1, 3)), "AGENT_STARTED"),
        (lambda: encode_event(Event(EventType.HARD_EXPIRE, 1)), "HARD_EXPIRE names an SA"),
        (lambda: encode_event(Event(9, 1, 3)), "unknown EVENT_TYPE 9"),  # type: ignore[arg-type]
        (lambda: encode_event(Event(EventType.SOFT_EXPIRE, 1 << 64, 3)), "BOOT_ID"),
        (lambda: encode_event(Event(EventType.SOFT_EXPIRE, 1, 1 << 32)), "SA_INDEX"),
        (lambda: encode_caps(Caps((), 1, 1, boot_id=-1)), "BOOT_ID"),
        (
            lambda: encode_add_sa(
                AddSaRequest(
                    Direction.INBOUND,
                    1,
                    DST4,
                    Algorithm.AES_GCM_128,
                    KEY128,
                    soft_lifetime_bytes=1 << 64,
                )
            ),
            "SOFT_LIFETIME_BYTES",
        ),
    ],
)
def test_spec_1_1_encoders_reject_impossible_values(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        call()


@given(st.binary(max_size=40))
def test_random_sa_entry_values_decode_or_raise_parse_error(value: bytes) -> None:
    try:
        entry = decode_sa_entry(value, 100)
    except ParseError as exc:
        assert exc.layer == "config" and 100 <= exc.offset < 100 + max(len(value), 1)
    else:
        assert encode_sa_entry(entry) == value


@st.composite
def spec_1_1_bodies(draw: st.DrawFn) -> tuple[Callable[[list[Tlv]], object], tuple[Tlv, ...]]:
    """A decoder and a valid, non-empty body for it."""
    kind = draw(st.sampled_from(["request", "reply", "event", "caps"]))
    if kind == "request":
        mac = draw(_fixed(6))
        vlans = tuple(draw(st.lists(vlan_tags, max_size=2)))
        return decode_list_sas_request, encode_list_sas_request(
            ListSasRequest(mac, vlans, draw(st.none() | u32))
        )
    if kind == "reply":
        reply = pack_list_sas_reply(draw(ascending_entries()), 200)
        return decode_list_sas_reply, encode_list_sas_reply(reply)
    if kind == "event":
        event_type = draw(st.sampled_from(EventType))
        sa_index = None if event_type is EventType.AGENT_STARTED else draw(u32)
        return decode_event, encode_event(Event(event_type, draw(u64), sa_index))
    caps = Caps(tuple(draw(st.lists(st.sampled_from(Algorithm), max_size=3))), 1, 2, draw(u64))
    return decode_caps, encode_caps(caps)


_ENCODERS: dict[object, Callable[[Any], tuple[Tlv, ...]]] = {
    decode_list_sas_request: encode_list_sas_request,
    decode_list_sas_reply: encode_list_sas_reply,
    decode_event: encode_event,
    decode_caps: encode_caps,
}


@given(st.data())
def test_mutated_spec_1_1_bodies_decode_or_raise_parse_error(data: st.DataObject) -> None:
    decode, tlvs = data.draw(spec_1_1_bodies())
    mutated = data.draw(_mutations(tlvs))
    try:
        body = decode(mutated)
    except ParseError as exc:
        assert exc.layer == "config"
        wire = build_config(ConfigMessage(Opcode.LIST_SAS, 1, tuple(mutated)))
        assert 12 <= exc.offset <= len(wire)
    else:
        assert decode(list(_ENCODERS[decode](body))) == body
