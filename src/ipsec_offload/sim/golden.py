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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ipsec_offload.agent.agent import AgentConfig, AgentOutput, IpsecAgent
from ipsec_offload.agent.counters import Path as AgentPath
from ipsec_offload.agent.sad import SecurityAssociation
from ipsec_offload.errors import UsageError
from ipsec_offload.sim.clock import deadline_ns, seconds
from ipsec_offload.sim.espsa import EspSaEntry, write_esp_sa
from ipsec_offload.sim.pcap import PcapRecord, read_pcap, write_pcap
from ipsec_offload.wire.addr import mac_from_str

HOST, WIRE = 0, 1


@dataclass(frozen=True, slots=True)
class GoldenResult:
    """What the golden model emitted, in order, toward each side, and every SA it held."""

    host_out: list[PcapRecord]
    wire_out: list[PcapRecord]
    sas: list[EspSaEntry]


def replay(
    agent: IpsecAgent, host_in: Iterable[PcapRecord], wire_in: Iterable[PcapRecord]
) -> GoldenResult:
    """Feed both inputs to `agent` in timestamp order (host first on a tie)."""
    events = [(r.time_ns, HOST, i, r) for i, r in enumerate(host_in)]
    events += [(r.time_ns, WIRE, i, r) for i, r in enumerate(wire_in)]
    events.sort(key=lambda e: e[:3])
    result = GoldenResult([], [], [])
    held: dict[tuple[int, bytes, bytes | None], EspSaEntry] = {}

    def emit(time_ns: int, out: AgentOutput) -> None:
        result.host_out.extend(PcapRecord(time_ns, f) for f in out.to_host)
        result.wire_out.extend(PcapRecord(time_ns, f) for f in out.to_wire)

    def fire_timers(until_ns: int | None) -> None:
        while (due := agent.next_timer()) is not None:
            due_ns = deadline_ns(due)
            if until_ns is not None and due_ns > until_ns:
                return
            emit(due_ns, agent.on_timer(seconds(due_ns)))

    if events:
        emit(events[0][0], agent.start(seconds(events[0][0])))
    for time_ns, side, _i, record in events:
        fire_timers(time_ns)
        time = seconds(time_ns)
        if side == WIRE:
            out = agent.from_wire([record.frame], time)
        else:
            requests = agent.counters.paths[AgentPath.CONFIG_REQUEST]
            out = agent.from_host([record.frame], time)
            if agent.counters.paths[AgentPath.CONFIG_REQUEST] != requests:
                for sa in agent.sad:
                    held.setdefault((sa.spi, sa.dst, sa.src), _entry(sa))
        emit(time_ns, out)
    fire_timers(None)
    result.sas.extend(held.values())
    return result


def _entry(sa: SecurityAssociation) -> EspSaEntry:
    return EspSaEntry(sa.src, sa.dst, sa.spi, sa.key_material, int(sa.algorithm), sa.esn)


def parse_keks(specs: Iterable[str]) -> dict[int, bytes]:
    """Key-encryption keys from "ID:HEX" texts (16, 24 or 32 bytes each)."""
    keks: dict[int, bytes] = {}
    for spec in specs:
        ident, sep, hexkey = spec.partition(":")
        try:
            kek_id = int(ident, 0)
            key = bytes.fromhex(hexkey)
        except ValueError:
            kek_id, key = -1, b""
        if not sep or not 0 <= kek_id <= 0xFFFFFFFF or len(key) not in (16, 24, 32):
            raise UsageError(
                f"--kek {spec!r}: write ID:HEX with a 32-bit ID and a 16, 24 or 32-byte key"
            )
        keks[kek_id] = key
    return keks


def _mac_option(option: str, text: str) -> bytes:
    try:
        return mac_from_str(text)
    except (UsageError, ValueError) as exc:
        raise UsageError(f"{option} {text!r}: {exc}") from None


def run_golden(
    *,
    host_in: Path,
    wire_in: Path | None,
    host_out: Path,
    wire_out: Path,
    esp_sa: Path | None,
    agent_mac: str,
    keks: Iterable[str],
    sad_size: int,
    pf_mac: str | None = None,
    boot_id: int = 1,
) -> str:
    """The `ipsec-offload agent` command: returns a one-paragraph summary."""
    mac = _mac_option("--agent-mac", agent_mac)
    pf = None if pf_mac is None else _mac_option("--pf-mac", pf_mac)
    if not 0 <= boot_id < 1 << 64:
        raise UsageError(f"--boot-id {boot_id}: give 0 .. 2^64-1 (BOOT_ID is a u64)")
    config = AgentConfig(
        mac=mac, pf_mac=pf, keks=parse_keks(keks), sad_size=sad_size, boot_id=boot_id
    )
    agent = IpsecAgent(config)
    host_records = read_pcap(host_in)
    wire_records = read_pcap(wire_in) if wire_in is not None else []
    result = replay(agent, host_records, wire_records)
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
