"""Spec 9: the agent's SOFT_EXPIRE and HARD_EXPIRE reach the owner's stack as Linux's soft and
hard expiry of the xfrm state, through the PF (its own states) or the VF's mailbox (a VM's):
a soft expiry is a rekey request told once; at a hard one the state is deleted from the agent
and the stack, its policies stay, and nothing it selected leaves in clear afterwards."""

from __future__ import annotations

import ipaddress

import pytest

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.host.stack import HostStack, StateExpire
from ipsec_offload.host.xfrm import Offload, XfrmPolicy, XfrmState
from ipsec_offload.sim.observer import WireObserver
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.config import Algorithm, Direction
from ipsec_offload.wire.packet import find_esp

pytestmark = pytest.mark.usefixtures("agent_path", "nic_path")

PF_MAC, PEER_MAC = "02:00:00:00:00:10", "02:00:00:00:02:00"
KEY = bytes(range(20))


def _net(addr: bytes) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(ipaddress.IPv4Address(addr))


def one_way(bed: Testbed, host: HostStack, peer: HostStack, soft: int, hard: int) -> XfrmState:
    """An outbound state host -> peer, offloaded, with packet lifetimes; its peer's inbound."""
    src, dst = host.addresses[4], peer.addresses[4]
    out = XfrmState(
        1, Direction.OUTBOUND, 0x500, src, dst, Algorithm.AES_GCM_128, KEY,
        lifetime_packets=hard, soft_lifetime_packets=soft,
    )  # fmt: skip
    inn = XfrmState(2, Direction.INBOUND, 0x500, src, dst, Algorithm.AES_GCM_128, KEY)
    host.add_state(out, bed.now, offload=True)
    host.add_policy(XfrmPolicy(Direction.OUTBOUND, _net(src), _net(dst), out.handle))
    peer.add_state(inn, bed.now)
    peer.add_policy(XfrmPolicy(Direction.INBOUND, _net(src), _net(dst), inn.handle))
    bed.settle(host, peer)
    assert out.offload == Offload.DEVICE
    return out


def expiries(bed: Testbed, host: HostStack) -> list[tuple[int, bool]]:
    return [(e.handle, e.hard) for e in bed.endpoint(host).log if isinstance(e, StateExpire)]


@pytest.mark.parametrize("on_vf", [False, True], ids=["PF host", "VM"])
def test_soft_then_hard_expiry_reach_the_stack(on_vf: bool) -> None:
    pf_mac = bytes.fromhex(PF_MAC.replace(":", ""))
    bed = Testbed(agent=AgentConfig(pf_mac=pf_mac))
    pf = bed.add_pf_host("pf", PF_MAC, ipv4="10.0.0.1")
    host = bed.add_vm("vm", 0, "02:00:00:00:01:01", ipv4="10.0.0.3") if on_vf else pf
    peer = bed.add_peer("peer", PEER_MAC, ipv4="10.0.0.9")
    state = one_way(bed, host, peer, soft=3, hard=5)
    for n in range(3):
        host.send_udp(peer.addresses[4], 1, 2, b"datagram %d" % n, bed.now)
        bed.settle(host)
    assert expiries(bed, host) == [(state.handle, False)]  # a rekey request, once
    for n in range(3, 6):
        host.send_udp(peer.addresses[4], 1, 2, b"datagram %d" % n, bed.now)
        bed.settle(host)
    # the fifth datagram reached the hard lifetime: the state is gone from the agent and the
    # stack, its policy stays, and the sixth is dropped by the stack, not sent in clear
    assert expiries(bed, host) == [(state.handle, False), (state.handle, True)]
    assert state.handle not in host.states and [p.state for p in host.policies] == [1]
    assert len(bed.agent.sad) == 0
    assert host.counters.drops == {"out_no_state": 1} and host.counters.hard_expiries == 1
    assert [d.payload for d in bed.delivered(peer)] == [b"datagram %d" % n for n in range(5)]
    assert all(find_esp(r.frame) is not None for r in bed.captures["agent-to-wire"])
    assert WireObserver(bed).check() == []
