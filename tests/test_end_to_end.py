"""End to end through the simulator: host stack -> PF driver -> NIC -> agent -> wire -> peer."""

from __future__ import annotations

import struct

import pytest

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.errors import UsageError
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Mode, Offload
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.config import Algorithm
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.packet import find_esp

pytestmark = pytest.mark.usefixtures("agent_path", "nic_path", "host_path")

HOST_MAC, PEER_MAC = "02:00:00:00:01:00", "02:00:00:00:02:00"


def make_bed(**agent: object) -> tuple[Testbed, HostStack, HostStack]:
    bed = Testbed(agent=AgentConfig(**agent) if agent else None)  # type: ignore[arg-type]
    host = bed.add_pf_host("host", HOST_MAC, ipv4="192.0.2.1", ipv6="2001:db8::1")
    peer = bed.add_peer("peer", PEER_MAC, ipv4="192.0.2.2", ipv6="2001:db8::2")
    return bed, host, peer


def driver_of(bed: Testbed) -> PfDriver:
    driver = bed.endpoint("host").driver
    assert isinstance(driver, PfDriver)
    return driver


def exchange(
    bed: Testbed, host: HostStack, peer: HostStack, family: int, count: int
) -> list[bytes]:
    """UDP both ways and pings from the host; returns the payloads sent each way."""
    size = 4 if family == 4 else 16
    payloads = [bytes([i]) * (1 + 37 * i) for i in range(count)]
    for i, payload in enumerate(payloads):
        host.send_udp(peer.addresses[size], 1000 + i, 53, payload, bed.now)
        bed.settle(host)
        peer.send_udp(host.addresses[size], 53, 1000 + i, payload, bed.now)
        bed.settle(peer)
    for i in range(count):
        host.send_echo(peer.addresses[size], 7, i, b"ping" * i, bed.now)
        bed.settle(host)
    return payloads


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", [Mode.TRANSPORT, Mode.TUNNEL])
@pytest.mark.parametrize("algorithm", [Algorithm.AES_GCM_128, Algorithm.AES_GCM_256])
def test_offloaded_both_ways(family: int, mode: Mode, algorithm: Algorithm) -> None:
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer, family=family, mode=mode, algorithm=algorithm)
    assert [r.rc for r in bed.results(host)] == [0, 0]
    assert host.states[sas.a_out.handle].offload == Offload.DEVICE
    assert host.states[sas.a_in.handle].offload == Offload.DEVICE
    count = 6
    payloads = exchange(bed, host, peer, family, count)

    at_peer = bed.delivered(peer)
    udp_at_peer = [d for d in at_peer if d.protocol == IpProto.UDP]
    assert [d.payload for d in udp_at_peer] == payloads
    assert all(d.state == sas.b_in.handle and not d.offloaded for d in at_peer)
    at_host = bed.delivered(host)
    udp_at_host = [d for d in at_host if d.protocol == IpProto.UDP]
    assert [d.payload for d in udp_at_host] == payloads
    echo_replies = [d for d in at_host if d.protocol != IpProto.UDP]
    assert [(d.src_port, d.dst_port) for d in echo_replies] == [(7, i) for i in range(count)]
    assert all(d.offloaded and d.state == sas.a_in.handle for d in at_host)

    # The agent's per-SA counters equal the packets sent through each SA.
    out_sa, in_sa = _agent_sas(bed, sas)
    assert out_sa.packets == 2 * count  # UDP + echo requests
    assert in_sa.packets == 2 * count  # UDP + echo replies
    assert in_sa.errors == [0, 0, 0, 0, 0]
    driver = driver_of(bed)
    assert driver.counters.tx_offloaded == 2 * count
    assert driver.counters.rx_delivered == 2 * count
    assert host.counters.tx_esp_offloaded == 2 * count
    assert host.counters.rx_esp_offloaded == 2 * count
    assert bed.agent.counters.drops == dict.fromkeys(bed.agent.counters.drops, 0)
    assert len(bed.captures["agent-to-wire"]) == 2 * count
    assert not host.counters.drops and not peer.counters.drops


def _agent_sas(bed: Testbed, sas: SaBundle) -> tuple:  # type: ignore[type-arg]
    by_spi = {(sa.spi, sa.direction.name): sa for sa in bed.agent.sad}
    return by_spi[(sas.a_out.spi, "OUTBOUND")], by_spi[(sas.a_in.spi, "INBOUND")]


def test_wire_frames_are_encrypted_and_numbered_from_one() -> None:
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer)
    secret = b"the plaintext must never be on the wire"
    for _ in range(3):
        host.send_udp(peer.addresses[4], 9, 9, secret, bed.now)
        bed.settle(host)
    frames = bed.captures["agent-to-wire"].records
    assert len(frames) == 3
    for i, record in enumerate(frames, start=1):
        assert secret not in record.frame
        esp = record.frame[14 + 20 :]
        assert int.from_bytes(esp[0:4]) == sas.a_out.spi
        assert int.from_bytes(esp[4:8]) == i
        assert int.from_bytes(esp[8:16]) == i  # the IV is the 64-bit counter


def test_refused_offload_falls_back_to_software_and_traffic_flows() -> None:
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer, family=6, replay_window=8192)
    results = bed.results(host)
    assert sorted((r.handle, r.rc, r.offload) for r in results) == [
        (sas.a_out.handle, 0, Offload.DEVICE),
        (sas.a_in.handle, -95, Offload.SOFTWARE),
    ]
    assert host.counters.offload_fallbacks == 1
    payloads = exchange(bed, host, peer, 6, 4)
    at_host = [d for d in bed.delivered(host) if d.protocol == IpProto.UDP]
    assert [d.payload for d in at_host] == payloads
    assert not any(d.offloaded for d in at_host)
    assert host.counters.rx_esp_software == 8
    assert bed.agent.counters.rx_status[1] == 8  # NO_SA: the agent passed them on
    assert len(bed.agent.sad) == 1


def test_software_only_host_without_offload() -> None:
    bed, host, peer = make_bed()
    bed.secure(host, peer, offload_a=False)
    payloads = exchange(bed, host, peer, 4, 3)
    assert [d.payload for d in bed.delivered(peer) if d.protocol == IpProto.UDP] == payloads
    assert len(bed.agent.sad) == 0
    assert host.counters.tx_esp_software == 6


def test_delete_removes_the_sa_from_the_agent() -> None:
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer)
    assert len(bed.agent.sad) == 2
    host.delete_state(sas.a_out.handle, bed.now)
    host.delete_state(sas.a_in.handle, bed.now)
    bed.settle(host)
    assert len(bed.agent.sad) == 0
    deletes = [r for r in bed.results(host) if r.operation == "delete"]
    assert [(r.handle, r.rc) for r in deletes] == [(sas.a_out.handle, 0), (sas.a_in.handle, 0)]
    assert driver_of(bed).sa_index == {}
    assert sas.a_out.handle not in host.states


def test_update_stats_merges_the_agents_replays_and_icv_failures_into_the_state() -> None:
    """xdo_dev_state_update_stats: the drops only the agent saw (a replay, a bad ICV) reach
    the state's stats (`ip -s xfrm state`'s replay and integrity counts), each once."""
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer)
    exchange(bed, host, peer, 4, 3)
    frame = bed.wire_frames_to(host, last=1)[0]
    esp = find_esp(frame)
    assert esp is not None
    header = struct.pack("!II", esp.spi, esp.seq)
    ahead = struct.pack("!II", esp.spi, esp.seq + 100)  # not seen yet, but not what was sealed
    bed.wire_inject([frame.replace(header, ahead, 1)])  # a bad ICV
    bed.wire_inject([frame])  # a replay
    state = host.states[sas.a_in.handle]
    assert (state.stats.replay, state.stats.integrity_failed) == (0, 0)
    host.update_stats(sas.a_in.handle, bed.now)
    assert (state.stats.replay, state.stats.integrity_failed) == (1, 1)
    host.update_stats(sas.a_in.handle, bed.now)  # read again: nothing new
    assert (state.stats.replay, state.stats.integrity_failed) == (1, 1)
    bed.wire_inject([frame])
    host.update_stats(sas.a_in.handle, bed.now)
    assert (state.stats.replay, state.stats.integrity_failed) == (2, 1)


def test_update_stats_of_a_software_state_is_a_usage_error() -> None:
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer, offload_a=False)
    with pytest.raises(UsageError, match="is not offloaded"):
        host.update_stats(sas.a_in.handle, bed.now)


def test_replayed_wire_frame_is_dropped_by_the_driver() -> None:
    bed, host, peer = make_bed()
    bed.secure(host, peer)
    peer.send_udp(host.addresses[4], 1, 2, b"once", bed.now)
    bed.settle(peer)
    frame = bed.captures["wire-to-agent"].records[-1].frame
    out = bed.agent.from_wire([frame], bed.now)
    bed._nic_rx(bed.nic.from_agent(out.to_host).rx)
    assert driver_of(bed).counters.rx_dropped["REPLAY"] == 1
    assert [d.payload for d in bed.delivered(host)] == [b"once"]


def test_esn_sa_offloaded_end_to_end() -> None:
    bed, host, peer = make_bed()
    bed.secure(host, peer, esn=True, algorithm=Algorithm.AES_GCM_256)
    payloads = exchange(bed, host, peer, 4, 3)
    assert [d.payload for d in bed.delivered(peer) if d.protocol == IpProto.UDP] == payloads
    assert all(d.offloaded for d in bed.delivered(host))
