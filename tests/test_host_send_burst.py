"""`HostStack.send_udp_burst`: the same frames, counters and state as `send_udp` per datagram."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pytest

from ipsec_offload.errors import UsageError
from ipsec_offload.host import ip
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Mode, Offload
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.frames import reference_build_udp_frames

pytestmark = pytest.mark.usefixtures("nic_path", "host_path")

HOST_MAC, PEER_MAC = "02:00:00:00:01:00", "02:00:00:00:02:00"
PAYLOADS = [bytes([i]) * (1 + 53 * i) for i in range(12)]

Setup = Callable[[Testbed, HostStack, HostStack, SaBundle | None], None]


def _nothing(bed: Testbed, host: HostStack, peer: HostStack, sas: SaBundle | None) -> None:
    """The burst goes out as it is."""


def _lifetime_ends_mid_burst(
    bed: Testbed, host: HostStack, peer: HostStack, sas: SaBundle | None
) -> None:
    assert sas is not None
    state = host.states[sas.a_out.handle]
    state.lifetime_packets = state.packets + 5


def _sequence_ends_mid_burst(
    bed: Testbed, host: HostStack, peer: HostStack, sas: SaBundle | None
) -> None:
    assert sas is not None
    host.states[sas.a_out.handle].oseq = (1 << 32) - 1 - 3


def _no_neighbour(bed: Testbed, host: HostStack, peer: HostStack, sas: SaBundle | None) -> None:
    host.neighbors.clear()


# (how the SA is made: None for none, else (family, mode, offloaded)), what else is set up
CASES: dict[str, tuple[tuple[int, Mode, bool] | None, Setup]] = {
    "offloaded IPv4": ((4, Mode.TRANSPORT, True), _nothing),
    "offloaded IPv6": ((6, Mode.TRANSPORT, True), _nothing),
    "clear IPv4": (None, _nothing),
    "software state": ((4, Mode.TRANSPORT, False), _nothing),
    "tunnel mode": ((6, Mode.TUNNEL, True), _nothing),
    "lifetime ends mid-burst": ((4, Mode.TRANSPORT, True), _lifetime_ends_mid_burst),
    "sequence numbers end mid-burst": ((4, Mode.TRANSPORT, True), _sequence_ends_mid_burst),
    "no neighbour": ((4, Mode.TRANSPORT, True), _no_neighbour),
}


def _bed(case: str) -> tuple[Testbed, HostStack, HostStack, int]:
    sa, setup = CASES[case]
    bed = Testbed()
    host = bed.add_pf_host("host", HOST_MAC, ipv4="192.0.2.1", ipv6="2001:db8::1")
    peer = bed.add_peer("peer", PEER_MAC, ipv4="192.0.2.2", ipv6="2001:db8::2")
    sas = None
    family = 4
    if sa is not None:
        family, mode, offload = sa
        sas = bed.secure(host, peer, family=family, mode=mode, offload_a=offload)
    setup(bed, host, peer, sas)
    return bed, host, peer, 4 if family == 4 else 16


def _snapshot(bed: Testbed, host: HostStack, peer: HostStack) -> dict[str, Any]:
    """Everything a burst may change: the frames on every link, counters, states, deliveries."""
    return {
        "links": {name: [r.frame for r in capture] for name, capture in bed.captures.items()},
        "host": asdict(host.counters),
        "peer": asdict(peer.counters),
        "states": {h: (s.oseq, s.packets, s.bytes) for h, s in host.states.items()},
        "delivered": bed.delivered(peer),
        "nic": bed.nic.dump(),
    }


@pytest.mark.parametrize("builder", ["compiled", "reference"])
@pytest.mark.parametrize("case", CASES)
def test_a_burst_is_a_loop_of_send_udp(
    case: str, builder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if builder == "reference":
        monkeypatch.setattr(ip, "build_udp_frames", reference_build_udp_frames)
    bed_a, host_a, peer_a, size = _bed(case)
    bed_b, host_b, peer_b, _ = _bed(case)
    for _ in range(2):  # the second burst follows on from the state the first left
        host_a.send_udp_burst(peer_a.addresses[size], 1000, 53, PAYLOADS, bed_a.now)
        bed_a.settle(host_a)
        for payload in PAYLOADS:
            host_b.send_udp(peer_b.addresses[size], 1000, 53, payload, bed_b.now)
        bed_b.settle(host_b)
    snapshot = _snapshot(bed_a, host_a, peer_a)
    assert snapshot == _snapshot(bed_b, host_b, peer_b)
    assert snapshot["links"]["agent-to-wire"] or case == "no neighbour"


def test_the_offloaded_burst_goes_down_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    bed, host, peer, _ = _bed("offloaded IPv4")
    calls: list[int] = []
    device = host.device
    xmit_burst = device.xmit_burst

    def spy(frames: list[bytes], offload: object = None) -> None:
        calls.append(len(frames))
        xmit_burst(frames, offload)  # type: ignore[arg-type]

    def one_by_one(*args: object) -> None:
        raise AssertionError("xmit called for a burst that should go down whole")

    monkeypatch.setattr(device, "xmit_burst", spy)
    monkeypatch.setattr(device, "xmit", one_by_one)
    host.send_udp_burst(peer.addresses[4], 1000, 53, PAYLOADS, bed.now)
    bed.settle(host)
    assert calls == [len(PAYLOADS)]
    assert host.counters.tx_esp_offloaded == len(PAYLOADS)
    assert [d.payload for d in bed.delivered(peer)] == PAYLOADS
    assert host.states[next(iter(host.states))].offload == Offload.DEVICE


def test_a_burst_the_frame_builder_refuses_but_send_udp_takes_is_sent() -> None:
    """A sequence that is not a list or tuple: datagram by datagram, with no error."""
    bed_a, host_a, peer_a, _ = _bed("offloaded IPv4")
    bed_b, host_b, peer_b, _ = _bed("offloaded IPv4")
    host_a.send_udp_burst(peer_a.addresses[4], 1000, 53, deque(PAYLOADS), bed_a.now)
    for payload in PAYLOADS:
        host_b.send_udp(peer_b.addresses[4], 1000, 53, payload, bed_b.now)
    bed_a.settle(host_a)
    bed_b.settle(host_b)
    assert _snapshot(bed_a, host_a, peer_a) == _snapshot(bed_b, host_b, peer_b)
    assert [d.payload for d in bed_a.delivered(peer_a)] == PAYLOADS


def test_the_peer_sends_a_clear_burst_in_one_call() -> None:
    bed, host, peer, _ = _bed("clear IPv4")
    peer.send_udp_burst(host.addresses[4], 53, 1000, PAYLOADS, bed.now)
    bed.settle(peer)
    assert peer.counters.tx_plain == len(PAYLOADS)
    assert [d.payload for d in bed.delivered(host)] == PAYLOADS


@pytest.mark.parametrize(
    ("payloads", "port", "message"),
    [
        ([b"a", bytes(70_000), b"b"], 53, "UDP payload of 70000 bytes"),
        ([b"a", b"b"], 70_000, "does not fit 16 bits"),
    ],
)
def test_a_bad_datagram_raises_as_send_udp_does(
    payloads: list[bytes], port: int, message: str
) -> None:
    """The datagrams before the bad one are sent, as by a loop of send_udp, and it raises."""
    bed_a, host_a, peer_a, _ = _bed("offloaded IPv4")
    bed_b, host_b, peer_b, _ = _bed("offloaded IPv4")
    with pytest.raises(UsageError, match=message):
        host_a.send_udp_burst(peer_a.addresses[4], 1000, port, payloads, bed_a.now)
    with pytest.raises(UsageError, match=message):
        for payload in payloads:
            host_b.send_udp(peer_b.addresses[4], 1000, port, payload, bed_b.now)
    bed_a.settle(host_a)
    bed_b.settle(host_b)
    assert _snapshot(bed_a, host_a, peer_a) == _snapshot(bed_b, host_b, peer_b)
