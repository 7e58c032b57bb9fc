"""The agent alone as a frame-level golden model, driven by pcap files (spec section 8).

Frames from both inputs are processed in timestamp order (integer nanoseconds), host side
first on a tie (the order `sim/clock.py` documents, which the testbed shares), by an
agent that starts with an empty SAD; every frame it emits is written with the timestamp of the
frame that caused it, toward the host or the wire.

The agent's own timers (spec 9: the resends of its unanswered EVENT frames) run in the same
simulated time: the agent starts (`IpsecAgent.start`, AGENT_STARTED where it has a
destination) at the time of the first input record, before it; before each record at time t
the timers due at or before t fire, their frames stamped with the timer's time; after the last
record the rest fire (every event is answered or given up within 60 ms). The testbed starts its
agent when the first frame reaches it and fires its timers before the frames of the same time,
so that fed a run's inputs (and its agent's configuration, BOOT_ID included) the golden model
reproduces the run's outputs byte for byte.

The configuration is the command's options (`agent_options`: every setting of `AgentConfig`
that changes the agent's output), and a run writes the command that replays it into
report.json (`golden`). The keys file (esp_sa) lists each SA an ADD_SA added (the first of each
SPI, destination and source), learnt as the agent adds it, so that the cost is linear in the
records however large the SAD grows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ipsec_offload.agent.agent import AgentConfig, AgentOutput, IpsecAgent
from ipsec_offload.agent.sad import SecurityAssociation
from ipsec_offload.sim.clock import deadline_ns, seconds
from ipsec_offload.sim.espsa import EspSaEntry, write_esp_sa
from ipsec_offload.sim.outputs import check_outputs
from ipsec_offload.sim.pcap import PcapRecord, read_pcap, write_pcap

HOST, WIRE = 0, 1


@dataclass(frozen=True, slots=True)
class GoldenResult:
    """What the golden model emitted, in order, toward each side, and every SA it held."""

    host_out: list[PcapRecord]
    wire_out: list[PcapRecord]
    sas: list[EspSaEntry]


PROGRESS_EVERY = 4096
"""Input records between two calls of `replay`'s progress callback."""


def replay(
    agent: IpsecAgent,
    host_in: Iterable[PcapRecord],
    wire_in: Iterable[PcapRecord],
    progress: Callable[[float], None] | None = None,
) -> GoldenResult:
    """Feed both inputs to `agent` in timestamp order (host first on a tie); `progress` gets
    the fraction of the input records done, every `PROGRESS_EVERY` records and at the end.

    Linear in the records: the keys file learns each SA as the agent adds it
    (`ConfigChannel.on_add`), never by walking the SAD."""
    events = [(r.time_ns, HOST, i, r) for i, r in enumerate(host_in)]
    events += [(r.time_ns, WIRE, i, r) for i, r in enumerate(wire_in)]
    events.sort(key=lambda e: e[:3])
    result = GoldenResult([], [], [])
    held: dict[tuple[int, bytes, bytes | None], EspSaEntry] = {}
    total = len(events)

    channel = agent.channel
    previous = channel.on_add

    def learn(sa: SecurityAssociation) -> None:
        held.setdefault((sa.spi, sa.dst, sa.src), _entry(sa))
        if previous is not None:
            previous(sa)

    def emit(time_ns: int, out: AgentOutput) -> None:
        result.host_out.extend(PcapRecord(time_ns, f) for f in out.to_host)
        result.wire_out.extend(PcapRecord(time_ns, f) for f in out.to_wire)

    def fire_timers(until_ns: int | None) -> None:
        while (due := agent.next_timer()) is not None:
            due_ns = deadline_ns(due)
            if until_ns is not None and due_ns > until_ns:
                return
            emit(due_ns, agent.on_timer(seconds(due_ns)))

    channel.on_add = learn
    try:
        if events:
            emit(events[0][0], agent.start(seconds(events[0][0])))
        for done, (time_ns, side, _i, record) in enumerate(events):
            if progress is not None and not done % PROGRESS_EVERY:
                progress(done / total)
            fire_timers(time_ns)
            time = seconds(time_ns)
            if side == WIRE:
                out = agent.from_wire([record.frame], time)
            else:
                out = agent.from_host([record.frame], time)
            emit(time_ns, out)
        fire_timers(None)
    finally:
        channel.on_add = previous
    if progress is not None:
        progress(1.0)
    result.sas.extend(held.values())
    return result


def _entry(sa: SecurityAssociation) -> EspSaEntry:
    return EspSaEntry(sa.src, sa.dst, sa.spi, sa.key_material, int(sa.algorithm), sa.esn)


def run_golden(
    *,
    host_in: Path,
    wire_in: Path | None,
    host_out: Path,
    wire_out: Path,
    esp_sa: Path | None,
    config: AgentConfig,
    progress: Callable[[float], None] | None = None,
) -> str:
    """The `ipsec-offload agent` command: returns a one-paragraph summary. The outputs are
    checked before anything is read (`check_outputs`) and each is written whole."""
    check_outputs(
        {"--host-in": host_in, "--wire-in": wire_in},
        {"--host-out": host_out, "--wire-out": wire_out, "--esp-sa": esp_sa},
    )
    agent = IpsecAgent(config)
    host_records = read_pcap(host_in)
    wire_records = read_pcap(wire_in) if wire_in is not None else []
    result = replay(agent, host_records, wire_records, progress)
    write_pcap(host_out, result.host_out)
    write_pcap(wire_out, result.wire_out)
    if esp_sa is not None:
        write_esp_sa(esp_sa, result.sas)
    counters = agent.counters.snapshot()
    drops = ", ".join(f"{k}={v}" for k, v in counters["drops"].items() if v) or "none"
    return (
        f"{len(host_records)} host and {len(wire_records)} wire frames in; "
        f"{len(result.host_out)} to host and {len(result.wire_out)} to wire out; "
        f"SAD holds {len(agent.sad)} SAs; drops: {drops}"
    )
