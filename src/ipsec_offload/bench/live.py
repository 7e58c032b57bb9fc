"""The live agent's figures (docs/performance.md, "Live"): the agent on a veth pair against the
same agent in process, and against a plain forwarder of the same I/O code; and the agent with
two workers against one.

Each run starts `ipsec-offload agent --live` in a network namespace of the bench's own, between
two veth pairs, gives it an outbound SA for each SPI of the frames with `ctl`'s client (the
plain forwarder needs none),
and sends it Tx offload frames as fast as the compiled packet I/O can (sendmmsg), more than
the agent can take, so that it runs saturated. Its rate is the frames it sent toward the wire
over the time from the first frame it read to the last it sent (the live statistics'
`busy_seconds`). The in-process figure is `IpsecAgent.from_host` on the same frames in bursts
of 64, the live agent's burst.
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
from pathlib import Path

from ipsec_offload.bench.traffic import SPI, BenchError, Packet, sa_request
from ipsec_offload.live.ctl import ConfigClient
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


@contextmanager
def veth_namespace() -> Iterator[tuple[str, str]]:
    """A namespace with the agent's ends of two veth pairs (ah0, aw0); yields the namespace
    and the bench's end of the host-side pair. Removed on the way out."""
    tag = secrets.token_hex(3)
    netns, host_if, wire_if = f"iolb{tag}", f"ibh{tag}", f"ibw{tag}"
    _ip("netns", "add", netns)
    try:
        for mine, theirs in ((host_if, "ah0"), (wire_if, "aw0")):
            _ip("link", "add", mine, "type", "veth", "peer", "name", theirs, "netns", netns)
            for where, name in (([], mine), (["ip", "netns", "exec", netns], theirs)):
                subprocess.run([*where, "sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"],
                               check=False, capture_output=True)  # fmt: skip
            _ip("link", "set", mine, "up")
            _ip("-n", netns, "link", "set", theirs, "up")
        yield netns, host_if
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)
        for name in (host_if, wire_if):
            subprocess.run(["ip", "link", "delete", name], check=False, capture_output=True)


def live_rate(
    netns: str,
    host_if: str,
    packets: Sequence[Packet],
    algorithm: Algorithm,
    *,
    forward_only: bool = False,
    spis: Sequence[int] = (SPI,),
    workers: int = 1,
) -> float:
    """Frames per second the live agent with `workers` workers (or the plain forwarder)
    moved, saturated; it is given an outbound SA for each of `spis`, the packets' SPIs."""
    command = [str(Path(sys.executable).parent / "ipsec-offload"), "agent", "--live",
               "--host-if", "ah0", "--wire-if", "aw0", "--stats-interval", "3600",
               "--workers", str(workers)]  # fmt: skip
    if forward_only:
        command.append("--forward-only")
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, *command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        while "listening" not in (line := process.stderr.readline()):
            if not line:
                raise BenchError(f"the live agent did not start: {process.communicate()[1]}")
        if not forward_only:
            with ConfigClient(host_if) as client:
                for spi in spis:
                    request = sa_request(Direction.OUTBOUND, algorithm, spi)
                    reply = client.request(Opcode.ADD_SA, encode_add_sa(request))
                    if reply.status != ConfigStatus.OK:
                        raise BenchError("the live agent refused the bench's SA")
        _blast(host_if, [p.offload for p in packets])
        time.sleep(0.5)  # what is queued drains
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
    busy = stats["busy_seconds"]
    if not moved or not busy:
        raise BenchError("the live agent moved no frame")
    if not forward_only and stats["agent"]["paths"]["TX_ENCRYPTED"] != moved:
        raise BenchError("the live agent did not encrypt every frame it sent")
    return float(moved / busy)


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
