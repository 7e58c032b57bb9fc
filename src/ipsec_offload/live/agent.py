"""The agent on real interfaces: the sans-IO `IpsecAgent` between a host-side and a wire-side
packet socket, in real time (docs/live.md).

Theory of operation: one loop waits on both sockets and the agent's next timer, and each time
it wakes takes a burst from each side that has frames, hands it to the agent with the time
since the start, and sends what the agent gives back, before it reads again: a frame is
either wholly handled (its output sent and, with `pcap_dir`, recorded) or not read at all. A
stop (SIGINT, SIGTERM, `stop()`, or `duration`) takes effect between bursts, so the counters
and the captures agree to the frame. Captures are the simulator's four links, named as a
`run` names them (nic-to-agent.pcap, agent-to-nic.pcap, wire-to-agent.pcap,
agent-to-wire.pcap), so the golden model replays a live run as it replays a simulated one.
Statistics go to `report` every `stats_interval` seconds and on SIGUSR1.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from ipsec_offload.agent.agent import AgentConfig, AgentOutput, IpsecAgent
from ipsec_offload.agent.events import TxnSpace
from ipsec_offload.errors import UsageError
from ipsec_offload.live.packet_socket import PacketSocket
from ipsec_offload.sim.clock import NS_PER_S
from ipsec_offload.sim.pcap import PcapStream

RING_FRAMES = 4096
"""Each socket's receive ring by default: 4096 frames (8 MiB)."""
LINKS = ("nic-to-agent", "agent-to-nic", "wire-to-agent", "agent-to-wire")
"""The captures, named as the simulator's links."""
_Readable = PacketSocket | socket.socket


@dataclass(slots=True)
class LiveCounters:
    """What crossed the agent's two interfaces, beside the agent's own counters."""

    frames: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LINKS, 0))
    bursts: int = 0
    send_errors: int = 0
    kernel_drops: int = 0
    """Frames the kernel dropped before the agent read them: its ring or queue was full."""
    truncated: int = 0
    """Frames too long for a ring slot whose whole copy found no room (dropped)."""
    seconds: float = 0.0
    first_frame: float | None = None
    """When the first frame was read (seconds since the start)."""
    last_frame: float | None = None
    """When the last frame read was handled, its output sent."""


class LiveAgent:
    """The agent between two real interfaces. `run` returns when stopped."""

    def __init__(
        self,
        config: AgentConfig,
        host_if: str,
        wire_if: str,
        *,
        pcap_dir: Path | None = None,
        stats_interval: float = 5.0,
        burst: int = 64,
        report: Callable[[str], None] | None = None,
        forward_only: bool = False,
        ring_frames: int = RING_FRAMES,
        sockets: tuple[PacketSocket, PacketSocket] | None = None,
        txns: TxnSpace | None = None,
    ) -> None:
        """`ring_frames`: each socket's receive ring, in frames (0: none, one recvmsg a
        frame). `sockets`: the host side's and the wire side's, already open on `host_if`
        and `wire_if` (a worker's fanout members); by default the agent opens its own.
        `txns`: its agent's EVENT txn_ids (`IpsecAgent`)."""
        check_settings(host_if, wire_if, stats_interval)
        if pcap_dir is not None and not pcap_dir.is_dir():
            raise UsageError(f"{pcap_dir}: no such folder for the captures")
        self.agent = IpsecAgent(config, txns=txns)
        self.forward_only = forward_only
        """Carry frames across untouched, the agent left out: the I/O's own ceiling (the
        benchmark's plain forwarder)."""
        self._from_host = _forward("to_wire") if forward_only else self.agent.from_host
        self._from_wire = _forward("to_host") if forward_only else self.agent.from_wire
        if sockets is None:
            self.host = PacketSocket(host_if, ring_frames=ring_frames)
            try:
                self.wire = PacketSocket(wire_if, ring_frames=ring_frames)
            except BaseException:
                self.host.close()
                raise
        else:
            self.host, self.wire = sockets
        self.pcap_dir = pcap_dir
        self.stats_interval = stats_interval
        self.burst = burst
        self.report = report or to_stderr
        self.counters = LiveCounters()
        self._stopping = False
        self._dump_asked = False
        self._captures: dict[str, PcapStream] = {}
        self._started = 0.0

    def stop(self) -> None:
        """Stop after the burst in hand (safe from a signal handler)."""
        self._stopping = True

    def run(self, duration: float | None = None, *, started: float | None = None) -> dict[str, Any]:
        """Move frames until stopped (or for `duration` seconds); returns the final
        statistics (`stats`). Times count from `started` (a `time.monotonic()`; default:
        now), the workers' from their supervisor's start."""
        captures = self._open_captures()
        started = time.monotonic() if started is None else started
        self._started = started
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        try:
            with signals(self, wake_write):
                self._loop(started, duration, wake_read)
        except BaseException:
            for capture in captures.values():
                capture.abort()
            raise
        finally:
            wake_read.close()
            wake_write.close()
            self._count_kernel_drops()
            self.host.close()
            self.wire.close()
        for capture in captures.values():
            capture.close()
        self.counters.seconds = time.monotonic() - started
        return self.stats()

    def _loop(self, started: float, duration: float | None, wake: socket.socket) -> None:
        agent = self.agent
        now = time.monotonic() - started
        self._emit(self._start(now), int(now * NS_PER_S))
        self.report(f"listening on {self.host.ifname} and {self.wire.ifname}")
        next_stats = now + self.stats_interval
        watched: list[_Readable] = [self.host, self.wire, *self._inputs(), wake]
        while not self._stopping:
            now = time.monotonic() - started
            if duration is not None and now >= duration:
                break
            deadline = next_stats
            timer = agent.next_timer()
            if timer is not None:
                deadline = min(deadline, timer)
            if duration is not None:
                deadline = min(deadline, duration)
            ready, _, _ = select.select(watched, [], [], max(0.0, deadline - now))
            now = time.monotonic() - started
            now_ns = int(now * NS_PER_S)
            for kind, frames in self._read(ready):
                self._take(kind, frames, now, now_ns)
            if wake in ready:
                drain(wake)
            timer = agent.next_timer()
            if timer is not None and timer <= now:
                self._emit(agent.on_timer(now), now_ns)
            if now >= next_stats:
                self._count_kernel_drops()
                self.report(self.stats_line())
                next_stats = now + self.stats_interval
            if self._dump_asked:
                self._dump_asked = False
                self.report(json.dumps(self.stats(), sort_keys=True))

    # -- what a worker (live/workers.py) does otherwise ----------------------------------------

    def _start(self, now: float) -> AgentOutput:
        """The agent starts: AGENT_STARTED."""
        return self.agent.start(now)

    def _inputs(self) -> list[_Readable]:
        """What the loop waits on besides the two sockets."""
        return []

    def _read(self, ready: list[_Readable]) -> list[tuple[str, list[bytes]]]:
        """The bursts to handle now, in order, each with its kind ("host" or "wire")."""
        bursts = []
        for kind, sock in (("host", self.host), ("wire", self.wire)):
            if sock in ready:
                frames = sock.recv_burst(self.burst)
                if frames:
                    bursts.append((kind, frames))
        return bursts

    def _take(self, kind: str, frames: list[bytes], now: float, now_ns: int) -> None:
        """Hand a burst to the agent and send what it gives back."""
        if kind == "host":
            self._record("nic-to-agent", now_ns, frames)
            self._emit(self._from_host(frames, now), now_ns)
        else:
            self._record("wire-to-agent", now_ns, frames)
            self._emit(self._from_wire(frames, now), now_ns)
        if self.counters.first_frame is None:
            self.counters.first_frame = now
        self.counters.last_frame = time.monotonic() - self._started

    # -- output, captures, statistics -----------------------------------------------------------

    def _emit(self, out: AgentOutput, now_ns: int) -> None:
        if out.to_host:
            self._record("agent-to-nic", now_ns, out.to_host)
            self.host.send(out.to_host)
        if out.to_wire:
            self._record("agent-to-wire", now_ns, out.to_wire)
            self.wire.send(out.to_wire)
        self.counters.bursts += 1
        self.counters.send_errors = self.host.send_errors + self.wire.send_errors

    def _count_kernel_drops(self) -> None:
        count_losses(self.counters, (self.host, self.wire))

    def _record(self, link: str, now_ns: int, frames: list[bytes]) -> None:
        self.counters.frames[link] += len(frames)
        capture = self._captures.get(link)
        if capture is not None:
            for frame in frames:
                capture.add(now_ns, frame)

    def _open_captures(self) -> dict[str, PcapStream]:
        if self.pcap_dir is not None:
            for link in LINKS:
                self._captures[link] = PcapStream(self.pcap_dir / f"{link}.pcap")
        return self._captures

    def stats(self) -> dict[str, Any]:
        """The frames on each link, send errors, and the agent's counters and SAD size."""
        dump = self.agent.dump()
        first, last = self.counters.first_frame, self.counters.last_frame
        return {
            "links": dict(self.counters.frames),
            "send_errors": self.counters.send_errors,
            "kernel_drops": self.counters.kernel_drops,
            "truncated": self.counters.truncated,
            "seconds": round(self.counters.seconds, 3),
            "busy_seconds": None if first is None or last is None else round(last - first, 6),
            "clock": clock_stats(self._started, last),
            "sad_used": dump["sad_used"],
            "agent": dump["counters"],
        }

    def stats_line(self) -> str:
        """One line for the log: frames in and out on each side, the SAD, the drops."""
        f = self.counters.frames
        drops = sum(self.agent.counters.drops.values())
        return (
            f"host in {f['nic-to-agent']} out {f['agent-to-nic']}, wire in"
            f" {f['wire-to-agent']} out {f['agent-to-wire']}, SAD {len(self.agent.sad)},"
            f" drops {drops}, send errors {self.counters.send_errors}, kernel drops"
            f" {self.counters.kernel_drops}"
        )

    def ask_dump(self) -> None:
        """Report the statistics after the burst in hand (safe from a signal handler)."""
        self._dump_asked = True


class Stoppable(Protocol):
    """What `signals` drives: a loop that stops, and that reports its statistics."""

    def stop(self) -> None: ...

    def ask_dump(self) -> None: ...


@contextmanager
def signals(live: Stoppable, wake: socket.socket) -> Iterator[None]:
    """SIGINT and SIGTERM stop the loop, SIGUSR1 asks for the statistics; each wakes it
    (signal.set_wakeup_fd). Only from the main thread; elsewhere the caller stops it. The
    three are let in (unblocked) once the handlers are in place: a worker is forked with
    them blocked, so that none comes before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signum: int, _frame: FrameType | None) -> None:
        live.stop()

    def dump(_signum: int, _frame: FrameType | None) -> None:
        live.ask_dump()

    saved = {
        signal.SIGINT: signal.signal(signal.SIGINT, stop),
        signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
        signal.SIGUSR1: signal.signal(signal.SIGUSR1, dump),
    }
    old_fd = signal.set_wakeup_fd(wake.fileno())
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, saved)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.set_wakeup_fd(old_fd)
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def check_settings(host_if: str, wire_if: str, stats_interval: float) -> None:
    """UsageError unless the interfaces are two and the statistics interval is above 0."""
    if host_if == wire_if:
        raise UsageError(f"--host-if and --wire-if are both {host_if}: give two interfaces")
    if not stats_interval > 0:
        raise UsageError(f"stats interval {stats_interval}: give seconds above 0")


def check_cpus(cpus: tuple[int, ...], workers: int) -> tuple[int, ...]:
    """`cpus` (one for each worker, each a CPU this process may run on, no two alike) or a
    UsageError saying what to fix; () stays ()."""
    if not cpus:
        return cpus
    allowed = os.sched_getaffinity(0)
    if len(cpus) != workers:
        raise UsageError(f"--cpus names {len(cpus)} CPUs for {workers} workers: give one each")
    if len(set(cpus)) != len(cpus):
        raise UsageError(f"--cpus {','.join(map(str, cpus))}: a CPU twice; give one per worker")
    outside = sorted(set(cpus) - allowed)
    if outside:
        raise UsageError(
            f"--cpus: CPU {outside[0]} is not one this process may run on"
            f" ({','.join(map(str, sorted(allowed)))})"
        )
    return cpus


def parse_cpus(text: str) -> tuple[int, ...]:
    """A CPU list as taskset and cgroups write it: "0,2", "0-3", "0-1,4"."""
    cpus: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise UsageError(
                f"--cpus {text!r}: give CPU numbers and ranges, as 0,2 or 0-3"
            ) from None
        if high < low:
            raise UsageError(f"--cpus {text!r}: {part.strip()!r} is not a range of CPUs")
        cpus.extend(range(low, high + 1))
    return tuple(cpus)


def _forward(side: str) -> Callable[[list[bytes], float], AgentOutput]:
    """The plain forwarder's 'agent': each frame out of the other side as it came."""

    def forward(frames: list[bytes], _now: float) -> AgentOutput:
        return AgentOutput(**{side: frames})

    return forward


def count_losses(counters: LiveCounters, sockets: tuple[PacketSocket, ...]) -> None:
    """The sockets' frames lost before the agent read them, into `counters`."""
    counters.kernel_drops = sum(sock.read_kernel_drops() for sock in sockets)
    counters.truncated = sum(sock.ring.truncated for sock in sockets if sock.ring)


def clock_stats(started: float, last: float | None) -> dict[str, float | None]:
    """The start and the last frame's end on this machine's monotonic clock (seconds), so
    that another process (the benchmark) can place them against its own times."""
    return {"started": started, "last_frame": None if last is None else started + last}


def drain(sock: socket.socket) -> None:
    """Read a non-blocking socket until it has nothing more."""
    while True:
        try:
            if not sock.recv(4096):
                return
        except BlockingIOError:
            return


def to_stderr(line: str) -> None:
    """The live agent's log line."""
    print(f"ipsec-offload agent: {line}", file=sys.stderr, flush=True)


def interface_mac(ifname: str) -> bytes:
    """An interface's MAC address (sysfs)."""
    try:
        text = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
    except OSError:
        raise UsageError(f"no interface named {ifname!r} here (ip link shows them)") from None
    return bytes.fromhex(text.replace(":", ""))
