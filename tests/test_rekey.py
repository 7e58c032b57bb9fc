"""Spec 9 (issue: soft lifetimes and rekey): the simulated key manager answers a soft expiry
with a new pair of SAs, make before break, and no packet is lost and no nonce used twice
across the rekeys, in both directions, the host's side offloaded."""

from __future__ import annotations

import pytest

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.host.stack import StateExpire
from ipsec_offload.host.xfrm import Offload
from ipsec_offload.sim.observer import WireObserver
from ipsec_offload.sim.testbed import Testbed

pytestmark = pytest.mark.usefixtures("agent_path", "nic_path")

PF_MAC = "02:00:00:00:00:10"
PACKETS = 12_000
"""Datagrams each way."""
SOFT, HARD = 2_000, 5_000
"""Each SA's soft and hard packet lifetimes: a rekey every 2,000 packets per SA."""


@pytest.mark.parametrize("on_vf", [False, True], ids=["PF host", "VM"])
def test_traffic_through_many_rekeys_loses_nothing(on_vf: bool) -> None:
    pf_mac = bytes.fromhex(PF_MAC.replace(":", ""))
    bed = Testbed(agent=AgentConfig(pf_mac=pf_mac), key_manager=True, capture=True)
    pf = bed.add_pf_host("pf", PF_MAC, ipv4="10.0.0.1")
    host = bed.add_vm("vm", 0, "02:00:00:00:01:01", ipv4="10.0.0.3") if on_vf else pf
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="10.0.0.9")
    first = bed.secure(host, peer, soft_lifetime_packets=SOFT, lifetime_packets=HARD)
    observer = WireObserver(bed)
    sent_out, sent_in = [], []
    for n in range(PACKETS):
        out, back = b"host to peer %d" % n, b"peer to host %d" % n
        host.send_udp(peer.addresses[4], 1, 2, out, bed.now)
        peer.send_udp(host.addresses[4], 2, 1, back, bed.now)
        sent_out.append(out)
        sent_in.append(back)
        bed.settle(host, peer)
        if n % 1000 == 0:
            assert observer.check() == []
    bed.run()
    assert [d.payload for d in bed.delivered(peer)] == sent_out
    assert [d.payload for d in bed.delivered(host)] == sent_in
    assert observer.check() == [] and observer.summary().esp_frames >= 2 * PACKETS
    # a rekey every SOFT packets or so of the SA that reached its soft limit first
    assert bed.rekeys >= PACKETS // SOFT - 1
    soft = [e for e in bed.endpoint(host).log if isinstance(e, StateExpire)]
    assert soft and not any(e.hard for e in soft)
    assert host.counters.drops == {} and peer.counters.drops == {}
    # the old pairs are gone; the current one is offloaded on the host's side
    assert first.a_out.handle not in host.states and len(host.states) == 2
    assert {s.offload for s in host.states.values()} == {Offload.DEVICE}
    assert len(bed.agent.sad) == 2
