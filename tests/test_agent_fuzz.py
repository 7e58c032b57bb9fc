"""Property tests: whatever arrives, the agent never raises; it counts a drop or emits frames."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_frames import (
    AGENT_MAC,
    CONFIG,
    HOST_MAC,
    KEY128,
    LOCAL4,
    LOCAL6,
    META,
    PEER4,
    PEER6,
    VF_MAC,
    VLAN_Q,
    add_sa,
    config_body,
    esp_packet,
    eth_header,
    hop_by_hop,
    offload_frame,
    rx_word,
    split_tag,
    tx_word,
    wire_frame,
)
from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.wire.config import (
    ConfigMessage,
    Direction,
    LocalAddr,
    Opcode,
    Tlv,
    TlvType,
    encode_local_addr,
    parse_config,
)

pytestmark = pytest.mark.usefixtures("agent_path")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPI = 0x100


def _agent() -> IpsecAgent:
    """An agent with inbound and outbound SAs (naive and domain) and a local address."""
    agent = IpsecAgent(AgentConfig(sad_size=16, ports=2))
    add_sa(agent, Direction.OUTBOUND, SPI, PEER4, seq=(1 << 32) - 3)
    add_sa(agent, Direction.OUTBOUND, SPI, PEER6, local_mac=HOST_MAC, vlans=(VLAN_Q,))
    add_sa(agent, Direction.INBOUND, SPI, LOCAL4, replay_window=8)
    add_sa(agent, Direction.INBOUND, SPI, LOCAL6, esn=True, lifetime_packets=3)
    add_sa(agent, Direction.INBOUND, SPI, PEER4, local_mac=VF_MAC)
    agent.from_host(
        [
            eth_header(AGENT_MAC, HOST_MAC, CONFIG)
            + _body(Opcode.ADD_LOCAL_ADDR, encode_local_addr(LocalAddr(VF_MAC)))
        ]
    )
    assert len(agent.local_addrs) == 1
    return agent


def _body(opcode: int, tlvs: tuple[Tlv, ...], txn_id: int = 0xFFFF) -> bytes:
    return config_body(opcode, tlvs, txn_id=txn_id)


_SEEDS_HOST = [
    offload_frame(SPI, 0, b"seed payload"),
    offload_frame(SPI, 3, b"", src_ip=LOCAL6, dst_ip=PEER6, vlans=(VLAN_Q,)),
    offload_frame(SPI, 0, b"ext", src_ip=LOCAL6, dst_ip=PEER6, ext=hop_by_hop()),
    offload_frame(SPI, 0, b"to the vf", dst_mac=VF_MAC, dst_ip=PEER4),
    eth_header(AGENT_MAC, HOST_MAC, CONFIG) + _body(Opcode.GET_CAPS, ()),
]
_SEEDS_WIRE = [
    wire_frame(esp_packet(KEY128, SPI, 1, b"seed")),
    wire_frame(esp_packet(KEY128, SPI, 2, b"six", esn=True), src_ip=PEER6, dst_ip=LOCAL6),
    wire_frame(esp_packet(KEY128, SPI, 1, b"vf"), dst_ip=PEER4, dst_mac=VF_MAC),
    wire_frame(esp_packet(KEY128, SPI, 1, b"ext"), src_ip=PEER6, dst_ip=LOCAL6, ext=hop_by_hop()),
]


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    frame = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(frame) - 1))
        frame[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(frame)))
    tail = draw(st.binary(max_size=8))
    return bytes(frame[:cut] if draw(st.booleans()) else frame) + tail


@st.composite
def _tagged(draw: st.DrawFn) -> bytes:
    """A host frame with a metadata tag whose word and offsets are random."""
    word = draw(
        st.one_of(
            st.integers(0, 0xFFFFFFFF),
            st.builds(
                tx_word, st.booleans(), st.integers(0, 255), st.integers(0, 64), st.integers(0, 20)
            ),
        )
    )
    ethertype = draw(st.sampled_from([0x0800, 0x86DD, 0x8100, 0x88A8, CONFIG, 0x0806]))
    return eth_header(VF_MAC, HOST_MAC, ethertype, meta=word) + draw(st.binary(max_size=120))


_HOST_FRAMES = st.one_of(st.binary(max_size=200), _mutated(_SEEDS_HOST), _tagged())
_WIRE_FRAMES = st.one_of(st.binary(max_size=200), _mutated(_SEEDS_WIRE))


def _total_drops(agent: IpsecAgent) -> int:
    return sum(agent.counters.drops.values())


@FUZZ
@given(st.lists(_HOST_FRAMES, min_size=1, max_size=4))
def test_host_side_never_raises(frames: list[bytes]) -> None:
    agent = _agent()
    for frame in frames:
        drops = _total_drops(agent)
        out = agent.from_host([frame])
        emitted = len(out.to_host) + len(out.to_wire)
        assert emitted + _total_drops(agent) - drops >= 1
        for back in out.to_host:
            meta = rx_word(split_tag(back)[0])
            assert meta.reserved == 0
            assert meta.status <= 5
        for sent in out.to_wire:
            # nothing leaves with the agent's tag on it
            assert struct.unpack_from(">H", sent, 12)[0] != META or frame[12:14] == b"\x88\xb5"


@FUZZ
@given(st.lists(_WIRE_FRAMES, min_size=1, max_size=4))
def test_wire_side_never_raises(frames: list[bytes]) -> None:
    agent = _agent()
    for frame in frames:
        drops = _total_drops(agent)
        out = agent.from_wire([frame])
        assert out.to_wire == []
        if len(out.to_host) == 0:
            assert _total_drops(agent) == drops + 1
            continue
        assert len(out.to_host) == 1
        word, inner = split_tag(out.to_host[0])
        meta = rx_word(word)
        assert meta.reserved == 0
        assert meta.status <= 5
        if not meta.ipsec or meta.status != 0:
            assert inner == frame  # only OK changes the frame
        else:
            assert len(inner) <= len(frame) - 16


_TLV_TYPES = st.one_of(st.sampled_from(list(TlvType)), st.integers(0, 0xFFFF))


@st.composite
def _tlvs(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        tlv_type = draw(_TLV_TYPES)
        value = draw(
            st.one_of(
                st.binary(max_size=40),
                st.integers(0, 0xFFFFFFFF).map(lambda v: v.to_bytes(4, "big")),
                st.integers(0, (1 << 64) - 1).map(lambda v: v.to_bytes(8, "big")),
                st.sampled_from([LOCAL4, LOCAL6, KEY128, VF_MAC, b"\x00", b"\x01", b"\x02"]),
            )
        )
        parts.append(struct.pack(">HH", tlv_type, len(value)) + value)
    return b"".join(parts)


@st.composite
def _config_bodies(draw: st.DrawFn) -> bytes:
    tlvs = draw(_tlvs())
    header = struct.pack(
        ">BBBBBBIH",
        draw(st.sampled_from([1, 1, 1, 0, 2, 255])),
        draw(st.one_of(st.sampled_from(list(Opcode)), st.integers(0, 255))),
        draw(st.sampled_from([0, 0, 0, 1])),
        draw(st.sampled_from([0, 0, 0, 0x80])),
        draw(st.sampled_from([0, 1, 2])),
        draw(st.sampled_from([0, 0, 0, 1])),
        draw(st.integers(1 << 31, (1 << 31) + 3)),  # setup used other txn_ids
        draw(st.one_of(st.just(len(tlvs)), st.integers(0, 0xFFFF))),
    )
    body = header + tlvs
    return body[: draw(st.integers(0, len(body)))] if draw(st.booleans()) else body


@FUZZ
@given(st.lists(_config_bodies(), min_size=1, max_size=5))
def test_random_config_bodies_get_parseable_replies(bodies: list[bytes]) -> None:
    agent = _agent()
    replies: dict[int, bytes] = {}
    for body in bodies:
        frame = eth_header(AGENT_MAC, HOST_MAC, CONFIG) + body
        sad_before = len(agent.sad)
        out = agent.from_host([frame])
        assert out.to_wire == []
        if len(body) < 12 or body[1] & 0x80:
            assert out.to_host == []
            assert len(agent.sad) == sad_before
            continue
        assert len(out.to_host) == 1
        txn_id = struct.unpack_from(">I", body, 6)[0]
        if txn_id in replies:
            # a repeated txn_id is answered from memory, whatever the body says now
            assert out.to_host[0] == replies[txn_id]
            assert len(agent.sad) == sad_before
            continue
        replies[txn_id] = out.to_host[0]
        word, inner = split_tag(out.to_host[0])
        assert word == 0
        assert inner[:14] == eth_header(HOST_MAC, AGENT_MAC, CONFIG)
        reply: ConfigMessage = parse_config(inner[14:])
        assert reply.is_reply
        assert reply.opcode == body[1] | 0x80
        assert reply.txn_id == txn_id
        assert 0 <= reply.status <= 7
        if reply.status != 0:
            assert reply.tlvs == ()
        if reply.status != 0 or body[1] != Opcode.ADD_SA:
            assert len(agent.sad) <= sad_before
        else:
            assert len(agent.sad) == sad_before + 1
