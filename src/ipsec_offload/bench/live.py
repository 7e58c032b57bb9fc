"""The live agent's figures (docs/performance.md, "Live"): the agent on a veth pair against the
same agent in process, and against a plain forwarder of the same I/O code; and the agent with
two workers against one.

Each run starts `ipsec-offload agent --live` in a network namespace of the bench's own, between
two veth pairs, and gives it an outbound SA for each SPI of the frames with `ctl`'s client (the
plain forwarder needs none). Then the bench stops the agent's processes (SIGSTOP), sends all
its Tx offload frames into the agent's receive rings, which are sized to hold them, and lets
the agent go on (SIGCONT): the agent drains a full ring, as a NIC's DMA would have filled it,
with the machine's cores to itself, and never waits for the sender. Its rate is the frames it
sent toward the wire over the time from the SIGCONT to the end of its last burst (the live
statistics' clock). The run fails if the kernel dropped a frame or the agent encrypted fewer
than it was sent. The in-process figure is `IpsecAgent.from_host` on the same frames in
bursts of 64, the live agent's burst.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ipsec_offload.bench.traffic import SPI, BenchError, Packet, sa_request
from ipsec_offload.live.ctl import ConfigClient
from ipsec_offload.live.leftovers import claim, reap
from ipsec_offload.live.packet_socket import PKTIO_BUILT
from ipsec_offload.wire.config import Algorithm, ConfigStatus, Direction, Opcode, encode_add_sa

BURST = 64
"""The live agent's burst, and so the in-process agent's."""


def cannot_run() -> str | None:
    """Why the live figures cannot be measured here (None: they can)."""
    if os.geteuid() != 0:
        return "the live figures need root (network namespaces, packet sockets)"
    if not PKTIO_BUILT:
        return "the live figures need the compiled packet I/O (a C compiler at install)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode != 0:
        return "the live figures need iproute2's ip with network namespaces"
    return None


@dataclass(frozen=True, slots=True)
class Bed:
    """The bench's namespace for the agent, and the bench's ends of the two veth pairs."""

    netns: str
    host_if: str
    wire_if: str


@contextmanager
def veth_namespace() -> Iterator[Bed]:
    """A namespace with the agent's ends of two veth pairs (ah0, aw0), the bench's ends
    outside it. Removed on the way out."""
    tag = secrets.token_hex(3)
    netns, host_if, wire_if = f"iolb{tag}", f"ibh{tag}", f"ibw{tag}"
    reap()
    with claim([netns]), _made(netns, host_if, wire_if):
        yield Bed(netns, host_if, wire_if)


@contextmanager
def _made(netns: str, host_if: str, wire_if: str) -> Iterator[None]:
    """The namespace and the two veth pairs, removed on the way out."""
    _ip("netns", "add", netns)
    try:
        for mine, theirs in ((host_if, "ah0"), (wire_if, "aw0")):
            _ip("link", "add", mine, "type", "veth", "peer", "name", theirs, "netns", netns)
            for where, name in (([], mine), (["ip", "netns", "exec", netns], theirs)):
                subprocess.run([*where, "sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"],
                               check=False, capture_output=True)  # fmt: skip
            _ip("link", "set", mine, "up")
            _ip("-n", netns, "link", "set", theirs, "up")
        yield
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)
        for name in (host_if, wire_if):
            subprocess.run(["ip", "link", "delete", name], check=False, capture_output=True)


def live_rate(
    bed: Bed,
    packets: Sequence[Packet],
    algorithm: Algorithm,
    *,
    forward_only: bool = False,
    spis: Sequence[int] = (SPI,),
    workers: int = 1,
) -> float:
    """Frames per second the live agent with `workers` workers (or the plain forwarder)
    moved, draining its rings; it is given an outbound SA for each of `spis`, the packets'
    SPIs."""
    ring = len(packets) // workers + len(packets) // 8
    command = [str(Path(sys.executable).parent / "ipsec-offload"), "agent", "--live",
               "--host-if", "ah0", "--wire-if", "aw0", "--stats-interval", "3600",
               "--workers", str(workers), "--ring-frames", str(ring)]  # fmt: skip
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= workers:  # each worker a core of its own from the start
        command += ["--cpus", ",".join(map(str, cpus[:workers]))]
    if forward_only:
        command.append("--forward-only")
    process = subprocess.Popen(
        ["ip", "netns", "exec", bed.netns, *command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        while "listening" not in (line := process.stderr.readline()):
            if not line:
                raise BenchError(f"the live agent did not start: {process.communicate()[1]}")
        if not forward_only:
            with ConfigClient(bed.host_if) as client:
                for spi in spis:
                    request = sa_request(Direction.OUTBOUND, algorithm, spi)
                    reply = client.request(Opcode.ADD_SA, encode_add_sa(request))
                    if reply.status != ConfigStatus.OK:
                        raise BenchError("the live agent refused the bench's SA")
        before = _wire_received(bed)
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            _blast(bed.host_if, [p.offload for p in packets])
        finally:
            resumed = time.monotonic()
            os.killpg(process.pid, signal.SIGCONT)
        _wait_for(bed, before + len(packets))
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise BenchError(f"the live agent failed: {err.strip()}")
    stats = json.loads(out)
    moved = stats["links"]["agent-to-wire"]
    if stats["kernel_drops"] or moved != len(packets):
        raise BenchError(
            f"the live agent moved {moved} of {len(packets)} frames (the kernel dropped"
            f" {stats['kernel_drops']}): its rings were too small"
        )
    if not forward_only and stats["agent"]["paths"]["TX_ENCRYPTED"] != moved:
        raise BenchError("the live agent did not encrypt every frame it sent")
    return float(moved / (stats["clock"]["last_frame"] - resumed))


def _wire_received(bed: Bed) -> int:
    """Frames the bench's end of the wire pair has received."""
    path = Path(f"/sys/class/net/{bed.wire_if}/statistics/rx_packets")
    return int(path.read_text())


def _wait_for(bed: Bed, count: int, *, timeout: float = 60.0, still: float = 1.0) -> None:
    """Until the wire's end has received `count` frames, or has received none for `still`
    seconds (what the agent has not sent by then it will not), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last, moved_at = _wire_received(bed), time.monotonic()
    while (now := time.monotonic()) < deadline and now - moved_at < still:
        time.sleep(0.02)
        received = _wire_received(bed)
        if received >= count:
            return
        if received != last:
            last, moved_at = received, time.monotonic()


def _blast(ifname: str, frames: list[bytes]) -> None:
    from ipsec_offload.live import _pktio

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((ifname, 0))
        for start in range(0, len(frames), BURST):
            _pktio.send_burst(sock.fileno(), frames[start : start + BURST])
    finally:
        sock.close()


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {done.stderr.strip()}")
