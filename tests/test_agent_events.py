"""The agent's side of spec 9 (spec 1.1): BOOT_ID, LIST_SAS, soft lifetimes and EVENT frames.

Replies and event frames are checked against bytes written out here from the spec's tables;
lifetime and sequence events on both paths (the `agent_path` fixture): the compiled fast path
hands the frame that reaches a threshold to the reference path, which raises the event.
"""

from __future__ import annotations

import struct

import pytest

from agent_frames import (
    AGENT_MAC,
    CONFIG,
    HOST_MAC,
    KEY128,
    LOCAL4,
    LOCAL6,
    META,
    PEER4,
    VF_MAC,
    VLAN_Q,
    add_sa,
    config_frame,
    esp_packet,
    events_of,
    is_event,
    offload_frame,
    parse_reply,
    request,
    sa_request,
    tlv_u,
    wire_frame,
    without_events,
)
from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.agent.counters import DropReason, EventCounter
from ipsec_offload.agent.events import TxnSpace
from ipsec_offload.errors import UsageError
from ipsec_offload.wire.config import (
    ConfigStatus,
    Direction,
    Opcode,
    TlvType,
    decode_list_sas_reply,
    encode_add_sa,
)

IN, OUT = Direction.INBOUND, Direction.OUTBOUND
PF_MAC = HOST_MAC  # the PF driver: the tests' requests come from it
BOOT = 0x0123456789ABCDEF
AGENT_STARTED, SOFT_EXPIRE, HARD_EXPIRE, SEQ_SOFT_LIMIT = 1, 2, 3, 4


def _event_bytes(dst: bytes, txn_id: int, kind: int, sa_index: int | None, port: int = 0) -> bytes:
    """An EVENT frame as spec 9 lays it out, with the Rx tag every frame toward the host has."""
    tlvs = struct.pack(">HHB", 0x0015, 1, kind) + struct.pack(">HHQ", 0x0016, 8, BOOT)
    if sa_index is not None:
        tlvs += struct.pack(">HHI", 0x0001, 4, sa_index)
    header = struct.pack(">BBBBBBIH", 1, 0x09, 0, 0, port, 0, txn_id, len(tlvs))
    tag = struct.pack(">HI", META, 0)
    return dst + AGENT_MAC + tag + struct.pack(">H", CONFIG) + header + tlvs


def _ack(txn_id: int, src: bytes = PF_MAC) -> bytes:
    return config_frame(0x89, (), src=src, txn_id=txn_id)


# -- BOOT_ID ----------------------------------------------------------------------------------


def test_get_caps_carries_the_boot_id() -> None:
    agent = IpsecAgent(AgentConfig(boot_id=BOOT))
    reply = request(agent, Opcode.GET_CAPS)
    assert reply.status == ConfigStatus.OK
    caps = struct.pack(">BBBII", 2, 1, 2, 4096, 4096)
    assert reply.tlvs[0].value == caps
    assert (reply.tlvs[1].type, reply.tlvs[1].value) == (0x0016, struct.pack(">Q", BOOT))


@pytest.mark.parametrize("boot_id", [-1, 1 << 64])
def test_boot_id_is_a_u64(boot_id: int) -> None:
    with pytest.raises(UsageError, match="boot_id"):
        AgentConfig(boot_id=boot_id)


# -- LIST_SAS ---------------------------------------------------------------------------------


def test_list_sas_reply_bytes() -> None:
    agent = IpsecAgent()
    out_index = add_sa(agent, OUT, 0x1001, PEER4, seq=77)
    in_index = add_sa(agent, IN, 0x2002, LOCAL6, seq=5)
    reply = request(agent, Opcode.LIST_SAS)
    assert reply.status == ConfigStatus.OK
    body = b"".join(struct.pack(">HH", t.type, len(t.value)) + t.value for t in reply.tlvs)
    expected = (
        struct.pack(">HHIBIB", 0x0014, 22, out_index, 1, 0x1001, 4)
        + PEER4
        + struct.pack(">Q", 77)
        + struct.pack(">HHIBIB", 0x0014, 34, in_index, 0, 0x2002, 16)
        + LOCAL6
        + struct.pack(">Q", 5)
        + struct.pack(">HHI", 0x0001, 4, 0)
    )
    assert body == expected


def test_list_sas_seq_follows_traffic(agent_path: str) -> None:
    agent = IpsecAgent()
    out_index = add_sa(agent, OUT, 0x1001, PEER4)
    in_index = add_sa(agent, IN, 0x2002, LOCAL4)
    agent.from_host([offload_frame(0x1001, 0, b"x" * 8) for _ in range(3)])
    agent.from_wire([wire_frame(esp_packet(KEY128, 0x2002, n, b"y")) for n in (4, 9, 2)])
    entries = decode_list_sas_reply(request(agent, Opcode.LIST_SAS).tlvs).entries
    assert [(e.sa_index, e.seq) for e in entries] == [(out_index, 4), (in_index, 9)]


def test_list_sas_domain_filter_and_naive_sas() -> None:
    """A domain lists its SAs exactly (not those of another VLAN, nor naive-key SAs, which
    have no domain); without one every SA of the port is listed."""
    agent = IpsecAgent(AgentConfig(ports=2))
    naive = add_sa(agent, OUT, 0x10, PEER4)
    vf = add_sa(agent, OUT, 0x11, PEER4, local_mac=VF_MAC)
    vf_vlan = add_sa(agent, OUT, 0x12, PEER4, local_mac=VF_MAC, vlans=(VLAN_Q,))
    other_port = add_sa(agent, OUT, 0x13, PEER4, local_mac=VF_MAC, port=1)

    def listed(*tlvs: object, port: int = 0) -> list[int]:
        reply = request(agent, Opcode.LIST_SAS, tlvs, port=port)  # type: ignore[arg-type]
        assert reply.status == ConfigStatus.OK
        return [e.sa_index for e in decode_list_sas_reply(reply.tlvs).entries]

    mac = tlv_u(TlvType.LOCAL_MAC, int.from_bytes(VF_MAC, "big"), 6)
    vlan = tlv_u(TlvType.VLAN, (0x8100 << 16) | 100, 4)
    assert listed() == [naive, vf, vf_vlan]
    assert listed(mac) == [vf]
    assert listed(mac, vlan) == [vf_vlan]
    assert listed(mac, port=1) == [other_port]
    assert listed(tlv_u(TlvType.SA_INDEX, vf, 4)) == [vf, vf_vlan]
    assert request(agent, Opcode.LIST_SAS, (vlan,)).status == ConfigStatus.BAD_REQUEST


def test_list_sas_pages_across_replies() -> None:
    """IPv4 SA_ENTRY TLVs are 26 bytes: 53 and the 8-byte cursor fit 1400 bytes."""
    agent = IpsecAgent()
    indexes = [add_sa(agent, OUT, 0x100 + n, PEER4, seq=n + 1) for n in range(120)]
    listed, cursor, replies = [], 0, 0
    while True:
        reply = request(agent, Opcode.LIST_SAS, (tlv_u(TlvType.SA_INDEX, cursor, 4),))
        assert len(reply.tlvs) <= 54
        assert sum(4 + len(t.value) for t in reply.tlvs) <= 1400
        page = decode_list_sas_reply(reply.tlvs)
        listed += [(e.sa_index, e.spi, e.seq) for e in page.entries]
        replies += 1
        if page.next_cursor == 0:
            break
        assert page.next_cursor == page.entries[-1].sa_index + 1
        cursor = page.next_cursor
    assert replies == 3
    assert listed == [(i, 0x100 + n, n + 1) for n, i in enumerate(indexes)]


def test_list_sas_cursor_past_a_removed_sa() -> None:
    agent = IpsecAgent()
    first, second, third = (add_sa(agent, OUT, 0x30 + n, PEER4) for n in range(3))
    assert request(agent, Opcode.REMOVE_SA, (tlv_u(1, second, 4),)).status == ConfigStatus.OK
    page = decode_list_sas_reply(
        request(agent, Opcode.LIST_SAS, (tlv_u(TlvType.SA_INDEX, second, 4),)).tlvs
    )
    assert ([e.sa_index for e in page.entries], page.next_cursor) == ([third], 0)
    assert first == 1


# -- soft lifetimes in ADD_SA -----------------------------------------------------------------


def test_add_sa_stores_soft_lifetimes_even_above_the_hard_ones() -> None:
    agent = IpsecAgent()
    index = add_sa(
        agent,
        IN,
        0x44,
        LOCAL4,
        lifetime_packets=10,
        soft_lifetime_packets=20,
        lifetime_bytes=1000,
        soft_lifetime_bytes=500,
    )
    sa = agent.sad.get(index)
    assert sa is not None
    assert (sa.soft_lifetime_packets, sa.soft_lifetime_bytes) == (20, 500)
    assert (sa.watch_packets, sa.watch_bytes) == (10, 500)


# -- AGENT_STARTED, destinations, resends, answers --------------------------------------------


def test_agent_started_goes_to_the_pf_mac() -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    out = agent.start(2.5)
    assert out.to_host == [_event_bytes(PF_MAC, 1, AGENT_STARTED, None)]
    assert out.to_wire == [] and out.hairpin == []
    assert agent.next_timer() == pytest.approx(2.51)


def test_agent_started_without_a_destination_is_not_sent() -> None:
    agent = IpsecAgent(AgentConfig(boot_id=BOOT))
    assert agent.start(0.0).to_host == []
    assert agent.next_timer() is None
    assert agent.counters.events[EventCounter.NO_DESTINATION] == 1


def test_resent_every_10_ms_five_times_then_given_up() -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    first = agent.start(1.0).to_host
    times = []
    while (due := agent.next_timer()) is not None:
        out = agent.on_timer(due)
        times.append(due)
        assert out.to_host in ([], first)
        if out.to_host:
            assert out.to_host == first
    assert times == pytest.approx([1.01, 1.02, 1.03, 1.04, 1.05, 1.06])
    events = agent.counters.events
    assert (events[EventCounter.SENT], events[EventCounter.RESENT]) == (1, 5)
    assert events[EventCounter.GIVEN_UP] == 1


def test_on_timer_before_the_deadline_does_nothing() -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    agent.start(0.0)
    assert agent.on_timer(0.005).to_host == []
    assert agent.on_timer(0.01).to_host == [_event_bytes(PF_MAC, 1, AGENT_STARTED, None)]


def test_the_pf_answer_completes_the_event() -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    agent.start(0.0)
    assert agent.from_host([_ack(7)]).to_host == []  # no such event: not a request
    assert agent.counters.drops[DropReason.CONFIG_NOT_REQUEST] == 1
    assert agent.from_host([_ack(1)]).to_host == []
    assert agent.counters.drops[DropReason.CONFIG_NOT_REQUEST] == 1
    assert agent.counters.events[EventCounter.ACKNOWLEDGED] == 1
    assert agent.next_timer() is None
    agent.from_host([_ack(1)])  # answered twice: the second is no request either
    assert agent.counters.drops[DropReason.CONFIG_NOT_REQUEST] == 2


def test_agents_of_one_link_draw_disjoint_txn_ids() -> None:
    """Agents given TxnSpace(i, 3) number their events i, i + 3, ..., and leave the PF's
    answers to the others' events alone (no drop counted); an answer in their own space that
    completes nothing is still no request."""
    config = AgentConfig(pf_mac=PF_MAC, boot_id=BOOT)
    agents = [IpsecAgent(config, txns=TxnSpace(first, 3)) for first in (1, 2, 3)]
    for agent in agents:
        add_sa(agent, OUT, 0x70, PEER4, lifetime_packets=3, soft_lifetime_packets=1)
        out = agent.from_host([offload_frame(0x70, 0, b"p") for _ in range(3)])
        assert without_events(out.to_host) == []
    drawn = [sorted(agent.events.pending) for agent in agents]
    assert drawn == [[1, 4], [2, 5], [3, 6]]
    for agent in agents:
        for txn_id in range(1, 7):
            agent.from_host([_ack(txn_id)])
        assert agent.events.pending == {}
        assert agent.counters.events[EventCounter.ACKNOWLEDGED] == 2
        assert agent.counters.drops[DropReason.CONFIG_NOT_REQUEST] == 0
    agents[0].from_host([_ack(7)])
    assert agents[0].counters.drops[DropReason.CONFIG_NOT_REQUEST] == 1
    assert TxnSpace(3, 3).after(0xFFFF_FFFF - 1) == 3
    with pytest.raises(UsageError, match="first <= step"):
        TxnSpace(4, 3)


def test_an_answer_from_another_mac_is_not_the_pf_s() -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    agent.start(0.0)
    agent.from_host([_ack(1, src=VF_MAC)])
    assert agent.counters.drops[DropReason.CONFIG_NOT_FROM_PF] == 1
    assert agent.next_timer() == pytest.approx(0.01)


def test_without_pf_mac_events_go_to_the_last_requester(agent_path: str) -> None:
    agent = IpsecAgent(AgentConfig(boot_id=BOOT))
    agent.start(0.0)
    index = add_sa(agent, IN, 0x55, LOCAL4, lifetime_packets=1)
    request(agent, Opcode.GET_CAPS, src=VF_MAC)
    out = agent.from_wire([wire_frame(esp_packet(KEY128, 0x55, 1, b"z"))], 3.0)
    assert out.to_host[1] == _event_bytes(VF_MAC, 1, HARD_EXPIRE, index)


def test_a_full_table_drops_and_counts() -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT, event_slots=2))
    agent.start(0.0)
    first = add_sa(agent, IN, 0x61, LOCAL4, lifetime_packets=1)
    second = add_sa(agent, IN, 0x62, LOCAL4, lifetime_packets=1)
    frames = [wire_frame(esp_packet(KEY128, spi, 1, b"q")) for spi in (0x61, 0x62)]
    out = agent.from_wire(frames, 0.001)
    assert events_of(out.to_host) == [(HARD_EXPIRE, BOOT, first)]
    assert agent.counters.events[EventCounter.TABLE_FULL] == 1
    assert second == first + 1


def test_events_carry_the_sa_port() -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT, ports=3))
    index = add_sa(agent, OUT, 0x70, PEER4, port=2, lifetime_packets=1)
    out = agent.from_host([offload_frame(0x70, 0, b"p")])
    assert out.to_host == [_event_bytes(PF_MAC, 1, HARD_EXPIRE, index, port=2)]


# -- lifetime and sequence events, on both paths ----------------------------------------------


def test_soft_and_hard_packets_inbound(agent_path: str) -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    index = add_sa(agent, IN, 0x80, LOCAL4, soft_lifetime_packets=3, lifetime_packets=5)
    frames = [wire_frame(esp_packet(KEY128, 0x80, n, b"r" * 9)) for n in range(1, 8)]
    out = agent.from_wire(frames)
    kinds = [(is_event(f), events_of([f])) for f in out.to_host]
    # the third packet reaches the soft limit, the fifth the hard one; then SA_EXPIRED
    assert [k for k, _ in kinds] == [False, False, False, True, False, False, True, False, False]
    assert events_of(out.to_host) == [(SOFT_EXPIRE, BOOT, index), (HARD_EXPIRE, BOOT, index)]
    assert out.to_host[3] == _event_bytes(PF_MAC, 1, SOFT_EXPIRE, index)
    assert out.to_host[6] == _event_bytes(PF_MAC, 2, HARD_EXPIRE, index)
    sa = agent.sad.get(index)
    assert sa is not None and sa.packets == 5
    more = agent.from_wire([wire_frame(esp_packet(KEY128, 0x80, 20, b"r"))])
    assert events_of(more.to_host) == []  # once per SA


def test_soft_and_hard_bytes_outbound(agent_path: str) -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    index = add_sa(agent, OUT, 0x81, PEER4, soft_lifetime_bytes=25, lifetime_bytes=40)
    out = agent.from_host([offload_frame(0x81, 0, b"s" * 10) for _ in range(6)])
    # 10, 20, 30 (soft reached), 40 (hard reached), then dropped SA_EXPIRED
    assert len(out.to_wire) == 4
    assert out.to_host == [
        _event_bytes(PF_MAC, 1, SOFT_EXPIRE, index),
        _event_bytes(PF_MAC, 2, HARD_EXPIRE, index),
    ]
    assert agent.counters.drops[DropReason.SA_EXPIRED] == 2


def test_soft_and_hard_reached_by_one_packet(agent_path: str) -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    index = add_sa(agent, IN, 0x82, LOCAL4, soft_lifetime_bytes=5, lifetime_bytes=6)
    frames = [wire_frame(esp_packet(KEY128, 0x82, n, b"t" * 4)) for n in (1, 2)]
    out = agent.from_wire(frames)
    assert events_of(out.to_host) == [(SOFT_EXPIRE, BOOT, index), (HARD_EXPIRE, BOOT, index)]


def test_a_soft_limit_above_the_hard_one_never_fires(agent_path: str) -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    index = add_sa(agent, OUT, 0x83, PEER4, soft_lifetime_packets=9, lifetime_packets=2)
    out = agent.from_host([offload_frame(0x83, 0, b"u") for _ in range(12)])
    assert events_of(out.to_host) == [(HARD_EXPIRE, BOOT, index)]


@pytest.mark.parametrize("esn", [False, True])
def test_seq_soft_limit(agent_path: str, esn: bool) -> None:
    limit = 1 << (63 if esn else 31)
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    index = add_sa(agent, OUT, 0x84, PEER4, esn=esn, seq=limit - 3)
    out = agent.from_host([offload_frame(0x84, 0, b"v" * 5) for _ in range(6)])
    assert len(out.to_wire) == 6
    # numbers limit-3, limit-2, limit-1 are the first 2^31 - 3 .. ; `limit` is the 2^31st used
    assert out.to_host == [_event_bytes(PF_MAC, 1, SEQ_SOFT_LIMIT, index)]
    seqs = [struct.unpack_from(">I", f, 14 + 20 + 4)[0] for f in out.to_wire]
    assert seqs == [(limit - 3 + n) & 0xFFFFFFFF for n in range(6)]


def test_seq_soft_limit_of_an_sa_installed_past_it(agent_path: str) -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    index = add_sa(agent, OUT, 0x85, PEER4, seq=(1 << 31) + 100)
    out = agent.from_host([offload_frame(0x85, 0, b"w") for _ in range(3)])
    assert out.to_host == [_event_bytes(PF_MAC, 1, SEQ_SOFT_LIMIT, index)]


def test_inbound_sas_have_no_seq_soft_limit(agent_path: str) -> None:
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    add_sa(agent, IN, 0x86, LOCAL4, seq=(1 << 31) + 5)
    frames = [wire_frame(esp_packet(KEY128, 0x86, (1 << 31) + n, b"x")) for n in (6, 7)]
    out = agent.from_wire(frames)
    assert len(out.to_host) == 2 and not any(is_event(f) for f in out.to_host)


def test_event_frames_parse_as_config_requests() -> None:
    """The agent's EVENT frames are config requests (opcode 0x09, not the reply bit)."""
    agent = IpsecAgent(AgentConfig(pf_mac=PF_MAC, boot_id=BOOT))
    frame = agent.start(0.0).to_host[0]
    with pytest.raises(AssertionError):
        parse_reply(frame, to=PF_MAC)  # it is no reply
    assert without_events([frame]) == []
    assert encode_add_sa(sa_request(OUT, 0x99, PEER4))  # (the helpers agree with the codec)
