"""The xfrmdev_ops contract, callback by callback, as Linux documents it
(Documentation/networking/xfrm/xfrm_device.rst, struct xfrmdev_ops, xfrm_dev_state_add):
what each call returns, the extack text of a failure, and what becomes of the state and
its traffic. docs/linux-mapping.md sets each beside Linux's."""

from __future__ import annotations

import pytest

from ipsec_offload.driver.control import Errno
from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.driver.ring import (
    ESP_FEATURES,
    ExtAck,
    NetdevFeature,
    OffloadState,
    OffloadType,
    errno_text,
)
from ipsec_offload.host.events import StateResult
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Offload
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.config import Algorithm, Direction
from ipsec_offload.wire.ip import IpProto, IPv4Header, IPv6Header, build_ipv4, build_ipv6
from ipsec_offload.wire.packet import find_esp
from test_testbed_faults import is_add_sa

HOST, PEER = "192.0.2.1", "192.0.2.2"


def bed_of() -> tuple[Testbed, HostStack, HostStack, PfDriver]:
    bed = Testbed()
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4=HOST, ipv6="2001:db8::1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4=PEER, ipv6="2001:db8::2")
    driver = bed.endpoint(host).driver
    assert isinstance(driver, PfDriver)
    return bed, host, peer, driver


def add_results(bed: Testbed, host: HostStack) -> list[StateResult]:
    return [r for r in bed.results(host) if r.operation == "add"]


def wire_seqs(bed: Testbed, spi: int) -> list[int]:
    """The sequence numbers of `spi` on the wire, as the agent sent them, in order."""
    records = bed.captures["agent-to-wire"].records
    return [e.seq for e in map(find_esp, (r.frame for r in records)) if e and e.spi == spi]


# -- xdo_dev_state_add ----------------------------------------------------------------------


def test_add_returns_0_once_the_agent_answered_and_the_state_is_offloaded() -> None:
    bed, host, peer, driver = bed_of()
    sas = bed.secure(host, peer)
    assert [(r.rc, r.offload, r.extack) for r in add_results(bed, host)] == [
        (0, Offload.DEVICE, None),
        (0, Offload.DEVICE, None),
    ]
    assert sas.a_out.add_rc == 0 and sas.a_out.offload == Offload.DEVICE
    assert set(driver.sa_index) == {sas.a_out.handle, sas.a_in.handle}
    assert sorted(sa.spi for sa in bed.agent.sad) == sorted((sas.a_out.spi, sas.a_in.spi))


def test_add_eopnotsupp_of_a_crypto_state_falls_back_to_software() -> None:
    """Linux's rule: -EOPNOTSUPP of a crypto offload state is not an error; the stack
    carries the state itself (an inbound replay window of 8192 is beyond the agent's 4096)."""
    bed, host, peer, driver = bed_of()
    sas = bed.secure(host, peer, replay_window=8192)
    results = add_results(bed, host)
    assert [(r.handle, r.rc, r.offload) for r in results] == [
        (sas.a_out.handle, 0, Offload.DEVICE),
        (sas.a_in.handle, -Errno.EOPNOTSUPP, Offload.SOFTWARE),
    ]
    assert results[1].extack == "Replay window above the agent's 4096"
    assert host.counters.offload_fallbacks == 1
    assert set(driver.sa_index) == {sas.a_out.handle}
    assert [sa.spi for sa in bed.agent.sad] == [sas.a_out.spi]
    peer.send_udp(HOST, 1, 2, b"opened here", bed.now)
    bed.settle(peer)
    assert host.counters.rx_esp_software == 1 and host.counters.rx_esp_offloaded == 0
    assert [d.payload for d in bed.delivered(host)] == [b"opened here"]


def test_add_that_times_out_fails_the_state_and_its_policy_blocks() -> None:
    """Any other error fails the add (xfrm_dev_state_add returns it, with the weak extack
    "Device failed to offload this state" unless the driver set one): the state is not in
    the SAD, and the policy that names it drops what it selects, never sends it in clear."""
    bed, host, peer, driver = bed_of()
    bed.lose("nic-to-agent", 100, is_add_sa)
    sas = bed.secure(host, peer)
    first = add_results(bed, host)[0]
    assert (first.handle, first.rc, first.offload) == (sas.a_out.handle, -Errno.ETIMEDOUT, None)
    assert first.extack == errno_text(-Errno.ETIMEDOUT)
    assert sas.a_out.handle not in host.states
    sent_before = len(bed.captures["agent-to-wire"])
    host.send_udp(PEER, 1, 2, b"never in clear", bed.now)
    bed.settle(host)
    assert host.counters.drops["out_no_state"] == 1
    assert len(bed.captures["agent-to-wire"]) == sent_before
    assert driver.sa_index == {}


def test_add_of_a_packet_offload_state_is_einval_without_fallback() -> None:
    bed, _host, _peer, driver = bed_of()
    extack = ExtAck()
    state = OffloadState(
        7,
        Direction.OUTBOUND,
        0x99,
        bytes([192, 0, 2, 2]),
        bytes([192, 0, 2, 1]),
        Algorithm.AES_GCM_128,
        bytes(20),
        offload_type=OffloadType.PACKET,
    )
    assert driver.xdo_dev_state_add(state, extack, bed.now) == -Errno.EINVAL
    assert extack.msg == "Unsupported ipsec offload type"
    assert driver.sa_index == {} and len(bed.agent.sad) == 0


def test_a_device_without_hw_esp_is_never_asked() -> None:
    """No NETIF_F_HW_ESP: xfrm_dev_state_add does not call the driver; the state is software."""
    bed, host, peer, driver = bed_of()
    driver.features = ESP_FEATURES & ~NetdevFeature.HW_ESP
    sas = bed.secure(host, peer)
    assert [(r.rc, r.offload) for r in add_results(bed, host)] == [(0, Offload.SOFTWARE)] * 2
    assert len(bed.agent.sad) == 0 and sas.a_in.offload == Offload.SOFTWARE
    assert host.counters.offload_fallbacks == 0


# -- xdo_dev_state_delete and xdo_dev_state_free ----------------------------------------------


def test_delete_returns_nothing_and_free_waits_for_the_agent() -> None:
    bed, host, peer, driver = bed_of()
    sas = bed.secure(host, peer)
    assert driver.xdo_dev_state_delete(sas.a_out.handle, bed.now) is None  # type: ignore[func-returns-value]
    assert sas.a_out.spi in {sa.spi for sa in bed.agent.sad}  # REMOVE_SA not answered yet
    driver.xdo_dev_state_free(sas.a_out.handle, bed.now)
    assert sas.a_out.spi not in {sa.spi for sa in bed.agent.sad}
    assert sas.a_out.handle not in driver.sa_index


def test_the_stacks_delete_removes_the_state_its_policies_and_the_agents_sa() -> None:
    bed, host, peer, _driver = bed_of()
    sas = bed.secure(host, peer)
    host.delete_state(sas.a_out.handle, bed.now)
    bed.settle(host)
    assert sas.a_out.handle not in host.states
    assert all(p.state != sas.a_out.handle for p in host.policies)
    assert [sa.spi for sa in bed.agent.sad] == [sas.a_in.spi]
    assert [r.rc for r in bed.results(host) if r.operation == "delete"] == [0]


# -- xdo_dev_offload_ok ---------------------------------------------------------------------


def test_offload_ok_refuses_ipv4_options_and_ipv6_extension_headers() -> None:
    """As ixgbe's and mlx5's do: the agent's parser takes neither."""
    bed, host, peer, driver = bed_of()
    sas = bed.secure(host, peer)
    handle = sas.a_out.handle
    src, dst = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
    plain4 = build_ipv4(IPv4Header(src, dst, IpProto.ESP, 20))
    router_alert = build_ipv4(IPv4Header(src, dst, IpProto.ESP, 24, options=b"\x94\x04\x00\x00"))
    plain6 = build_ipv6(IPv6Header(bytes(16), bytes(16), IpProto.ESP, 0))
    hop_by_hop = build_ipv6(IPv6Header(bytes(16), bytes(16), 0, 8))
    assert driver.xdo_dev_offload_ok(handle, plain4)
    assert driver.xdo_dev_offload_ok(handle, plain6)
    assert not driver.xdo_dev_offload_ok(handle, router_alert)
    assert not driver.xdo_dev_offload_ok(handle, hop_by_hop)
    assert driver.counters.offload_refused == 2
    assert not driver.xdo_dev_offload_ok(9999, plain4)  # not a state of this device
    assert driver.counters.offload_refused == 2


def test_a_packet_offload_ok_refuses_is_sealed_by_the_stack_with_the_next_number() -> None:
    bed, host, peer, driver = bed_of()
    sas = bed.secure(host, peer)
    host.send_udp(PEER, 1, 2, b"one", bed.now)
    bed.settle(host)
    driver.xdo_dev_offload_ok = lambda handle, l3: False  # type: ignore[method-assign]
    host.send_udp(PEER, 1, 2, b"two", bed.now)
    bed.settle(host)
    del driver.xdo_dev_offload_ok
    host.send_udp(PEER, 1, 2, b"three", bed.now)
    bed.settle(host)
    assert [d.payload for d in bed.delivered(peer)] == [b"one", b"two", b"three"]
    assert (host.counters.tx_esp_offloaded, host.counters.tx_esp_software) == (2, 1)
    # the agent numbered 1 and 3; the stack sealed 2 (it passed the agent unchanged)
    assert wire_seqs(bed, sas.a_out.spi) == [1, 2, 3]
    assert sas.a_out.offload == Offload.DEVICE


# -- xdo_dev_state_advance_esn ----------------------------------------------------------------


def test_advance_esn_is_called_once_when_the_window_crosses_2_to_the_32() -> None:
    bed, host, peer, driver = bed_of()
    start = (1 << 32) - 3
    sas = bed.secure(host, peer, esn=True, algorithm=Algorithm.AES_GCM_256, seq_start=start)
    for i in range(6):
        peer.send_udp(HOST, 1, 2, bytes([i]), bed.now)
        bed.settle(peer)
    assert [d.payload for d in bed.delivered(host)] == [bytes([i]) for i in range(6)]
    assert driver.pf_counters.sa_updates == 1  # at 2^32: the agent tracks its ESN itself
    replay = host.states[sas.a_in.handle].replay
    assert replay is not None and replay.highest == start + 6


# -- features ---------------------------------------------------------------------------------


def test_without_gso_esp_the_stack_cuts_a_large_send_itself() -> None:
    bed, host, peer, driver = bed_of()
    bed.secure(host, peer)
    driver.features = ESP_FEATURES & ~NetdevFeature.GSO_ESP
    host.send_udp(PEER, 1, 2, bytes(3000), bed.now, mss=1000)
    bed.settle(host)
    assert host.counters.tx_tso_sends == 0
    assert [len(d.payload) for d in bed.delivered(peer)] == [1000, 1000, 1000]
    driver.features = ESP_FEATURES
    host.send_udp(PEER, 1, 2, bytes(3000), bed.now, mss=1000)
    bed.settle(host)
    assert host.counters.tx_tso_sends == 1
    assert len(bed.delivered(peer)) == 6


@pytest.mark.parametrize("flag", list(NetdevFeature))
def test_each_feature_is_one_bit_of_esp_features(flag: NetdevFeature) -> None:
    assert flag in ESP_FEATURES and bin(flag).count("1") == 1
