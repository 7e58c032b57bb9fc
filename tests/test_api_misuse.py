"""Misuse of the Python API is a UsageError whose one line says what to fix, never a raw
ValueError, TypeError, AttributeError or struct.error, and nonsense is refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ipsec_offload.errors import UsageError
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.ethernet import VlanTag


def bed_with_host() -> Testbed:
    bed = Testbed()
    bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2", ipv6="2001:db8::2")
    return bed


CASES: dict[str, tuple[Callable[[Testbed], object], str]] = {
    "agent not a config": (lambda _b: Testbed(agent="x"), "takes an AgentConfig"),  # type: ignore[arg-type]
    "bad IPv4": (
        lambda b: b.add_peer("p", "02:00:00:00:02:01", ipv4="300.1.1.1"),
        "host p: ipv4='300.1.1.1' is not an IPv4 address",
    ),
    "IPv6 given as ipv4": (
        lambda b: b.add_peer("p", "02:00:00:00:02:01", ipv4="2001:db8::9"),
        "is not an IPv4 address",
    ),
    "bad IPv6": (
        lambda b: b.add_peer("p", "02:00:00:00:02:01", ipv6="zz::1"),
        "host p: ipv6='zz::1' is not an IPv6 address",
    ),
    "VLAN as an int": (
        lambda b: b.add_peer("p", "02:00:00:00:02:01", ipv4="192.0.2.9", vlans=(5,)),  # type: ignore[arg-type]
        "each VLAN is a VlanTag",
    ),
    "VLAN with a bad TPID": (
        lambda b: b.add_peer("p", "02:00:00:00:02:01", ipv4="192.0.2.9", vlans=(VlanTag(1, 5),)),
        "needs TPID 0x8100 or 0x88A8",
    ),
    "three VLANs": (
        lambda b: b.add_peer(
            "p", "02:00:00:00:02:01", ipv4="192.0.2.9", vlans=(VlanTag(0x8100, 1),) * 3
        ),
        "at most 2 VLAN tags",
    ),
    "multicast MAC": (
        lambda b: b.add_peer("p", "01:00:5e:00:00:01", ipv4="192.0.2.9"),
        "is a multicast address",
    ),
    "broadcast MAC": (
        lambda b: b.add_peer("p", "ff:ff:ff:ff:ff:ff", ipv4="192.0.2.9"),
        "is a multicast address",
    ),
    "zero MAC": (
        lambda b: b.add_peer("p", "00:00:00:00:00:00", ipv4="192.0.2.9"),
        "is not a host's MAC address",
    ),
    "not a MAC": (
        lambda b: b.add_peer("p", "02:00", ipv4="192.0.2.9"),
        "is not a MAC address",
    ),
    "the agent's MAC": (
        lambda _b: Testbed().add_pf_host("h", "02:00:00:00:00:01", ipv4="192.0.2.1"),
        "is the agent's MAC",
    ),
    "two hosts with one IPv4": (
        lambda b: b.add_peer("p", "02:00:00:00:02:01", ipv4="192.0.2.2"),
        "peer has 192.0.2.2 already",
    ),
    "two hosts with one IPv6": (
        lambda b: b.add_peer("p", "02:00:00:00:02:01", ipv6="2001:db8::2"),
        "peer has 2001:db8::2 already",
    ),
    "two hosts with one MAC": (
        lambda b: b.add_peer("p", "02:00:00:00:02:00", ipv4="192.0.2.9"),
        "peer has its MAC already",
    ),
    "an L2TAG over 32 bits": (
        lambda b: b.inject("host", bytes(60), l2tag=2**32),
        "L2TAG is 32 bits",
    ),
    "a frame that is not bytes": (
        lambda b: b.inject("host", "frame"),  # type: ignore[arg-type]
        "takes the frame as bytes",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_misuse_is_one_clear_usage_error(case: str) -> None:
    call, message = CASES[case]
    bed = bed_with_host()
    before = sorted(bed.endpoints)
    with pytest.raises(UsageError) as info:
        call(bed)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert sorted(bed.endpoints) == before  # nothing half-added


def test_the_same_address_on_another_vlan_is_another_l2_domain() -> None:
    bed = bed_with_host()
    other = bed.add_peer("far", "02:00:00:00:02:00", ipv4="192.0.2.2", vlans=(VlanTag(0x8100, 7),))
    assert other.addresses[4] == bed.endpoint("peer").stack.addresses[4]


def test_a_refused_pf_host_or_vm_leaves_the_port_as_it_was() -> None:
    bed = Testbed()
    with pytest.raises(UsageError, match="not an IPv4 address"):
        bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.300")
    assert bed.pf is None and bed.endpoints == {} and bed.nic.dump()["vsis"] == []
    bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    vsis = bed.nic.dump()["vsis"]
    with pytest.raises(UsageError, match="host has its MAC already"):
        bed.add_vm("vm", 0, "02:00:00:00:01:00", ipv4="192.0.2.5")
    assert bed.nic.dump()["vsis"] == vsis and bed.pf is not None and bed.pf.vfs == {}
