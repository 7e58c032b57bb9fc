"""A real Linux kernel as the peer (sim/linux): Debian's cloud kernel under QEMU, its esp4 and
esp6 against the agent and the whole path, both ways.

Every test here shares one booted guest (the `linux_guest` fixture, one xdist group); each
testbed starts from a guest with no peer. Where the machine cannot run the guest the tests skip
saying what to install (CI installs it and may not skip).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import agent_frames as af
from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.errors import LinuxGuestError
from ipsec_offload.host.events import Delivered
from ipsec_offload.host.xfrm import Mode, XfrmPolicy, XfrmState, host_network
from ipsec_offload.sim.linux import guest as guest_module
from ipsec_offload.sim.linux import image as image_module
from ipsec_offload.sim.linux.guest import LinuxGuest
from ipsec_offload.sim.linux.image import _cpio_entry, missing_tools
from ipsec_offload.sim.linux.peer import LinuxPeer, LinuxWire
from ipsec_offload.sim.linux.xfrm_words import parse_xfrm_state
from ipsec_offload.sim.observer import WireObserver
from ipsec_offload.sim.report import build_report
from ipsec_offload.sim.runner import prepare
from ipsec_offload.sim.scenario import NAIVE_SWITCHES, resolve_scenario
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.config import Algorithm, Direction
from ipsec_offload.wire.metadata import RxStatus
from ipsec_offload.wire.packet import find_esp
from ipsec_offload.wire.transport import TcpFlags, UdpHeader, build_udp

pytestmark = pytest.mark.xdist_group("linux-guest")

HOST_MAC, PEER_MAC, VM_MAC = "02:00:00:00:01:00", "02:00:00:00:02:00", "02:00:00:00:01:01"
ADDRESSES = {4: ("192.0.2.1", "192.0.2.2"), 6: ("2001:db8::1", "2001:db8::2")}


def _bed(guest: LinuxGuest) -> tuple[Testbed, object, LinuxPeer]:
    bed = Testbed(linux_guest=guest)
    host = bed.add_pf_host("host", HOST_MAC, ipv4="192.0.2.1", ipv6="2001:db8::1")
    peer = bed.add_linux_peer("peer", PEER_MAC, ipv4="192.0.2.2", ipv6="2001:db8::2")
    return bed, host, peer


def _sa(peer: LinuxPeer, spi: int):  # type: ignore[no-untyped-def]
    return next(sa for sa in peer.guest_sas() if sa.spi == spi)


def _payloads(tag: str, count: int, size: int = 100) -> list[bytes]:
    return [f"{tag} {n} ".encode().ljust(size, b".") for n in range(count)]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", [Mode.TRANSPORT, Mode.TUNNEL])
@pytest.mark.parametrize("algorithm", [Algorithm.AES_GCM_128, Algorithm.AES_GCM_256])
@pytest.mark.parametrize("offload", [True, False], ids=["agent", "host-software"])
def test_both_directions(
    linux_guest: LinuxGuest, family: int, mode: Mode, algorithm: Algorithm, offload: bool
) -> None:
    """UDP both ways and pings both ways between the PF host (its ESP by the agent, or by the
    stack with the agent passing it through) and Linux's esp4/esp6."""
    bed, host, peer = _bed(linux_guest)
    bundle = bed.secure(host, peer, family=family, mode=mode, algorithm=algorithm,
                        offload_a=offload)  # fmt: skip
    here, there = ADDRESSES[family]
    out, back = _payloads("out", 6), _payloads("back", 4)
    for payload in out:
        host.send_udp(there, 4000, 5000, payload, bed.now)
        bed.settle(host)
    for payload in back:
        peer.send_udp(here, 4001, 5001, payload, bed.now)
        bed.settle(peer)
    host.send_echo(there, 7, 1, b"ping from host", bed.now)
    bed.settle(host)
    peer.send_echo(here, 8, 1, b"ping from peer", bed.now)
    bed.settle(peer)
    bed.run()

    got = [(d.protocol, d.src_port, d.payload) for d in bed.delivered(peer)]
    icmp = 1 if family == 4 else 58
    assert got[:6] == [(17, 4000, p) for p in out]
    assert (icmp, 7, b"ping from host") in got  # the host's echo request
    assert (icmp, 8, b"ping from peer") in got  # the host's reply to the peer's
    at_host = [(d.protocol, d.src_port, d.payload, d.offloaded) for d in bed.delivered(host)]
    assert at_host[:4] == [(17, 4001, p, offload) for p in back]
    assert (icmp, 7, b"ping from host", offload) in at_host  # Linux's reply
    assert (icmp, 8, b"ping from peer", offload) in at_host

    # the guest's own count: 6 datagrams + 1 request + 1 reply each way in, 4 + 2 out
    inbound, outbound = _sa(peer, bundle.a_out.spi), _sa(peer, bundle.b_out.spi)
    assert (inbound.packets, inbound.replay, inbound.failed) == (8, 0, 0)
    assert (outbound.packets, outbound.replay, outbound.failed) == (6, 0, 0)
    assert bundle.a_out.packets == 8 and bundle.a_in.packets == 6
    assert bed.agent.counters.rx_status[RxStatus.OK] == (6 if offload else 0)
    WireObserver(bed).assert_clean()


@pytest.mark.parametrize("algorithm", [Algorithm.AES_GCM_128, Algorithm.AES_GCM_256])
def test_agent_alone(linux_guest: LinuxGuest, algorithm: Algorithm) -> None:
    """The agent on its own, driven with the tests' own frames (spec sections 2-5) as the
    golden model is: its wire output opens in Linux's esp4, and Linux's ESP comes out of it
    decrypted with Rx status OK."""
    key = af.KEY128 if algorithm == Algorithm.AES_GCM_128 else af.KEY256
    agent = IpsecAgent(AgentConfig())
    out_spi, in_spi = 0x5001, 0x5002
    af.add_sa(agent, Direction.OUTBOUND, out_spi, af.PEER4, key=key, alg=algorithm)
    index = af.add_sa(agent, Direction.INBOUND, in_spi, af.LOCAL4, key=key, alg=algorithm)
    wire = LinuxWire(linux_guest)
    peer = LinuxPeer(wire, "peer", af.PEER_MAC, {4: af.PEER4}, ())
    peer.neighbors[af.LOCAL4] = af.HOST_MAC
    for handle, direction, spi, src, dst in (
        (1, Direction.INBOUND, out_spi, af.LOCAL4, af.PEER4),
        (2, Direction.OUTBOUND, in_spi, af.PEER4, af.LOCAL4),
    ):
        peer.add_state(XfrmState(handle, direction, spi, src, dst, algorithm, key, reqid=1), 0.0)
        peer.add_policy(XfrmPolicy(direction, host_network(src), host_network(dst), handle))

    sent = []
    for n in range(1, 4):
        udp = build_udp(UdpHeader(4000, 5000), b"agent says %d" % n, af.LOCAL4, af.PEER4)
        sent += agent.from_host([af.offload_frame(out_spi, n, udp, src_mac=af.HOST_MAC)]).to_wire
    assert len(sent) == 3
    wire.receive(sent, 0.0)
    got = [(d.src_port, d.payload) for d in peer.events() if isinstance(d, Delivered)]
    assert got == [(4000, b"agent says %d" % n) for n in range(1, 4)]

    peer.send_udp(af.LOCAL4, 4001, 5001, b"linux says hello", 0.0)
    frames, _ = wire.take_frames(0.0)
    assert len(frames) == 1
    out = agent.from_wire(frames)
    assert len(out.to_host) == 1
    word, frame = af.split_tag(out.to_host[0])
    rx = af.rx_word(word)
    assert (rx.ipsec, rx.status, rx.sa_index) == (True, RxStatus.OK, index)
    # decrypted in place (spec section 4): the datagram, then Linux's padding (1, 2), the
    # pad length and the next header (UDP)
    assert frame.endswith(b"linux says hello\x01\x02\x02\x11")
    sas = {sa.spi: sa for sa in peer.guest_sas()}
    assert (sas[out_spi].packets, sas[out_spi].failed, sas[in_spi].packets) == (3, 0, 1)


def test_vm_on_a_vf(linux_guest: LinuxGuest) -> None:
    """A VM behind a VF, on a VLAN, with a Linux peer on the same VLAN: offloaded both ways."""
    bed = Testbed(linux_guest=linux_guest)
    bed.add_pf_host("host", HOST_MAC, ipv4="10.0.0.1")
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4="10.0.10.5", vlans=(_vlan(10),))
    peer = bed.add_linux_peer("peer", PEER_MAC, ipv4="10.0.10.9", vlans=(_vlan(10),))
    bundle = bed.secure(vm, peer)
    for n in range(5):
        vm.send_udp("10.0.10.9", 4000, 5000, b"from vm %d" % n, bed.now)
        peer.send_udp("10.0.10.5", 4001, 5001, b"from peer %d" % n, bed.now)
        bed.settle(vm, peer)
    bed.run()
    assert sorted(d.payload for d in bed.delivered(peer)) == [b"from vm %d" % n for n in range(5)]
    assert [d.offloaded for d in bed.delivered(vm)] == [True] * 5
    assert _sa(peer, bundle.a_out.spi).packets == 5
    # the guest's frames carried the VLAN tag: the agent found the SA in the VM's domain
    assert bed.agent.counters.rx_status[RxStatus.OK] == 5
    WireObserver(bed).assert_clean()


def _vlan(vid: int):  # type: ignore[no-untyped-def]
    from ipsec_offload.wire.ethernet import VlanTag

    return VlanTag(0x8100, vid)


@pytest.mark.parametrize("family", [4, 6])
def test_esn_across_2_32(linux_guest: LinuxGuest, family: int) -> None:
    """An ESN SA started three packets short of 2^32: both sides cross into the second
    subspace (the guest's seq-hi and oseq-hi become 1) and nothing is lost."""
    bed, host, peer = _bed(linux_guest)
    start = 2**32 - 3
    bundle = bed.secure(host, peer, family=family, esn=True, seq_start=start)
    here, there = ADDRESSES[family]
    for n in range(6):
        host.send_udp(there, 4000, 5000, b"up %d" % n, bed.now)
        peer.send_udp(here, 4001, 5001, b"down %d" % n, bed.now)
        bed.settle(host, peer)
    bed.run()
    assert [d.payload for d in bed.delivered(peer)] == [b"up %d" % n for n in range(6)]
    assert [d.payload for d in bed.delivered(host)] == [b"down %d" % n for n in range(6)]
    assert bundle.a_out.oseq == start + 6
    text = peer.xfrm_text()
    blocks = {int(b.split("spi 0x")[1][:8], 16): b for b in text.split("\nsrc ")}
    assert "seq-hi 0x1, seq 0x3" in blocks[bundle.a_out.spi]  # what the guest accepted
    assert "oseq-hi 0x1, oseq 0x3" in blocks[bundle.b_out.spi]  # what it sent
    WireObserver(bed).assert_clean()


@pytest.mark.parametrize("family", [4, 6])
def test_tso_segments(linux_guest: LinuxGuest, family: int) -> None:
    """A TSO send of 20,000 bytes of TCP and a large UDP send: the NIC cuts them, the agent
    numbers each segment, Linux opens every one (its count is the segments')."""
    bed, host, peer = _bed(linux_guest)
    bundle = bed.secure(host, peer, family=family)
    there = ADDRESSES[family][1]
    data = bytes(range(256)) * 78 + b"end"
    host.send_tcp(there, 40000, 5000, data, bed.now, seq=1000, mss=1400,
                  flags=TcpFlags.ACK | TcpFlags.PSH)  # fmt: skip
    datagrams = b"".join(bytes([65 + n]) * 1000 for n in range(4))
    host.send_udp(there, 40001, 5001, datagrams, bed.now, mss=1000)
    bed.settle(host)
    bed.run()
    assert host.counters.tx_tso_sends == 2
    tcp = sorted((d for d in bed.delivered(peer) if d.protocol == 6), key=lambda d: d.tcp_seq)
    assert b"".join(d.payload for d in tcp) == data
    assert [d.tcp_seq for d in tcp] == [1000 + 1400 * i for i in range(15)]
    udp = [d.payload for d in bed.delivered(peer) if d.protocol == 17]
    assert udp == [bytes([65 + n]) * 1000 for n in range(4)]
    assert _sa(peer, bundle.a_out.spi).packets == 15 + 4
    # the kernel's resets to segments of no connection are held back by the quiet policy
    assert bed.delivered(host) == []
    WireObserver(bed).assert_clean()


def test_rekey_make_before_break(linux_guest: LinuxGuest) -> None:
    """The key manager rekeys at the agent's soft expiry: new states in the guest (the same
    reqid, new SPIs), the old ones deleted after the grace, nothing lost either way."""
    bed = Testbed(linux_guest=linux_guest, key_manager=True)
    host = bed.add_pf_host("host", HOST_MAC, ipv4="192.0.2.1")
    peer = bed.add_linux_peer("peer", PEER_MAC, ipv4="192.0.2.2")
    first = bed.secure(host, peer, soft_lifetime_packets=5, lifetime_packets=40)

    def send(n: int) -> None:
        host.send_udp("192.0.2.2", 1, 2, b"up %d" % n, bed.now)
        peer.send_udp("192.0.2.1", 3, 4, b"down %d" % n, bed.now)
        bed.settle(host, peer)

    for n in range(12):
        bed.at(n * 0.001, lambda n=n: send(n))  # type: ignore[misc]
    bed.run(until=0.02)
    bed.run()
    assert bed.rekeys >= 1
    assert sorted(d.payload for d in bed.delivered(peer)) == sorted(b"up %d" % n for n in range(12))
    assert sorted(d.payload for d in bed.delivered(host)) == sorted(
        b"down %d" % n for n in range(12)
    )
    now = bed.current(first)
    spis = {sa.spi for sa in peer.guest_sas()}
    assert spis == {now.a_out.spi, now.b_out.spi}  # the first generation is gone
    assert first.a_out.reqid == now.a_out.reqid
    WireObserver(bed).assert_clean()


def test_replay_and_tampering(linux_guest: LinuxGuest) -> None:
    """An attacker replays frames the agent sent toward the peer, and sends one with a byte of
    its ciphertext flipped: the guest's `replay` and `failed` counters move, nothing more is
    delivered."""
    bed, host, peer = _bed(linux_guest)
    bundle = bed.secure(host, peer)
    for n in range(4):
        host.send_udp("192.0.2.2", 4000, 5000, b"once %d" % n, bed.now)
        bed.settle(host)
    bed.run()
    meta = bed.agent.config.meta_ethertype
    sent = [r.frame for r in bed.captures["agent-to-wire"].records if find_esp(r.frame, meta)]
    assert len(sent) == 4
    before = _sa(peer, bundle.a_out.spi)
    assert (before.packets, before.replay, before.failed) == (4, 0, 0)

    bed.peer_inject(sent[1:3])
    tampered = bytearray(sent[3])
    tampered[38:42] = (100).to_bytes(4, "big")  # a number not seen yet (else: a replay)
    tampered[-20] ^= 0x01  # and a byte of the ciphertext
    bed.peer_inject([bytes(tampered)])
    bed.run()
    after = _sa(peer, bundle.a_out.spi)
    assert (after.packets, after.replay, after.failed) == (4, 2, 1)
    assert len(bed.delivered(peer)) == 4
    WireObserver(bed).assert_clean()


@pytest.mark.parametrize("name", ["basic", "default", "faults"])
def test_scenarios_tell_the_same_story(linux_guest: LinuxGuest, name: str) -> None:
    """The built-in scenarios with Linux peers give the outcomes they give with software peers
    (every challenge, invariant and flow; `faults` is the integrity issue's), and the guest's
    counters agree with ours SA by SA."""
    spec, source = resolve_scenario(name)
    software = prepare(spec, source)
    software.run()
    expected = build_report(software)
    run = prepare(spec, source, linux_peers=True, linux_guest=linux_guest)
    run.run()
    got = build_report(run)
    for key in ("challenges", "invariants", "flows"):
        assert got[key] == expected[key], key
    assert expected["linux_peers"] == {}
    linux_peers = got["linux_peers"]
    assert set(linux_peers["peers"]) == {p.name for p in spec.peer}
    rows = [row for peer in linux_peers["peers"].values() for row in peer["sas"]]
    assert rows and all(row["ours"] is not None for row in rows)
    for row in rows:
        guest, ours = row["guest"], row["ours"]
        assert (guest["packets"], guest["replay"], guest["failed"]) == (
            ours["packets"],
            ours["replay"],
            ours["failed"],
        ), row


def _outcomes(report: dict) -> tuple:  # type: ignore[type-arg]
    return report["challenges"], report["invariants"], report["flows"]


@pytest.mark.parametrize("switch", NAIVE_SWITCHES)
def test_faults_under_each_switch(linux_guest: LinuxGuest, switch: str) -> None:
    """The integrity issue's `faults` story under each switch that breaks a fix: with Linux
    peers every line comes out as with software peers (HELD, or FAILED with the same
    numbers). Where a switch makes segments or a re-install reuse sequence numbers (ivdb,
    seq-handover), the kernel drops the repeats, and its own `replay` counter says how many:
    what it accepted and what it dropped make what the host sent."""
    spec, source = resolve_scenario("faults")
    software = prepare(spec, source, (switch,))
    software.run()
    run = prepare(spec, source, (switch,), linux_peers=True, linux_guest=linux_guest)
    run.run()
    report = build_report(run)
    assert _outcomes(report) == _outcomes(build_report(software))
    rows = [row for peer in report["linux_peers"]["peers"].values() for row in peer["sas"]]
    replays = sum(row["guest"]["replay"] for row in rows)
    if switch in ("ivdb", "seq-handover"):
        assert replays > 0
        for row in rows:
            guest, ours = row["guest"], row["ours"]
            if guest["replay"]:
                assert guest["packets"] + guest["replay"] == ours["packets"], row
    else:
        assert replays == 0


def test_run_linux_peers_command(tmp_path: Path) -> None:
    """`ipsec-offload run basic --linux-peers --strict` from the command line: it boots a
    guest of its own, writes the guest's own ip -s xfrm state, and passes its gate."""
    from tools import require_linux_guest

    require_linux_guest()
    command = Path(sys.executable).parent / "ipsec-offload"
    done = subprocess.run(
        [str(command), "run", "basic", "--linux-peers", "--strict", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Linux peers (linux-image-" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["linux_peers"]["peers"]) == {"peer"}
    text = (tmp_path / "xfrm-peer.txt").read_text()
    assert "aead rfc4106(gcm(aes))" in text and "anti-replay" in text  # iproute2's own words
    assert len(parse_xfrm_state(text)) == 4


def test_one_testbed_at_a_time(linux_guest: LinuxGuest) -> None:
    """A second testbed takes the guest over; the first one's peers say so when used."""
    first, host, peer = _bed(linux_guest)
    _bed(linux_guest)
    with pytest.raises(LinuxGuestError, match="serves another testbed"):
        peer.send_udp("192.0.2.1", 1, 2, b"x", first.now)
    del host


def test_a_guest_that_does_not_answer(linux_guest: LinuxGuest, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A guest that stops answering (QEMU stopped) gives a clear error within the bound, and
    the next exchange after it resumes is whole."""
    bed, host, peer = _bed(linux_guest)
    bed.secure(host, peer)
    monkeypatch.setattr(guest_module, "ANSWER_TIMEOUT", 1.0)
    process = linux_guest._process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(LinuxGuestError, match="did not answer"):
            linux_guest.exchange([])
    finally:
        os.kill(process.pid, signal.SIGCONT)
    host.send_udp("192.0.2.2", 4000, 5000, b"after", bed.now)
    bed.settle(host)
    bed.run()
    assert [d.payload for d in bed.delivered(peer)] == [b"after"]


# -- without the guest ----------------------------------------------------------------------

GUEST_STATE = """src 192.0.2.1 dst 192.0.2.2
\tproto esp spi 0x00001001(4097) reqid 1(0x00000001) mode transport
\treplay-window 0 seq 0x00000000 flag  (0x00000000)
\taead rfc4106(gcm(aes)) 0x00 (160 bits) 128
\tanti-replay context: seq 0x6, oseq 0x0, bitmap 0x0000003f
\tsel src 0.0.0.0/0 dst 0.0.0.0/0 uid 0
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\tlifetime current:
\t  600(bytes), 6(packets)
\t  add 2026-12-06 16:45:00 use 2026-12-06 16:45:01
\tstats:
\t  replay-window 1 replay 2 failed 3
src 192.0.2.2 dst 192.0.2.1
\tproto esp spi 0x00001002(4098) reqid 1(0x00000001) mode transport
\tlifetime current:
\t  0(bytes), 0(packets)
\tstats:
\t  replay-window 0 replay 0 failed 0
"""


def test_parse_xfrm_state() -> None:
    sas = parse_xfrm_state(GUEST_STATE)
    assert [(s.src, s.dst, s.spi, s.packets, s.bytes) for s in sas] == [
        ("192.0.2.1", "192.0.2.2", 0x1001, 6, 600),
        ("192.0.2.2", "192.0.2.1", 0x1002, 0, 0),
    ]
    assert (sas[0].replay_window, sas[0].replay, sas[0].failed) == (1, 2, 3)


def test_cpio_entry_is_newc() -> None:
    """The initramfs's entries: newc headers (13 fields of 8 hex digits), name and data each
    padded to 4 bytes, as the kernel's unpacker reads them."""
    entry = _cpio_entry("init", 0o100755, b"#!/bin/sh\n")
    assert entry[:6] == b"070701"
    fields = [int(entry[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    assert fields[1] == 0o100755 and fields[6] == 10 and fields[11] == len(b"init\0")
    assert entry[110:115] == b"init\0" and len(entry) % 4 == 0
    assert entry.endswith(b"#!/bin/sh\n\0\0")


def test_missing_tools_say_what_to_install(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(image_module.shutil, "which", lambda name: None)
    missing = missing_tools()
    assert any("qemu-system-x86_64" in m and "apt-get install" in m for m in missing)
    with pytest.raises(LinuxGuestError, match="missing: qemu-system-x86_64"):
        LinuxGuest.boot()
