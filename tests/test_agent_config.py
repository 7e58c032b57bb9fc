"""The agent's config channel (spec section 4): every opcode, every reply status, idempotency."""

from __future__ import annotations

import struct

import pytest

from agent_frames import (
    AGENT_MAC,
    CONFIG,
    HOST_MAC,
    KEY128,
    KEY256,
    LOCAL4,
    LOCAL6,
    META,
    PEER4,
    PEER_MAC,
    VF_MAC,
    VLAN_INNER,
    VLAN_OUTER,
    VLAN_Q,
    add_sa,
    config_body,
    config_frame,
    esp_packet,
    eth_header,
    is_event,
    offload_frame,
    parse_reply,
    request,
    sa_index_tlv,
    sa_request,
    split_tag,
    tlv_u,
    tx_word,
    wire_frame,
    without_events,
)
from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.agent.counters import DropReason, Path
from ipsec_offload.crypto.keywrap import wrap_key
from ipsec_offload.errors import UsageError
from ipsec_offload.wire.config import (
    Algorithm,
    ConfigStatus,
    Direction,
    LocalAddr,
    Opcode,
    Tlv,
    TlvType,
    decode_caps,
    decode_count,
    decode_sa_index,
    decode_sa_stats,
    encode_add_sa,
    encode_local_addr,
)
from ipsec_offload.wire.ethernet import VlanTag

IN = Direction.INBOUND
OUT = Direction.OUTBOUND
KEK = bytes(range(200, 216))


def _good_tlvs(**overrides: bytes | None) -> list[Tlv]:
    """A valid ADD_SA body written TLV by TLV, with values replaced (None drops the TLV)."""
    values: dict[str, tuple[int, bytes]] = {
        "DIR": (TlvType.DIR, b"\x00"),
        "SPI": (TlvType.SPI, struct.pack(">I", 0x1000)),
        "DST_ADDR": (TlvType.DST_ADDR, LOCAL4),
        "ALG": (TlvType.ALG, b"\x01"),
        "KEY": (TlvType.KEY, KEY128),
    }
    tlvs = []
    for name, (tlv_type, value) in values.items():
        if name in overrides:
            replacement = overrides[name]
            if replacement is None:
                continue
            value = replacement
        tlvs.append(Tlv(tlv_type, value))
    return tlvs


# -- ADD_SA -----------------------------------------------------------------------------------


def test_add_sa_reply_bytes_and_sad_entry() -> None:
    agent = IpsecAgent()
    out = agent.from_host([config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=0x01020304)])
    assert out.to_wire == []
    assert len(out.to_host) == 1
    expected = (
        HOST_MAC
        + AGENT_MAC
        + struct.pack(">HI", META, 0)
        + struct.pack(">H", CONFIG)
        + bytes((1, 0x81, 0, 0, 0, 0))
        + struct.pack(">IH", 0x01020304, 8)
        + struct.pack(">HHI", TlvType.SA_INDEX, 4, 1)
    )
    assert out.to_host[0] == expected
    sa = agent.sad.get(1)
    assert sa is not None
    assert (sa.direction, sa.spi, sa.dst, sa.domain, sa.esn) == (IN, 0x1000, LOCAL4, None, False)
    assert sa.replay is not None and sa.replay.size == 64
    assert agent.counters.paths[Path.CONFIG_REQUEST] == 1


def test_add_sa_indexes_count_up_and_all_optional_fields_land() -> None:
    agent = IpsecAgent()
    assert add_sa(agent, IN, 1, LOCAL4) == 1
    index = add_sa(
        agent,
        OUT,
        2,
        LOCAL6,
        key=KEY256,
        alg=Algorithm.AES_GCM_256,
        src=bytes(16),
        local_mac=VF_MAC,
        vlans=(VLAN_OUTER, VLAN_INNER),
        esn=True,
        seq=77,
        lifetime_packets=5,
        lifetime_bytes=6,
    )
    assert index == 2
    sa = agent.sad.get(2)
    assert sa is not None
    assert sa.domain is not None
    assert sa.domain.mac == VF_MAC
    assert sa.domain.vlans == ((0x88A8, 7), (0x8100, 200))
    assert (sa.esn, sa.ivdb, sa.lifetime_packets, sa.lifetime_bytes) == (True, 77, 5, 6)
    assert sa.algorithm == Algorithm.AES_GCM_256
    assert sa.replay is None
    assert len(agent.sad) == 2


def test_add_sa_exists_for_the_same_key_only() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, 0x10, LOCAL4)
    reply = request(agent, Opcode.ADD_SA, encode_add_sa(sa_request(IN, 0x10, LOCAL4)))
    assert reply.status == ConfigStatus.EXISTS
    assert reply.tlvs == ()
    # a different key (another key material does not make it a different SA)
    dup = sa_request(IN, 0x10, LOCAL4, key=bytes(20))
    assert request(agent, Opcode.ADD_SA, encode_add_sa(dup)).status == ConfigStatus.EXISTS
    # direction, destination and domain each make a different key
    add_sa(agent, OUT, 0x10, LOCAL4)
    add_sa(agent, IN, 0x10, PEER4)
    add_sa(agent, IN, 0x10, LOCAL4, local_mac=HOST_MAC)
    add_sa(agent, IN, 0x10, LOCAL4, local_mac=HOST_MAC, vlans=(VLAN_Q,))
    dom = sa_request(IN, 0x10, LOCAL4, local_mac=HOST_MAC, vlans=(VlanTag(0x8100, 0x2000 | 100),))
    # PCP does not name a VLAN: same domain as VLAN_Q
    assert request(agent, Opcode.ADD_SA, encode_add_sa(dom)).status == ConfigStatus.EXISTS
    assert len(agent.sad) == 5


def test_add_sa_no_space_when_full() -> None:
    agent = IpsecAgent(AgentConfig(sad_size=2))
    add_sa(agent, IN, 1, LOCAL4)
    add_sa(agent, IN, 2, LOCAL4)
    reply = request(agent, Opcode.ADD_SA, encode_add_sa(sa_request(IN, 3, LOCAL4)))
    assert reply.status == ConfigStatus.NO_SPACE
    assert reply.tlvs == ()
    assert len(agent.sad) == 2
    # the same key as an existing SA is EXISTS even when full
    again = request(agent, Opcode.ADD_SA, encode_add_sa(sa_request(IN, 1, LOCAL4)))
    assert again.status == ConfigStatus.EXISTS


_VLAN_TLV = Tlv(TlvType.VLAN, struct.pack(">HH", 0x8100, 5))
_BAD_ADD_SA: dict[str, list[Tlv]] = {
    "missing DIR": _good_tlvs(DIR=None),
    "missing SPI": _good_tlvs(SPI=None),
    "missing DST_ADDR": _good_tlvs(DST_ADDR=None),
    "missing ALG": _good_tlvs(ALG=None),
    "missing KEY": _good_tlvs(KEY=None),
    "unknown TLV type": [*_good_tlvs(), Tlv(0x0099, b"")],
    "TLV of another opcode": [*_good_tlvs(), tlv_u(TlvType.COUNT, 1, 4)],
    "SPI 0": _good_tlvs(SPI=bytes(4)),
    "SPI of 3 bytes": _good_tlvs(SPI=bytes((0, 0, 1))),
    "DIR 2": _good_tlvs(DIR=b"\x02"),
    "ALG 3": _good_tlvs(ALG=b"\x03"),
    "key 19 bytes": _good_tlvs(KEY=KEY128[:19]),
    "key 36 bytes for AES-128": _good_tlvs(KEY=KEY256),
    "key 20 bytes for AES-256": _good_tlvs(ALG=b"\x02"),
    "DST_ADDR 5 bytes": _good_tlvs(DST_ADDR=bytes(5)),
    "SRC_ADDR other family": [*_good_tlvs(), Tlv(TlvType.SRC_ADDR, LOCAL6)],
    "duplicate SPI": [*_good_tlvs(), tlv_u(TlvType.SPI, 5, 4)],
    "VLAN without LOCAL_MAC": [*_good_tlvs(), _VLAN_TLV],
    "three VLANs": [*_good_tlvs(), Tlv(TlvType.LOCAL_MAC, VF_MAC), *[_VLAN_TLV] * 3],
    "VLAN TPID 0x9100": [
        *_good_tlvs(),
        Tlv(TlvType.LOCAL_MAC, VF_MAC),
        Tlv(TlvType.VLAN, struct.pack(">HH", 0x9100, 5)),
    ],
    "LOCAL_MAC 5 bytes": [*_good_tlvs(), Tlv(TlvType.LOCAL_MAC, VF_MAC[:5])],
    "ESN with a value": [*_good_tlvs(), Tlv(TlvType.ESN, b"\x01")],
    "KEY and WRAPPED_KEY": [*_good_tlvs(), Tlv(TlvType.WRAPPED_KEY, bytes(32))],
    "KEK_ID with KEY": [*_good_tlvs(), tlv_u(TlvType.KEK_ID, 1, 4)],
    "WRAPPED_KEY without KEK_ID": [*_good_tlvs(KEY=None), Tlv(TlvType.WRAPPED_KEY, bytes(32))],
    "REPLAY_WINDOW of 2 bytes": [*_good_tlvs(), tlv_u(TlvType.REPLAY_WINDOW, 1, 2)],
    "inbound SEQ beyond 32 bits without ESN": [*_good_tlvs(), tlv_u(TlvType.SEQ, 1 << 32, 8)],
    "outbound SEQ 0": [*_good_tlvs(DIR=b"\x01"), tlv_u(TlvType.SEQ, 0, 8)],
    "outbound SEQ 2^32 without ESN": [*_good_tlvs(DIR=b"\x01"), tlv_u(TlvType.SEQ, 1 << 32, 8)],
}


@pytest.mark.parametrize("tlvs", _BAD_ADD_SA.values(), ids=_BAD_ADD_SA.keys())
def test_add_sa_bad_request_changes_nothing(tlvs: list[Tlv]) -> None:
    agent = IpsecAgent()
    reply = request(agent, Opcode.ADD_SA, tlvs)
    assert reply.status == ConfigStatus.BAD_REQUEST
    assert reply.tlvs == ()
    assert len(agent.sad) == 0
    # the index was not consumed
    assert add_sa(agent, IN, 1, LOCAL4) == 1


@pytest.mark.parametrize(("port", "reserved"), [(1, 0), (255, 0), (0, 1)])
def test_bad_header_fields_are_bad_request(port: int, reserved: int) -> None:
    agent = IpsecAgent()
    frame = config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=9, port=port, reserved=reserved)
    reply = parse_reply(agent.from_host([frame]).to_host[0])
    assert reply.status == ConfigStatus.BAD_REQUEST
    assert reply.port == port
    assert len(agent.sad) == 0


def test_flags_are_not_interpreted() -> None:
    """docs/wire-format.md: the header's flags byte is carried, not interpreted."""
    agent = IpsecAgent()
    out = agent.from_host([config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=9, flags=0x5A)])
    reply = parse_reply(out.to_host[0])
    assert (reply.status, reply.flags) == (ConfigStatus.OK, 0)
    assert len(agent.sad) == 1


def test_tlv_length_beyond_the_frame_is_bad_request() -> None:
    agent = IpsecAgent()
    body = bytearray(config_body(Opcode.ADD_SA, _good_tlvs(), txn_id=4))
    body[10:12] = struct.pack(">H", len(body))  # claims 12 bytes more than present
    out = agent.from_host([eth_header(AGENT_MAC, HOST_MAC, CONFIG) + bytes(body)])
    assert parse_reply(out.to_host[0]).status == ConfigStatus.BAD_REQUEST
    assert len(agent.sad) == 0


def test_truncated_tlv_is_bad_request() -> None:
    agent = IpsecAgent()
    body = config_body(Opcode.ADD_SA, _good_tlvs(), txn_id=4)
    cut = body[:-3]
    cut = cut[:10] + struct.pack(">H", len(cut) - 12) + cut[12:]
    out = agent.from_host([eth_header(AGENT_MAC, HOST_MAC, CONFIG) + cut])
    assert parse_reply(out.to_host[0]).status == ConfigStatus.BAD_REQUEST


def test_ethernet_padding_after_the_tlvs_is_ignored() -> None:
    agent = IpsecAgent()
    frame = config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=4) + bytes(20)
    assert parse_reply(agent.from_host([frame]).to_host[0]).status == ConfigStatus.OK


def test_replay_window_above_max_is_unsupported() -> None:
    agent = IpsecAgent(AgentConfig(max_replay_window=1024))
    too_big = sa_request(IN, 1, LOCAL4, replay_window=1025)
    reply = request(agent, Opcode.ADD_SA, encode_add_sa(too_big))
    assert reply.status == ConfigStatus.UNSUPPORTED
    assert len(agent.sad) == 0
    add_sa(agent, IN, 1, LOCAL4, replay_window=1024)
    add_sa(agent, IN, 2, LOCAL4, replay_window=0)
    windows = [sa.replay.size for sa in agent.sad if sa.replay is not None]
    assert windows == [1024, 0]


def test_wrapped_keys() -> None:
    agent = IpsecAgent(AgentConfig(keks={7: KEK}))

    def wrapped(blob: bytes, kek_id: int, spi: int = 1) -> ConfigStatus:
        tlvs = [*_good_tlvs(KEY=None, SPI=struct.pack(">I", spi))]
        tlvs += [Tlv(TlvType.WRAPPED_KEY, blob), tlv_u(TlvType.KEK_ID, kek_id, 4)]
        return ConfigStatus(request(agent, Opcode.ADD_SA, tlvs).status)

    good_blob = wrap_key(KEK, KEY128)
    assert len(good_blob) == 32
    assert wrapped(good_blob, 8) == ConfigStatus.KEY_UNWRAP_FAILED
    assert wrapped(wrap_key(bytes(16), KEY128), 7) == ConfigStatus.KEY_UNWRAP_FAILED
    corrupted = bytes((good_blob[0] ^ 1,)) + good_blob[1:]
    assert wrapped(corrupted, 7) == ConfigStatus.KEY_UNWRAP_FAILED
    # 17 bytes wrap to the same 32-byte blob size but are not AES-128 key material
    assert wrapped(wrap_key(KEK, KEY128[:17]), 7) == ConfigStatus.KEY_UNWRAP_FAILED
    assert len(agent.sad) == 0
    assert wrapped(good_blob, 7) == ConfigStatus.OK
    sa = agent.sad.get(1)
    assert sa is not None and sa.key_material == KEY128
    # the unwrapped key decrypts traffic
    out = agent.from_wire([wire_frame(esp_packet(KEY128, 1, 1, b"hello"))])
    word, _ = split_tag(out.to_host[0])
    assert word == (1 << 31) | 1


# -- REMOVE_SA, REMOVE_ALL_SAS -------------------------------------------------------------------


def test_remove_sa_and_lowest_free_index_reuse() -> None:
    agent = IpsecAgent()
    for spi in (1, 2, 3, 4):
        add_sa(agent, IN, spi, LOCAL4)
    for index in (3, 1):
        reply = request(agent, Opcode.REMOVE_SA, sa_index_tlv(index))
        assert (reply.status, reply.tlvs) == (ConfigStatus.OK, ())
    assert [sa.index for sa in agent.sad] == [2, 4]
    assert request(agent, Opcode.REMOVE_SA, sa_index_tlv(3)).status == ConfigStatus.NOT_FOUND
    assert request(agent, Opcode.REMOVE_SA, sa_index_tlv(0)).status == ConfigStatus.NOT_FOUND
    assert request(agent, Opcode.REMOVE_SA, sa_index_tlv(99)).status == ConfigStatus.NOT_FOUND
    assert add_sa(agent, IN, 10, LOCAL4) == 1
    assert add_sa(agent, IN, 11, LOCAL4) == 3
    assert add_sa(agent, IN, 12, LOCAL4) == 5
    # the removed key can be added again
    assert add_sa(agent, IN, 1, LOCAL4) == 6


def test_remove_sa_bad_requests() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, 1, LOCAL4)
    for tlvs in ((), (tlv_u(TlvType.SA_INDEX, 1, 2),), (*sa_index_tlv(1), *sa_index_tlv(1))):
        assert request(agent, Opcode.REMOVE_SA, tlvs).status == ConfigStatus.BAD_REQUEST
    assert len(agent.sad) == 1


def test_remove_sa_of_another_port_is_not_found() -> None:
    agent = IpsecAgent(AgentConfig(ports=2))
    index = add_sa(agent, IN, 1, LOCAL4, port=1)
    reply = request(agent, Opcode.REMOVE_SA, sa_index_tlv(index), port=0)
    assert reply.status == ConfigStatus.NOT_FOUND
    assert request(agent, Opcode.REMOVE_SA, sa_index_tlv(index), port=1).status == 0
    assert len(agent.sad) == 0


def test_remove_all_sas_only_that_port() -> None:
    agent = IpsecAgent(AgentConfig(ports=2))
    add_sa(agent, IN, 1, LOCAL4, port=0)
    add_sa(agent, OUT, 2, PEER4, port=1)
    add_sa(agent, IN, 3, LOCAL4, port=0)
    add_sa(agent, IN, 4, LOCAL4, port=1)
    reply = request(agent, Opcode.REMOVE_ALL_SAS, port=1)
    assert reply.status == ConfigStatus.OK
    assert reply.tlvs == (Tlv(TlvType.COUNT, struct.pack(">I", 2)),)
    assert [(sa.index, sa.port) for sa in agent.sad] == [(1, 0), (3, 0)]
    assert decode_count(request(agent, Opcode.REMOVE_ALL_SAS, port=0).tlvs) == 2
    assert decode_count(request(agent, Opcode.REMOVE_ALL_SAS, port=0).tlvs) == 0
    assert len(agent.sad) == 0
    assert add_sa(agent, IN, 1, LOCAL4) == 1


def test_remove_all_sas_bad_requests() -> None:
    agent = IpsecAgent(AgentConfig(ports=2))
    add_sa(agent, IN, 1, LOCAL4)
    with_tlv = request(agent, Opcode.REMOVE_ALL_SAS, sa_index_tlv(1))
    assert with_tlv.status == ConfigStatus.BAD_REQUEST
    assert request(agent, Opcode.REMOVE_ALL_SAS, port=2).status == ConfigStatus.BAD_REQUEST
    assert len(agent.sad) == 1


# -- local addresses --------------------------------------------------------------------------


def test_local_addr_add_remove_exists_not_found_no_space() -> None:
    agent = IpsecAgent(AgentConfig(hairpin_size=2))
    a = encode_local_addr(LocalAddr(VF_MAC))
    b = encode_local_addr(LocalAddr(VF_MAC, (VLAN_Q,)))
    b_pcp = encode_local_addr(LocalAddr(VF_MAC, (VlanTag(0x8100, 0xE000 | 100),)))
    c = encode_local_addr(LocalAddr(HOST_MAC, (VLAN_OUTER, VLAN_INNER)))
    assert request(agent, Opcode.ADD_LOCAL_ADDR, a).status == ConfigStatus.OK
    assert request(agent, Opcode.ADD_LOCAL_ADDR, a).status == ConfigStatus.EXISTS
    assert request(agent, Opcode.ADD_LOCAL_ADDR, b).status == ConfigStatus.OK
    assert request(agent, Opcode.ADD_LOCAL_ADDR, b_pcp).status == ConfigStatus.EXISTS
    assert request(agent, Opcode.ADD_LOCAL_ADDR, c).status == ConfigStatus.NO_SPACE
    assert len(agent.local_addrs) == 2
    assert request(agent, Opcode.REMOVE_LOCAL_ADDR, c).status == ConfigStatus.NOT_FOUND
    assert request(agent, Opcode.REMOVE_LOCAL_ADDR, b_pcp).status == ConfigStatus.OK
    assert request(agent, Opcode.REMOVE_LOCAL_ADDR, b).status == ConfigStatus.NOT_FOUND
    assert request(agent, Opcode.ADD_LOCAL_ADDR, c).status == ConfigStatus.OK
    assert agent.dump()["local_addrs"] == [
        "02:11:00:00:00:01.88a8:7.8100:200",
        "02:11:00:00:00:02",
    ]


@pytest.mark.parametrize(
    "tlvs",
    [
        (),
        (Tlv(TlvType.LOCAL_MAC, VF_MAC[:4]),),
        (Tlv(TlvType.VLAN, struct.pack(">HH", 0x8100, 1)),),
        (Tlv(TlvType.LOCAL_MAC, VF_MAC), Tlv(TlvType.SPI, bytes(4))),
    ],
    ids=["empty", "short MAC", "VLAN only", "foreign TLV"],
)
def test_local_addr_bad_requests(tlvs: tuple[Tlv, ...]) -> None:
    agent = IpsecAgent()
    for opcode in (Opcode.ADD_LOCAL_ADDR, Opcode.REMOVE_LOCAL_ADDR):
        assert request(agent, opcode, tlvs).status == ConfigStatus.BAD_REQUEST
    assert agent.local_addrs == set()


# -- GET_SA_STATS, GET_CAPS ------------------------------------------------------------------------


def test_get_sa_stats_after_traffic() -> None:
    agent = IpsecAgent()
    index = add_sa(agent, IN, 0x77, LOCAL4, lifetime_packets=3)
    good1 = wire_frame(esp_packet(KEY128, 0x77, 1, b"a" * 10))
    good2 = wire_frame(esp_packet(KEY128, 0x77, 3, b"b" * 33))
    forged = bytearray(wire_frame(esp_packet(KEY128, 0x77, 2, b"c" * 5)))
    forged[-1] ^= 0x80
    bad_pad = wire_frame(esp_packet(KEY128, 0x77, 4, b"", plaintext=b"\x00\x00\x02\x11"))
    short = wire_frame(esp_packet(KEY128, 0x77, 5, b"xyz")[:-1])
    good3 = wire_frame(esp_packet(KEY128, 0x77, 6, b"d"))
    late = wire_frame(esp_packet(KEY128, 0x77, 7, b"e"))
    frames = [good1, good2, bytes(forged), good1, bad_pad, short, good3, late]
    to_host = agent.from_wire(frames).to_host
    # the third good packet reaches the hard lifetime: HARD_EXPIRE (spec 9) follows it, to
    # the last requester's MAC
    assert [is_event(f) for f in to_host] == [False] * 7 + [True, False]
    statuses = [(split_tag(f)[0] >> 27) & 0xF for f in without_events(to_host)]
    assert statuses == [0, 0, 2, 3, 4, 4, 0, 5]
    reply = request(agent, Opcode.GET_SA_STATS, sa_index_tlv(index))
    assert reply.status == ConfigStatus.OK
    assert reply.tlvs == (Tlv(TlvType.STATS, struct.pack(">7Q", 3, 10 + 33 + 1, 0, 1, 1, 2, 1)),)
    stats = decode_sa_stats(reply.tlvs)
    assert stats.errors == (0, 1, 1, 2, 1)


def test_get_sa_stats_outbound_and_not_found() -> None:
    agent = IpsecAgent(AgentConfig(ports=2))
    index = add_sa(agent, OUT, 0x99, PEER4)
    agent.from_host([offload_frame(0x99, 0, b"x" * 21), offload_frame(0x99, 0, b"y" * 3)])
    stats = decode_sa_stats(request(agent, Opcode.GET_SA_STATS, sa_index_tlv(index)).tlvs)
    assert (stats.packets, stats.bytes, stats.errors) == (2, 24, (0, 0, 0, 0, 0))
    assert request(agent, Opcode.GET_SA_STATS, sa_index_tlv(2)).status == ConfigStatus.NOT_FOUND
    other_port = request(agent, Opcode.GET_SA_STATS, sa_index_tlv(index), port=1)
    assert other_port.status == ConfigStatus.NOT_FOUND
    assert request(agent, Opcode.GET_SA_STATS).status == ConfigStatus.BAD_REQUEST


def test_get_caps_bytes() -> None:
    agent = IpsecAgent(AgentConfig(sad_size=1000, max_replay_window=2048))
    reply = request(agent, Opcode.GET_CAPS)
    assert reply.status == ConfigStatus.OK
    assert reply.tlvs == (
        Tlv(TlvType.CAPS, bytes((2, 1, 2)) + struct.pack(">II", 1000, 2048)),
        Tlv(0x0016, struct.pack(">Q", 1)),  # spec 9: BOOT_ID, the default 1
    )
    caps = decode_caps(reply.tlvs)
    assert caps.boot_id == 1
    assert caps.algorithms == (Algorithm.AES_GCM_128, Algorithm.AES_GCM_256)
    with_tlv = request(agent, Opcode.GET_CAPS, sa_index_tlv(1))
    assert with_tlv.status == ConfigStatus.BAD_REQUEST


# -- opcodes, versions, framing -----------------------------------------------------------------


@pytest.mark.parametrize("opcode", [0x00, 0x09, 0x0A, 0x7F])
def test_unknown_opcode_is_unsupported(opcode: int) -> None:
    agent = IpsecAgent()
    reply = request(agent, opcode, _good_tlvs())
    assert reply.status == ConfigStatus.UNSUPPORTED
    assert reply.tlvs == ()


def test_version_2_is_bad_version_and_not_executed() -> None:
    agent = IpsecAgent()
    out = agent.from_host([config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=5, version=2)])
    reply = parse_reply(out.to_host[0])
    assert (reply.opcode, reply.status, reply.txn_id, reply.tlvs) == (
        0x81,
        ConfigStatus.BAD_VERSION,
        5,
        (),
    )
    assert len(agent.sad) == 0


def test_request_with_the_reply_bit_is_dropped() -> None:
    agent = IpsecAgent()
    out = agent.from_host([config_frame(Opcode.ADD_SA | 0x80, _good_tlvs(), txn_id=5)])
    assert (out.to_host, out.to_wire) == ([], [])
    assert agent.counters.drops[DropReason.CONFIG_NOT_REQUEST] == 1
    assert agent.counters.paths[Path.CONFIG_REQUEST] == 0
    assert len(agent.sad) == 0


@pytest.mark.parametrize("size", [0, 1, 11])
def test_too_short_config_frame_is_dropped(size: int) -> None:
    agent = IpsecAgent()
    body = config_body(Opcode.GET_CAPS, txn_id=1)[:size]
    out = agent.from_host([eth_header(AGENT_MAC, HOST_MAC, CONFIG) + body])
    assert (out.to_host, out.to_wire) == ([], [])
    assert agent.counters.drops[DropReason.CONFIG_MALFORMED] == 1


def test_config_frame_from_the_wire_is_dropped() -> None:
    agent = IpsecAgent()
    frame = config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=5)
    tagged = eth_header(AGENT_MAC, HOST_MAC, CONFIG, (VLAN_Q,)) + config_body(
        Opcode.ADD_SA, _good_tlvs()
    )
    out = agent.from_wire([frame, tagged])
    assert (out.to_host, out.to_wire) == ([], [])
    assert agent.counters.drops[DropReason.CONFIG_FROM_WIRE] == 2
    assert len(agent.sad) == 0


def test_config_ethertype_not_for_the_agent_is_data() -> None:
    agent = IpsecAgent()
    body = config_body(Opcode.ADD_SA, _good_tlvs())
    to_other = eth_header(PEER_MAC, HOST_MAC, CONFIG) + body
    vlan = eth_header(AGENT_MAC, HOST_MAC, CONFIG, (VLAN_Q,)) + body
    out = agent.from_host([to_other, vlan])
    assert out.to_wire == [to_other, vlan]
    assert out.to_host == []
    assert agent.counters.paths[Path.TX_UNTAGGED] == 2
    assert len(agent.sad) == 0


def test_config_frame_behind_a_port_tag_is_carried_as_data() -> None:
    """Spec 6: an untrusted VF's config frame gets OFFLOAD=0 and goes to the wire."""
    agent = IpsecAgent()
    body = config_body(Opcode.ADD_SA, _good_tlvs())
    frame = eth_header(AGENT_MAC, VF_MAC, CONFIG, meta=tx_word(False, 0, 0, 0)) + body
    out = agent.from_host([frame])
    assert out.to_wire == [eth_header(AGENT_MAC, VF_MAC, CONFIG) + body]
    assert out.to_host == []
    assert agent.counters.paths[Path.TX_BYPASS] == 1
    assert len(agent.sad) == 0


def test_custom_agent_mac_and_ethertypes() -> None:
    mac = bytes.fromhex("02abcdef0001")
    agent = IpsecAgent(AgentConfig(mac=mac, config_ethertype=0x9999, meta_ethertype=0x9998))
    frame = mac + HOST_MAC + b"\x99\x99" + config_body(Opcode.GET_CAPS, txn_id=3)
    out = agent.from_host([frame])
    reply = out.to_host[0]
    assert reply[:12] == HOST_MAC + mac
    assert reply[12:20] == bytes.fromhex("9998 00000000 9999")
    assert reply[20:22] == bytes((1, 0x87))
    # the default agent address and EtherType are now ordinary data
    plain = config_frame(Opcode.GET_CAPS)
    assert agent.from_host([plain]).to_wire == [plain]


# -- idempotency ------------------------------------------------------------------------------


def test_same_txn_id_gets_the_same_reply_and_one_sa() -> None:
    agent = IpsecAgent()
    frame = config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=42)
    first = agent.from_host([frame]).to_host
    second = agent.from_host([frame]).to_host
    assert first == second
    assert len(first) == 1
    assert decode_sa_index(parse_reply(first[0]).tlvs) == 1
    assert len(agent.sad) == 1
    assert agent.counters.paths[Path.CONFIG_REQUEST] == 1
    assert agent.counters.paths[Path.CONFIG_RETRANSMIT] == 1
    # the same txn_id from another MAC is another transaction
    other = agent.from_host([config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=42, src=VF_MAC)])
    assert parse_reply(other.to_host[0], to=VF_MAC).status == ConfigStatus.EXISTS


def test_txn_memory_is_bounded() -> None:
    agent = IpsecAgent(AgentConfig(txn_memory=2))
    first_req = config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=1)
    first = agent.from_host([first_req]).to_host[0]
    assert parse_reply(first).status == ConfigStatus.OK
    frame2 = config_frame(Opcode.GET_CAPS, txn_id=2)
    frame3 = config_frame(Opcode.REMOVE_SA, sa_index_tlv(1), txn_id=3)
    agent.from_host([frame2])
    third = agent.from_host([frame3]).to_host[0]
    assert parse_reply(third).status == ConfigStatus.OK
    assert len(agent.sad) == 0
    # txn 3 is still remembered: no second remove (which would say NOT_FOUND)
    assert agent.from_host([frame3]).to_host == [third]
    # txn 1 was forgotten: executed again, the SA is back under the same index
    again = agent.from_host([first_req]).to_host[0]
    assert again == first
    assert len(agent.sad) == 1
    assert agent.counters.paths[Path.CONFIG_REQUEST] == 4
    assert agent.counters.paths[Path.CONFIG_RETRANSMIT] == 1


def test_add_sa_then_exists_shows_retransmit_is_not_reexecuted() -> None:
    agent = IpsecAgent()
    add = config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=77)
    replies = [parse_reply(agent.from_host([add]).to_host[0]) for _ in range(3)]
    assert {r.status for r in replies} == {ConfigStatus.OK}
    fresh = agent.from_host([config_frame(Opcode.ADD_SA, _good_tlvs(), txn_id=78)])
    assert parse_reply(fresh.to_host[0]).status == ConfigStatus.EXISTS


def test_a_burst_of_requests_is_answered_in_order() -> None:
    agent = IpsecAgent()
    frames = [
        config_frame(Opcode.ADD_SA, encode_add_sa(sa_request(IN, spi, LOCAL4)), txn_id=spi)
        for spi in (5, 6, 7)
    ]
    out = agent.from_host(frames)
    replies = [parse_reply(f) for f in out.to_host]
    assert [(r.txn_id, decode_sa_index(r.tlvs)) for r in replies] == [(5, 1), (6, 2), (7, 3)]


def test_agent_config_rejects_impossible_sizes() -> None:
    for kwargs in (
        {"sad_size": 0},
        {"sad_size": 1 << 24},
        {"mac": b"\x00" * 5},
        {"default_replay_window": 65, "max_replay_window": 64},
        {"max_replay_window": (1 << 31) + 1},
        {"ports": 0},
        {"ports": 257},
        {"hairpin_size": -1},
    ):
        with pytest.raises(UsageError):
            AgentConfig(**kwargs)


@pytest.mark.parametrize("field", ["meta_ethertype", "config_ethertype"])
@pytest.mark.parametrize("value", [-1, 0x1_0000])
def test_agent_config_rejects_ethertypes_beyond_16_bits(field: str, value: int) -> None:
    with pytest.raises(UsageError, match=f"AgentConfig.{field} must be an EtherType"):
        AgentConfig(**{field: value})


def test_dump_has_no_key_material() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, 0xABC, PEER4, local_mac=VF_MAC, vlans=(VLAN_Q,), seq=9)
    dump = agent.dump()
    assert KEY128.hex() not in repr(dump)
    assert dump["sas"] == [
        {
            "index": 1,
            "port": 0,
            "direction": "OUTBOUND",
            "spi": "0x00000abc",
            "dst": "192.0.2.2",
            "src": None,
            "domain": "02:11:00:00:00:02.8100:100",
            "algorithm": "AES_GCM_128",
            "esn": False,
            "next_seq": 9,
            "highest_seq": None,
            "packets": 0,
            "bytes": 0,
            "errors": {"NO_SA": 0, "AUTH_FAILED": 0, "REPLAY": 0, "MALFORMED": 0, "SA_EXPIRED": 0},
            "lifetime": {"packets": 0, "bytes": 0, "soft_packets": 0, "soft_bytes": 0},
            "events_raised": [],
        }
    ]
    assert (dump["boot_id"], dump["pending_events"]) == (1, [])
    assert dump["sad_used"] == 1
    assert dump["counters"]["paths"]["CONFIG_REQUEST"] == 1
