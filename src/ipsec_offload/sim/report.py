"""What a scenario run shows: the deck's five challenges with numbers, flows, SAs, VSIs,
agent counters and a timeline of the control plane; as data (report.json) and as text."""

from __future__ import annotations

import errno
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipsec_offload.agent.counters import DropReason
from ipsec_offload.agent.counters import Path as AgentPath
from ipsec_offload.agent.sad import SecurityAssociation
from ipsec_offload.driver.control import Errno
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.host.stack import StateExpire
from ipsec_offload.host.xfrm import Offload, XfrmState
from ipsec_offload.sim.agent_options import agent_argv
from ipsec_offload.sim.espsa import write_esp_sa
from ipsec_offload.sim.iproute import xfrm_state_text
from ipsec_offload.sim.linux.peer import LinuxPeer
from ipsec_offload.sim.linux.xfrm_words import guest_sa_fields
from ipsec_offload.sim.observer import ObserverSummary, WireObserver
from ipsec_offload.sim.outputs import write_text
from ipsec_offload.sim.pcap import Interface, PcapRecord, write_pcap, write_pcapng
from ipsec_offload.sim.runner import FORGED_PAYLOAD, ScenarioRun, TimelineEntry, results_of
from ipsec_offload.sim.scoreboard import describer
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.addr import ip_to_str, mac_to_str
from ipsec_offload.wire.config import (
    ConfigStatus,
    Direction,
    Opcode,
    decode_count,
    parse_config,
    parse_config_header,
)
from ipsec_offload.wire.ethernet import EtherType, parse_ethernet
from ipsec_offload.wire.mailbox import MbxOpcode, parse_mailbox
from ipsec_offload.wire.metadata import RxStatus
from ipsec_offload.wire.packet import find_esp

HELD, FAILED, ABSENT = "held", "FAILED", "not exercised"
_INBOUND, _OUTBOUND = 1, 2
"""pcapng's direction flags, as seen from the agent."""
LINK_FILES = {
    "host-link": ("nic-to-agent", "agent-to-nic"),
    "wire-link": ("wire-to-agent", "agent-to-wire"),
}
"""The pcaps of whole links: (first direction, second direction)."""


def build_report(run: ScenarioRun) -> dict[str, Any]:
    """Everything the run shows, as plain data."""
    bed = run.bed
    flows = results_of(run)
    return {
        "scenario": run.source,
        "description": run.scenario.description.strip(),
        "naive": sorted(run.naive),
        "simulated_seconds": round(bed.now, 9),
        "challenges": challenges(run, flows),
        "invariants": invariants(run, flows),
        "flows": flows,
        "sas": _sas(run),
        "agent": bed.agent.dump(),
        "nic": bed.nic.dump(),
        "pf": bed.pf.dump() if bed.pf is not None else {},
        "hosts": {name: ep.stack.dump() for name, ep in {**bed.retired, **bed.endpoints}.items()},
        "link_drops": dict(bed.link_drops),
        "linux_peers": linux_peers(bed),
        "golden": golden(run),
        "timeline": [
            {"time": round(e.time, 9), "actor": e.actor, "what": e.what} for e in timeline(run)
        ],
    }


GOLDEN_OUTPUTS = {
    "agent-to-nic": "golden-agent-to-nic.pcap",
    "agent-to-wire": "golden-agent-to-wire.pcap",
}
"""Where the replaying command writes what reproduces each output capture of the agent."""


def golden(run: ScenarioRun) -> dict[str, Any]:
    """The command that replays the run's agent alone on its inputs (the golden model):
    `argv` and `command` (paths relative to the output folder), made from the agent's
    configuration as the run started it by `agent_argv`, the table the command's options are
    read with; which output of the run each of the command's outputs reproduces; and, when a
    scenario event restarted the agent, `until`: how many frames of each the command
    reproduces, those before the restart (the golden agent never loses its SAD)."""
    argv = [
        "ipsec-offload",
        "agent",
        "--host-in",
        "nic-to-agent.pcap",
        "--wire-in",
        "wire-to-agent.pcap",
        "--host-out",
        GOLDEN_OUTPUTS["agent-to-nic"],
        "--wire-out",
        GOLDEN_OUTPUTS["agent-to-wire"],
        *agent_argv(run.agent_config),
    ]
    until = None
    if run.restarts:
        first = run.restarts[0]
        until = {
            "event": first.where,
            "time": round(first.time, 9),
            "frames": {f"{link}.pcap": count for link, count in first.frames.items()},
            "why": f"{first.where} restarts the agent at {first.time * 1e3:.3f} ms: it loses"
            " its SAD and starts again with a new BOOT_ID; the golden agent never restarts",
        }
    return {
        "argv": argv,
        "command": shlex.join(argv),
        "reproduces": {out: f"{link}.pcap" for link, out in GOLDEN_OUTPUTS.items()},
        "until": until,
    }


# -- the deck's challenges ------------------------------------------------------------------


def challenges(run: ScenarioRun, flows: dict[str, Any]) -> list[dict[str, str]]:
    return [
        _false_match(run, flows),
        _abandoned(run),
        _malicious(run),
        _east_west(run, flows),
        _tso(run, flows),
    ]


def _challenge(name: str, outcome: str, observed: str) -> dict[str, str]:
    return {"challenge": name, "outcome": outcome, "observed": observed}


def _behind_nic(run: ScenarioRun) -> set[str]:
    return {run.scenario.pf.name} | {vm.name for vm in run.scenario.vm}


def _flow_names(run: ScenarioRun, flows: dict[str, Any], to: set[str]) -> list[str]:
    return [name for name, record in zip(flows, run.flows, strict=True) if record.spec.to in to]


def _summed(flows: dict[str, Any], names: list[str]) -> tuple[int, int, int]:
    sent = sum(flows[n]["sent"] for n in names)
    got = sum(flows[n]["delivered"] for n in names)
    by_agent = sum(flows[n]["decrypted_by_agent"] for n in names)
    return sent, got, by_agent


def _false_match(run: ScenarioRun, flows: dict[str, Any]) -> dict[str, str]:
    name = "False match across SAD domains"
    inside = _behind_nic(run)
    groups: dict[tuple[int, bytes], set[str]] = {}
    for spec in run.scenario.sa:
        bundle = run.bundles.get(spec.name)
        if bundle is None:
            continue
        for host, state in ((spec.between[0], bundle.a_in), (spec.between[1], bundle.b_in)):
            if host in inside:
                groups.setdefault((state.spi, state.dst), set()).add(host)
    shared = {key: hosts for key, hosts in groups.items() if len(hosts) > 1}
    if not shared:
        return _challenge(name, ABSENT, "no two domains share an inbound SPI and address")
    hosts = set().union(*shared.values())
    names = _flow_names(run, flows, hosts)
    sent, got, _ = _summed(flows, names)
    rx = run.bed.agent.counters.rx_status
    (spi, dst), first = next(iter(shared.items()))
    observed = (
        f"{' and '.join(sorted(first))} share SPI 0x{spi:x} and {ip_to_str(dst)} in different "
        f"domains; into them: {got} of {sent} delivered; agent Rx: NO_SA {rx[RxStatus.NO_SA]}, "
        f"AUTH_FAILED {rx[RxStatus.AUTH_FAILED]}, REPLAY {rx[RxStatus.REPLAY]}"
    )
    return _challenge(name, HELD if got == sent else FAILED, observed)


@dataclass(frozen=True, slots=True)
class SadDiff:
    """The agent's SAD against the states the live hosts hold as offloaded (spec 9, 4)."""

    held: int
    """States the hosts hold as offloaded."""
    orphans: list[SecurityAssociation]
    """SAs in the agent that no live host holds as offloaded in their domain."""
    missing: list[tuple[str, XfrmState]]
    """(host, state) held as offloaded that the agent does not have."""


def sad_diff(bed: Testbed) -> SadDiff:
    """Match every agent SA to a state held as offloaded by (direction, SPI, destination)
    and its domain's MAC (an SA with the naive key matches any host's state)."""
    held: dict[tuple[int, int, bytes], dict[bytes, tuple[str, XfrmState]]] = {}
    for name, ep in bed.endpoints.items():
        for state in ep.stack.states.values():
            if state.offload == Offload.DEVICE:
                key = (state.direction, state.spi, state.dst)
                held.setdefault(key, {})[ep.stack.mac] = (name, state)
    count = sum(len(by_mac) for by_mac in held.values())
    orphans = []
    for sa in bed.agent.sad:
        by_mac = held.get((sa.direction, sa.spi, sa.dst), {})
        mac = next(iter(by_mac), b"") if sa.domain is None else sa.domain.mac
        if by_mac.pop(mac, None) is None:
            orphans.append(sa)
    missing = [entry for by_mac in held.values() for entry in by_mac.values()]
    return SadDiff(count, orphans, missing)


def _abandoned(run: ScenarioRun) -> dict[str, str]:
    name = "Abandoned SAs"
    resets = [e for e in run.scenario.event if e.action in ("destroy_vm", "reset_vf", "remove_vf")]
    if not resets:
        return _challenge(name, ABSENT, "no VM destroyed, VF reset or removed")
    bed = run.bed
    diff = sad_diff(bed)
    counters = bed.pf.pf_counters if bed.pf is not None else None
    removed = counters.cleanup_removed if counters is not None else 0
    by_vfs = counters.vf_bulk_removed if counters is not None else 0
    observed = (
        f"{len(resets)} VM/VF reset(s); SAs removed by the PF's clean-up: {removed}, by the"
        f" VFs' own DEL_SAS: {by_vfs}; "
        f"orphans left in the agent SAD: {len(diff.orphans)} (SAD holds {len(bed.agent.sad)}, "
        f"live offloaded SAs: {diff.held})"
    )
    return _challenge(name, HELD if not diff.orphans else FAILED, observed)


# -- spec 9's invariants ----------------------------------------------------------------------


def invariants(run: ScenarioRun, flows: dict[str, Any]) -> list[dict[str, str]]:
    """Spec 9's invariants over the whole run, from the wire and the deliveries (the wire
    observer) and the SADs at the end. The fourth, only the PF configures the agent, is the
    Malicious VF challenge."""
    observer = WireObserver(run.bed)
    observer.check()
    seen = observer.summary()
    return [_no_nonce_twice(seen), _no_replay(run, seen), _one_view(run), _rekeys(run, flows)]


def _no_nonce_twice(seen: ObserverSummary) -> dict[str, str]:
    name = "No nonce twice"
    if not seen.esp_frames:
        return _challenge(name, ABSENT, "no ESP frame on the wire")
    observed = (
        f"ESP frames on the wire and the hairpin, every SA: {seen.esp_frames}; "
        f"(key, IV) nonces: {seen.pairs}; used twice: {seen.nonce_reuse}"
    )
    return _challenge(name, HELD if not seen.nonce_reuse else FAILED, observed)


def _no_replay(run: ScenarioRun, seen: ObserverSummary) -> dict[str, str]:
    name = "No replay accepted"
    replayed = sum(replay.frames for replay in run.replays)
    if not replayed and not seen.replays_delivered:
        return _challenge(name, ABSENT, "no frame replayed on the wire")
    observed = (
        f"frames an attacker replayed: {replayed}; payloads delivered twice: "
        f"{seen.replays_delivered} (of {seen.deliveries} deliveries)"
    )
    return _challenge(name, HELD if not seen.replays_delivered else FAILED, observed)


def _rekeys(run: ScenarioRun, flows: dict[str, Any]) -> dict[str, str]:
    """Soft lifetimes answered by a rekey, make before break: the flows of the SA pairs
    with a soft limit arrive whole, and no state reached its hard limit."""
    name = "Rekey (make before break)"
    specs = [s for s in run.scenario.sa if s.soft_lifetime_packets or s.soft_lifetime_bytes]
    if not specs:
        return _challenge(name, ABSENT, "no SA with a soft lifetime")
    bed = run.bed
    hosts = {**bed.retired, **bed.endpoints}.values()
    hard = sum(ep.stack.counters.hard_expiries for ep in hosts)
    soft = sum(isinstance(e, StateExpire) and not e.hard for ep in hosts for e in ep.log)
    pairs = [set(s.between) for s in specs]
    names = [
        n
        for n, r in zip(flows, run.flows, strict=True)
        if {r.spec.source, r.spec.to} in pairs and r.spec.sa != "none"
    ]
    complete = all(flows[n]["complete"] for n in names)
    observed = (
        f"{len(specs)} SA pair(s) with a soft lifetime; soft expiries: {soft}; rekeys: "
        f"{bed.rekeys}; hard expiries: {hard}; their {len(names)} flow(s) complete: "
        f"{'yes' if complete else 'NO'}"
    )
    return _challenge(name, HELD if complete and not hard else FAILED, observed)


def _one_view(run: ScenarioRun) -> dict[str, str]:
    """Spec 9 invariant 4: at the end, the agent holds exactly what the stacks offload."""
    diff = sad_diff(run.bed)
    orphans = ", ".join(f"{sa.index} (SPI 0x{sa.spi:x})" for sa in diff.orphans[:4])
    missing = ", ".join(f"{host} SPI 0x{state.spi:x}" for host, state in diff.missing[:4])
    observed = (
        f"agent SAD {len(run.bed.agent.sad)}, held as offloaded by the hosts {diff.held}; "
        f"in the agent only: {len(diff.orphans)}{f' [{orphans}]' if orphans else ''}; "
        f"held but not in the agent: {len(diff.missing)}{f' [{missing}]' if missing else ''}"
    )
    agreed = not diff.orphans and not diff.missing
    return _challenge("One view of the SAD", HELD if agreed else FAILED, observed)


def _malicious(run: ScenarioRun) -> dict[str, str]:
    name = "Malicious VF"
    if not run.injections:
        return _challenge(name, ABSENT, "no VF crafted frames")
    bed = run.bed
    wire = [r.frame for r in bed.captures["agent-to-wire"].records]
    replies = _config_replies(bed)
    obeyed = carried = dropped = removed = 0
    for injection in run.injections:
        vm_mac = injection.frame[6:12]
        if injection.frame in wire:
            carried += 1
            continue
        if injection.kind == "forged_offload":
            hit = any(f[6:12] == vm_mac and FORGED_PAYLOAD not in f for f in wire)
        else:
            l2_len = parse_ethernet(injection.frame).header_len
            header = parse_config_header(memoryview(injection.frame)[l2_len:])
            count = replies.get((vm_mac, header.txn_id))
            hit = count is not None
            removed += count or 0
        obeyed += hit
        dropped += not hit
    vsis = bed.nic.vsis
    observed = (
        f"{len(run.injections)} crafted frame(s): obeyed by the agent {obeyed} "
        f"(SAs removed: {removed}), carried to the wire as data {carried}, dropped {dropped}; "
        f"port-tagged by the NIC: {sum(v.counters.tx_port_tagged for v in vsis)}, "
        f"dropped by its Tx EtherType filter: "
        f"{sum(v.counters.tx_ethertype_filtered for v in vsis)}; config ignored by the agent "
        f"(not from the PF): {bed.agent.counters.drops[DropReason.CONFIG_NOT_FROM_PF]}"
    )
    return _challenge(name, HELD if not obeyed else FAILED, observed)


def _config_replies(bed: Testbed) -> dict[tuple[bytes, int], int]:
    """(destination MAC, txn_id) of each config reply the agent sent -> its COUNT (0 for a
    reply without one); a resent reply is the same reply."""
    replies = {}
    for record in bed.captures["agent-to-nic"].records:
        try:
            eth = parse_ethernet(record.frame)
            if eth.ethertype != EtherType.CONFIG:
                continue
            reply = parse_config(memoryview(record.frame)[eth.header_len :])
            ok = reply.status == ConfigStatus.OK
            is_count = reply.base_opcode == Opcode.REMOVE_ALL_SAS
            replies[(eth.dst, reply.txn_id)] = decode_count(reply.tlvs) if ok and is_count else 0
        except ParseError:
            continue
    return replies


def _east_west(run: ScenarioRun, flows: dict[str, Any]) -> dict[str, str]:
    name = "East-west VM traffic"
    inside = _behind_nic(run)
    names = [
        n
        for n, r in zip(flows, run.flows, strict=True)
        if r.spec.source in inside and r.spec.to in inside and r.spec.sa != "none"
    ]
    if not names:
        return _challenge(name, ABSENT, "no flow between two functions of the port")
    sent, got, by_agent = _summed(flows, names)
    bed = run.bed
    switched = sum(v.counters.tx_switched for v in bed.nic.vsis)
    hairpin = bed.agent.counters.paths[AgentPath.HAIRPIN]
    observed = (
        f"{bed.nic.mode.name}: {got} of {sent} delivered, {by_agent} decrypted by the agent; "
        f"switched inside the NIC (never offloaded): {switched}; hairpinned by the agent: "
        f"{hairpin}"
    )
    return _challenge(name, HELD if got == sent == by_agent else FAILED, observed)


def _tso(run: ScenarioRun, flows: dict[str, Any]) -> dict[str, str]:
    name = "TSO sequence numbers (IVDB)"
    names = [n for n, r in zip(flows, run.flows, strict=True) if r.spec.tso]
    if not names:
        return _challenge(name, ABSENT, "no TSO send")
    pairs = []
    crafted = {injection.frame for injection in run.injections}  # carried as data, not sealed
    for record in run.bed.captures["agent-to-wire"].records:
        esp = None if record.frame in crafted else find_esp(record.frame)
        if esp is not None:
            pairs.append((esp.src, esp.dst, esp.spi, esp.seq))
    duplicates = len(pairs) - len(set(pairs))
    complete = all(flows[n]["complete"] for n in names)
    sent_bytes = sum(flows[n]["sent_bytes"] for n in names)
    got_bytes = sum(flows[n]["delivered_bytes"] for n in names)
    observed = (
        f"{len(names)} TSO flow(s), {sent_bytes} bytes sent, {got_bytes} delivered; "
        f"(SPI, sequence number) pairs on the wire: {len(pairs)}, reused: {duplicates}"
    )
    return _challenge(name, HELD if complete and not duplicates else FAILED, observed)


# -- tables -----------------------------------------------------------------------------------


def linux_peers(bed: Testbed) -> dict[str, Any]:
    """Each live Linux peer's SAs as the guest's `ip -s xfrm state` counts them, each beside
    the state of the other end of the SA (the host that sends what the peer opens, or opens
    what it sends), and what crossed between the simulation and the guest."""
    wire = bed.linux
    if wire is None:
        return {}
    ours: dict[tuple[str, str, int], tuple[str, XfrmState]] = {}
    for name, ep in bed.endpoints.items():
        if not isinstance(ep.stack, LinuxPeer):
            for state in ep.stack.states.values():
                ours[ip_to_str(state.src), ip_to_str(state.dst), state.spi] = (name, state)
    peers: dict[str, Any] = {}
    for peer in wire.peers.values():
        if bed.endpoints.get(peer.name) is None:
            continue
        sas = []
        for sa in peer.guest_sas():
            row = {"guest": guest_sa_fields(sa), "ours": None}
            other = ours.get((sa.src, sa.dst, sa.spi))
            if other is not None:
                host, state = other
                row["ours"] = {
                    "host": host,
                    "packets": state.packets,
                    "replay": state.stats.replay,
                    "failed": state.stats.integrity_failed,
                }
            sas.append(row)
        peers[peer.name] = {"netns": peer.netns, "sas": sas}
    guest = wire.guest
    return {
        "kernel": f"{guest.image.kernel_package} {guest.image.kernel_version}",
        "boot_seconds": round(guest.boot_seconds, 3),
        "exchanges": wire.exchanges,
        "frames_in": guest.frames_in,
        "frames_out": guest.frames_out,
        "multicast_held": wire.multicast_held,
        "peers": peers,
    }


def _sas(run: ScenarioRun) -> list[dict[str, Any]]:
    """Each SA pair's states as the hosts hold them: the latest of its rekeys (a Linux
    peer's packets are the guest's count)."""
    guest_packets = {
        (peer.name, sa.spi, sa.dst): sa.packets
        for peer in (run.bed.linux.peers.values() if run.bed.linux is not None else ())
        if run.bed.endpoints.get(peer.name) is not None
        for sa in peer.guest_sas()
    }
    rows = []
    for spec in run.scenario.sa:
        first = run.bundles.get(spec.name)
        if first is None:
            continue
        bundle = run.bed.current(first)
        for host, state in (
            (spec.between[0], bundle.a_out),
            (spec.between[0], bundle.a_in),
            (spec.between[1], bundle.b_out),
            (spec.between[1], bundle.b_in),
        ):
            rows.append(
                {
                    "sa": spec.name,
                    "host": host,
                    "direction": Direction(state.direction).name.lower(),
                    "spi": f"0x{state.spi:08x}",
                    "offload": state.offload.name,
                    "rc": state.add_rc,
                    "packets": guest_packets.get(
                        (host, state.spi, ip_to_str(state.dst)), state.packets
                    ),
                }
            )
    return rows


def _state_labels(run: ScenarioRun) -> Callable[[int], str]:
    """A state's handle as the timeline names it: the handle, the scenario's SA (by its
    reqid, which rekeys keep), the direction and the SPI."""
    names = {bundle.a_out.reqid: name for name, bundle in run.bundles.items()}
    made = run.bed.states_made

    def label(handle: int) -> str:
        state = made.get(handle)
        if state is None:
            return str(handle)
        direction = "out" if state.direction == Direction.OUTBOUND else "in"
        sa = names.get(state.reqid, "")
        return f"{handle} ({sa} {direction} SPI 0x{state.spi:08x})".replace("( ", "(")

    return label


def timeline(run: ScenarioRun) -> list[TimelineEntry]:
    """Scenario events, state results, config transactions and mailbox messages in order."""
    bed = run.bed
    entries = list(run.events)
    label = _state_labels(run)
    for name, ep in {**bed.retired, **bed.endpoints}.items():
        for result in bed.results(ep.stack):
            where = "gone" if result.offload is None else result.offload.name.lower()
            entries.append(
                TimelineEntry(
                    result.time,
                    name,
                    f"{result.operation} state {label(result.handle)}:"
                    f" {_errno_name(result.rc)} ({where})",
                )
            )
        for expire in (e for e in ep.log if isinstance(e, StateExpire)):
            what = "deleted" if expire.hard else "the key manager rekeys its pair"
            kind = "hard" if expire.hard else "soft"
            entries.append(
                TimelineEntry(
                    expire.time, name, f"{kind} expiry of state {label(expire.handle)}: {what}"
                )
            )
    for link, actor in (("nic-to-agent", "driver->agent"), ("agent-to-nic", "agent->driver")):
        for record in bed.captures[link].records:
            text = _config_text(record.frame, link == "nic-to-agent")
            if text is not None:
                entries.append(TimelineEntry(record.time, actor, text))
    for message in bed.mailbox_log:
        actor = f"VF{message.vf}->PF" if message.to_pf else f"PF->VF{message.vf}"
        try:
            parsed = parse_mailbox(message.data)
            opcode = MbxOpcode(parsed.base_opcode).name
            suffix = f" reply, errno {parsed.status}" if parsed.is_reply else ""
            entries.append(TimelineEntry(message.time, actor, f"{opcode}{suffix}"))
        except (ParseError, ValueError):
            entries.append(TimelineEntry(message.time, actor, "malformed message"))
    return sorted(entries, key=lambda e: e.time)


def _config_text(frame: bytes, toward_agent: bool) -> str | None:
    """A config request or reply as a line; a config frame behind a Tx metadata tag is data
    the agent bypasses (a VF's crafted frame, port-tagged), not a request."""
    try:
        eth = parse_ethernet(frame)
        if eth.ethertype != EtherType.CONFIG or (toward_agent and eth.metadata is not None):
            return None
        message = parse_config(memoryview(frame)[eth.header_len :])
        opcode = Opcode(message.base_opcode).name
    except (ParseError, ValueError):
        return None
    who = mac_to_str(eth.src if not message.is_reply else eth.dst)
    if message.is_reply:
        return f"{opcode} reply txn {message.txn_id}: {ConfigStatus(message.status).name}"
    return f"{opcode} txn {message.txn_id} from {who}"


def _headline(entry: dict[str, Any]) -> bool:
    """Worth a line in the text summary: scenario events, state results and failures."""
    what, actor = entry["what"], entry["actor"]
    if actor == "driver->agent":
        return False
    if actor == "agent->driver":
        return not what.endswith(": OK")
    if "->" in actor:  # the mailbox: VFn->PF or PF->VFn
        return "reply" in what and not what.endswith("errno 0")
    return not what.endswith("rc 0 (software)")  # a state that never asked for offload


# -- outputs ----------------------------------------------------------------------------------


def write_outputs(bed: Testbed, out: Path, report: dict[str, Any], *, pcapng: bool = False) -> None:
    """Every capture (each link direction, the hairpin tap), each link both ways, the
    esp_sa keys file, each live host's `ip -s xfrm state` (xfrm-HOST.txt) and report.json,
    whose "outputs" lists every file written; with `pcapng`, each link also as a pcapng
    file, a named interface per direction and a comment on each frame. Every file is
    written atomically: each replaces its old version whole, or is left as it was."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    written = []
    for link, sink in bed.captures.items():
        sink.write(out / f"{link}.pcap")
        written.append(f"{link}.pcap")
    meta = bed.agent.config.meta_ethertype
    for name, (first, second) in LINK_FILES.items():
        write_pcap(out / f"{name}.pcap", merged(bed, first, second))
        written.append(f"{name}.pcap")
        if pcapng:
            toward_agent, from_agent = (
                Interface(link, bed.captures[link].records, direction, describer(link, meta))
                for link, direction in ((first, _INBOUND), (second, _OUTBOUND))
            )
            write_pcapng(out / f"{name}.pcapng", [toward_agent, from_agent])
            written.append(f"{name}.pcapng")
    write_esp_sa(out / "esp_sa", bed.esp_sa_entries())
    written.append("esp_sa")
    for host, text in xfrm_states(bed).items():
        write_text(out / f"xfrm-{host}.txt", text)
        written.append(f"xfrm-{host}.txt")
    written.append("report.json")
    report["outputs"] = sorted(written)
    write_text(out / "report.json", json.dumps(report, indent=2, sort_keys=True) + "\n")


def xfrm_states(bed: Testbed) -> dict[str, str]:
    """What `ip -s xfrm state` prints on each live host, by host name (a destroyed VM has no
    kernel left to ask: its states at the end are in report.json's "hosts")."""
    return {
        name: ep.stack.xfrm_text() if isinstance(ep.stack, LinuxPeer) else xfrm_state_text(ep.stack)
        for name, ep in bed.endpoints.items()
    }


def xfrm_listing(bed: Testbed) -> str:
    """Every live host's `ip -s xfrm state`, each after a `HOST$ ip -s xfrm state` line and a
    blank line between hosts (`run --xfrm`)."""
    parts = [f"{host}$ ip -s xfrm state\n{text}" for host, text in xfrm_states(bed).items()]
    return "\n".join(parts).rstrip("\n")


def merged(bed: Testbed, first: str, second: str) -> list[PcapRecord]:
    """Two directions of a link in time order (on a tie, `first` before `second`)."""
    records = [*bed.captures[first].records, *bed.captures[second].records]
    return sorted(records, key=lambda r: r.time)


# -- text -------------------------------------------------------------------------------------


def _errno_name(rc: int) -> str:
    """A return code as Linux's headers name it: 0, or -EOPNOTSUPP and the like."""
    if rc >= 0:
        return str(rc)
    try:
        return f"-{Errno(-rc).name}"
    except ValueError:
        return f"-{errno.errorcode.get(-rc, str(-rc))}"


def _linux_lines(linux: dict[str, Any]) -> list[str]:
    """The Linux peers' section of the summary (none without Linux peers)."""
    if not linux:
        return []
    lines = [
        "",
        f"Linux peers ({linux['kernel']}, booted in {linux['boot_seconds']:.1f} s; frames in"
        f" {linux['frames_in']}, out {linux['frames_out']}, multicast held back"
        f" {linux['multicast_held']}), as the guest's ip -s xfrm state"
        " counts, beside ours (the state at the SA's other end):",
        f"  {'peer':<8}{'SPI':<12}{'src -> dst':<34}{'pkts':>6}{'replay':>8}{'failed':>8}"
        f"  {'ours':>6}{'replay':>8}{'failed':>8}  host",
    ]
    for name, peer in linux["peers"].items():
        for row in peer["sas"]:
            sa, ours = row["guest"], row["ours"] or {}
            lines.append(
                f"  {name:<8}{sa['spi']:<12}{sa['src'] + ' -> ' + sa['dst']:<34}"
                f"{sa['packets']:>6}{sa['replay']:>8}{sa['failed']:>8}"
                f"  {ours.get('packets', '-'):>6}{ours.get('replay', '-'):>8}"
                f"{ours.get('failed', '-'):>8}  {ours.get('host', '-')}"
            )
    return lines


def summary(report: dict[str, Any], out: Path | None, timeline_lines: int = 40) -> str:
    """The report as a person reads it at a glance."""
    lines = [
        f"ipsec-offload run: {report['scenario']} (naive: {', '.join(report['naive']) or 'none'})"
    ]
    lines += [f"  {line}" for line in report["description"].splitlines()]
    lines += ["", "The deck's challenges:"]
    rows = report["challenges"]
    for i, c in enumerate(rows, 1):
        lines.append(f"  {i}. {c['challenge']:<32} {c['outcome'].upper():<14} {c['observed']}")
    lines += ["", "Spec 9's invariants (the fourth, only the PF configures, is challenge 3):"]
    for i, c in enumerate(report["invariants"], len(rows) + 1):
        lines.append(f"  {i}. {c['challenge']:<32} {c['outcome'].upper():<14} {c['observed']}")
    lines += [
        "",
        "Flows (packets: what the sends make on the wire, a TSO or TCP send cut into",
        "MSS-sized segments; by agent: of the delivered packets, those the agent decrypted):",
        f"  {'flow':<30}{'sends':>6}{'packets':>9}{'delivered':>11}{'by agent':>10}  complete",
    ]
    for name, f in report["flows"].items():
        lines.append(
            f"  {name:<30}{f['sends']:>6}{f['sent']:>9}{f['delivered']:>11}"
            f"{f['decrypted_by_agent']:>10}  {'yes' if f['complete'] else 'NO'}"
        )
    lines += [
        "",
        "SAs as the hosts hold them (add: what xdo_dev_state_add returned):",
        f"  {'sa':<16}{'host':<8}{'dir':<10}{'SPI':<12}{'where':<10}{'add':<12}{'pkts':>6}",
    ]
    for row in report["sas"]:
        lines.append(
            f"  {row['sa']:<16}{row['host']:<8}{row['direction']:<10}{row['spi']:<12}"
            f"{row['offload']:<10}{_errno_name(row['rc']):<12}{row['packets']:>6}"
        )
    lines += _linux_lines(report.get("linux_peers") or {})
    agent = report["agent"]
    lines += [
        "",
        f"Agent SAD at the end: {agent['sad_used']} of {agent['sad_size']} entries",
        f"  {'idx':<5}{'dir':<10}{'SPI':<12}{'dst':<16}{'domain':<26}{'pkts':>6}  errors",
    ]
    for sa in agent["sas"]:
        errors = ", ".join(f"{k}={v}" for k, v in sa["errors"].items() if v) or "-"
        lines.append(
            f"  {sa['index']:<5}{sa['direction']:<10}{sa['spi']:<12}{sa['dst']:<16}"
            f"{sa['domain'] or 'any (naive key)':<26}{sa['packets']:>6}  {errors}"
        )
    counters = agent["counters"]
    for title, key in (("Rx status", "rx_status"), ("paths", "paths"), ("drops", "drops")):
        values = ", ".join(f"{k}={v}" for k, v in counters[key].items() if v) or "none"
        lines.append(f"Agent {title}: {values}")
    lines += [
        "",
        "VSIs:",
        f"  {'id':<4}{'kind':<5}{'mac':<19}{'vlans':<14}{'port tag':<12}"
        f"{'tx':>6}{'rx':>6}{'switched':>9}{'spoofed':>8}",
    ]
    for vsi in report["nic"]["vsis"]:
        c = vsi["counters"]
        lines.append(
            f"  {vsi['id']:<4}{vsi['kind']:<5}{vsi['mac']:<19}{','.join(vsi['vlans']) or '-':<14}"
            f"{vsi['port_tag'] or '-':<12}{c['tx_packets']:>6}{c['rx_packets']:>6}"
            f"{c['tx_switched']:>9}{c['tx_spoofed']:>8}"
        )
    events = [e for e in report["timeline"] if _headline(e)]
    lines += [
        "",
        f"Control-plane timeline: {len(events)} of {len(report['timeline'])} entries"
        " (scenario events, state results, errors; every config frame and mailbox message"
        " is in report.json):",
    ]
    for e in events[:timeline_lines]:
        lines.append(f"  {e['time'] * 1000:9.3f} ms  {e['actor']:<14} {e['what']}")
    if len(events) > timeline_lines:
        lines.append(f"  ... {len(events) - timeline_lines} more in report.json")
    if out is not None:
        lines.append(
            f"\nWrote pcaps, the esp_sa keys file, each host's ip -s xfrm state and"
            f" report.json to {out}/"
        )
        golden = report.get("golden")
        if golden is not None:
            until = golden["until"]
            which = "" if until is None else f" (up to {until['event']}, the agent's restart)"
            lines.append(
                f"The agent alone reproduces its output{which} with the golden model"
                f" (report.json, golden): cd {shlex.quote(str(out))} && {golden['command']}"
            )
    return "\n".join(lines)
