"""The live agent over N worker processes: `agent --live --workers N` (docs/live.md,
"Workers").

Theory of operation: the supervisor (the process started) opens every packet socket before it
forks anything: on each side a fanout group of N + 1 sockets, its own first and then each
worker's in worker order, so that the group's member i + 1 is worker i (`fanout`). It forks
the N workers; each is a `LiveAgent` on its two fanout members with an `IpsecAgent` of its
own (the same settings; EVENT txn_ids i + 1, i + 1 + N, ...: `TxnSpace`), and a channel to the
supervisor (a Unix socket pair, one message per frame). The supervisor keeps every socket
open until the end, so that the groups' members never move.

- Data frames: the kernel hands each to the owner of its SA (SPI mod N) by the group's
  program. What the program cannot place comes to the supervisor's socket, which applies
  the same rule in Python (`fanout.owner`) and forwards the frame over the owner's channel;
  the owner takes it as it takes its own.
- Config frames come to the supervisor's host-side socket too. It gives each to every worker,
  in the order they came, and every worker applies it to its agent, so that the SADs stay
  the same (the same SA indexes) and every worker has every SA, owned or not. Each worker
  sends back what its agent answered; once all have, the supervisor sends one reply toward
  the host: worker 0's, except that a LIST_SAS reply takes each SA's SEQ from its owner's
  and a GET_SA_STATS reply sums the workers' counters (a worker counts nothing on an SA it
  does not own). So a reply also says that every worker has applied the request.
- Only worker 0 sends AGENT_STARTED; the events of an SA come from its owner, and the PF's
  answers reach every worker as config frames, each leaving alone those of the others'
  txn_ids.
- SIGINT and SIGTERM stop the supervisor, which stops the workers (SIGTERM) and collects
  their final statistics, answering the requests all of them applied; SIGUSR1 goes to every
  worker. The final statistics sum the workers' and the supervisor's links (it counts the
  config frames and their replies) and the agents' counters, those of the config channel
  (counted by every worker) from worker 0 alone; each worker's are under "workers".

A worker that dies ends the run with an error. Workers exit with the supervisor
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import struct
import time
import traceback
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, NoReturn

from ipsec_offload.agent.agent import AgentConfig, AgentOutput
from ipsec_offload.agent.events import TxnSpace
from ipsec_offload.errors import LiveError, ParseError, UsageError
from ipsec_offload.live.agent import (
    LINKS,
    RING_FRAMES,
    LiveAgent,
    LiveCounters,
    check_cpus,
    check_settings,
    clock_stats,
    count_losses,
    drain,
    signals,
    to_stderr,
)
from ipsec_offload.live.fanout import (
    MAX_WORKERS,
    Side,
    demux_program,
    is_config,
    join_group,
    owner,
)
from ipsec_offload.live.packet_socket import MAX_FRAME, PacketSocket
from ipsec_offload.wire.config import (
    ConfigMessage,
    ConfigStatus,
    ListSasReply,
    Opcode,
    SaStats,
    Tlv,
    build_config,
    decode_list_sas_reply,
    decode_sa_stats,
    encode_list_sas_reply,
    encode_sa_stats,
    parse_config,
)
from ipsec_offload.wire.ethernet import ethernet_fields

_KINDS = {b"h": "host", b"w": "wire", b"c": "config"}
"""What the supervisor sends a worker: a frame of the host side or the wire side that the
worker owns, or a config frame."""
_MARKS = {kind: mark for mark, kind in _KINDS.items()}
_RESULT, _FINAL = b"r", b"s"
"""What a worker sends the supervisor: its agent's answer to a config frame; its final
statistics."""
_MESSAGE_MAX = MAX_FRAME + 1
_CHANNEL_BURST = 256
_LENGTH = struct.Struct("=I")
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
_STOP_WAIT = 30.0
"""Seconds the workers have to stop and report."""
_PR_SET_PDEATHSIG = 1

CONFIG_COUNTERS = frozenset(
    {
        ("paths", "CONFIG_REQUEST"),
        ("paths", "CONFIG_RETRANSMIT"),
        ("drops", "CONFIG_MALFORMED"),
        ("drops", "CONFIG_NOT_REQUEST"),
        ("drops", "CONFIG_NOT_FROM_PF"),
    }
)
"""The agent counters of the config channel: every worker counts every config frame, so the
totals take worker 0's."""


class LiveWorkers:
    """The supervisor of `workers` worker processes; `run` returns when stopped."""

    def __init__(
        self,
        config: AgentConfig,
        host_if: str,
        wire_if: str,
        *,
        workers: int,
        stats_interval: float = 5.0,
        burst: int = 64,
        report: Callable[[str], None] | None = None,
        ring_frames: int = RING_FRAMES,
        cpus: tuple[int, ...] = (),
    ) -> None:
        """`ring_frames`: each fanout member's receive ring (`LiveAgent`). `cpus`: worker i
        runs on CPU `cpus[i]` alone (`check_cpus`); none: where the scheduler puts it."""
        check_settings(host_if, wire_if, stats_interval)
        if not 2 <= workers <= MAX_WORKERS:
            raise UsageError(
                f"{workers} workers: give 2 .. {MAX_WORKERS} (one worker is the agent alone)"
            )
        self.config = config
        self.host_if = host_if
        self.wire_if = wire_if
        self.workers = workers
        self.cpus = check_cpus(cpus, workers)
        self.ring_frames = ring_frames
        self.stats_interval = stats_interval
        self.burst = burst
        self.report = report or to_stderr
        self.counters = LiveCounters()
        """The supervisor's own links: the config frames and the replies."""
        self.forwarded = [0] * workers
        """Frames the supervisor placed and forwarded, by worker."""
        self._pids: list[int] = []
        self._pending: deque[bytes] = deque()
        self._answers: list[deque[list[bytes]]] = [deque() for _ in range(workers)]
        self._finals: list[dict[str, Any] | None] = [None] * workers
        self._ended = [False] * workers
        self._stopping = False
        self._dump_asked = False
        self._started = 0.0

    def stop(self) -> None:
        """Stop after the burst in hand (safe from a signal handler)."""
        self._stopping = True

    def ask_dump(self) -> None:
        """Report the statistics after the burst in hand (safe from a signal handler)."""
        self._dump_asked = True

    def run(self, duration: float | None = None) -> dict[str, Any]:
        """Start the workers, place and forward frames and config until stopped (or for
        `duration` seconds), stop the workers; returns the final statistics."""
        started = self._started = time.monotonic()
        with ExitStack() as stack:
            host = self._group(self.host_if, "host", stack)
            wire = self._group(self.wire_if, "wire", stack)
            channels = [self._channel(stack) for _ in range(self.workers)]
            ends = [mine for mine, _ in channels]
            wake_read, wake_write = socket.socketpair()
            stack.callback(wake_read.close)
            stack.callback(wake_write.close)
            wake_read.setblocking(False)
            wake_write.setblocking(False)
            # the workers are forked with the signals blocked: each lets them in once its
            # handlers are in place, as the supervisor does (`signals`)
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            stack.callback(signal.pthread_sigmask, signal.SIG_SETMASK, previous)
            try:
                self._fork(host, wire, channels, started)
            finally:
                for _, theirs in channels:
                    theirs.close()
            with signals(self, wake_write):
                try:
                    self.report(
                        f"listening on {self.host_if} and {self.wire_if} with"
                        f" {self.workers} workers"
                    )
                    self._loop(host[0], wire[0], ends, started, duration, wake_read)
                finally:
                    count_losses(self.counters, (host[0], wire[0]))
                    self._finish(host[0], ends)
        self.counters.seconds = time.monotonic() - started
        return self.stats()

    # -- set-up ---------------------------------------------------------------------------

    def _group(self, ifname: str, side: Side, stack: ExitStack) -> list[PacketSocket]:
        """The side's fanout group: the supervisor's socket, then each worker's."""
        sockets = []
        for _ in range(self.workers + 1):
            sock = PacketSocket(ifname, ring_frames=self.ring_frames)
            stack.callback(sock.close)
            sockets.append(sock)
        config = self.config
        program = demux_program(side, self.workers, config.meta_ethertype, config.config_ethertype)
        join_group(sockets, program)
        for sock in sockets:
            sock.drain()  # what came before the group: the agent was not there yet
        return sockets

    @staticmethod
    def _channel(stack: ExitStack) -> tuple[socket.socket, socket.socket]:
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in pair:
            stack.callback(end.close)
        return pair

    def _fork(
        self,
        host: list[PacketSocket],
        wire: list[PacketSocket],
        channels: list[tuple[socket.socket, socket.socket]],
        started: float,
    ) -> None:
        supervisor = os.getpid()
        try:
            for index in range(self.workers):
                pid = os.fork()
                if pid == 0:
                    self._worker(index, host, wire, channels, started, supervisor)
                self._pids.append(pid)
        except BaseException:
            for pid in self._pids:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise

    def _worker(
        self,
        index: int,
        host: list[PacketSocket],
        wire: list[PacketSocket],
        channels: list[tuple[socket.socket, socket.socket]],
        started: float,
        supervisor: int,
    ) -> NoReturn:
        """A worker's process, after the fork: its sockets and its channel end kept, the
        others closed (the supervisor holds them), its `LiveAgent` run until stopped."""
        status = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != supervisor:
                os._exit(status)
            if self.cpus:
                os.sched_setaffinity(0, {self.cpus[index]})
            mine = (host[index + 1], wire[index + 1])
            for sock in (*host, *wire):
                if sock not in mine:
                    sock.close()
            for number, (theirs, its) in enumerate(channels):
                theirs.close()
                if number != index:
                    its.close()
            channel = channels[index][1]
            worker = _Worker(
                self.config, self.host_if, self.wire_if, index=index, workers=self.workers,
                sockets=mine, channel=channel, stats_interval=self.stats_interval,
                burst=self.burst, report=lambda line: self.report(f"worker {index}: {line}"),
            )  # fmt: skip
            stats = worker.run(started=started)
            span = (worker.counters.first_frame, worker.counters.last_frame)
            channel.send(_FINAL + json.dumps({"stats": stats, "span": span}).encode())
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)

    # -- the loop -------------------------------------------------------------------------

    def _loop(
        self,
        host: PacketSocket,
        wire: PacketSocket,
        ends: list[socket.socket],
        started: float,
        duration: float | None,
        wake: socket.socket,
    ) -> None:
        watched: list[PacketSocket | socket.socket] = [host, wire, *ends, wake]
        next_stats = self.stats_interval
        while not self._stopping:
            now = time.monotonic() - started
            if duration is not None and now >= duration:
                break
            deadline = next_stats if duration is None else min(next_stats, duration)
            ready, _, _ = select.select(watched, [], [], max(0.0, deadline - now))
            if host in ready:
                self._place("host", host.recv_burst(self.burst), ends)
            if wire in ready:
                self._place("wire", wire.recv_burst(self.burst), ends)
            for index, end in enumerate(ends):
                if end in ready:
                    self._collect(index, end, host)
            if wake in ready:
                drain(wake)
            now = time.monotonic() - started
            if now >= next_stats:
                self.report(self.stats_line())
                next_stats = now + self.stats_interval
            if self._dump_asked:
                self._dump_asked = False
                self.report(self.stats_line())
                for pid in self._pids:
                    os.kill(pid, signal.SIGUSR1)

    def _place(self, side: Side, frames: list[bytes], ends: list[socket.socket]) -> None:
        """Config frames to every worker, in order; any other frame to its owner."""
        config = self.config
        for frame in frames:
            if side == "host" and is_config(frame, config.mac, config.config_ethertype):
                self._pending.append(frame)
                for index, end in enumerate(ends):
                    _send(end, index, _MARKS["config"] + frame)
            else:
                index = owner(frame, side, self.workers, config.meta_ethertype)
                _send(ends[index], index, _MARKS[side] + frame)
                self.forwarded[index] += 1

    def _collect(self, index: int, end: socket.socket, host: PacketSocket) -> None:
        """What worker `index` sent: its answers (the requests all workers answered get their
        reply), its final statistics, or the end of its channel."""
        for _ in range(_CHANNEL_BURST):
            try:
                message = end.recv(_MESSAGE_MAX, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not message:
                self._ended[index] = True
                break
            if message[:1] == _RESULT:
                self._answers[index].append(_unpack(message[1:]))
            else:
                self._finals[index] = json.loads(message[1:])
        while self._pending and all(self._answers):
            self._pending.popleft()
            reply = merge_replies([answers.popleft() for answers in self._answers], self.config)
            self.counters.frames["nic-to-agent"] += 1
            self.counters.frames["agent-to-nic"] += len(reply)
            host.send(reply)
            self.counters.send_errors = host.send_errors
        if self._ended[index] and not self._stopping:
            raise LiveError(f"worker {index} (pid {self._pids[index]}) ended while the agent ran")

    def _finish(self, host: PacketSocket, ends: list[socket.socket]) -> None:
        """Stop the workers, collect their final statistics and their last answers, and
        reap them; LiveError if one did not end well."""
        self._stopping = True
        for pid in self._pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_WAIT
        while (left := deadline - time.monotonic()) > 0:
            running = [end for index, end in enumerate(ends) if not self._ended[index]]
            if not running:
                break
            ready, _, _ = select.select(running, [], [], left)
            for index, end in enumerate(ends):
                if end in ready:
                    self._collect(index, end, host)
        failed = []
        for index, pid in enumerate(self._pids):
            if not self._ended[index]:
                os.kill(pid, signal.SIGKILL)
            status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            if status < 0:
                failed.append(f"worker {index} (pid {pid}) was killed by signal {-status}")
            elif status != 0 or self._finals[index] is None:
                failed.append(
                    f"worker {index} (pid {pid}) ended with status {status} (its error is on"
                    " stderr above)"
                )
        if failed:
            raise LiveError("; ".join(failed))

    # -- statistics -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The final statistics: as one agent's (`LiveAgent.stats`), summed over the workers
        and the supervisor, with each worker's under "workers" and the supervisor's own."""
        finals = [final for final in self._finals if final is not None]
        workers = [final["stats"] for final in finals]
        spans = [final["span"] for final in finals if final["span"][0] is not None]
        mine = self.counters.frames
        return {
            "links": {link: mine[link] + sum(w["links"][link] for w in workers) for link in LINKS},
            "send_errors": self.counters.send_errors + sum(w["send_errors"] for w in workers),
            "kernel_drops": self.counters.kernel_drops + sum(w["kernel_drops"] for w in workers),
            "truncated": self.counters.truncated + sum(w["truncated"] for w in workers),
            "seconds": round(self.counters.seconds, 3),
            "busy_seconds": round(max(s[1] for s in spans) - min(s[0] for s in spans), 6)
            if spans
            else None,
            "clock": clock_stats(self._started, max(s[1] for s in spans) if spans else None),
            "sad_used": workers[0]["sad_used"],
            "agent": _agent_totals([w["agent"] for w in workers]),
            "workers": workers,
            "supervisor": {
                "links": dict(mine),
                "forwarded": list(self.forwarded),
                "send_errors": self.counters.send_errors,
                "kernel_drops": self.counters.kernel_drops,
            },
        }

    def stats_line(self) -> str:
        """One line for the log: config requests and replies, frames forwarded."""
        f = self.counters.frames
        return (
            f"config requests {f['nic-to-agent']}, replies {f['agent-to-nic']}, forwarded to"
            f" the workers {self.forwarded}"
        )


class _Worker(LiveAgent):
    """One worker: a `LiveAgent` on its fanout members that also takes, from its channel, the
    frames the supervisor forwards to it and every config frame, whose answers it sends back
    instead of toward the host."""

    def __init__(
        self,
        config: AgentConfig,
        host_if: str,
        wire_if: str,
        *,
        index: int,
        workers: int,
        sockets: tuple[PacketSocket, PacketSocket],
        channel: socket.socket,
        stats_interval: float,
        burst: int,
        report: Callable[[str], None],
    ) -> None:
        super().__init__(
            config, host_if, wire_if, stats_interval=stats_interval, burst=burst,
            report=report, sockets=sockets, txns=TxnSpace(index + 1, workers),
        )  # fmt: skip
        self.index = index
        self.channel = channel

    def _start(self, now: float) -> AgentOutput:
        return super()._start(now) if self.index == 0 else AgentOutput()

    def _inputs(self) -> list[PacketSocket | socket.socket]:
        return [self.channel]

    def _read(self, ready: list[PacketSocket | socket.socket]) -> list[tuple[str, list[bytes]]]:
        """The channel's messages first (in their order), then the fanout's bursts."""
        bursts: list[tuple[str, list[bytes]]] = []
        if self.channel in ready:
            for _ in range(_CHANNEL_BURST):
                try:
                    message = self.channel.recv(_MESSAGE_MAX, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not message:  # the supervisor is gone
                    self.stop()
                    break
                kind = _KINDS[message[:1]]
                if bursts and bursts[-1][0] == kind:
                    bursts[-1][1].append(message[1:])
                else:
                    bursts.append((kind, [message[1:]]))
        return bursts + super()._read(ready)

    def _take(self, kind: str, frames: list[bytes], now: float, now_ns: int) -> None:
        if kind != "config":
            super()._take(kind, frames, now, now_ns)
            return
        for frame in frames:
            self.channel.send(_RESULT + _pack(self.agent.from_host([frame], now).to_host))


def merge_replies(answers: list[list[bytes]], config: AgentConfig) -> list[bytes]:
    """The reply toward the host from every worker's answer to one config frame (worker i's
    is answers[i]): worker 0's, a LIST_SAS reply with each SA's SEQ from its owner's, a
    GET_SA_STATS reply with the workers' counters summed."""
    first = answers[0]
    messages, header_lens = [], []
    for answer in answers:
        if len(answer) != 1:
            return first
        try:
            header_lens.append(ethernet_fields(answer[0], config.meta_ethertype)[5])
            messages.append(parse_config(memoryview(answer[0])[header_lens[-1] :]))
        except ParseError:
            return first
    message = messages[0]
    if message.status != ConfigStatus.OK or len({m.opcode for m in messages}) != 1:
        return first
    merge = _MERGES.get(message.opcode)
    if merge is None:
        return first
    try:
        tlvs = merge(messages)
    except ParseError:
        return first
    return [first[0][: header_lens[0]] + build_config(replace(message, tlvs=tlvs))]


def _merge_list(messages: list[ConfigMessage]) -> tuple[Tlv, ...]:
    """Each entry as worker 0 lists it, with the SEQ of the SA's owner (SPI mod N)."""
    replies = [decode_list_sas_reply(m.tlvs) for m in messages]
    listed = [{entry.sa_index: entry for entry in reply.entries} for reply in replies]
    entries = tuple(
        replace(entry, seq=listed[entry.spi % len(replies)].get(entry.sa_index, entry).seq)
        for entry in replies[0].entries
    )
    return encode_list_sas_reply(ListSasReply(entries, replies[0].next_cursor))


def _merge_stats(messages: list[ConfigMessage]) -> tuple[Tlv, ...]:
    """The counters summed: only the SA's owner counts any."""
    stats = [decode_sa_stats(m.tlvs) for m in messages]
    errors = tuple(sum(column) for column in zip(*(s.errors for s in stats), strict=True))
    packets, octets = sum(s.packets for s in stats), sum(s.bytes for s in stats)
    return encode_sa_stats(SaStats(packets, octets, errors))


_MERGES: dict[int, Callable[[list[ConfigMessage]], tuple[Tlv, ...]]] = {
    Opcode.LIST_SAS | Opcode.REPLY: _merge_list,
    Opcode.GET_SA_STATS | Opcode.REPLY: _merge_stats,
}


def _agent_totals(snapshots: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """The workers' agent counters summed, those of the config channel worker 0's."""
    return {
        group: {
            name: count
            if (group, name) in CONFIG_COUNTERS
            else sum(snapshot[group][name] for snapshot in snapshots)
            for name, count in counts.items()
        }
        for group, counts in snapshots[0].items()
    }


def _send(end: socket.socket, index: int, message: bytes) -> None:
    try:
        end.send(message)
    except OSError as exc:
        raise LiveError(f"worker {index} does not take frames any more: {exc}") from None


def _pack(frames: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(frame)) + frame for frame in frames)


def _unpack(data: bytes) -> list[bytes]:
    frames, at = [], 0
    while at < len(data):
        (length,) = _LENGTH.unpack_from(data, at)
        frames.append(data[at + _LENGTH.size : at + _LENGTH.size + length])
        at += _LENGTH.size + length
    return frames


__all__ = ["CONFIG_COUNTERS", "LiveWorkers", "merge_replies"]
