"""`ipsec-offload live`: real applications over the model (docs/live.md).

Theory of operation: three network namespaces, made here and removed on the way out,
whatever happens:

- **app**: the emulated host. Its applications (ping, curl, iperf3) use `tun0`, behind which
  the model's host stack, PF driver and NIC run (`live-host --kind pf`); the NIC's port is
  the veth `nic0`. It has an IPv4 and an IPv6 address, each with an SA pair of its own to
  the peer's.
- **agent**: the live agent between `ah0` (the far end of `nic0`) and `aw0`.
- **wire**: the remote peer on `w0` (the far end of `aw0`): the model's software stack behind
  its own `tun0` (`live-host --kind peer`), so that its applications are real too.

Each part is a process of its own in its namespace; this one starts them, waits for each to
say it is ready (bounded), writes the SAs' keys in Wireshark's esp_sa format, and stops them
(SIGTERM, then SIGKILL) before it removes the namespaces. Only addresses and names it made
are touched: the namespaces carry a prefix of their own (`iol` and a random tag), and are
claimed (`leftovers`) while they exist, so that a run killed before it could remove them
(SIGKILL) has them removed by the next run.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from ipsec_offload.errors import UsageError
from ipsec_offload.host.xfrm import XfrmPolicy, XfrmState, host_network
from ipsec_offload.live.leftovers import claim, reap
from ipsec_offload.sim.espsa import EspSaEntry, write_esp_sa
from ipsec_offload.sim.linux.guest import LinuxGuest, die_with_parent
from ipsec_offload.sim.linux.peer import LinuxPeer, LinuxWire
from ipsec_offload.wire.addr import mac_from_str
from ipsec_offload.wire.config import Algorithm, Direction

HOST_V4, PEER_V4 = "10.99.0.1", "10.99.0.2"
HOST_V6, PEER_V6 = "fd99::1", "fd99::2"
"""The host's and the peer's addresses: a private IPv4 network and an IPv6 unique local
prefix (RFC 4193), only ever in the namespaces made here."""
HOST_MAC, PEER_MAC = "02:00:00:99:00:01", "02:00:00:99:00:02"
TUN_MTU = 1400
"""The applications' MTU: room under the veths' 1500 for ESP and the metadata tag."""
READY_TIMEOUT = 30.0


@dataclass
class LiveTopology:
    """The namespaces, links and processes of one live run."""

    out: Path
    peer: str = "software"
    """software: the model's stack behind a TUN device; linux: the Linux guest on a TAP
    device bridged to `w0`, its ESP configured with ip xfrm (sim/linux)."""
    capture: bool = False
    """The live agent captures its four links into out/pcaps."""
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    guest: LinuxGuest | None = None
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    linux_peer: LinuxPeer | None = None
    made: list[str] = field(default_factory=list)
    reaped: list[str] = field(default_factory=list, init=False)
    """Namespaces of earlier runs, killed before they removed them, that `up` removed."""
    _claim: ExitStack = field(default_factory=ExitStack, init=False, repr=False)

    @property
    def app(self) -> str:
        return f"iol{self.tag}-app"

    @property
    def agent(self) -> str:
        return f"iol{self.tag}-agent"

    @property
    def wire(self) -> str:
        return f"iol{self.tag}-wire"

    def __enter__(self) -> LiveTopology:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        """Make the namespaces and links, start the agent, the host and the peer."""
        if os.geteuid() != 0:
            raise UsageError("ipsec-offload live makes network namespaces: run it as root")
        self.out.mkdir(parents=True, exist_ok=True)
        self.reaped = reap()
        self._claim.enter_context(claim([self.app, self.agent, self.wire]))
        for netns in (self.app, self.agent, self.wire):
            _ip("netns", "add", netns)
            self.made.append(netns)
            _ip("-n", netns, "link", "set", "lo", "up")
        for (ns_a, a), (ns_b, b) in (
            ((self.app, "nic0"), (self.agent, "ah0")),
            ((self.agent, "aw0"), (self.wire, "w0")),
        ):
            _ip("-n", ns_a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b)
            for netns, name in ((ns_a, a), (ns_b, b)):
                _sysctl(netns, f"net.ipv6.conf.{name}.disable_ipv6=1")
                _ip("-n", netns, "link", "set", name, "up")
        sas = [_new_sa(HOST_V4, PEER_V4), _new_sa(HOST_V6, PEER_V6)]
        sa_file = self.out / "sas.json"
        sa_file.write_text(json.dumps(sas, indent=2) + "\n")
        write_esp_sa(self.out / "esp_sa", [e for sa in sas for e in _esp_sa_entries(sa)])
        capture: list[str] = []
        if self.capture:
            (self.out / "pcaps").mkdir(exist_ok=True)
            capture = ["--pcap-dir", str(self.out / "pcaps")]
        self._start("agent", self.agent, [
            "agent", "--live", "--host-if", "ah0", "--wire-if", "aw0", *capture,
            "--stats-interval", "5",
        ], ready=None)  # fmt: skip
        if self.peer == "linux":
            self._linux_peer(sas)
        else:
            self._start("peer", self.wire, _live_host(
                "peer", "w0", (PEER_MAC, PEER_V4, PEER_V6), (HOST_MAC, HOST_V4, HOST_V6),
                sa_file, "--reverse",
            ))  # fmt: skip
        self._start("host", self.app, _live_host(
            "pf", "nic0", (HOST_MAC, HOST_V4, HOST_V6), (PEER_MAC, PEER_V4, PEER_V6),
            sa_file, "--offload",
        ))  # fmt: skip

    def _linux_peer(self, sas: list[dict[str, str]]) -> None:
        """The Linux guest on `tap0`, bridged to `w0` in the wire namespace, with a peer
        namespace holding the SAs' mirrors (ip xfrm), as the Linux peer of the simulator."""
        for args in (
            ("tuntap", "add", "dev", "tap0", "mode", "tap"),
            ("link", "add", "br0", "type", "bridge"),
            ("link", "set", "w0", "master", "br0"),
            ("link", "set", "tap0", "master", "br0"),
        ):
            _ip("-n", self.wire, *args)
        for name in ("tap0", "br0"):
            _sysctl(self.wire, f"net.ipv6.conf.{name}.disable_ipv6=1")
            _ip("-n", self.wire, "link", "set", name, "up")
        self.guest = LinuxGuest.boot(tap="tap0", netns=self.wire)
        wire = LinuxWire(self.guest)
        ends = [
            tuple(ipaddress.ip_address(sa[k]).packed for k in ("local", "remote")) for sa in sas
        ]
        addresses = {4 if len(peer) == 4 else 6: peer for _, peer in ends}
        linux = LinuxPeer(wire, "peer", mac_from_str(PEER_MAC), addresses, (), quiet=False)
        handles = iter(range(1, 2 * len(sas) + 1))
        for reqid, (sa, (host, peer)) in enumerate(zip(sas, ends, strict=True), 1):
            linux.neighbors[host] = mac_from_str(HOST_MAC)
            for direction, spi, key, src, dst in (
                (Direction.INBOUND, sa["spi_out"], sa["key_out"], host, peer),
                (Direction.OUTBOUND, sa["spi_in"], sa["key_in"], peer, host),
            ):
                key_bytes = bytes.fromhex(key)
                state = XfrmState(next(handles), direction, int(spi, 16), src, dst,
                                  Algorithm.AES_GCM_128, key_bytes, reqid=reqid)  # fmt: skip
                linux.add_state(state, 0.0)
                linux.add_policy(
                    XfrmPolicy(direction, host_network(src), host_network(dst), state.handle)
                )
        self.linux_peer = linux

    def _start(self, name: str, netns: str, args: list[str], ready: str | None = "ready") -> None:
        command = [str(Path(sys.executable).parent / "ipsec-offload"), *args]
        log = (self.out / f"{name}.log").open("w")
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, *command],
            stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        self.processes[name] = process
        if ready is None:
            return
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        line = ""
        while time.monotonic() < deadline:
            line = process.stdout.readline().strip()
            if line == ready or process.poll() is not None:
                break
        if line != ready:
            tail = (self.out / f"{name}.log").read_text().strip().splitlines()[-3:]
            raise UsageError(f"the live {name} did not start: {' / '.join(tail) or 'no output'}")

    def run_in(
        self, where: str, *command: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the app or wire namespace (it ends with this process)."""
        netns = {"app": self.app, "wire": self.wire}[where]
        return subprocess.run(
            ["ip", "netns", "exec", netns, *command], capture_output=True, text=True,
            timeout=timeout, check=False, preexec_fn=die_with_parent,
        )  # fmt: skip

    def down(self) -> dict[str, str]:
        """Stop the processes (their last words, by name) and remove the namespaces."""
        said = {}
        for name, process in reversed(self.processes.items()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                out, _ = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
            said[name] = out or ""
        self.processes.clear()
        if self.guest is not None:
            self.guest.close()
            self.guest = None
        for netns in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)
        self.made.clear()
        self._claim.close()
        return said


def _live_host(
    kind: str, iface: str, me: tuple[str, str, str], other: tuple[str, str, str],
    sa_file: Path, end: str,
) -> list[str]:  # fmt: skip
    """The `live-host` command of one end: `me` and `other` are (MAC, IPv4, IPv6), `end` is
    "--reverse" (the peer, the SA file's remote end) or "--offload" (the PF host)."""
    mac, v4, v6 = me
    other_mac, other_v4, other_v6 = other
    return [
        "live-host", "--kind", kind, "--name", "host" if kind == "pf" else "peer",
        "--mac", mac, "--ipv4", v4, "--ipv6", v6, "--iface", iface,
        "--neighbor", f"{other_v4}={other_mac}", "--neighbor", f"{other_v6}={other_mac}",
        "--sa-file", str(sa_file), end,
    ]  # fmt: skip


def _new_sa(local: str, remote: str) -> dict[str, str]:
    """An SA pair between two addresses of the topology: random SPIs and AES-GCM-128
    keys."""
    return {
        "spi_out": hex(0x1000 + secrets.randbelow(0xE000)),
        "spi_in": hex(0xF000 + secrets.randbelow(0xFFF)),
        "key_out": secrets.token_bytes(20).hex(),
        "key_in": secrets.token_bytes(20).hex(),
        "local": local,
        "remote": remote,
    }


def _esp_sa_entries(sa: dict[str, str]) -> list[EspSaEntry]:
    host, peer = (ipaddress.ip_address(a).packed for a in (sa["local"], sa["remote"]))
    algorithm = int(Algorithm.AES_GCM_128)
    return [
        EspSaEntry(
            host, peer, int(sa["spi_out"], 16), bytes.fromhex(sa["key_out"]), algorithm, False
        ),
        EspSaEntry(
            peer, host, int(sa["spi_in"], 16), bytes.fromhex(sa["key_in"]), algorithm, False
        ),
    ]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UsageError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _sysctl(netns: str, setting: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-qw", setting], check=False, capture_output=True
    )
