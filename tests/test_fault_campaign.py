"""A stateful fault campaign over the whole simulated port (spec section 9, invariants 1-3).

Theory of operation: `FaultCampaign` is a hypothesis `RuleBasedStateMachine` whose every
example builds one small port (`Testbed`) and drives it with a random interleaving of rules:

- traffic in both directions between the hosts behind the NIC and the remote peers, IPv4 and
  IPv6: UDP datagrams, UDP and TCP large sends (TSO where the state is offloaded), UDP
  bursts; every payload (every segment of a large send too) is unique in the run, so that a
  delivery made twice can only be a replay;
- lifecycle events: PF reset, VF reset, agent restart (its AGENT_STARTED delivered, or lost
  with every resend, so that the PF's periodic GET_CAPS finds it), VM destroy and a new VM
  (new SAs) on the same VF, VF removal and a new VM on a fresh VF later;
- faults armed by one rule and applied by the testbed to whatever the next steps carry: lost,
  duplicated or delayed config frames (requests toward the agent, replies from it) and mailbox
  messages (either direction), and a reset whose re-adds are lost so that SAs fall back to
  software (OffloadLost) while traffic goes on;
- rekeys: the IPv6 pairs have a soft lifetime, and the testbed's key manager rekeys them
  (make before break) whenever the agent reports it, whatever else is going on;
- attacks: a VF (trusted or untrusted) posts a crafted config frame (REMOVE_ALL_SAS, ADD_SA)
  or a forged Tx metadata tag with OFFLOAD=1; an attacker on the wire replays ESP frames it
  captured toward a host behind the NIC (a live one or the VM destroyed last).

Every rule that changes the port ends with a probe, one datagram each way on every SA pair, so
that what the event broke shows on the wire at once. Every step runs the port until it is
idle (`Testbed.settle`: retransmission timers and delayed items included), so simulated time
and events stay bounded; `advance_time` moves the clock on as well.

The only judge is the `WireObserver` (sim/observer.py): after every step an invariant reads
what the links carried and the hosts delivered since the previous step and fails on a (key,
IV) sealing two different ciphertexts (9.1), a delivery made twice (9.2) or a config reply to
another MAC than the PF's (9.3). A second invariant reads the wire for IP packets in clear:
every pair of hosts has policies, so none may leave unprotected, whatever state a fault took
away. A third checks spec 9.4 whenever the port is quiet (no fault armed but a lost
AGENT_STARTED, no config transaction under way, after letting it run on for a GET_CAPS interval
and 100 ms): the agent's SAD is exactly the set of SAs the live hosts hold as offloaded.
Nothing here reads a component's counters to judge; the figures gathered in `CampaignStats`
(the testbed's fault counters, the observer's summary, a few states for the report) are
printed, never asserted on, except the number of steps run.

Topology (every example): a PF host (IPv4 and IPv6) and three VMs in slots a, b, c: a trusted
untagged VF, a trusted VF with a VLAN tag and an untrusted VF; two remote peers (one
untagged, one on the VLAN). Each host behind the NIC has an SA pair per family with its peer,
transport mode, offloaded where the driver takes it (not on the untrusted VF), except: the
IPv4 pairs of the PF and of slot a's VMs use ESN and start a few numbers below 2^32, so that
their traffic crosses it; the PF's IPv6 pair is in tunnel mode; slot b's IPv6 pair stays in
software. The agent knows the PF's MAC (`AgentConfig.pf_mac`).

Runs: `make test` runs `SHARDS` shards, one test each, spread over the xdist workers; a shard
runs rounds (one hypothesis run of `EXAMPLES` examples of `STEPS` steps with its own fixed
seed, no example database) until its share of `MIN_STEPS` steps ran: hypothesis may end an
example early, so the steps are counted as they run. The 100,000-step campaign is marked
`slow` and deselected by default: `make campaign` (`.venv/bin/pytest -m slow -n 2 -rP
tests/test_fault_campaign.py`) runs it and prints each shard's figures. The naive tests run
the machine with one fix switched off (the stack's sequence ownership; the Tx EtherType filter
and the agent's source check; the port tag) and expect it to fail on the violation that fix
prevents, found by hypothesis and by a fixed sequence of rules. The test at the end
reproduces a defect of spec 9.4 the campaign found (a lost EVENT_PF_RESET), now fixed. The campaign
found two defects that sent traffic in clear (a duplicated mailbox ADD_SA, a first add that
timed out); both are fixed, with regression tests in tests/test_integrity.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.agent.events import EVENT_RESENDS
from ipsec_offload.errors import ParseError
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Mode
from ipsec_offload.sim.observer import (
    CraftedConfigObeyed,
    NonceReuse,
    ReplayDelivered,
    Violation,
    WireObserver,
)
from ipsec_offload.sim.report import sad_diff
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    ConfigMessage,
    Direction,
    EventType,
    Opcode,
    build_config,
    decode_event,
    encode_add_sa,
    parse_config,
    parse_config_header,
)
from ipsec_offload.wire.ethernet import (
    EthernetHeader,
    EtherType,
    VlanTag,
    build_ethernet,
    ethernet_fields,
)
from ipsec_offload.wire.ip import IpProto, IPv4Header, build_ipv4
from ipsec_offload.wire.mailbox import MbxOpcode, parse_mailbox
from ipsec_offload.wire.metadata import TxMetadata, build_tx_metadata
from ipsec_offload.wire.packet import find_esp

# -- the budget -------------------------------------------------------------------------------

SHARDS = 4
"""Shares of the campaign in `make test`, one test each (xdist spreads them over its workers)."""
STEPS = 50
"""Steps per example (hypothesis's `stateful_step_count`)."""
EXAMPLES = 25
"""Examples per round: a round is one hypothesis run with its own seed."""
MIN_STEPS = 4000
"""Steps `make test` runs over all shards (spec'd: at least 2,000)."""
SLOW_SHARDS = 8
SLOW_STEPS = 100
SLOW_EXAMPLES = 50
SLOW_MIN_STEPS = 100_000
"""Steps of the slow campaign (`make campaign`) over all its shards."""
NAIVE_EXAMPLES = 100
"""At most this many examples to find a defect under a naive switch (a few suffice)."""
SEED = 0x9C0FFEE

# -- the topology -----------------------------------------------------------------------------

PF_MAC = "02:00:00:00:00:10"
VLAN = (VlanTag(0x8100, 100),)
ESN_START = {"pf": 2**32 - 24, "a": 2**32 - 9}
"""Where the ESN pairs start: a few sends take them across 2^32."""
CAPS_INTERVAL = 1.0
"""The PF's GET_CAPS probe, every second (the driver's default)."""
CONFIG_LINKS = ("nic-to-agent", "agent-to-nic")
MAILBOX_LINKS = ("vf-to-pf", "pf-to-vf")
CONFIG_OPCODES = (None, Opcode.ADD_SA, Opcode.REMOVE_SA, Opcode.REMOVE_ALL_SAS)
MAILBOX_OPCODES = (
    None,
    MbxOpcode.ADD_SA,
    MbxOpcode.REQUEST_RESOURCES,
    MbxOpcode.RESET,
    MbxOpcode.EVENT_PF_RESET,
    MbxOpcode.DEL_SA,
)
FAULT_KINDS = ("lose", "duplicate", "delay")
DELAYS = (0.0002, 0.0015, 0.004)
"""Shorter than the config channel's 1 ms timeout (reordering), longer (a late copy after the
resend), longer than all its retries (a reply after the timeout)."""
SEND_KINDS = ("udp", "udp-tso", "tcp-tso", "burst")
MSS = (200, 536, 1400)


@dataclass(frozen=True, slots=True)
class SlotSpec:
    """A VM slot: what every VM that ever sits in it gets."""

    name: str
    trusted: bool
    vlans: tuple[VlanTag, ...]
    ipv4: str
    ipv6: str
    peer: str
    first_vf: int
    software_v6: bool = False
    """The IPv6 pair is not offloaded (a software SA next to the offloaded ones)."""


SLOTS = (
    SlotSpec("a", True, (), "10.0.0.3", "fd00::3", "peer", 0),
    SlotSpec("b", True, VLAN, "10.0.100.4", "fd00:100::4", "vlan-peer", 1, software_v6=True),
    SlotSpec("c", False, (), "10.0.0.5", "fd00::5", "peer", 2),
)
FIRST_FRESH_VF = 3


def vf_mac(vf: int) -> str:
    return f"02:00:00:00:01:{vf:02x}"


@dataclass(slots=True)
class Slot:
    spec: SlotSpec
    vf: int
    enabled: bool = False
    """The VF is enabled on the PF (until removed)."""
    vm: HostStack | None = None
    bundles: list[SaBundle] = field(default_factory=list)
    generation: int = 0


# -- frames -----------------------------------------------------------------------------------


def config_opcode(meta: int, frame: bytes) -> int | None:
    """The base opcode of a config frame (request or reply, tagged or not), None for others."""
    try:
        _, _, ethertype, _, _, l2_len = ethernet_fields(frame, meta)
        if ethertype != EtherType.CONFIG:
            return None
        return parse_config_header(memoryview(frame)[l2_len:]).base_opcode
    except ParseError:
        return None


def config_match(meta: int, opcode: int | None) -> Callable[[bytes], bool]:
    def match(frame: bytes) -> bool:
        found = config_opcode(meta, frame)
        return found is not None and (opcode is None or found == opcode)

    return match


def agent_started_match(meta: int) -> Callable[[bytes], bool]:
    """The agent's AGENT_STARTED event frames (a first send or a resend)."""

    def match(frame: bytes) -> bool:
        try:
            _, _, ethertype, _, _, l2_len = ethernet_fields(frame, meta)
            if ethertype != EtherType.CONFIG:
                return False
            message = parse_config(memoryview(frame)[l2_len:])
            if message.opcode != Opcode.EVENT:
                return False
            return decode_event(message.tlvs).event_type == EventType.AGENT_STARTED
        except ParseError:
            return False

    return match


def mailbox_match(opcode: int | None) -> Callable[[bytes], bool]:
    def match(data: bytes) -> bool:
        try:
            message = parse_mailbox(data)
        except ParseError:
            return False
        return opcode is None or message.base_opcode == opcode

    return match


def crafted_config(bed: Testbed, vm: HostStack, opcode: Opcode, txn_id: int) -> bytes:
    """A config request a malicious VF driver writes on its own Tx ring (as `_crafted` in
    sim/runner.py); ADD_SA names a key the VF chose."""
    tlvs: tuple[Any, ...] = ()
    if opcode == Opcode.ADD_SA:
        request = AddSaRequest(
            direction=Direction.OUTBOUND,
            spi=0xBAD00000 + txn_id,
            dst=bytes((10, 0, 0, 2)),
            src=vm.addresses[4],
            alg=Algorithm.AES_GCM_128,
            key=bytes(20),
        )
        tlvs = encode_add_sa(request)
    header = EthernetHeader(bed.agent.config.mac, vm.mac, EtherType.CONFIG, vm.vlans)
    return build_ethernet(header) + build_config(ConfigMessage(opcode, txn_id, tlvs))


def forged_offload(bed: Testbed, vm: HostStack, victim: HostStack) -> bytes:
    """A frame with a forged Tx metadata tag (OFFLOAD=1) naming the victim's first IPv4
    outbound SA and its next number, with the victim's addresses (anti-spoof checks MAC and
    VLANs, not IP)."""
    state = next(
        (
            s
            for s in victim.states.values()
            if s.direction == Direction.OUTBOUND and len(s.dst) == 4
        ),
        None,
    )
    spi, src, dst, seq = (
        (state.spi, state.src, state.dst, state.oseq + 1) if state else (1, bytes(4), bytes(4), 1)
    )
    esp = spi.to_bytes(4, "big") + (seq & 0xFFFFFFFF).to_bytes(4, "big") + seq.to_bytes(8, "big")
    esp += b"forged by a malicious VF"
    ip = build_ipv4(IPv4Header(src, dst, IpProto.ESP, 20 + len(esp)))
    word = build_tx_metadata(TxMetadata(True, IpProto.UDP, 14, 5))
    peer_mac = victim.neighbors.get(dst, b"\xff" * 6)
    header = EthernetHeader(peer_mac, vm.mac, EtherType.IPV4, vm.vlans, metadata=word)
    return build_ethernet(header) + ip + esp


def clear_ip(meta: int, frame: bytes) -> bool:
    """Is `frame` an IPv4 or IPv6 packet without ESP?"""
    try:
        ethertype = ethernet_fields(frame, meta)[2]
    except ParseError:
        return False
    return ethertype in (EtherType.IPV4, EtherType.IPV6) and find_esp(frame, meta) is None


def chunks(tag: str, size: int, count: int) -> bytes:
    """`count` pieces of `size` bytes, each unique (its index after the run-unique `tag`): a
    large send whose every segment is a payload of its own."""
    return b"".join(f"<{tag}/{i}>".encode().ljust(size, b".") for i in range(count))


# -- what a campaign saw ----------------------------------------------------------------------


@dataclass(slots=True)
class CampaignStats:
    """Figures of a campaign, summed over its examples (reported, not judged on)."""

    examples: int = 0
    steps: int = 0
    seconds: float = 0.0
    rules: Counter[str] = field(default_factory=Counter)
    """Steps per rule."""
    armed: Counter[str] = field(default_factory=Counter)
    """Faults armed, by kind and link ("lose nic-to-agent")."""
    applied: Counter[str] = field(default_factory=Counter)
    """Items a fault acted on, by kind and link (the testbed's fault counters)."""
    attacks: Counter[str] = field(default_factory=Counter)
    observer: Counter[str] = field(default_factory=Counter)
    """The observers' summaries, summed."""
    fallbacks: int = 0
    """States that fell back to software after a reset (the stacks' "lost" results)."""
    esn_crossed: int = 0
    """ESN outbound states whose counter passed 2^32."""
    rekeys: int = 0
    """SA pairs the key manager rekeyed at a soft expiry."""
    restarts_found: int = 0
    """Agent restarts the PF handled (its counter, printed only)."""
    restarts_by_caps: int = 0
    """Of those, found by the periodic GET_CAPS (AGENT_STARTED lost)."""
    violations: list[str] = field(default_factory=list)

    def add(self, other: CampaignStats) -> None:
        for name in (
            "examples",
            "steps",
            "seconds",
            "fallbacks",
            "esn_crossed",
            "rekeys",
            "restarts_found",
            "restarts_by_caps",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("rules", "armed", "applied", "attacks", "observer"):
            getattr(self, name).update(getattr(other, name))
        self.violations += other.violations

    def __str__(self) -> str:
        def listed(counter: Counter[str]) -> str:
            return ", ".join(f"{key} {value}" for key, value in sorted(counter.items()))

        return "\n".join(
            (
                f"{self.steps} steps in {self.examples} examples, {self.seconds:.1f} s",
                f"observer: {listed(self.observer)}",
                f"faults armed: {listed(self.armed)}",
                f"faults applied: {listed(self.applied)}",
                f"attacks: {listed(self.attacks)}",
                f"fall-backs to software (OffloadLost): {self.fallbacks}; ESN states past 2^32:"
                f" {self.esn_crossed}; rekeys: {self.rekeys}; agent restarts handled:"
                f" {self.restarts_found} ({self.restarts_by_caps} found by GET_CAPS)",
                f"rules: {listed(self.rules)}",
                f"violations: {len(self.violations)}",
            )
        )


# -- the machine ------------------------------------------------------------------------------


SOFT = 8
"""The soft lifetime (packets) of the IPv6 pairs: the agent asks for their rekey as traffic
goes, and the testbed's key manager rekeys them, make before break, amid the faults."""


class FaultCampaign(RuleBasedStateMachine):
    """One port under random traffic, lifecycle events, faults and attacks; the wire observer
    judges after every step (see the module docstring)."""

    own_sequence: ClassVar[bool] = True
    """`Testbed(own_sequence=...)`: False is the naive hand-over (`--naive seq-handover`)."""
    vf_filter: ClassVar[bool] = True
    port_tagging: ClassVar[bool] = True
    pf_mac_known: ClassVar[bool] = True
    """`AgentConfig(pf_mac=<the PF's MAC>)`, else None (any source configures the agent)."""
    judged: ClassVar[tuple[type[Violation], ...]] = (
        NonceReuse,
        ReplayDelivered,
        CraftedConfigObeyed,
    )

    def __init__(self, stats: CampaignStats | None = None) -> None:
        super().__init__()
        self.stats = stats if stats is not None else CampaignStats()
        pf_mac = bytes.fromhex(PF_MAC.replace(":", ""))
        agent = AgentConfig(pf_mac=pf_mac if self.pf_mac_known else None)
        self.bed = bed = Testbed(agent=agent, own_sequence=self.own_sequence, key_manager=True)
        self.meta = bed.agent.config.meta_ethertype
        self.wire_read = 0
        """Records of agent-to-wire the clear-traffic check has read."""
        self.pf = bed.add_pf_host(
            "pf",
            PF_MAC,
            ipv4="10.0.0.1",
            ipv6="fd00::1",
            vf_filter=self.vf_filter,
            port_tagging=self.port_tagging,
            caps_interval=CAPS_INTERVAL,
        )
        self.started_lost = agent_started_match(self.meta)
        """The fault on AGENT_STARTED (`restart_agent` with its event lost)."""
        self.peers = {
            "peer": bed.add_peer("peer", "02:00:00:00:02:01", ipv4="10.0.0.2", ipv6="fd00::2"),
            "vlan-peer": bed.add_peer(
                "vlan-peer", "02:00:00:00:02:02", ipv4="10.0.100.2", ipv6="fd00:100::2", vlans=VLAN
            ),
        }
        peer = self.peers["peer"]
        bed.secure(self.pf, peer, family=4, esn=True, seq_start=ESN_START["pf"])
        bed.secure(self.pf, peer, family=6, mode=Mode.TUNNEL, soft_lifetime_packets=SOFT)
        self.hosts: dict[str, HostStack] = {"pf": self.pf}
        """Every host behind the NIC so far, live or destroyed (an attacker replays to any)."""
        self.slots = {spec.name: Slot(spec, spec.first_vf) for spec in SLOTS}
        for slot in self.slots.values():
            self._create(slot)
        self.next_vf = FIRST_FRESH_VF
        self.step = 0
        self.sends = 0
        self.txn_id = 0x0BAD_0000
        self.tcp_seq = 0
        self.observer = WireObserver(bed)

    # -- helpers ------------------------------------------------------------------------------

    def _begin(self, rule_name: str) -> None:
        self.step += 1
        self.stats.steps += 1
        self.stats.rules[rule_name] += 1

    def _create(self, slot: Slot) -> None:
        """A VM in the slot, on its VF (enabled now if it is not), with its SA pairs."""
        spec = slot.spec
        slot.generation += 1
        name = f"vm-{spec.name}{slot.generation}"
        vm = self.bed.add_vm(
            name,
            slot.vf,
            vf_mac(slot.vf),
            ipv4=spec.ipv4,
            ipv6=spec.ipv6,
            vlans=spec.vlans,
            trusted=spec.trusted,
        )
        slot.enabled = True
        peer = self.peers[spec.peer]
        esn_start = ESN_START.get(spec.name)
        slot.bundles = [
            self.bed.secure(
                vm, peer, family=4, esn=esn_start is not None, seq_start=esn_start or 0
            ),
            self.bed.secure(
                vm, peer, family=6, offload_a=not spec.software_v6, soft_lifetime_packets=SOFT
            ),
        ]
        slot.vm = vm
        self.hosts[name] = vm

    def _forget(self, slot: Slot) -> None:
        """The VM is gone: its peer deletes the SAs it had with it."""
        peer = self.peers[slot.spec.peer]
        for first in slot.bundles:
            bundle = self.bed.current(first)  # its latest rekey
            for state in (bundle.b_out, bundle.b_in):
                if state.handle in peer.states:
                    peer.delete_state(state.handle, self.bed.now)
        self.bed.settle(peer)
        slot.vm = None
        slot.bundles = []

    def _live(self) -> list[tuple[HostStack, HostStack]]:
        """(host behind the NIC, its peer) for every live one."""
        pairs = [(self.pf, self.peers["peer"])]
        for slot in self.slots.values():
            if slot.vm is not None:
                pairs.append((slot.vm, self.peers[slot.spec.peer]))
        return pairs

    def _vm_slots(self) -> list[str]:
        return sorted(name for name, slot in self.slots.items() if slot.vm is not None)

    def _send(
        self,
        local: HostStack,
        peer: HostStack,
        family: int,
        outbound: bool,
        kind: str,
        mss: int,
        count: int,
    ) -> HostStack:
        """One send (of `kind`) between a host behind the NIC and its peer; returns the
        sender (to settle). Every payload carries the step and the send's number."""
        source, to = (local, peer) if outbound else (peer, local)
        dst = to.addresses[4 if family == 4 else 16]
        self.sends += 1
        tag = f"{self.step}.{self.sends}"
        now = self.bed.now
        if kind == "udp":
            source.send_udp(dst, 4000, 53, chunks(tag, 64, 1), now)
        elif kind == "udp-tso":
            source.send_udp(dst, 4001, 5001, chunks(tag, mss, count), now, mss=mss)
        elif kind == "tcp-tso":
            data = chunks(tag, mss, count)
            self.tcp_seq = source.send_tcp(dst, 40000, 80, data, now, seq=self.tcp_seq, mss=mss)
        else:
            payloads = [chunks(f"{tag}/{i}", 100, 1) for i in range(count)]
            source.send_udp_burst(dst, 4002, 53, payloads, now)
        return source

    def _probe(self) -> None:
        """After an event: one datagram each way on every SA pair, so that what the event
        broke shows on the wire at once (and traffic goes on after every fault)."""
        senders = []
        for local, peer in self._live():
            for family in (4, 6):
                for outbound in (True, False):
                    senders.append(self._send(local, peer, family, outbound, "udp", 0, 1))
        self.bed.settle(*senders)

    def _arm(
        self, kind: str, link: str, count: int, delay: float, match: Callable[[bytes], bool]
    ) -> None:
        if kind == "lose":
            self.bed.lose(link, count, match)
        elif kind == "duplicate":
            self.bed.duplicate(link, count, match)
        else:
            self.bed.delay(link, count, delay, match)
        self.stats.armed[f"{kind} {link}"] += count

    # -- traffic --------------------------------------------------------------------------------

    @rule(
        kind=st.sampled_from(SEND_KINDS),
        mss=st.sampled_from(MSS),
        count=st.integers(1, 4),
    )
    def traffic_round(self, kind: str, mss: int, count: int) -> None:
        """Every live host behind the NIC and its peer send to each other, IPv4 and IPv6."""
        self._begin("traffic_round")
        senders = []
        for local, peer in self._live():
            for family in (4, 6):
                for outbound in (True, False):
                    senders.append(self._send(local, peer, family, outbound, kind, mss, count))
        self.bed.settle(*senders)

    @rule(
        data=st.data(),
        family=st.sampled_from((4, 6)),
        outbound=st.booleans(),
        kind=st.sampled_from(SEND_KINDS),
        mss=st.sampled_from(MSS),
        count=st.integers(1, 5),
    )
    def send(
        self, data: st.DataObject, family: int, outbound: bool, kind: str, mss: int, count: int
    ) -> None:
        self._begin("send")
        local, peer = data.draw(st.sampled_from(self._live()), label="between")
        self.bed.settle(self._send(local, peer, family, outbound, kind, mss, count))

    @rule(milliseconds=st.sampled_from((1, 5, 20)))
    def advance_time(self, milliseconds: int) -> None:
        self._begin("advance_time")
        self.bed.run(until=self.bed.now + milliseconds / 1000)
        self._probe()

    # -- lifecycle ------------------------------------------------------------------------------

    @rule()
    def reset_pf(self) -> None:
        self._begin("reset_pf")
        self.bed.reset_pf()
        self._probe()

    @rule(event_lost=st.booleans())
    def restart_agent(self, event_lost: bool) -> None:
        """The agent restarts (an FPGA reload) and loses its SAD; the PF re-installs every
        domain's SAs with their stacks' numbers (spec 9.4). With `event_lost`, its
        AGENT_STARTED is lost, every resend too: the PF finds the restart by the BOOT_ID of its
        next periodic GET_CAPS, up to a second later, and the SAs stay down until then."""
        self._begin("restart_agent_event_lost" if event_lost else "restart_agent")
        if event_lost:
            self.bed.lose("agent-to-nic", 1 + EVENT_RESENDS, self.started_lost)
        self.bed.restart_agent()
        self._probe()

    @precondition(lambda self: any(slot.vm is not None for slot in self.slots.values()))
    @rule(data=st.data())
    def reset_vf(self, data: st.DataObject) -> None:
        self._begin("reset_vf")
        slot = self.slots[data.draw(st.sampled_from(self._vm_slots()), label="slot")]
        assert slot.vm is not None
        self.bed.reset_vf(slot.vm)
        self._probe()

    @precondition(lambda self: any(slot.vm is not None for slot in self.slots.values()))
    @rule(data=st.data())
    def destroy_vm(self, data: st.DataObject) -> None:
        self._begin("destroy_vm")
        slot = self.slots[data.draw(st.sampled_from(self._vm_slots()), label="slot")]
        assert slot.vm is not None
        self.bed.destroy_vm(slot.vm)
        self._forget(slot)
        self._probe()

    @precondition(lambda self: any(slot.vm is None for slot in self.slots.values()))
    @rule(data=st.data())
    def create_vm(self, data: st.DataObject) -> None:
        """A new VM in an empty slot: on the VF its last VM left, or a fresh one after a
        removal."""
        self._begin("create_vm")
        empty = sorted(name for name, slot in self.slots.items() if slot.vm is None)
        self._create(self.slots[data.draw(st.sampled_from(empty), label="slot")])
        self._probe()

    @precondition(lambda self: any(slot.enabled for slot in self.slots.values()))
    @rule(data=st.data())
    def remove_vf(self, data: st.DataObject) -> None:
        """Remove a slot's VF (and its VM): its next VM gets a fresh VF number."""
        self._begin("remove_vf")
        enabled = sorted(name for name, slot in self.slots.items() if slot.enabled)
        slot = self.slots[data.draw(st.sampled_from(enabled), label="slot")]
        self.bed.remove_vf(slot.vf)
        if slot.vm is not None:
            self._forget(slot)
        slot.enabled = False
        slot.vf = self.next_vf
        self.next_vf += 1
        self._probe()

    # -- faults ---------------------------------------------------------------------------------

    @rule(
        link=st.sampled_from(CONFIG_LINKS),
        kind=st.sampled_from(FAULT_KINDS),
        opcode=st.sampled_from(CONFIG_OPCODES),
        count=st.integers(1, 4),
        delay=st.sampled_from(DELAYS),
    )
    def config_fault(
        self, link: str, kind: str, opcode: int | None, count: int, delay: float
    ) -> None:
        """Arm a fault on the next config frames (of one opcode or any) on a host-side link:
        requests toward the agent, replies from it."""
        self._begin("config_fault")
        self._arm(kind, link, count, delay, config_match(self.meta, opcode))

    @rule(
        link=st.sampled_from(MAILBOX_LINKS),
        kind=st.sampled_from(FAULT_KINDS),
        opcode=st.sampled_from(MAILBOX_OPCODES),
        count=st.integers(1, 3),
        delay=st.sampled_from(DELAYS),
    )
    def mailbox_fault(
        self, link: str, kind: str, opcode: int | None, count: int, delay: float
    ) -> None:
        """Arm a fault on the next mailbox messages (of one opcode, or any) in a direction."""
        self._begin("mailbox_fault")
        self._arm(kind, link, count, delay, mailbox_match(opcode))

    @rule(data=st.data(), frames=st.integers(4, 48), replies=st.booleans())
    def reset_losing_readds(self, data: st.DataObject, frames: int, replies: bool) -> None:
        """A PF reset (or a VF reset) whose re-adds are lost, every resend too (or their
        replies): the SAs fall back to software (OffloadLost) and traffic goes on there."""
        self._begin("reset_losing_readds")
        link = "agent-to-nic" if replies else "nic-to-agent"
        self._arm("lose", link, frames, 0.0, config_match(self.meta, Opcode.ADD_SA))
        target = data.draw(st.sampled_from(["pf", *self._vm_slots()]), label="reset")
        if target == "pf":
            self.bed.reset_pf()
        else:
            vm = self.slots[target].vm
            assert vm is not None
            self.bed.reset_vf(vm)
        self._probe()

    # -- attacks --------------------------------------------------------------------------------

    @precondition(lambda self: any(slot.vm is not None for slot in self.slots.values()))
    @rule(data=st.data(), what=st.sampled_from(("remove_all_sas", "add_sa", "forged_offload")))
    def crafted_frame(self, data: st.DataObject, what: str) -> None:
        """A VF's driver posts a crafted config request to the agent, or a frame with a forged
        Tx metadata tag (OFFLOAD=1) naming the PF host's SA."""
        self._begin("crafted_frame")
        slot = self.slots[data.draw(st.sampled_from(self._vm_slots()), label="slot")]
        vm = slot.vm
        assert vm is not None
        if what == "forged_offload":
            frame = forged_offload(self.bed, vm, self.pf)
        else:
            self.txn_id += 1
            opcode = Opcode.REMOVE_ALL_SAS if what == "remove_all_sas" else Opcode.ADD_SA
            frame = crafted_config(self.bed, vm, opcode, self.txn_id)
        trust = "trusted" if slot.spec.trusted else "untrusted"
        self.stats.attacks[f"{what} from a {trust} VF"] += 1
        self.bed.inject(vm, frame)
        self._probe()

    @rule(data=st.data(), last=st.integers(1, 8))
    def wire_replay(self, data: st.DataObject, last: int) -> None:
        """An attacker on the wire sends again the last ESP frames toward a host behind the
        NIC: a live one, or the VM destroyed last."""
        self._begin("wire_replay")
        names = [local.name for local, _ in self._live()]
        gone = [name for name in self.hosts if name not in self.bed.endpoints]
        name = data.draw(st.sampled_from(names + gone[-1:]), label="to")
        frames = self.bed.wire_frames_to(name, last=last)
        self.stats.attacks["frames replayed on the wire"] += len(frames)
        if frames:
            self.bed.wire_inject(frames)
        self._probe()

    # -- the judge ------------------------------------------------------------------------------

    @invariant()
    def wire_is_clean(self) -> None:
        """Spec 9.1-9.3 as the wire and the deliveries show them (nothing else is read)."""
        if self.judged == FaultCampaign.judged:
            self.observer.assert_clean()
            return
        self.observer.check()
        found = [v for v in self.observer.violations if isinstance(v, self.judged)]
        assert not found, f"{len(found)} violation(s):\n  " + "\n  ".join(map(str, found[:5]))

    @invariant()
    def nothing_in_clear(self) -> None:
        """Every pair of hosts has policies both ways: no IP packet leaves on the wire in
        clear, whatever state a fault took away (its policies drop what they select)."""
        records = self.bed.captures["agent-to-wire"].since(self.wire_read)
        self.wire_read += len(records)
        clear = [r for r in records if clear_ip(self.meta, r.frame)]
        assert not clear, (
            f"{len(clear)} IP packet(s) in clear on the wire, first at {clear[0].time}"
        )

    @invariant()
    def one_view_when_recovered(self) -> None:
        """Spec 9.4, once the PF has recovered: with no fault armed and no config transaction
        under way, the port runs on for one GET_CAPS interval and 100 ms (resends, timers, the
        probe that finds a restart whose event was lost); still quiet, the agent's SAD is the
        set of SAs the live hosts hold as offloaded. (The naive machines are judged on their
        own defect only.)"""
        bed, pf = self.bed, self.bed.pf
        if self.judged != FaultCampaign.judged or pf is None or pf.channel.pending:
            return
        if any(f.match is not self.started_lost for f in bed.faults):
            return
        bed.run(until=bed.now + CAPS_INTERVAL + 0.1)
        if bed.faults or pf.channel.pending:
            return
        diff = sad_diff(bed)
        orphans = [hex(sa.spi) for sa in diff.orphans]
        missing = [(host, hex(state.spi)) for host, state in diff.missing]
        assert not orphans and not missing, (
            f"the SAD and the hosts disagree: in the agent only {orphans}, held but not in the"
            f" agent {missing}"
        )

    def teardown(self) -> None:
        stats = self.stats
        stats.examples += 1
        self.observer.check()
        summary = self.observer.summary()
        for name in summary.__dataclass_fields__:
            stats.observer[name] += getattr(summary, name)
        stats.violations += [str(v) for v in self.observer.violations]
        bed = self.bed
        stats.rekeys += bed.rekeys
        if bed.pf is not None:
            stats.restarts_found += bed.pf.pf_counters.agent_restarts
            stats.restarts_by_caps += bed.pf.pf_counters.restarts_by_caps
        for kind, counts in (
            ("lose", bed.link_drops),
            ("duplicate", bed.link_duplicates),
            ("delay", bed.link_delays),
        ):
            for link, n in counts.items():
                if n:
                    stats.applied[f"{kind} {link}"] += n
        for host in self.hosts.values():
            stats.fallbacks += sum(r.operation == "lost" for r in bed.results(host))
            stats.esn_crossed += sum(
                s.esn and s.direction == Direction.OUTBOUND and s.oseq >= 2**32
                for s in host.states.values()
            )


# -- running it -------------------------------------------------------------------------------


def run_campaign(
    machine: type[FaultCampaign],
    *,
    seed_: int,
    examples: int,
    steps: int,
    stats: CampaignStats | None = None,
    phases: tuple[Phase, ...] = (Phase.generate, Phase.shrink),
) -> CampaignStats:
    """One round: `examples` examples of up to `steps` steps of `machine`, seeded with
    `seed_` (the same every run: a fixed seed and no example database). Hypothesis may end an
    example early (an overrun of a mutated example), so callers count the steps that ran."""
    stats = stats if stats is not None else CampaignStats()

    def factory() -> FaultCampaign:
        return machine(stats)

    seed(seed_)(factory)
    start = time.perf_counter()
    try:
        run_state_machine_as_test(
            factory,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                derandomize=False,
                phases=phases,
                report_multiple_bugs=False,
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            ),
        )
    finally:
        stats.seconds += time.perf_counter() - start
    return stats


def campaign_share(shard: int, target: int, examples: int, steps: int) -> CampaignStats:
    """Rounds of the campaign, each with the next seed of the shard, until `target` steps
    ran; a violation fails the round that met it (with hypothesis's shrunk steps)."""
    stats = CampaignStats()
    rounds = 0
    while stats.steps < target:
        run_campaign(
            FaultCampaign,
            seed_=SEED + 1000 * shard + rounds,
            examples=examples,
            steps=steps,
            stats=stats,
        )
        rounds += 1
    print(f"\nshard {shard}, {rounds} round(s):\n{stats}")
    return stats


@pytest.mark.parametrize("shard", range(SHARDS))
def test_fault_campaign(shard: int) -> None:
    """A share of the campaign: at least its steps ran, and the observer found nothing."""
    stats = campaign_share(shard, MIN_STEPS // SHARDS, EXAMPLES, STEPS)
    assert stats.steps >= MIN_STEPS // SHARDS, f"only {stats.steps} steps ran:\n{stats}"
    assert not stats.violations, "\n".join(stats.violations[:5])


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SLOW_SHARDS))
def test_long_fault_campaign(shard: int) -> None:
    """A share of the 100,000-step campaign (`make campaign`; deselected by default)."""
    share = SLOW_MIN_STEPS // SLOW_SHARDS
    stats = campaign_share(SHARDS + shard, share, SLOW_EXAMPLES, SLOW_STEPS)
    assert stats.steps >= share, f"only {stats.steps} steps ran:\n{stats}"
    assert not stats.violations, "\n".join(stats.violations[:5])


# -- the campaign can fail --------------------------------------------------------------------


class NaiveHandOverNonces(FaultCampaign):
    """`--naive seq-handover`: the stack numbers a TSO send once and re-adds carry no SEQ."""

    own_sequence = False
    judged = (NonceReuse,)


class NaiveHandOverReplays(FaultCampaign):
    """`--naive seq-handover`: re-installed inbound SAs start with an empty window and the
    stack does not check what the agent decrypted."""

    own_sequence = False
    judged = (ReplayDelivered,)


class NaiveVfFilter(FaultCampaign):
    """`--naive vf-filter`: no Tx EtherType filter on trusted VFs, no source check."""

    vf_filter = False
    pf_mac_known = False
    judged = (CraftedConfigObeyed,)


class NaivePortTag(FaultCampaign):
    """`--naive port-tag`: no port tag on untrusted VFs, no source check."""

    port_tagging = False
    pf_mac_known = False
    judged = (CraftedConfigObeyed,)


NAIVE = [
    (NaiveHandOverNonces, "nonce reused by SA"),
    (NaiveHandOverReplays, "replay delivered"),
    (NaiveVfFilter, "crafted config obeyed"),
    (NaivePortTag, "crafted config obeyed"),
]


@pytest.mark.parametrize(("machine", "found"), NAIVE, ids=[m.__name__ for m, _ in NAIVE])
def test_the_campaign_finds_the_defect_of_each_naive_switch(
    machine: type[FaultCampaign], found: str
) -> None:
    """The same machine with one fix switched off fails, on the violation that fix
    prevents (no shrinking: the first failing example is enough)."""
    with pytest.raises(AssertionError, match=found):
        run_campaign(
            machine,
            seed_=SEED,
            examples=NAIVE_EXAMPLES,
            steps=STEPS,
            phases=(Phase.generate,),
        )


class Picks:
    """Stands in for hypothesis's `st.data()` when a rule is called by hand: its draws return
    the given values in order."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def draw(self, strategy: object, label: object = None) -> Any:
        return self.values.pop(0)


Step = Callable[[FaultCampaign], None]
FIXED: list[tuple[type[FaultCampaign], str, list[Step]]] = [
    (
        NaiveHandOverNonces,
        "nonce reused by SA",
        [lambda m: m.traffic_round("tcp-tso", 536, 4), lambda m: m.reset_pf()],
    ),
    (
        NaiveHandOverReplays,
        "replay delivered",
        [
            lambda m: m.traffic_round("udp", 0, 1),
            lambda m: m.reset_vf(Picks("a")),
            lambda m: m.wire_replay(Picks(m.slots["a"].vm.name), 8),  # type: ignore[union-attr]
        ],
    ),
    (
        NaiveVfFilter,
        "crafted config obeyed",
        [lambda m: m.crafted_frame(Picks("a"), "remove_all_sas")],
    ),
    (NaivePortTag, "crafted config obeyed", [lambda m: m.crafted_frame(Picks("c"), "add_sa")]),
]


@pytest.mark.parametrize(
    ("machine", "found", "steps"), FIXED, ids=[m.__name__ for m, _, _ in FIXED]
)
def test_a_fixed_sequence_fails_under_its_naive_switch_and_passes_fixed(
    machine: type[FaultCampaign], found: str, steps: list[Step]
) -> None:
    """The shortest known way to each defect, through the campaign's own rules and judge."""
    for campaign, fails in ((machine, True), (FaultCampaign, False)):
        m = campaign()
        m.wire_is_clean()
        try:
            for step in steps:
                step(m)
                m.wire_is_clean()
        except AssertionError as error:
            assert fails, f"the fixed model failed: {error}"
            assert found in str(error)
            continue
        assert not fails, f"{machine.__name__} did not fail"


# -- a defect of spec 9.4 (one view of the SAD), fixed ----------------------------------------


def small_port() -> tuple[Testbed, HostStack, HostStack]:
    """A PF host and a peer."""
    pf_mac = bytes.fromhex(PF_MAC.replace(":", ""))
    bed = Testbed(agent=AgentConfig(pf_mac=pf_mac))
    pf = bed.add_pf_host("pf", PF_MAC, ipv4="10.0.0.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:01", ipv4="10.0.0.2")
    return bed, pf, peer


def test_a_lost_pf_reset_event_leaves_the_vms_traffic_flowing() -> None:
    """Found by the campaign (spec 9.4): a lost EVENT_PF_RESET left the VM's SAs offloaded
    in its stack and gone from the agent. The PF now resends it until the VF asks for its
    resources again."""
    bed, _, peer = small_port()
    vm = bed.add_vm("vm", 0, vf_mac(0), ipv4="10.0.0.3")
    bed.secure(vm, peer)
    bed.lose("pf-to-vf", 1, mailbox_match(MbxOpcode.EVENT_PF_RESET))
    bed.reset_pf()
    vm.send_udp(peer.addresses[4], 4000, 53, b"after the PF reset", bed.now)
    bed.settle(vm)
    assert [d.payload for d in bed.delivered(peer)] == [b"after the PF reset"]
