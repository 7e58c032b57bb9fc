"""The live agent over N workers (`agent --live --workers N`, docs/live.md "Workers"): the
kernel's fanout program against the owner rule in Python, on a veth pair and crafted frames;
then two workers on veth, checked by scapy's sniffer on the test's ends: every SA's frames by
its owner alone (ESP sequence numbers 1, 2, 3, ... per SA, a replay dropped once), the config
applied by every worker and answered with the owners' figures, and a stop mid-traffic whose
summed statistics are what the sniffer saw. The merging of the workers' answers and the
options refused with workers run without root.

The live parts need root and iproute2 (network namespaces, packet sockets), as CI has;
elsewhere they skip saying so.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Ether

import agent_frames as af
from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.cli.main import main
from ipsec_offload.live.agent import parse_cpus
from ipsec_offload.live.fanout import SUPERVISOR, demux_program, join_group, owner
from ipsec_offload.live.packet_socket import PacketSocket
from ipsec_offload.live.workers import merge_replies
from ipsec_offload.wire.config import (
    ConfigStatus,
    Direction,
    Opcode,
    Tlv,
    decode_list_sas_reply,
    decode_sa_stats,
    encode_sa_index,
)
from ipsec_offload.wire.metadata import RxStatus
from live_port import Capture, LivePort, raw, running_agent, veth_pair
from tools import scapy_sa

pytestmark = pytest.mark.xdist_group("live")

KEY = af.KEY128
LOCAL6_TEXT, V4_OUT, V4_IN = "2001:db8::1", "192.0.2.2", "192.0.2.1"


# -- the fanout program against the rule in Python --------------------------------------------


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    with veth_pair("fo", "the fanout tests") as pair:
        yield pair


def _udp4(n: int) -> bytes:
    """A plain IPv4 UDP packet (no ESP), numbered."""
    return af.ipv4(af.PEER4, af.LOCAL4, 12, proto=af.PROTO_UDP) + struct.pack(">Q", n) + bytes(4)


def _crafted(side: str) -> dict[str, tuple[bytes, str]]:
    """Frames by name, each with where the program must send it: "owner" (the owner's
    socket), "supervisor", or "either" (the supervisor or the owner: a frame the agent drops
    whoever gets it, which the program may leave to the supervisor)."""
    esp = af.esp_packet(KEY, 0x1235, 1, b"x")
    v6 = {"src_ip": af.PEER6, "dst_ip": af.LOCAL6}
    frames: dict[str, tuple[bytes, str]] = {}
    for spi in range(0x1230, 0x1236):
        frames[f"ipv4 {spi:#x}"] = (af.wire_frame(af.esp_packet(KEY, spi, 1, b"4")), "owner")
        frames[f"ipv6 {spi:#x}"] = (af.wire_frame(af.esp_packet(KEY, spi, 2, b"6"), **v6), "owner")
    frames |= {
        "ipv4 vlan": (af.wire_frame(esp, vlans=(af.VLAN_Q,)), "owner"),
        "ipv6 vlan": (af.wire_frame(esp, vlans=(af.VLAN_Q,), **v6), "owner"),
        "ipv4 options": (af.wire_frame(esp, options=bytes((1, 1, 1, 0))), "owner"),
        "ipv4 q-in-q": (af.wire_frame(esp, vlans=(af.VLAN_OUTER, af.VLAN_INNER)), "supervisor"),
        "ipv6 hop-by-hop": (af.wire_frame(esp, ext=af.hop_by_hop(), **v6), "supervisor"),
        "ipv4 udp": (af.eth_header(af.HOST_MAC, af.PEER_MAC, af.ETH_IPV4) + _udp4(1), "owner"),
        "arp": (af.eth_header(af.BROADCAST, af.PEER_MAC, 0x0806) + bytes(28), "owner"),
        "ipv4 too short": (af.wire_frame(esp)[:40], "either"),
    }
    fragment = bytearray(af.wire_frame(esp, src_mac=af.VF_MAC))
    fragment[14 + 6] |= 0x20  # MF: a fragment is never opened
    frames["ipv4 fragment"] = (bytes(fragment), "owner")
    wrong_version = bytearray(af.wire_frame(esp, src_mac=af.HOST_MAC))
    wrong_version[14] = 0x65
    frames["ipv4 ethertype, version 6"] = (bytes(wrong_version), "owner")
    if side == "host":
        for spi in (0x2000, 0x2001, 0x2002):
            frames[f"offload {spi:#x}"] = (af.offload_frame(spi, 1, b"o"), "owner")
        frames |= {
            "offload vlan": (af.offload_frame(0x2003, 1, b"v", vlans=(af.VLAN_Q,)), "owner"),
            "offload q-in-q": (
                af.offload_frame(0x2004, 1, b"q", vlans=(af.VLAN_OUTER, af.VLAN_INNER)),
                "owner",
            ),
            "offload ipv6": (af.offload_frame(0x2005, 1, b"6", **v6), "owner"),
            "offload ipv6 hop-by-hop": (
                af.offload_frame(0x2006, 1, b"h", ext=af.hop_by_hop(), **v6),
                "owner",
            ),
            "offload reserved bit": (
                af.offload_frame(0x2007, 1, b"r", meta=af.tx_word(True, 17, 14, 5) | 1 << 24),
                "owner",
            ),
            "offload offsets past the end": (
                af.offload_frame(0x2008, 1, b"p", meta=af.tx_word(True, 17, 200, 50)),
                "either",
            ),
            "bypass with esp": (
                af.eth_header(
                    af.PEER_MAC, af.HOST_MAC, af.ETH_IPV4, meta=af.tx_word(False, 0, 0, 0)
                )
                + af.ip_packet(af.LOCAL4, af.PEER4, af.esp_packet(KEY, 0x2009, 1, b"b")),
                "owner",
            ),
            "bypass vlan with esp": (
                af.eth_header(
                    af.PEER_MAC, af.HOST_MAC, af.ETH_IPV4, (af.VLAN_Q,), af.tx_word(False, 0, 0, 0)
                )
                + af.ip_packet(af.LOCAL4, af.PEER4, af.esp_packet(KEY, 0x200B, 1, b"c")),
                "supervisor",
            ),
            "untagged esp to the wire": (
                af.wire_frame(af.esp_packet(KEY, 0x200A, 1, b"u"), dst_mac=af.PEER_MAC),
                "owner",
            ),
            "config": (af.config_frame(Opcode.GET_CAPS, ()), "supervisor"),
            "config ethertype to another mac": (
                af.config_frame(Opcode.GET_CAPS, (), dst=af.VF_MAC),
                "supervisor",
            ),
        }
    return frames


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("side", ["host", "wire"])
def test_fanout_program_follows_the_owner_rule(
    veth: tuple[str, str], side: str, workers: int
) -> None:
    """Crafted frames sent on one end of a veth pair reach, through the fanout group of N + 1
    sockets on the other, the socket `owner` names (member owner + 1), or the supervisor's
    (member 0) where the program cannot read the SPI: IPv6 extension headers, a second VLAN
    tag, config frames; and the rule itself gives the SPI's worker where there is one."""
    ours, theirs = veth
    frames = _crafted(side)
    assert len({frame for frame, _ in frames.values()}) == len(frames)
    sockets = [PacketSocket(ours) for _ in range(workers + 1)]
    try:
        join_group(sockets, demux_program(side, workers, af.META, af.CONFIG))
        for sock in sockets:
            sock.drain()
        with raw(theirs) as sender:
            for frame, _ in frames.values():
                sender.send(frame)
        time.sleep(0.3)
        member = {frame: index for index, sock in enumerate(sockets) for frame in sock.recv_burst()}
    finally:
        for sock in sockets:
            sock.close()
    for name, (frame, where) in frames.items():
        rule = owner(frame, side, workers, af.META)
        got = member.get(frame)
        expected = {
            "owner": {rule + 1},
            "supervisor": {SUPERVISOR},
            "either": {SUPERVISOR, rule + 1},
        }[where]
        assert got in expected, f"{name}: member {got}, expected {expected} (rule: {rule})"
    for name, (frame, _) in frames.items():
        words = name.split()
        if words[0] in ("ipv4", "ipv6", "offload") and words[-1].startswith("0x"):
            assert owner(frame, side, workers, af.META) == int(words[-1], 16) % workers, name
    assert owner(frames["ipv6 hop-by-hop"][0], side, workers, af.META) == 0x1235 % workers
    assert owner(frames["ipv4 q-in-q"][0], side, workers, af.META) == 0x1235 % workers
    if side == "host":
        bypass = frames["bypass vlan with esp"][0]
        assert owner(bypass, "host", workers, af.META) == 0x200B % workers
        assert owner(frames["offload reserved bit"][0], "host", workers, af.META) == 0


# -- the workers' answers merged (no root) ------------------------------------------------------


def _answer(agent: IpsecAgent, opcode: Opcode, tlvs: tuple[Tlv, ...] = ()) -> list[bytes]:
    request = af.config_frame(opcode, tlvs, txn_id=af.next_txn())
    return agent.from_host([request]).to_host


def test_merged_answers_take_the_owners_figures() -> None:
    """Two agents with the same SAs, each carrying the traffic of the SAs it owns (SPI mod 2):
    the merged LIST_SAS reply has each SA's SEQ from its owner, GET_SA_STATS the counters
    summed; any other reply is worker 0's."""
    agents = [IpsecAgent(AgentConfig()) for _ in range(2)]
    for agent in agents:
        af.add_sa(agent, Direction.OUTBOUND, 0x10, af.PEER4)
        af.add_sa(agent, Direction.OUTBOUND, 0x11, af.PEER4)
        af.add_sa(agent, Direction.INBOUND, 0x21, af.LOCAL4)
    agents[0].from_host([af.offload_frame(0x10, 0, b"a") for _ in range(3)])
    agents[1].from_host([af.offload_frame(0x11, 0, b"b") for _ in range(5)])
    agents[1].from_wire([af.wire_frame(af.esp_packet(KEY, 0x21, n, b"c")) for n in (7, 3)])
    listed = merge_replies([_answer(agent, Opcode.LIST_SAS) for agent in agents], AgentConfig())
    reply = af.parse_reply(listed[0], to=af.HOST_MAC)
    entries = decode_list_sas_reply(reply.tlvs).entries
    assert [(e.spi, e.seq) for e in entries] == [(0x10, 4), (0x11, 6), (0x21, 7)]
    for index, packets in ((2, 5), (3, 2)):
        answers = [_answer(agent, Opcode.GET_SA_STATS, encode_sa_index(index)) for agent in agents]
        merged = merge_replies(answers, AgentConfig())
        assert decode_sa_stats(af.parse_reply(merged[0]).tlvs).packets == packets
    answers = [_answer(agent, Opcode.GET_SA_STATS, encode_sa_index(9)) for agent in agents]
    assert merge_replies(answers, AgentConfig()) == answers[0]
    assert af.parse_reply(answers[0][0]).status == ConfigStatus.NOT_FOUND
    answers = [_answer(agent, Opcode.GET_CAPS) for agent in agents]
    assert merge_replies(answers, AgentConfig()) == answers[0]
    assert merge_replies([[], []], AgentConfig()) == []


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--pcap-dir", "."], "--pcap-dir goes with --workers 1"),
        (["--forward-only"], "--forward-only goes with --workers 1"),
        (["--cpus", "x"], "--cpus 'x': give CPU numbers and ranges, as 0,2 or 0-3"),
        (["--cpus", "3-1"], "--cpus '3-1': '3-1' is not a range of CPUs"),
        (["--cpus", "0"], "--cpus names 1 CPUs for 2 workers: give one each"),
        (["--cpus", "0,0"], "--cpus 0,0: a CPU twice; give one per worker"),
        (["--cpus", "0,4095"], "--cpus: CPU 4095 is not one this process may run on"),
    ],
)
def test_bad_worker_options_are_refused(extra: list[str], named: str) -> None:
    """Options of one agent alone, and CPU lists that do not give each worker a CPU of its
    own this process may run on."""
    result = CliRunner().invoke(
        main, ["agent", "--live", "--host-if", "a", "--wire-if", "b", "--workers", "2", *extra]
    )
    assert result.exit_code != 0 and named in result.output


def test_workers_go_with_live() -> None:
    result = CliRunner().invoke(main, ["agent", "--host-in", "x", "--workers", "2"])
    assert result.exit_code != 0 and "--workers goes with --live" in result.output


@pytest.mark.parametrize(
    ("text", "cpus"), [("0", (0,)), ("0,2", (0, 2)), ("0-3", (0, 1, 2, 3)), ("1-2, 5", (1, 2, 5))]
)
def test_cpu_lists_read_as_taskset_writes_them(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpus(text) == cpus


def test_each_worker_on_its_cpu() -> None:
    """--cpus 0,1: each worker may run on its CPU alone; the supervisor where it was."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    first, second = sorted(os.sched_getaffinity(0))[:2]
    with running_agent("--workers", "2", "--cpus", f"{first},{second}") as port:
        supervisor = port.process.pid
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        assert [os.sched_getaffinity(int(pid)) for pid in children] == [{first}, {second}]
        assert os.sched_getaffinity(supervisor) == os.sched_getaffinity(0)
        stats = port.stop()
    assert stats["kernel_drops"] == 0


# -- two workers on veth ------------------------------------------------------------------------


@pytest.fixture
def two_workers() -> Iterator[LivePort]:
    """The live agent with two workers between two veth pairs, in a namespace of its own."""
    with running_agent("--workers", "2", "--stats-interval", "0.5") as port:
        yield port


def _add(port: LivePort, direction: str, spi: int, dst: str) -> int:
    reply = port.ctl("add-sa", "--dir", direction, "--spi", hex(spi), "--dst", dst,
                     "--key", KEY.hex())  # fmt: skip
    return int(reply["sa_index"])


def _captures(port: LivePort) -> tuple[Capture, Capture]:
    """Independent captures of the host and the wire side."""
    return Capture(port.host_if), Capture(port.wire_if)


def _agent_esp(frames: list[bytes], spis: tuple[int, ...]) -> dict[int, list[Ether]]:
    """The ESP packets of `spis` among `frames`, by SPI, in order."""
    found: dict[int, list[Ether]] = {spi: [] for spi in spis}
    for frame in frames:
        packet = Ether(frame)
        if packet.haslayer(ESP) and packet[ESP].spi in found:
            found[packet[ESP].spi].append(packet)
    return found


def _from_agent_to_host(frames: list[bytes]) -> list[tuple[af.RxWord, bytes]]:
    """What the agent handed the host of the wire's frames: tagged, from the peer's MAC."""
    tagged = [f for f in frames if f[12:14] == b"\x88\xb5" and f[6:12] == af.PEER_MAC]
    return [(af.rx_word(word), rest) for word, rest in map(af.split_tag, tagged)]


def _no_process_left(port: LivePort) -> None:
    done = subprocess.run(["ip", "netns", "pids", port.netns], capture_output=True, text=True)
    assert done.stdout.split() == []


def test_each_sa_in_one_worker(two_workers: LivePort) -> None:
    """SAs of both parities (worker 0 and worker 1), traffic both ways on each: every frame
    encrypted and decrypted right, each outbound SA's ESP numbered 1, 2, 3, ... (one IVDB), a
    replayed frame of each inbound SA dropped once by its owner, an IPv6 frame with a
    hop-by-hop header placed by the supervisor; ctl's list and stats give the owners'
    figures, and each worker's statistics show its own SAs alone."""
    port = two_workers
    outs, ins = (0x5000, 0x5001), (0x6000, 0x6001)
    out_index = {spi: _add(port, "out", spi, V4_OUT) for spi in outs}
    in_index = {spi: _add(port, "in", spi, V4_IN) for spi in ins}
    v6_spi = 0x6003
    in_index[v6_spi] = _add(port, "in", v6_spi, LOCAL6_TEXT)
    host_capture, wire_capture = _captures(port)
    count = 20
    sent_wire: dict[int, list[bytes]] = {spi: [] for spi in in_index}
    with raw(port.host_if) as host, raw(port.wire_if) as wire:
        for n in range(1, count + 1):
            for spi in outs:
                udp = bytes(UDP(sport=4000, dport=5000) / (b"out %x %d" % (spi, n)))
                host.send(af.offload_frame(spi, 0, udp))
            for spi in in_index:
                esp = af.esp_packet(KEY, spi, n, b"in %x %d" % (spi, n))
                v6 = {"src_ip": af.PEER6, "dst_ip": af.LOCAL6, "ext": af.hop_by_hop()}
                frame = af.wire_frame(esp, **(v6 if spi == v6_spi else {}))
                sent_wire[spi].append(frame)
                wire.send(frame)
        time.sleep(0.3)
        for spi in in_index:
            wire.send(sent_wire[spi][4])  # seq 5 again: a replay
        time.sleep(1.0)
    host_frames = host_capture.frames()
    wire_frames = wire_capture.frames()

    esp = _agent_esp(wire_frames, outs)
    for spi in outs:
        assert [p[ESP].seq for p in esp[spi]] == list(range(1, count + 1)), hex(spi)
        sa = scapy_sa(spi, KEY, 1)
        opened = [bytes(sa.decrypt(p[IP])[UDP].payload) for p in esp[spi]]
        assert opened == [b"out %x %d" % (spi, n) for n in range(1, count + 1)]
    to_host = _from_agent_to_host(host_frames)
    for spi, index in in_index.items():
        mine = [(rx, rest) for rx, rest in to_host if rx.sa_index == index]
        assert [rx.status for rx, _ in mine] == [RxStatus.OK] * count + [RxStatus.REPLAY]
        for n, (_, rest) in enumerate(mine[:count], 1):
            assert (b"in %x %d" % (spi, n)) in rest
        assert mine[-1][1] == sent_wire[spi][4]  # passed unchanged, tagged REPLAY

    listed = {entry["spi"]: entry["seq"] for entry in port.ctl("list")["sas"]}
    assert listed == {f"0x{spi:08x}": count + 1 for spi in outs} | {
        f"0x{spi:08x}": count for spi in in_index
    }
    for spi, index in (out_index | in_index).items():
        stats = port.ctl("stats", str(index))
        assert stats["packets"] == count, hex(spi)
        assert stats["replay"] == (1 if spi in in_index else 0), hex(spi)

    stats = port.stop()
    _no_process_left(port)
    agent = stats["agent"]
    assert agent["paths"]["TX_ENCRYPTED"] == 2 * count
    assert agent["rx_status"] == {
        **dict.fromkeys(agent["rx_status"], 0),
        "OK": 3 * count,
        "REPLAY": 3,
    }
    first, second = (w["agent"] for w in stats["workers"])
    assert first["paths"]["TX_ENCRYPTED"] == second["paths"]["TX_ENCRYPTED"] == count
    assert (first["rx_status"]["OK"], second["rx_status"]["OK"]) == (count, 2 * count)
    assert (first["rx_status"]["REPLAY"], second["rx_status"]["REPLAY"]) == (1, 2)
    assert stats["supervisor"]["forwarded"] == [0, count + 1]  # the hop-by-hop frames
    assert stats["links"]["agent-to-wire"] == sum(len(found) for found in esp.values())
    data_to_host = stats["links"]["agent-to-nic"] - stats["supervisor"]["links"]["agent-to-nic"]
    assert data_to_host == len(to_host)


def test_config_reaches_every_worker(two_workers: LivePort) -> None:
    """Every worker applies every request: the same SA indexes everywhere, and a flush
    empties every worker's SAD, after which each drops its SA's frames (NO_OUTBOUND_SA).
    Each request has one reply."""
    port = two_workers
    assert port.ctl("caps")["sad_size"] == 4096
    indexes = [_add(port, "out", spi, V4_OUT) for spi in (0x7000, 0x7001, 0x7002)]
    assert indexes == [1, 2, 3]
    assert port.ctl("remove-sa", "2") == {"removed": 2}
    assert [e["sa_index"] for e in port.ctl("list")["sas"]] == [1, 3]
    assert port.ctl("flush") == {"removed": 2}
    assert port.ctl("list") == {"sas": []}
    with raw(port.host_if) as host:
        for spi in (0x7000, 0x7001):
            host.send(af.offload_frame(spi, 0, b"no sa"))
        time.sleep(0.5)
    stats = port.stop()
    _no_process_left(port)
    for worker in stats["workers"]:
        assert worker["sad_used"] == 0
        assert worker["agent"]["drops"]["NO_OUTBOUND_SA"] == 1
        assert (
            worker["agent"]["paths"]["CONFIG_REQUEST"] == stats["agent"]["paths"]["CONFIG_REQUEST"]
        )
    config = stats["supervisor"]["links"]
    assert (
        config["nic-to-agent"]
        == config["agent-to-nic"]
        == stats["agent"]["paths"]["CONFIG_REQUEST"]
    )


def test_a_worker_that_dies_ends_the_run(two_workers: LivePort) -> None:
    """A worker killed under the supervisor: the run ends with an error naming it, and the
    other worker goes too."""
    port = two_workers
    pids = subprocess.run(["ip", "netns", "pids", port.netns], capture_output=True, text=True)
    workers = [int(pid) for pid in pids.stdout.split() if int(pid) != port.process.pid]
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)
    _, err = port.process.communicate(timeout=40)
    assert port.process.returncode == 1
    assert f"(pid {max(workers)}) was killed by signal 9" in err
    _no_process_left(port)


def test_sigterm_mid_traffic_with_two_workers(two_workers: LivePort) -> None:
    """SIGTERM while frames stream in both ways on SAs of both workers: exit status 0, no
    process left, and the summed statistics are what the sniffer saw leave the agent, each
    outbound SA's ESP numbered without a gap up to where it stopped."""
    port = two_workers
    outs, ins = (0x8000, 0x8001), (0x8100, 0x8101)
    for spi in outs:
        _add(port, "out", spi, V4_OUT)
    in_index = {_add(port, "in", spi, V4_IN): spi for spi in ins}
    wire_frames = [
        af.wire_frame(af.esp_packet(KEY, ins[n % 2], n // 2 + 1, b"stream %06d" % n))
        for n in range(800)
    ]
    host_capture, wire_capture = _captures(port)
    with raw(port.host_if) as host, raw(port.wire_if) as wire:
        for n in range(800):
            host.send(af.offload_frame(outs[n % 2], 0, b"stream %06d" % n))
            wire.send(wire_frames[n])
            if n == 400:
                port.process.send_signal(signal.SIGTERM)
    out, err = port.process.communicate(timeout=30)
    assert port.process.returncode == 0, err
    _no_process_left(port)
    stats = json.loads(out)
    time.sleep(0.5)
    esp = _agent_esp(wire_capture.frames(), outs)
    to_host = _from_agent_to_host(host_capture.frames())
    links = stats["links"]
    for spi in outs:
        assert [p[ESP].seq for p in esp[spi]] == list(range(1, len(esp[spi]) + 1))
    assert 0 < links["agent-to-wire"] < 800  # it stopped mid-stream
    assert links["agent-to-wire"] == sum(map(len, esp.values()))
    assert stats["agent"]["paths"]["TX_ENCRYPTED"] == links["agent-to-wire"]
    data_to_host = links["agent-to-nic"] - stats["supervisor"]["links"]["agent-to-nic"]
    assert data_to_host == len(to_host) == stats["agent"]["rx_status"]["OK"]
    assert {in_index[rx.sa_index] for rx, _ in to_host} == set(ins)
    assert all(rx.status == RxStatus.OK for rx, _ in to_host)
    workers = stats["workers"]
    assert links["nic-to-agent"] - stats["supervisor"]["links"]["nic-to-agent"] == sum(
        w["links"]["nic-to-agent"] for w in workers
    )
    assert all(w["links"]["agent-to-wire"] == w["links"]["nic-to-agent"] for w in workers)
