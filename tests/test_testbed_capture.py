"""The testbed's link captures: a burst at a time, records made when read, the same records
as a PcapSink fed frame by frame."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsec_offload.errors import UsageError
from ipsec_offload.sim.pcap import PcapSink, read_pcap
from ipsec_offload.sim.testbed import LinkCapture, Testbed

S = 1_000_000_000
BURSTS = [(S // 2, [b"a" * 60, b"b" * 61]), (3 * S // 4, []), (S, [b"c" * 62])]


def fed(sink: PcapSink) -> PcapSink:
    for time, frames in BURSTS:
        if isinstance(sink, LinkCapture):
            sink.add_burst(time, frames)
        else:
            for frame in frames:
                sink.add(time, frame)
    return sink


def test_a_link_capture_holds_what_a_pcap_sink_holds(tmp_path: Path) -> None:
    plain, capture = fed(PcapSink()), fed(LinkCapture())
    assert len(capture) == len(plain) == 3
    assert capture.records == plain.records
    assert list(capture) == list(plain)
    capture.add(2 * S, b"d" * 60)  # after the bursts taken so far
    plain.add(2 * S, b"d" * 60)
    assert capture.records == plain.records
    capture.write(tmp_path / "capture.pcap")
    plain.write(tmp_path / "plain.pcap")
    assert (tmp_path / "capture.pcap").read_bytes() == (tmp_path / "plain.pcap").read_bytes()
    assert read_pcap(tmp_path / "capture.pcap") == list(plain.records)
    fed(capture).clear()
    assert len(capture) == 0 and capture.records == ()


def test_a_link_capture_refuses_a_bad_record_when_it_is_added() -> None:
    capture = LinkCapture()
    with pytest.raises(UsageError, match="must be bytes"):
        capture.add_burst(S, [b"good", bytearray(b"bad")])  # type: ignore[list-item]
    assert [r.frame for r in capture.records] == [b"good"]  # as PcapSink.add frame by frame
    with pytest.raises(UsageError, match="2\\*\\*32"):
        capture.add_burst(2**32 * S, [b"late"])
    with pytest.raises(UsageError, match="an int of nanoseconds"):
        capture.add_burst(3.0, [b"seconds"])  # type: ignore[arg-type]
    capture.add_burst(3 * S, [b"whole seconds"])
    assert capture.records[-1].time == 3


def test_captures_read_during_a_run_equal_captures_read_at_its_end() -> None:
    def run(read_between: bool) -> dict[str, list[tuple[float, bytes]]]:
        bed = Testbed()
        host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
        peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
        bed.secure(host, peer, offload_a=True)
        for i in range(3):
            host.send_udp(peer.addresses[4], 1000 + i, 53, bytes(10 * i), bed.now)
            peer.send_udp(host.addresses[4], 53, 1000 + i, bytes(20 * i), bed.now)
            bed.settle(host, peer)
            if read_between:
                assert all(len(sink) >= 0 for sink in bed.captures.values())
        return {
            link: [(r.time, r.frame) for r in sink.records] for link, sink in bed.captures.items()
        }

    at_end = run(False)
    assert at_end == run(True)
    assert len(at_end["agent-to-wire"]) == len(at_end["wire-to-agent"]) >= 3


@pytest.mark.parametrize("capture", [True, False])
def test_a_testbed_without_capture_keeps_no_frame_and_delivers_the_same(capture: bool) -> None:
    bed = Testbed(capture=capture)
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    bed.secure(host, peer)
    host.send_udp_burst(peer.addresses[4], 1000, 53, [b"one", b"two"], bed.now)
    bed.settle(host)
    assert peer.counters.rx_delivered == 2
    kept = {name: len(sink) for name, sink in bed.captures.items()}
    if capture:
        assert [d.payload for d in bed.delivered(peer)] == [b"one", b"two"]
        assert kept["nic-to-agent"] >= 2 and kept["agent-to-wire"] >= 2
    else:
        assert set(kept.values()) == {0}
        with pytest.raises(UsageError, match="keeps no deliveries"):
            bed.delivered(peer)


def test_a_testbed_without_capture_keeps_its_logs_flat_however_long_the_run() -> None:
    """Memory stays flat: the hosts' logs keep no delivered payload (768k datagrams once
    grew them to 1.3 GB); what else they log (state results) stays."""
    bed = Testbed(capture=False)
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    bed.secure(host, peer)
    logged = [len(bed.endpoint(s).log) for s in (host, peer)]
    for _ in range(20):
        host.send_udp_burst(peer.addresses[4], 1000, 53, [b"x" * 100] * 64, bed.now)
        peer.send_udp_burst(host.addresses[4], 53, 1000, [b"y" * 100] * 64, bed.now)
        bed.settle(host, peer)
    assert peer.counters.rx_delivered == host.counters.rx_delivered == 20 * 64
    assert [len(bed.endpoint(s).log) for s in (host, peer)] == logged
    assert len(bed.results(host)) == 2
