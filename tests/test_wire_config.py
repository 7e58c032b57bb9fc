"""Config frames, TLVs and the typed message bodies (spec section 4)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

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
    LocalAddr,
    Opcode,
    SaStats,
    Tlv,
    TlvType,
    build_config,
    decode_add_sa,
    decode_caps,
    decode_count,
    decode_empty,
    decode_local_addr,
    decode_sa_index,
    decode_sa_stats,
    encode_add_sa,
    encode_caps,
    encode_count,
    encode_local_addr,
    encode_sa_index,
    encode_sa_stats,
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
    assert [int(o) for o in Opcode] == [1, 2, 3, 4, 5, 6, 7, 0x80]
    assert [int(s) for s in ConfigStatus] == list(range(8))
    assert [int(t) for t in TlvType] == list(range(1, 0x14))
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
    random_tlv = st.builds(Tlv, st.integers(0, 0x14), st.binary(max_size=40))
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
