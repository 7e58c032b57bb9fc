"""Run a scenario on the testbed: build the port, schedule VMs, SAs, flows and events in
simulated time, run, and gather what happened."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.driver.vf import Kek
from ipsec_offload.errors import IpsecOffloadError, ParseError, ScenarioError, UsageError
from ipsec_offload.host.xfrm import Mode
from ipsec_offload.nic.nic import SwitchMode
from ipsec_offload.sim.linux.guest import LinuxGuest
from ipsec_offload.sim.scenario import (
    AGENT_NAIVE,
    NAIVE_SWITCHES,
    FlowSpec,
    HostSpec,
    Scenario,
    VmSpec,
)
from ipsec_offload.sim.testbed import Host, SaBundle, Testbed
from ipsec_offload.wire.config import (
    Algorithm,
    ConfigMessage,
    Opcode,
    build_config,
    parse_config_header,
)
from ipsec_offload.wire.ethernet import (
    EthernetHeader,
    EtherType,
    VlanTag,
    build_ethernet,
    parse_ethernet,
)
from ipsec_offload.wire.ip import IpProto, IPv4Header, build_ipv4
from ipsec_offload.wire.metadata import TxMetadata, build_tx_metadata
from ipsec_offload.wire.transport import TcpFlags

_ALGORITHMS = {"aes-gcm-128": Algorithm.AES_GCM_128, "aes-gcm-256": Algorithm.AES_GCM_256}
_ESP = struct.Struct(">IIQ")
FORGED_PAYLOAD = b"forged by a malicious VF"


@dataclass(slots=True)
class FlowRecord:
    """What one flow sent, for checking what arrived."""

    index: int
    spec: FlowSpec
    sends: int = 0
    """Sends made (one TSO or TCP send may leave as several packets)."""
    sent: int = 0
    """Packets those sends make on the wire (a send cut into MSS-sized segments counts each)."""
    sent_bytes: int = 0
    payloads: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    time: float
    actor: str
    what: str


@dataclass(slots=True)
class Injection:
    """A frame a malicious VF posted, and what it was."""

    time: float
    vm: str
    kind: str
    frame: bytes
    sad_before: int


@dataclass(frozen=True, slots=True)
class Replay:
    """ESP frames an attacker on the wire sent again toward a host."""

    time: float
    target: str
    frames: int


@dataclass(frozen=True, slots=True)
class AgentRestart:
    """A scenario event that restarted the agent, and how many frames the agent had sent
    toward each side (agent-to-nic, agent-to-wire) before it."""

    time: float
    where: str
    """The scenario field: event[i]."""
    frames: dict[str, int]


@dataclass(slots=True)
class ScenarioRun:
    """A scenario built on a testbed, ready to run (and, after `run`, its results)."""

    scenario: Scenario
    source: str
    naive: frozenset[str]
    bed: Testbed
    agent_config: AgentConfig
    """The agent's configuration as the run starts it (BOOT_ID included): what the golden
    model needs to reproduce it (`bed.agent` is a new agent after a restart)."""
    hosts: dict[str, Host] = field(default_factory=dict)
    bundles: dict[str, SaBundle] = field(default_factory=dict)
    flows: list[FlowRecord] = field(default_factory=list)
    events: list[TimelineEntry] = field(default_factory=list)
    injections: list[Injection] = field(default_factory=list)
    replays: list[Replay] = field(default_factory=list)
    restarts: list[AgentRestart] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    end_time: float = 0.0

    def run(self, progress: Callable[[float], None] | None = None, steps: int = 50) -> None:
        """Run to the end, then one GET_CAPS interval of the PF's more (so that its periodic
        probe finds a restart whose AGENT_STARTED was lost before the report judges); then
        until idle. `progress` gets the fraction of scheduled time done."""
        horizon = max(self.end_time, 1e-9)
        for step in range(1, steps + 1):
            self.bed.run(until=horizon * step / steps)
            if progress is not None:
                progress(step / steps)
        pf = self.bed.pf
        if pf is not None and pf.resync.caps_interval is not None:
            self.bed.run(until=self.end_time + pf.resync.caps_interval)
        self.bed.run()

    def note(self, actor: str, what: str) -> None:
        self.events.append(TimelineEntry(self.bed.now, actor, what))


def prepare(
    scenario: Scenario,
    source: str,
    naive: Iterable[str] = (),
    *,
    linux_peers: bool = False,
    linux_guest: LinuxGuest | None = None,
) -> ScenarioRun:
    """Build the port and schedule everything the scenario says; nothing has run yet. With
    `linux_peers` every peer is a Linux peer, whatever its `kind` (in `linux_guest`, else
    the process's shared guest)."""
    switches = frozenset(naive)
    unknown = switches - set(NAIVE_SWITCHES)
    if unknown:
        raise ScenarioError(
            source, "--naive", f"{', '.join(sorted(unknown))}: use {', '.join(NAIVE_SWITCHES)}"
        )
    port = scenario.port
    pf = scenario.pf
    # spec 9 invariant 3: the agent takes config from the PF alone (unless a switch of
    # AGENT_NAIVE opens its config plane: its source check backs both the port tag and the Tx
    # EtherType filter, so that the failure each guards against shows)
    agent = AgentConfig(
        mac=_mac(port.agent_mac),
        pf_mac=_mac(port.pf_mac or pf.mac),
        sad_size=port.sad_size,
        max_replay_window=port.max_replay_window,
        keks={int(k): bytes.fromhex(v) for k, v in port.keks.items()},
    )
    for switch in sorted(switches & AGENT_NAIVE.keys()):
        agent = replace(agent, **AGENT_NAIVE[switch])
    try:
        bed = Testbed(
            agent=agent,
            mode=SwitchMode.VEPA if port.mode == "vepa" else SwitchMode.VEB,
            own_sequence="seq-handover" not in switches,
            key_manager=True,
            linux_guest=linux_guest,
        )
    except UsageError as exc:
        raise ScenarioError(source, "port", str(exc)) from None
    run = ScenarioRun(scenario, source, switches, bed, bed.agent.config)
    run.hosts[pf.name] = bed.add_pf_host(
        pf.name,
        pf.mac,
        ipv4=pf.ipv4,
        ipv6=pf.ipv6,
        vlans=_vlans(pf),
        extended_key="sa-key" not in switches,
        ownership_db="ownership-db" not in switches,
        port_tagging="port-tag" not in switches,
        hairpin="hairpin" not in switches,
        vf_filter="vf-filter" not in switches,
        resync="resync" not in switches,
    )
    run.note(pf.name, f"PF up on a {port.mode.upper()} port")
    for peer in scenario.peer:
        add = bed.add_linux_peer if linux_peers or peer.kind == "linux" else bed.add_peer
        run.hosts[peer.name] = add(
            peer.name, peer.mac, ipv4=peer.ipv4, ipv6=peer.ipv6, vlans=_vlans(peer)
        )
    for i, vm in enumerate(scenario.vm):
        _at(run, vm.start, f"vm[{i}].start", lambda vm=vm: _boot(run, vm))  # type: ignore[misc]
    for i, sa in enumerate(scenario.sa):
        _at(run, sa.at, f"sa[{i}]", lambda i=i: _secure(run, i), config=True)  # type: ignore[misc]
    for i, flow in enumerate(scenario.flow):
        record = FlowRecord(i, flow)
        run.flows.append(record)
        for n in range(flow.count):
            when = flow.start + n / flow.rate
            _at(run, when, f"flow[{i}]", lambda r=record, n=n: _send(run, r, n))  # type: ignore[misc]
    for i, event in enumerate(scenario.event):
        _at(run, event.at, f"event[{i}]", lambda i=i: _event(run, i))  # type: ignore[misc]
    return run


def _at(
    run: ScenarioRun, time: float, where: str, action: Callable[[], None], *, config: bool = False
) -> None:
    """Schedule `action` (`config`: see Testbed.at); an API refusal while it runs names the
    scenario field."""

    def guarded() -> None:
        try:
            action()
        except IpsecOffloadError as exc:
            if isinstance(exc, ScenarioError):
                raise
            raise ScenarioError(run.source, where, str(exc)) from None

    run.end_time = max(run.end_time, time)
    run.bed.at(time, guarded, config=config)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _vlans(host: HostSpec) -> tuple[VlanTag, ...]:
    return tuple(VlanTag(v.tpid, v.vid) for v in host.vlans)


def _boot(run: ScenarioRun, vm: VmSpec) -> None:
    kek = None
    if vm.kek is not None:
        kek = Kek(vm.kek, bytes.fromhex(run.scenario.port.keks[str(vm.kek)]))
    run.hosts[vm.name] = run.bed.add_vm(
        vm.name,
        vm.vf,
        vm.mac,
        ipv4=vm.ipv4,
        ipv6=vm.ipv6,
        vlans=_vlans(vm),
        trusted=vm.trusted,
        kek=kek,
    )
    trust = "trusted" if vm.trusted else "untrusted"
    run.note(vm.name, f"VM boots on VF {vm.vf} ({trust}), asks the PF for resources")


def _secure(run: ScenarioRun, index: int) -> None:
    sa = run.scenario.sa[index]
    a, b = (_host(run, name, f"sa[{index}].between") for name in sa.between)
    run.bundles[sa.name] = run.bed.secure(
        a,
        b,
        family=sa.family,
        mode=Mode.TUNNEL if sa.mode == "tunnel" else Mode.TRANSPORT,
        algorithm=_ALGORITHMS[sa.algorithm],
        esn=sa.esn,
        replay_window=sa.replay_window,
        offload_a=sa.offload,
        offload_b=sa.offload,
        spis=sa.spis,
        soft_lifetime_packets=sa.soft_lifetime_packets,
        lifetime_packets=sa.lifetime_packets,
        soft_lifetime_bytes=sa.soft_lifetime_bytes,
        lifetime_bytes=sa.lifetime_bytes,
    )
    run.note(sa.between[0], f"installs SA {sa.name} with {sa.between[1]}")


def _host(run: ScenarioRun, name: str, where: str) -> Host:
    host = run.hosts.get(name)
    if host is None or name in run.destroyed:
        raise ScenarioError(run.source, where, f"{name} is not running at that time")
    return host


def payload_of(flow: int, n: int, size: int) -> bytes:
    """The deterministic payload of packet `n` of flow `flow`: "flow F packet N at K " stamps,
    K the stamp's byte offset, so that the segments of a large send differ from each other
    too (no two deliveries of a run are alike)."""
    out = bytearray()
    while len(out) < size:
        out += f"flow {flow} packet {n} at {len(out)} ".encode()
    return bytes(out[:size])


def _send(run: ScenarioRun, record: FlowRecord, n: int) -> None:
    flow = record.spec
    where = f"flow[{record.index}]"
    src, dst = _host(run, flow.source, where), _host(run, flow.to, where)
    addr = dst.addresses[4 if flow.family == 4 else 16]
    payload = payload_of(record.index, n, flow.size)
    port = 40000 + record.index
    now = run.bed.now
    if flow.protocol == "udp":
        src.send_udp(addr, port, 5000 + record.index, payload, now, mss=flow.mss if flow.tso else 0)
    elif flow.protocol == "icmp":
        src.send_echo(addr, record.index + 1, n + 1, payload, now)
    else:
        seq = 1000 + record.sent_bytes
        mss = flow.mss if flow.tso else min(flow.mss, len(payload))
        src.send_tcp(
            addr,
            port,
            5000 + record.index,
            payload,
            now,
            seq=seq,
            mss=mss,
            flags=TcpFlags.ACK | TcpFlags.PSH,
        )
    record.sends += 1
    cut = flow.protocol == "tcp" or (flow.protocol == "udp" and flow.tso)
    record.sent += -(-len(payload) // flow.mss) if cut else 1
    record.sent_bytes += len(payload)
    record.payloads.append(payload)
    run.bed.settle(src)


def _event(run: ScenarioRun, index: int) -> None:
    event = run.scenario.event[index]
    bed = run.bed
    where = f"event[{index}]"
    target = event.target or ""
    if event.action == "destroy_vm":
        _host(run, target, where)
        bed.destroy_vm(target)
        run.destroyed.append(target)
        run.note(target, "VM destroyed (virsh destroy): its VF gets a function-level reset")
    elif event.action == "reset_vf":
        _host(run, target, where)
        bed.reset_vf(target)
        run.note(target, "VF driver reloads: RESET, REQUEST_RESOURCES, re-adds its SAs")
    elif event.action == "remove_vf":
        vf = next(v.vf for v in run.scenario.vm if v.name == target)
        bed.remove_vf(vf)
        run.destroyed.append(target)
        run.note(target, f"VF {vf} removed")
    elif event.action == "reset_pf":
        bed.reset_pf()
        run.note(run.scenario.pf.name, "PF driver reloads: REMOVE_ALL_SAS, SAs re-added")
    elif event.action in ("lose_config", "lose_replies"):
        opcode = None if event.opcode is None else Opcode[event.opcode.upper()]
        replies = event.action == "lose_replies"
        link = "agent-to-nic" if replies else "nic-to-agent"
        bed.lose(link, event.count, partial(_config_frame, bed, opcode, replies))
        which = "config" if event.opcode is None else event.opcode.upper()
        what = "replies from" if replies else "frame(s) toward"
        run.note("link", f"the next {event.count} {which} {what} the agent are lost")
    elif event.action == "lose_events":
        bed.lose("agent-to-nic", event.count, partial(_agent_event, bed))
        run.note("link", f"the agent's next {event.count} EVENT frame(s) are lost")
    elif event.action == "restart_agent":
        sent = {link: len(bed.captures[link]) for link in ("agent-to-nic", "agent-to-wire")}
        run.restarts.append(AgentRestart(bed.now, where, sent))
        bed.restart_agent()
        run.note("agent", "the agent restarts (FPGA reload): its SAD is lost")
    elif event.action == "replay_wire":
        frames = bed.wire_frames_to(_host(run, target, where), event.count)
        run.replays.append(Replay(bed.now, target, len(frames)))
        bed.wire_inject(frames)
        run.note("wire", f"an attacker replays {len(frames)} ESP frame(s) toward {target}")
    else:
        assert event.frame is not None
        vm = _host(run, target, where)
        for _ in range(event.count):
            frame = _crafted(run, vm, event.frame)
            run.injections.append(
                Injection(bed.now, target, event.frame, frame, len(bed.agent.sad))
            )
            bed.inject(target, frame)
        run.note(target, f"malicious VF posts {event.count} crafted {event.frame} frame(s)")


def _config_header(bed: Testbed, frame: bytes) -> tuple[EthernetHeader, ConfigMessage] | None:
    """A config frame's Ethernet header and config header (None: not a config frame)."""
    try:
        eth = parse_ethernet(frame, bed.agent.config.meta_ethertype)
        if eth.ethertype != bed.agent.config.config_ethertype:
            return None
        return eth, parse_config_header(memoryview(frame)[eth.header_len :])
    except ParseError:
        return None


def _config_frame(bed: Testbed, opcode: Opcode | None, reply: bool, frame: bytes) -> bool:
    """Is `frame` a config request to the agent (with `reply`: a reply from it; of `opcode`,
    when one is given)? The agent's frames carry its Rx tag."""
    found = _config_header(bed, frame)
    if found is None:
        return False
    eth, header = found
    matches = opcode is None or header.base_opcode == opcode
    return header.is_reply == reply and (reply or eth.metadata is None) and matches


def _agent_event(bed: Testbed, frame: bytes) -> bool:
    """Is `frame` an EVENT from the agent (a first send or a resend; spec 9)?"""
    found = _config_header(bed, frame)
    return found is not None and found[1].opcode == Opcode.EVENT


def _crafted(run: ScenarioRun, vm: Host, kind: str) -> bytes:
    """What a malicious VF driver writes on its own Tx ring."""
    agent_mac = run.bed.agent.config.mac
    if kind in ("remove_all_sas", "add_sa"):
        opcode = Opcode.REMOVE_ALL_SAS if kind == "remove_all_sas" else Opcode.ADD_SA
        header = EthernetHeader(agent_mac, vm.mac, EtherType.CONFIG, vm.vlans)
        txn_id = 0xBAD0 + len(run.injections)  # each its own: the agent caches replies
        return build_ethernet(header) + build_config(ConfigMessage(opcode, txn_id, ()))
    # A forged Tx metadata tag with OFFLOAD=1 naming the PF host's first outbound SA.
    victim = run.hosts[run.scenario.pf.name]
    state = next((s for s in victim.states.values() if s.direction == 1 and len(s.dst) == 4), None)
    # The VF writes the victim's addresses: anti-spoof checks MAC and VLANs, not IP.
    spi, src, dst = (state.spi, state.src, state.dst) if state else (1, bytes(4), bytes(4))
    esp = _ESP.pack(spi, 1, 1) + FORGED_PAYLOAD
    ip = build_ipv4(IPv4Header(src, dst, IpProto.ESP, 20 + len(esp)))
    word = build_tx_metadata(TxMetadata(True, IpProto.UDP, 14, 5))
    peer_mac = victim.neighbors.get(dst, b"\xff" * 6)
    header = EthernetHeader(peer_mac, vm.mac, EtherType.IPV4, vm.vlans, metadata=word)
    return build_ethernet(header) + ip + esp


def results_of(run: ScenarioRun) -> dict[str, Any]:
    """Per-flow outcome: sends, packets sent, delivered, decrypted by the agent (and bytes)."""
    out: dict[str, Any] = {}
    for record in run.flows:
        flow = record.spec
        name = f"{flow.source}->{flow.to} {flow.protocol}/v{flow.family}#{record.index}"
        receiver = run.hosts.get(flow.to)
        got = (
            []
            if receiver is None
            else [
                d for d in run.bed.delivered(receiver) if _belongs(record, d.protocol, d.src_port)
            ]
        )
        delivered_bytes = sum(len(d.payload) for d in got)
        entry = {
            "sends": record.sends,
            "sent": record.sent,
            "sent_bytes": record.sent_bytes,
            "delivered": len(got),
            "delivered_bytes": delivered_bytes,
            "decrypted_by_agent": sum(d.offloaded for d in got),
            "complete": _complete(record, got),
        }
        out[name] = entry
    return out


def _belongs(record: FlowRecord, protocol: int, src_port: int) -> bool:
    """Is a delivered packet one of this flow's? (ports and ICMP identifiers name flows)"""
    flow = record.spec
    if flow.protocol == "icmp":
        return protocol in (IpProto.ICMP, IpProto.ICMPV6) and src_port == record.index + 1
    wanted = IpProto.UDP if flow.protocol == "udp" else IpProto.TCP
    return protocol == wanted and src_port == 40000 + record.index


def _complete(record: FlowRecord, got: list[Any]) -> bool:
    flow = record.spec
    if flow.protocol == "tcp":
        stream = b"".join(d.payload for d in sorted(got, key=lambda d: d.tcp_seq or 0))
        return stream == b"".join(record.payloads)
    sent = record.payloads
    if flow.protocol == "udp" and flow.tso:  # each send arrives as datagrams of `mss` bytes
        sent = [p[i : i + flow.mss] for p in sent for i in range(0, len(p), flow.mss)]
    return sorted(d.payload for d in got) == sorted(sent)
