"""The live agent's test harness: the agent as a subprocess between two veth pairs, in a network
namespace of its own (its ends ah0 and aw0 there, the test's in the root namespace), driven
with `ipsec-offload ctl` (test_live.py, test_live_workers.py).

Needs root and iproute2 (network namespaces); elsewhere the tests skip saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tools import _missing_tool

CLI = str(Path(sys.executable).parent / "ipsec-offload")


def require_namespaces() -> None:
    if os.geteuid() != 0:
        _missing_tool("the live agent's tests need root (network namespaces, packet sockets)")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode != 0:
        _missing_tool("the live agent's tests need iproute2's ip with network namespaces")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class LivePort:
    netns: str
    host_if: str
    """The test's end of the host-side veth (the agent's is in its namespace)."""
    wire_if: str
    process: subprocess.Popen[str]

    def ctl(self, *args: str) -> dict:  # type: ignore[type-arg]
        done = subprocess.run(
            [CLI, "ctl", "--dev", self.host_if, "--json", *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def stop(self) -> dict:  # type: ignore[type-arg]
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return json.loads(out)  # type: ignore[no-any-return]


@contextmanager
def running_agent(*agent_args: str) -> Iterator[LivePort]:
    """`ipsec-offload agent --live` with `agent_args` between two veth pairs, in a namespace of
    its own, up (it answers GET_CAPS); the namespace and the pairs removed after."""
    require_namespaces()
    tag = uuid.uuid4().hex[:6]
    netns, host_if, wire_if = f"iol{tag}", f"ioh{tag}", f"iow{tag}"
    _ip("netns", "add", netns)
    process: subprocess.Popen[str] | None = None
    try:
        for mine, theirs in ((host_if, "ah0"), (wire_if, "aw0")):
            _ip("link", "add", mine, "type", "veth", "peer", "name", theirs, "netns", netns)
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{mine}.disable_ipv6=1"], check=True)
            subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                            f"net.ipv6.conf.{theirs}.disable_ipv6=1"], check=True)  # fmt: skip
            _ip("-n", netns, "link", "set", theirs, "up")
            _ip("link", "set", mine, "up")
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, CLI, "agent", "--live", "--host-if", "ah0",
             "--wire-if", "aw0", *agent_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        port = LivePort(netns, host_if, wire_if, process)
        _wait_ready(port)
        yield port
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        subprocess.run(["ip", "netns", "delete", netns], check=False)
        for name in (host_if, wire_if):
            subprocess.run(["ip", "link", "delete", name], check=False, capture_output=True)


def _wait_ready(port: LivePort) -> None:
    """GET_CAPS until the agent answers (it is up once it does)."""
    deadline = time.monotonic() + 20
    while True:
        done = subprocess.run(
            [CLI, "ctl", "--dev", port.host_if, "--timeout", "0.2", "--retries", "0", "caps"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return
        assert port.process.poll() is None, port.process.communicate()[1]
        assert time.monotonic() < deadline, done.stderr


def raw(ifname: str) -> socket.socket:
    """A packet socket that sends on `ifname`."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    return sock


class Capture:
    """An independent capture of an interface (both directions): a plain packet socket with
    room for every frame of a test, read once the run is over, so that nothing is lost to a
    reader that falls behind while frames stream in."""

    def __init__(self, ifname: str) -> None:
        # protocol 0 until bound: no other interface's frame comes in before the bind
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 64 << 20)
        self._sock.bind((ifname, 0x0003))

    def frames(self) -> list[bytes]:
        """Every frame captured so far; the capture ends."""
        self._sock.setblocking(False)
        seen = []
        with contextlib.suppress(BlockingIOError):
            while True:
                seen.append(self._sock.recv(65535))
        self._sock.close()
        return seen


_SO_RCVBUFFORCE = 33


@contextmanager
def veth_pair(prefix: str, why: str) -> Iterator[tuple[str, str]]:
    """A veth pair in this namespace (root), IPv6 off so the kernel sends nothing itself;
    without root the test skips (or fails, in CI) saying `why` it needs it."""
    if os.geteuid() != 0:
        _missing_tool(f"{why} need root (packet sockets, a veth pair)")
    tag = uuid.uuid4().hex[:6]
    a, b = f"{prefix}a{tag}", f"{prefix}b{tag}"
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        for name in (a, b):
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"], check=True)
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield a, b
    finally:
        subprocess.run(["ip", "link", "delete", a], check=False)
