"""The live agent on real interfaces (veth pairs into a network namespace of its own), driven
by `ipsec-offload ctl` and the tests' own frames, checked by captures that are not ours
(scapy's sniffer) and by the golden model replaying the live agent's own captures.

Needs root and iproute2 (network namespaces), as CI has; elsewhere the tests skip saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Ether
from scapy.sendrecv import AsyncSniffer

import agent_frames as af
from ipsec_offload.live.topology import PEER_V4, PEER_V6, LiveTopology
from ipsec_offload.sim.pcap import read_pcap
from ipsec_offload.wire.metadata import RxStatus
from live_port import CLI, Capture, LivePort, raw, require_namespaces, running_agent
from tools import (
    _missing_tool,
    require_linux_guest,
    require_tool,
    scapy_encrypt,
    scapy_sa,
    tshark_decode,
)

pytestmark = pytest.mark.xdist_group("live")

KEY = af.KEY128


@pytest.fixture
def live_port(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LivePort]:
    """The live agent between two veth pairs, in a namespace of its own, capturing its links
    into tmp_path/pcaps; both removed after. Parametrized indirectly: its --ring-frames."""
    pcaps = tmp_path / "pcaps"
    pcaps.mkdir()
    ring = ("--ring-frames", request.param) if hasattr(request, "param") else ()
    with running_agent("--pcap-dir", str(pcaps), "--stats-interval", "0.5", *ring) as port:
        yield port


def test_ctl_commands(live_port: LivePort) -> None:
    """Every ctl verb against the live agent, answers checked field by field."""
    caps = live_port.ctl("caps")
    assert caps["algorithms"] == ["aes-gcm-128", "aes-gcm-256"]
    assert caps["sad_size"] == 4096 and caps["boot_id"] > 0
    out = live_port.ctl("add-sa", "--dir", "out", "--spi", "0x1001", "--dst", "192.0.2.2",
                        "--key", KEY.hex(), "--seq", "41")  # fmt: skip
    inn = live_port.ctl("add-sa", "--dir", "in", "--spi", "0x1002", "--dst", "192.0.2.1",
                        "--key", KEY.hex(), "--esn")  # fmt: skip
    assert (out["sa_index"], inn["sa_index"]) == (1, 2)
    assert live_port.ctl("list") == {"sas": [
        {"sa_index": 1, "direction": "out", "spi": "0x00001001", "dst": "192.0.2.2", "seq": 41},
        {"sa_index": 2, "direction": "in", "spi": "0x00001002", "dst": "192.0.2.1", "seq": 0},
    ]}  # fmt: skip
    assert live_port.ctl("stats", "1")["packets"] == 0
    assert live_port.ctl("remove-sa", "1") == {"removed": 1}
    assert live_port.ctl("flush") == {"removed": 1}
    assert live_port.ctl("list") == {"sas": []}
    done = subprocess.run(
        [CLI, "ctl", "--dev", live_port.host_if, "stats", "7"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "GET_SA_STATS with NOT_FOUND" in done.stderr
    stats = live_port.stop()
    assert stats["links"]["nic-to-agent"] == stats["links"]["agent-to-nic"]
    assert stats["agent"]["paths"]["CONFIG_REQUEST"] == stats["links"]["nic-to-agent"]


@pytest.mark.parametrize("live_port", ["64", "0"], ids=["ring", "no-ring"], indirect=True)
def test_esp_both_ways_checked_by_scapy(live_port: LivePort) -> None:
    """Offload frames in on the host side leave as ESP that scapy's SecurityAssociation
    opens; ESP that scapy seals on the wire side comes out decrypted, tagged OK; through
    receive rings and through one recvmsg a frame."""
    live_port.ctl("add-sa", "--dir", "out", "--spi", "0x2001", "--dst", "192.0.2.2",
                  "--key", KEY.hex())  # fmt: skip
    index = live_port.ctl("add-sa", "--dir", "in", "--spi", "0x2002", "--dst", "192.0.2.1",
                          "--key", KEY.hex())["sa_index"]  # fmt: skip
    wire_sniffer = AsyncSniffer(iface=live_port.wire_if, filter=None, store=True)
    host_sniffer = AsyncSniffer(iface=live_port.host_if, store=True)
    wire_sniffer.start()
    host_sniffer.start()
    time.sleep(0.5)
    payloads = [b"live payload %d" % n for n in range(5)]
    with raw(live_port.host_if) as host, raw(live_port.wire_if) as wire:
        for n, payload in enumerate(payloads, 1):
            udp = bytes(UDP(sport=4000, dport=5000) / payload)
            host.send(af.offload_frame(0x2001, n, udp))
        inbound = scapy_sa(0x2002, KEY, 1)
        for n in range(1, 4):
            packet = IP(src="192.0.2.2", dst="192.0.2.1") / UDP(sport=5, dport=6) / (b"in %d" % n)
            sealed = scapy_encrypt(inbound, packet, n, n.to_bytes(8, "big"))
            wire.send(bytes(Ether(dst=af.HOST_MAC, src=af.PEER_MAC) / sealed))
        time.sleep(1.0)
    wire_frames = [bytes(p) for p in wire_sniffer.stop()]
    host_frames = [bytes(p) for p in host_sniffer.stop()]
    # the sniffers see both directions: the agent's frames are those of its SPIs and MACs
    esp = [Ether(f) for f in wire_frames if Ether(f).haslayer(ESP) and Ether(f)[ESP].spi == 0x2001]
    assert len(esp) == 5
    assert [p[ESP].seq for p in esp] == [1, 2, 3, 4, 5]
    outbound = scapy_sa(0x2001, KEY, 1)
    opened = [bytes(outbound.decrypt(p[IP])[UDP].payload) for p in esp]
    assert opened == payloads
    tagged = [f for f in host_frames if f[12:14] == b"\x88\xb5" and f[:6] == af.HOST_MAC]
    assert len(tagged) == 3
    for n, frame in enumerate(tagged, 1):
        word, untagged = af.split_tag(frame)
        rx = af.rx_word(word)
        assert (rx.ipsec, rx.status, rx.sa_index) == (True, RxStatus.OK, index)
        assert (b"in %d" % n) in untagged
    stats = live_port.stop()
    assert stats["agent"]["rx_status"]["OK"] == 3
    assert stats["agent"]["paths"]["TX_ENCRYPTED"] == 5
    assert (stats["kernel_drops"], stats["truncated"]) == (0, 0)


def test_sigterm_mid_traffic(live_port: LivePort, tmp_path: Path) -> None:
    """SIGTERM while frames stream in: the agent stops between bursts, so its final counters,
    its four captures and an independent capture of the wire agree frame for frame; and the
    golden model, replaying the live captures' inputs, makes the live outputs byte for byte."""
    live_port.ctl("add-sa", "--dir", "out", "--spi", "0x3001", "--dst", "192.0.2.2",
                  "--key", KEY.hex())  # fmt: skip
    wire = Capture(live_port.wire_if)
    sent = 0
    with raw(live_port.host_if) as host:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline or sent < 200:
            sent += 1
            udp = bytes(UDP(sport=4000, dport=5000) / (b"stream %06d" % sent))
            host.send(af.offload_frame(0x3001, sent, udp))
            if sent == 300:
                live_port.process.send_signal(signal.SIGTERM)
            if sent >= 600:
                break
        out, err = live_port.process.communicate(timeout=30)
        assert live_port.process.returncode == 0, err
        stats = json.loads(out)
    on_wire = [f for f in wire.frames() if Ether(f).haslayer(ESP)]
    assert all(Ether(f)[ESP].spi == 0x3001 for f in on_wire)
    links = stats["links"]
    pcaps = tmp_path / "pcaps"
    captures = {name: read_pcap(pcaps / f"{name}.pcap") for name in links}
    for name, count in links.items():
        assert len(captures[name]) == count, name
    assert 0 < links["agent-to-wire"] < sent  # it stopped mid-stream
    assert [r.frame for r in captures["agent-to-wire"]] == on_wire
    assert stats["agent"]["paths"]["TX_ENCRYPTED"] == links["agent-to-wire"]

    golden = subprocess.run(
        [CLI, "agent", "--host-in", str(pcaps / "nic-to-agent.pcap"),
         "--wire-in", str(pcaps / "wire-to-agent.pcap"),
         "--host-out", str(tmp_path / "g-nic.pcap"), "--wire-out", str(tmp_path / "g-wire.pcap"),
         "--boot-id", str(_boot_id(captures["agent-to-nic"]))],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert golden.returncode == 0, golden.stderr
    assert [r.frame for r in read_pcap(tmp_path / "g-wire.pcap")] == on_wire
    assert [r.frame for r in read_pcap(tmp_path / "g-nic.pcap")] == [
        r.frame for r in captures["agent-to-nic"]
    ]


def _boot_id(replies: list) -> int:  # type: ignore[type-arg]
    """The live agent's BOOT_ID, from its GET_CAPS replies (the golden model must start with
    the same one to answer alike)."""
    from ipsec_offload.wire.config import Opcode, decode_caps, parse_config
    from ipsec_offload.wire.ethernet import parse_ethernet

    for record in replies:
        eth = parse_ethernet(record.frame)
        message = parse_config(memoryview(record.frame)[eth.header_len :])
        if message.base_opcode == Opcode.GET_CAPS:
            boot_id = decode_caps(message.tlvs).boot_id
            assert boot_id is not None
            return boot_id
    raise AssertionError("no GET_CAPS reply captured")


# -- real applications over the whole live path ---------------------------------------------


def _require_apps() -> None:
    require_namespaces()
    for tool in ("ping", "curl"):
        if shutil.which(tool) is None:
            _missing_tool(f"the live path's tests run {tool}: apt-get install iputils-ping curl")


def _fetch_and_hash(topology: LiveTopology, url: str) -> str:
    done = topology.run_in("app", "sh", "-c", f"curl -sf --max-time 120 {url} | sha256sum")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[0]


def _ping(topology: LiveTopology) -> None:
    """Three pings to each of the peer's addresses, IPv4 and IPv6, all answered."""
    for address in (PEER_V4, PEER_V6):
        done = topology.run_in("app", "ping", "-c", "3", "-W", "5", address)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "3 packets transmitted, 3 received" in done.stdout


def test_applications_over_the_model_software_peer(tmp_path: Path) -> None:
    """ping and HTTP downloads between the host's and the peer's namespaces, over IPv4 and
    IPv6: the kernel's ICMP and TCP through the model's stack, PF driver, NIC, the live agent
    and the software peer. tshark, capturing on the agent's wire side, decrypts the ESP of
    both families with the esp_sa file the run wrote."""
    _require_apps()
    tshark = require_tool("tshark")
    served = tmp_path / "served"
    served.mkdir()
    blob = os.urandom(2_000_000)
    (served / "blob").write_bytes(blob)
    with LiveTopology(tmp_path / "live") as topology:
        capture = tmp_path / "wire.pcapng"
        sniffer = subprocess.Popen(
            ["ip", "netns", "exec", topology.agent, tshark, "-q", "-i", "aw0", "-w",
             str(capture), "-f", "esp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        server = subprocess.Popen(
            ["ip", "netns", "exec", topology.wire, sys.executable, "-m", "http.server",
             "8080", "--bind", "::", "--directory", str(served)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(2.0)  # tshark and the server start
            _ping(topology)
            digests = [
                _fetch_and_hash(topology, f"http://{PEER_V4}:8080/blob"),
                _fetch_and_hash(topology, f"http://[{PEER_V6}]:8080/blob"),
            ]
        finally:
            server.terminate()
            server.wait()
            time.sleep(0.5)
            sniffer.send_signal(signal.SIGINT)
            sniffer.wait(timeout=30)
        said = topology.down()
    assert digests == [hashlib.sha256(blob).hexdigest()] * 2
    host = json.loads(said["host"].strip().splitlines()[-1])
    # the downloads' 2 MB each came in through the agent's decryption, the acks out through
    # its encryption
    assert host["counters"]["rx_esp_offloaded"] > 2 * 1400
    assert host["counters"]["tx_esp_offloaded"] > 200
    rows = tshark_decode(
        capture, tmp_path / "live" / "esp_sa",
        fields=["ip.version", "esp.spi", "icmp.type", "icmpv6.type", "esp.icv_good"],
    )  # fmt: skip
    assert len(rows) > 2 * 1400 and all(row["esp.icv_good"] == "1" for row in rows)
    assert {row["ip.version"] for row in rows} == {"4", "6"}
    assert {row["icmp.type"] for row in rows} >= {"8", "0"}  # requests and replies, opened
    assert {row["icmpv6.type"] for row in rows} >= {"128", "129"}


def test_applications_over_the_model_linux_peer(tmp_path: Path) -> None:
    """The same with the Linux guest as the peer, on a TAP device: pings answered by its
    kernel, and a file its busybox httpd serves arrives whole (the guest's own hash), over
    IPv4 and IPv6, each through its own SA pair."""
    _require_apps()
    require_linux_guest()
    with LiveTopology(tmp_path / "live", peer="linux") as topology:
        guest, peer = topology.guest, topology.linux_peer
        assert guest is not None and peer is not None
        guest.run("/bin/sh", "-c", "dd if=/dev/urandom of=/tmp/blob bs=1024 count=400 2>/dev/null")
        expected = guest.run("/bin/sha256sum", "/tmp/blob")[1].split()[0]
        # in the background, its output nowhere: peerd waits for a program's output to end
        serve = "httpd -f -p 8080 -h /tmp >/dev/null 2>&1 </dev/null &"
        guest.run("/bin/nsenter", f"--net=/run/netns/{peer.netns}", "/bin/sh", "-c", serve)
        _ping(topology)
        assert _fetch_and_hash(topology, f"http://{PEER_V4}:8080/blob") == expected
        assert _fetch_and_hash(topology, f"http://[{PEER_V6}]:8080/blob") == expected
        sas = {sa.spi: sa for sa in peer.guest_sas()}
        assert len(sas) == 4  # each family's pair
        assert all(sa.packets > 100 and sa.failed == 0 and sa.replay == 0 for sa in sas.values())
