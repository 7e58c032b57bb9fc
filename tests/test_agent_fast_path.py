"""The compiled fast path against the Python reference path: two agents with the same SAs get
the same bursts, and must emit the same bytes and end in the same state (SAD, replay windows,
counters), whatever the frames are: common, unusual, replayed, forged or broken. Some SAs have
soft and hard lifetimes and one starts near the SEQ soft limit (spec 9): the events they raise,
and their resends on the agents' timers, must be the same too."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_frames import (
    HOST_MAC,
    KEY128,
    KEY256,
    LOCAL4,
    LOCAL6,
    PEER4,
    PEER6,
    PEER_MAC,
    PROTO_UDP,
    VF_MAC,
    VLAN_INNER,
    VLAN_OUTER,
    VLAN_Q,
    add_sa,
    config_frame,
    esp_packet,
    hop_by_hop,
    offload_frame,
    request,
    sa_index_tlv,
    sa_request,
    trailer,
    wire_frame,
)
from ipsec_offload.agent.agent import AgentConfig, AgentOutput, IpsecAgent
from ipsec_offload.agent.counters import Path
from ipsec_offload.wire.config import (
    Algorithm,
    Direction,
    LocalAddr,
    Opcode,
    encode_add_sa,
    encode_local_addr,
)
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.metadata import RxStatus
from tools import require_fast_path


@dataclass(frozen=True)
class Flow:
    """An SA both agents hold, and how frames of it look."""

    spi: int
    local: bytes
    peer: bytes
    mac: bytes
    vlans: tuple[VlanTag, ...] = ()
    key: bytes = KEY128
    esn: bool = False


OUT = [
    Flow(0x100, LOCAL4, PEER4, HOST_MAC),
    Flow(0x101, LOCAL4, PEER4, VF_MAC, (VLAN_Q,)),
    Flow(0x102, LOCAL6, PEER6, HOST_MAC, key=KEY256, esn=True),
    Flow(0x103, LOCAL4, PEER4, VF_MAC, (VLAN_OUTER, VLAN_INNER)),
]
_ALG = {KEY128: Algorithm.AES_GCM_128, KEY256: Algorithm.AES_GCM_256}
IN = [
    Flow(0x200, LOCAL4, PEER4, HOST_MAC),
    Flow(0x201, LOCAL6, PEER6, HOST_MAC, key=KEY128, esn=True),
    Flow(0x202, LOCAL4, PEER4, VF_MAC, (VLAN_Q,)),
    Flow(0x203, LOCAL4, PEER4, HOST_MAC),
]


def _agent(fast: bool, ivdb: bool, hairpin: bool) -> IpsecAgent:
    agent = IpsecAgent(AgentConfig(fast_path=fast, ivdb=ivdb))
    add_sa(
        agent,
        Direction.OUTBOUND,
        0x100,
        PEER4,
        src=LOCAL4,
        local_mac=HOST_MAC,
        soft_lifetime_packets=5,
        seq=(1 << 31) - 3,
    )
    add_sa(
        agent,
        Direction.OUTBOUND,
        0x101,
        PEER4,
        local_mac=VF_MAC,
        vlans=(VLAN_Q,),
        soft_lifetime_bytes=300,
        lifetime_bytes=700,
    )
    add_sa(agent, Direction.OUTBOUND, 0x102, PEER6, KEY256, Algorithm.AES_GCM_256, esn=True)
    # the IN flows' SAs: the peer's packets to us
    add_sa(
        agent,
        Direction.OUTBOUND,
        0x103,
        PEER4,
        local_mac=VF_MAC,
        vlans=(VLAN_OUTER, VLAN_INNER),
        lifetime_packets=6,
        seq=0xFFFF_FFF0,
    )
    add_sa(
        agent,
        Direction.INBOUND,
        0x200,
        LOCAL4,
        src=PEER4,
        local_mac=HOST_MAC,
        soft_lifetime_packets=4,
        lifetime_packets=9,
    )
    add_sa(agent, Direction.INBOUND, 0x201, LOCAL6, esn=True, seq=0xFFFF_FFE0, replay_window=16)
    add_sa(
        agent,
        Direction.INBOUND,
        0x202,
        LOCAL4,
        local_mac=VF_MAC,
        vlans=(VLAN_Q,),
        replay_window=0,
        soft_lifetime_bytes=100,
    )
    add_sa(
        agent,
        Direction.INBOUND,
        0x203,
        LOCAL4,
        lifetime_bytes=200,
        soft_lifetime_bytes=120,
        replay_window=128,
    )
    if hairpin:
        request(agent, Opcode.ADD_LOCAL_ADDR, encode_local_addr(LocalAddr(PEER_MAC, ())))
    # a first packet on each SA: the reference path creates its cipher context
    agent.from_host([_tx(flow, 1, b"first", False) for flow in OUT])
    firsts = zip(IN, (1, 0xFFFF_FFE1, 1, 1), strict=True)
    agent.from_wire([_rx(flow, seq, b"first", False, False, False) for flow, seq in firsts])
    return agent


def _tx(flow: Flow, iv: int, payload: bytes, options: bool) -> bytes:
    return offload_frame(
        flow.spi,
        iv,
        payload,
        src_ip=flow.local,
        dst_ip=flow.peer,
        src_mac=flow.mac,
        vlans=flow.vlans,
        options=b"\x01\x01\x01\x00" if options and len(flow.peer) == 4 else b"",
    )


def _rx(flow: Flow, seq: int, payload: bytes, forged: bool, bad_pad: bool, ext: bool) -> bytes:
    key = KEY256 if forged else flow.key
    plaintext = None
    if bad_pad:
        plaintext = payload + b"\x01\x07" + trailer(len(payload) + 2, PROTO_UDP)[-2:]
    esp = esp_packet(key, flow.spi, seq, payload, esn=flow.esn, plaintext=plaintext)
    return wire_frame(
        esp,
        src_ip=flow.peer,
        dst_ip=flow.local,
        dst_mac=flow.mac,
        vlans=flow.vlans,
        ext=hop_by_hop() if ext and len(flow.local) == 16 else b"",
    )


_SEQS = st.one_of(
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(0xFFFF_FFD0, 0xFFFF_FFFF),
    st.integers(0x1_0000_0000, 0x1_0000_0010),
    st.just(0xFFFF_FFFF_FFFF_FFFF),
)
_PAYLOAD = st.binary(max_size=80)


def _tx_frames() -> st.SearchStrategy[bytes]:
    return st.builds(_tx, st.sampled_from(OUT), _SEQS, _PAYLOAD, st.booleans())


def _rx_frames() -> st.SearchStrategy[bytes]:
    return st.builds(
        _rx,
        st.sampled_from(IN),
        _SEQS,
        _PAYLOAD,
        st.sampled_from([False] * 5 + [True]),
        st.sampled_from([False] * 5 + [True]),
        st.sampled_from([False] * 3 + [True]),
    )


@st.composite
def _damaged(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    """A frame, sometimes with one byte changed, cut short, or padded (as Ethernet pads)."""
    frame = draw(frames)
    how = draw(st.sampled_from(["as is", "as is", "as is", "flip", "cut", "pad"]))
    if how == "pad":
        return frame + draw(st.binary(min_size=1, max_size=20))
    if how == "flip":
        at = draw(st.integers(0, len(frame) - 1))
        return frame[:at] + bytes((frame[at] ^ draw(st.integers(1, 255)),)) + frame[at + 1 :]
    if how == "cut":
        return frame[: draw(st.integers(0, len(frame) - 1))]
    return frame


def _readd(flow: Flow, txn_id: int) -> bytes:
    """ADD_SA of an OUT flow's SA afresh (after a REMOVE_SA took it out)."""
    request = sa_request(Direction.OUTBOUND, flow.spi, flow.peer, flow.key, _ALG[flow.key])
    request = replace(request, local_mac=flow.mac, vlans=flow.vlans, esn=flow.esn)
    return config_frame(Opcode.ADD_SA, encode_add_sa(request), txn_id=txn_id)


_TXN = st.integers(1 << 31, (1 << 32) - 1)
"""txn_ids above those of the set-up's requests (each agent's own, from a shared counter)."""
_CONFIG = st.one_of(
    st.builds(
        lambda index, txn: config_frame(Opcode.REMOVE_SA, sa_index_tlv(index), txn_id=txn),
        st.integers(1, 9),
        _TXN,
    ),
    st.builds(_readd, st.sampled_from(OUT), _TXN),
)
"""SAD changes in the middle of a burst: the fast path must see each at once."""

_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["host", "wire"]),
        st.lists(
            st.one_of(_damaged(_tx_frames()), _damaged(_rx_frames()), st.binary(), _CONFIG),
            max_size=8,
        ),
    ),
    min_size=1,
    max_size=6,
)


def _state(agent: IpsecAgent) -> dict[str, Any]:
    state = agent.dump()
    state["bitmaps"] = [None if sa.replay is None else sa.replay.bitmap for sa in agent.sad]
    state["raised"] = [sorted(sa.raised) for sa in agent.sad]
    state["watch"] = [(sa.watch_packets, sa.watch_bytes, sa.watch_seq) for sa in agent.sad]
    return state


def _same(a: AgentOutput, b: AgentOutput) -> None:
    assert a.to_wire == b.to_wire
    assert a.to_host == b.to_host
    assert a.hairpin == b.hairpin


@pytest.fixture(scope="module", autouse=True)
def _fast_path_built() -> None:
    require_fast_path()


@settings(
    max_examples=int(os.environ.get("FAST_PATH_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(steps=_STEPS, ivdb=st.booleans(), hairpin=st.booleans())
def test_fast_path_equals_reference(
    steps: list[tuple[str, list[bytes]]], ivdb: bool, hairpin: bool
) -> None:
    fast, reference = _agent(True, ivdb, hairpin), _agent(False, ivdb, hairpin)
    for step, (side, frames) in enumerate(steps):
        now = step * 0.007
        while (due := reference.next_timer()) is not None and due <= now:
            assert fast.next_timer() == due
            _same(fast.on_timer(due), reference.on_timer(due))
        if side == "host":
            _same(fast.from_host(frames, now), reference.from_host(frames, now))
        else:
            _same(fast.from_wire(frames, now), reference.from_wire(frames, now))
        assert _state(fast) == _state(reference)
        assert fast.next_timer() == reference.next_timer()


def _reference_calls(agent: IpsecAgent, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the frames the agent's reference path handles from now on."""
    calls = {"tx": 0, "rx": 0}
    host_frame, ingress = agent._host_frame, agent._ingress

    def count_tx(frame: bytes, out: AgentOutput) -> None:
        calls["tx"] += 1
        host_frame(frame, out)

    def count_rx(frame: bytes) -> bytes | None:
        calls["rx"] += 1
        return ingress(frame)

    monkeypatch.setattr(agent, "_host_frame", count_tx)
    monkeypatch.setattr(agent, "_ingress", count_rx)
    return calls


def test_common_frames_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = _agent(True, ivdb=True, hairpin=False)
    calls = _reference_calls(agent, monkeypatch)
    tx = [_tx(flow, 2, b"common", options) for flow in OUT for options in (False, True)]
    assert len(agent.from_host(tx).to_wire) == len(tx)
    firsts = dict(zip(IN, (1, 0xFFFF_FFE1, 1, 1), strict=True))
    rx = [_rx(flow, firsts[flow] + 1, b"common", False, False, False) for flow in IN]
    assert len(agent.from_wire(rx).to_host) == len(rx)
    assert calls == {"tx": 0, "rx": 0}
    assert agent.counters.paths[Path.TX_ENCRYPTED] == len(OUT) + len(tx)
    assert agent.counters.rx_status[RxStatus.OK] == 2 * len(IN)


def test_unusual_frames_take_the_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = _agent(True, ivdb=True, hairpin=False)
    calls = _reference_calls(agent, monkeypatch)
    ipv6 = IN[1]
    unusual = [
        _rx(IN[0], 1, b"replayed", False, False, False),
        _rx(IN[0], 5, b"forged", True, False, False),
        _rx(IN[0], 6, b"bad padding", False, True, False),
        _rx(ipv6, 0xFFFF_FFE2, b"extension header", False, False, True),
        _rx(IN[0], 7, b"ahead", False, False, False),  # the common case again
    ]
    out = agent.from_wire(unusual)
    assert len(out.to_host) == len(unusual)
    assert calls == {"tx": 0, "rx": 4}
    statuses = agent.counters.rx_status
    assert (statuses[RxStatus.REPLAY], statuses[RxStatus.AUTH_FAILED]) == (1, 1)
    assert statuses[RxStatus.MALFORMED] == 1


def test_a_frame_reaching_a_threshold_takes_the_reference_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path hands back exactly the frames that bring an SA to a soft or hard
    lifetime or to the SEQ soft limit; the reference path counts them and raises the events."""
    agent = _agent(True, ivdb=True, hairpin=False)
    calls = _reference_calls(agent, monkeypatch)
    flow = IN[0]  # soft limit 4 packets, hard 9; the set-up sent packet 1
    rx = [_rx(flow, seq, b"p", False, False, False) for seq in range(2, 12)]
    out = agent.from_wire(rx)
    # packets 2, 3 fast; 4 (soft) back; 5 .. 8 fast; 9 (hard) back; then SA_EXPIRED, back
    assert calls["rx"] == 1 + 1 + 2
    kinds = [f[21] == 0x09 and f[18:20] == b"\x88\xb6" for f in out.to_host]
    assert kinds.count(True) == 2
    flow = OUT[0]  # next number 2^31 - 2 after the set-up's packet; 2^31 raises the limit
    calls["tx"] = 0
    out = agent.from_host([_tx(flow, 0, b"q", False) for _ in range(4)])
    assert len(out.to_wire) == 4
    assert calls["tx"] == 2  # 2^31 (SEQ_SOFT_LIMIT) and 2^31 + 1 (the soft limit, 5 packets)
    assert len(out.to_host) == 2
