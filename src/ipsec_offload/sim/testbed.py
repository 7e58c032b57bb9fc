"""The simulator: one port (NIC + agent) between host stacks and a wire with remote peers.

Theory of operation: a deterministic discrete-event loop on an integer nanosecond clock
(`now_ns`; `now` is it in seconds, as the cores take it; `sim/clock.py`). Every hop over a link
takes `link_delay`; events at the same time run in the order `sim/clock.py` documents (the
agent's timers, then frames reaching the agent from the host side, then from the wire, then the
rest, first scheduled first), the order the golden model shares, so a run is the same every
time and its replay exact. The testbed is the only place where the sans-IO cores meet: it moves
descriptors from drivers to the NIC, frames from the NIC to the agent and on to the wire, and
back; it fires the drivers' retransmission timers and the agent's event resends (before the
frames that reach the agent at the same time, as the golden model does); it starts the agent
when the first frame reaches it and can restart it (`restart_agent`); it records every frame on
the NIC-agent link and the agent-wire link for pcap files.

Faults (spec section 9) act on the four link directions and on the two directions of the
mailbox alike: a `Fault` loses, duplicates (carries twice, back to back) or delays (carries
`seconds` later, so that later items overtake it) the next items its `match` selects. One
`_carry` applies them where a link ends. A link's capture is taken at the agent, as the golden
model needs it (spec section 8): what reached the agent, after the link's faults and at the
time it arrived (a lost frame is absent, a duplicated one twice, a delayed one late), and what
the agent emitted, before them. The mailbox log likewise holds what was delivered. An attacker
on the wire injects frames as a peer's (`wire_inject`); `secure` records every SA's keys in
`sa_keys` so that an observer can check the wire (`sim/observer.py`).
"""

from __future__ import annotations

import heapq
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial
from typing import Any, NamedTuple

from ipsec_offload.agent.agent import AgentConfig, AgentOutput, IpsecAgent
from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.driver.pf import PfDriver, VfState
from ipsec_offload.driver.plain import PlainDriver
from ipsec_offload.driver.ring import RingDriver
from ipsec_offload.driver.vf import Kek, VfDriver
from ipsec_offload.errors import ParseError, SimulationError, UsageError
from ipsec_offload.host.ip import host_addresses
from ipsec_offload.host.stack import Delivered, HostStack, StackEvent, StateExpire, StateResult
from ipsec_offload.host.xfrm import Mode, XfrmPolicy, XfrmState, host_network
from ipsec_offload.nic.descriptors import RxDescriptor, TxDescriptor
from ipsec_offload.nic.nic import Nic, SwitchMode, VsiKind
from ipsec_offload.sim.clock import NS_PER_S, Order, deadline_ns, seconds, to_ns
from ipsec_offload.sim.espsa import EspSaEntry
from ipsec_offload.sim.linux.guest import LinuxGuest, shared_guest
from ipsec_offload.sim.linux.peer import LinuxPeer, LinuxWire
from ipsec_offload.sim.pcap import PcapRecord, PcapSink
from ipsec_offload.wire.addr import check_unicast_mac, ip_to_str
from ipsec_offload.wire.config import Algorithm, Direction
from ipsec_offload.wire.ethernet import VlanTag, check_vlans, vlan_key
from ipsec_offload.wire.mailbox import parse_mailbox, peek_msg_id
from ipsec_offload.wire.packet import find_esp

LINKS = ("nic-to-agent", "agent-to-nic", "wire-to-agent", "agent-to-wire")
"""The link directions the testbed records and can inject faults on."""
MAILBOX_LINKS = ("vf-to-pf", "pf-to-vf")
"""The two directions of the mailbox, fault targets like the links (a fault's `match` gets
the message bytes)."""
FAULT_TARGETS = LINKS + MAILBOX_LINKS
TAPS = ("agent-hairpin",)
"""What the testbed records besides the links: frames the agent turned around (encrypted)."""

_AGENT_TIMER, _HOST_FIRST, _WIRE_SECOND, _OTHER = (
    Order.AGENT_TIMER,
    Order.HOST_SIDE,
    Order.WIRE_SIDE,
    Order.OTHER,
)
_ARRIVAL_ORDER = {"nic-to-agent": _HOST_FIRST, "wire-to-agent": _WIRE_SECOND}
"""Where a link's delayed frame goes among the events of its new time (default `_OTHER`)."""
_PCAP_TIME_LIMIT = 2**32 * NS_PER_S
Host = HostStack | LinuxPeer
"""A host of the testbed: a software stack (behind the NIC or a software peer on the wire),
or a Linux peer (a namespace of the Linux guest)."""
_SEQ_LIMIT = {False: 2**32 - 1, True: 2**64 - 1}


class LinkCapture(PcapSink):
    """A link's PcapSink that takes frames a burst at a time and makes their records when
    they are first read: a run whose captures nobody reads pays one append per burst."""

    __slots__ = ("_bursts",)

    def __init__(self) -> None:
        super().__init__()
        self._bursts: list[tuple[int, tuple[bytes, ...]]] = []

    def add_burst(self, time_ns: int, frames: Iterable[bytes]) -> None:
        """Record `frames`, all seen at `time_ns` nanoseconds."""
        burst = tuple(frames)
        if not burst:
            return
        valid_time = type(time_ns) is int and 0 <= time_ns < _PCAP_TIME_LIMIT
        if valid_time and all(isinstance(frame, bytes) for frame in burst):
            self._bursts.append((time_ns, burst))
            return
        for frame in burst:  # PcapRecord refuses one of them now, as `add` would
            self.add(time_ns, frame)

    def _catch_up(self) -> None:
        """Make the records of the bursts taken so far."""
        bursts, self._bursts = self._bursts, []
        for time, frames in bursts:
            for frame in frames:
                super().add(time, frame)

    def add(self, time_ns: int, frame: bytes) -> None:
        self._catch_up()
        super().add(time_ns, frame)

    @property
    def records(self) -> tuple[PcapRecord, ...]:
        self._catch_up()
        return super().records

    def __len__(self) -> int:
        self._catch_up()
        return super().__len__()

    def __iter__(self) -> Iterator[PcapRecord]:
        self._catch_up()
        return super().__iter__()

    def since(self, start: int) -> list[PcapRecord]:
        """The records from the `start`-th on (0: all of them): a reader that keeps its place
        reads each record once, however long the capture grows."""
        self._catch_up()
        return self._records[start:]

    def clear(self) -> None:
        self._bursts.clear()
        super().clear()

    def write(self, path: str | os.PathLike[str]) -> None:
        self._catch_up()
        super().write(path)


class FaultKind(Enum):
    """What a fault does to an item (frame or mailbox message) it selects."""

    LOSE = "lose"
    DUPLICATE = "duplicate"
    """Carry it twice, back to back."""
    DELAY = "delay"
    """Carry it `Fault.seconds` later than it would be: later items overtake it."""


@dataclass(slots=True)
class Fault:
    """Act on the next `count` items on `link` (a link direction or a mailbox direction)
    for which `match` is true."""

    link: str
    count: int
    match: Callable[[bytes], bool]
    kind: FaultKind = FaultKind.LOSE
    seconds: float = 0.0
    """How much later a DELAY fault carries the item."""


class SaKey(NamedTuple):
    """An SA's keys as `Testbed.sa_keys` keeps them."""

    key_material: bytes
    """Key || 4-byte salt (RFC 4106)."""
    algorithm: Algorithm
    esn: bool


@dataclass(slots=True)
class Endpoint:
    """A host stack with its driver, and its VSI when it sits behind the NIC."""

    stack: Host
    driver: PfDriver | VfDriver | PlainDriver | LinuxWire
    vsi: int | None
    vf: int | None = None
    log: list[StackEvent] = field(default_factory=list)
    timer: _Timer | None = None


class _Timer:
    """A driver's retransmission timer in the event queue; a re-armed one cancels the old,
    which then leaves the queue without moving simulated time."""

    __slots__ = ("at", "cancelled", "fire", "periodic")

    def __init__(self, at: int, fire: Callable[[], None], *, periodic: bool = False) -> None:
        self.at = at
        self.fire = fire
        self.cancelled = False
        self.periodic = periodic
        """A housekeeping poll that re-arms itself for ever (the PF's GET_CAPS probe) and that
        nothing waits on: a run until idle stops with only such timers left."""

    def __call__(self) -> None:
        self.fire()


@dataclass(frozen=True, slots=True)
class MailboxRecord:
    """One mailbox message as it was delivered."""

    time: float
    vf: int
    to_pf: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class SaBundle:
    """The four states protecting traffic between two hosts (out and in on each side)."""

    a_out: XfrmState
    a_in: XfrmState
    b_out: XfrmState
    b_in: XfrmState


@dataclass(frozen=True, slots=True)
class _Pair:
    """What `secure` was asked for two hosts, for the rekeys of the pair."""

    a: Host
    b: Host
    size: int
    common: dict[str, Any]
    offload_a: bool
    offload_b: bool
    protocol: int | None


class Testbed:
    """One FVL port with its agent, host stacks behind it and remote peers on the wire.

    Every frame on every link is kept in `captures`, and every payload a host received in
    its log (`delivered`); with `capture` False neither is, so that a long run of traffic
    holds no frame once it is delivered (count deliveries with the stacks' counters)."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        *,
        agent: AgentConfig | None = None,
        mode: SwitchMode = SwitchMode.VEB,
        link_delay: float = 1e-6,
        mailbox_delay: float = 1e-5,
        seed: int = 1,
        max_events: int = 10_000_000,
        capture: bool = True,
        own_sequence: bool = True,
        key_manager: bool = False,
        rekey_grace: float = 0.002,
        linux_guest: LinuxGuest | None = None,
    ) -> None:
        if agent is not None and not isinstance(agent, AgentConfig):
            raise UsageError(f"Testbed(agent=...) takes an AgentConfig, not {agent!r}")
        self.rng = random.Random(seed)
        self.agent = IpsecAgent(self._with_boot_id(agent or AgentConfig()))
        self._agent_started = False
        self._agent_timer: _Timer | None = None
        self._agent_timers_queued = 0
        self._periodic_queued = 0
        self.agent_restarts = 0
        self.nic = Nic(mode=mode, meta_ethertype=self.agent.config.meta_ethertype)
        self.now_ns = 0
        """The clock, in integer nanoseconds."""
        self.link_delay = link_delay
        self.mailbox_delay = mailbox_delay
        self.pf: PfDriver | None = None
        self.mailbox_log: list[MailboxRecord] = []
        self.max_events = max_events
        self.capture = capture
        self.own_sequence = own_sequence
        """Passed to every host stack (HostStack.own_sequence)."""
        self.key_manager = key_manager
        """The simulated key manager (an IKE daemon's stand-in): a soft expiry of a state of a
        pair made by `secure` asks for a rekey of the pair (`rekey`)."""
        self.rekey_grace = rekey_grace
        """Seconds a rekeyed pair's old states stay, for what is still in flight."""
        self.rekeys = 0
        self._next_reqid = 0
        self._pairs: dict[int, tuple[_Pair, SaBundle]] = {}
        """reqid -> (what secure was asked, the pair's current SAs)."""
        self._rekeying: set[int] = set()
        """The reqids of the pairs whose rekey is under way."""
        self._configuring: list[Callable[[], None]] | None = None
        """While a config action runs: those that came due meanwhile, to run after it."""
        self.captures: dict[str, LinkCapture] = {name: LinkCapture() for name in LINKS + TAPS}
        self.link_drops: dict[str, int] = dict.fromkeys(FAULT_TARGETS, 0)
        """Frames (mailbox messages) lost by a fault, per link (`FAULT_TARGETS`)."""
        self.link_duplicates: dict[str, int] = dict.fromkeys(FAULT_TARGETS, 0)
        """Frames (mailbox messages) carried twice by a fault, per link."""
        self.link_delays: dict[str, int] = dict.fromkeys(FAULT_TARGETS, 0)
        """Frames (mailbox messages) carried late by a fault, per link."""
        self.faults: list[Fault] = []
        self.wire_injections: list[bytes] = []
        """Every frame an attacker put on the wire (`wire_inject`), as given."""
        self.sa_keys: dict[tuple[bytes, bytes, int], SaKey] = {}
        """The keys of every SA `secure` created, by (IP source, IP destination, SPI); kept
        when the hosts are gone. A later SA of the same three replaces an earlier one."""
        self.endpoints: dict[str, Endpoint] = {}
        self.retired: dict[str, Endpoint] = {}
        """Hosts that are gone (destroyed VMs), kept for what they received."""
        self._queue: list[tuple[int, int, int, Callable[[], None]]] = []
        self._seq = 0
        self._next_spi = 0x1000
        self._used_spis: set[int] = set()
        self._next_handle = 1
        self.states_made: dict[int, XfrmState] = {}
        """Every state `secure` and `rekey` made, by handle (handles are the testbed's, one
        counter for every host): what a log's handle names, also once the state is gone."""
        self._running = False
        self._linux_guest = linux_guest
        self.linux: LinuxWire | None = None
        """The Linux peers and their guest, once a Linux peer is added."""

    # -- building the topology ------------------------------------------------------------

    def add_pf_host(
        self,
        name: str,
        mac: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        vlans: tuple[VlanTag, ...] = (),
        extended_key: bool = True,
        ownership_db: bool = True,
        port_tagging: bool = True,
        hairpin: bool = True,
        vf_filter: bool = True,
        resync: bool = True,
        caps_interval: float | None = 1.0,
        timeout: float = 0.001,
        retries: int = 3,
        port: int = 0,
    ) -> HostStack:
        """The host stack on the PF, with its PF driver (which probes the agent's caps and,
        in VEPA mode with `hairpin`, registers local addresses for the hairpin)."""
        if self.pf is not None:
            raise UsageError("this port has a PF host already")
        mac_b, vlans = self._check_new(name, mac, ipv4, ipv6, vlans)
        vsi = self.nic.add_vsi(VsiKind.PF, mac_b, vlans)
        driver = PfDriver(
            mac_b,
            vsi_id=vsi.vsi_id,
            vlans=vlans,
            agent_mac=self.agent.config.mac,
            port=port,
            timeout=timeout,
            retries=retries,
            extended_key=extended_key,
            ownership_db=ownership_db,
            port_tagging=port_tagging,
            hairpin=hairpin and self.nic.mode == SwitchMode.VEPA,
            vf_filter=vf_filter,
            resync=resync,
            caps_interval=caps_interval,
            config_ethertype=self.agent.config.config_ethertype,
            meta_ethertype=self.agent.config.meta_ethertype,
        )
        self.pf = driver
        stack = self._new_stack(name, driver, mac_b, ipv4, ipv6, vlans)
        self._add(Endpoint(stack, driver, vsi.vsi_id))
        driver.probe(self.now)
        driver.register_own_address(self.now)
        self.settle(stack)
        return stack

    def add_vm(
        self,
        name: str,
        vf: int,
        mac: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        vlans: tuple[VlanTag, ...] = (),
        trusted: bool = True,
        kek: Kek | None = None,
        quota: int = 128,
    ) -> HostStack:
        """A VM on VF `vf`: the VF is enabled (its VSI created) on first use; a VF whose
        previous VM was destroyed is reused. The VF driver asks the PF for resources."""
        pf = self._pf()
        if any(ep.vf == vf for ep in self.endpoints.values()):
            raise UsageError(f"VF {vf} has a VM already; destroy it first")
        mac_b, vlans = self._check_new(name, mac, ipv4, ipv6, vlans)
        info = pf.vfs.get(vf)
        if info is None or info.state == VfState.DISABLED:
            vsi = self.nic.add_vsi(VsiKind.VF, mac_b, vlans)
            pf.enable_vf(vf, vsi.vsi_id, mac_b, vlans, trusted=trusted, quota=quota, now=self.now)
            vsi_id = vsi.vsi_id
        elif (info.mac, vlan_key(info.vlans)) != (mac_b, vlan_key(vlans)):
            raise UsageError(f"VF {vf} has MAC and VLANs set by the PF; use them for its VM")
        else:
            vsi_id = info.vsi_id
        driver = VfDriver(vf, mac_b, vlans, kek=kek)
        stack = self._new_stack(name, driver, mac_b, ipv4, ipv6, vlans)
        self._add(Endpoint(stack, driver, vsi_id, vf))
        driver.start(self.now)
        self.settle(stack, self.endpoints[self.pf_name()].stack)
        return stack

    def destroy_vm(self, vm: HostStack | str) -> None:
        """`virsh destroy`: the VM vanishes without a word; the hypervisor resets its VF."""
        ep = self.endpoint(vm)
        if ep.vf is None:
            raise UsageError(f"{ep.stack.name} is not a VM")
        self._remove(ep)
        self._pf().vf_flr(ep.vf, self.now)
        self.settle(self.endpoints[self.pf_name()].stack)

    def reset_vf(self, vm: HostStack | str) -> None:
        """The VF driver inside the VM reloads: RESET, REQUEST_RESOURCES, re-add its SAs."""
        ep = self.endpoint(vm)
        if not isinstance(ep.driver, VfDriver):
            raise UsageError(f"{ep.stack.name} is not a VM")
        ep.driver.reset(self.now)
        self.settle(ep.stack)

    def remove_vf(self, vf: int) -> None:
        """Remove a VF (destroying its VM first, if any) and, once clean, its VSI."""
        for ep in list(self.endpoints.values()):
            if ep.vf == vf:
                self._remove(ep)
        pf = self._pf()
        pf.remove_vf(vf, self.now)
        self.settle(self.endpoints[self.pf_name()].stack)
        info = pf.vfs[vf]
        if info.state == VfState.DISABLED:
            self.nic.remove_vsi(info.vsi_id)

    def restart_agent(self) -> None:
        """The agent restarts (spec 9): it loses its SAD, hairpin table, txn memory and
        pending events, and comes up with a new BOOT_ID from the testbed's generator and the
        same configuration otherwise; the NIC's links stay. It starts at once (AGENT_STARTED
        where it has a destination: the PF's MAC, if it was given it)."""
        if self._agent_timer is not None:
            self._agent_timer.cancelled = True
            self._agent_timer = None
        self.agent = IpsecAgent(self._with_boot_id(self.agent.config))
        self.agent_restarts += 1
        self._agent_started = True
        self._agent_out(self.agent.start(self.now))
        if not self._running:
            self._run(None, quiet=True)

    def _with_boot_id(self, config: AgentConfig) -> AgentConfig:
        """`config` with a new BOOT_ID (u64) drawn from the testbed's seeded generator."""
        return replace(config, boot_id=self.rng.getrandbits(64))

    def reset_pf(self) -> None:
        """The PF driver reloads: it flushes the port and the VFs re-add their SAs."""
        self._pf().reset(self.now)
        self.settle(*[ep.stack for ep in self.endpoints.values()])

    def inject(self, host: HostStack | str, frame: bytes, l2tag: int | None = None) -> None:
        """A raw frame on a host's Tx ring, as a (possibly malicious) driver would post it."""
        ep = self.endpoint(host)
        if ep.vsi is None:
            raise UsageError(f"{ep.stack.name} is not behind the NIC")
        if not isinstance(frame, bytes):
            raise UsageError(f"inject takes the frame as bytes, not {type(frame).__name__}")
        if l2tag is not None and not (isinstance(l2tag, int) and 0 <= l2tag <= 0xFFFFFFFF):
            raise UsageError(f"l2tag {l2tag!r}: the descriptor's L2TAG is 32 bits (0 .. 2^32-1)")
        vsi = ep.vsi
        descs = [TxDescriptor(frame, l2tag)]
        self._schedule(0, _OTHER, lambda: self._nic_tx(vsi, descs))
        if not self._running:
            self._run(None, quiet=True)

    def mailbox_inject(self, vf: int, data: bytes) -> list[bytes]:
        """Raw bytes into the PF from VF `vf`'s mailbox (a hostile VF); returns the PF's
        immediate answers to them (its msg_id, to VF `vf`). Whatever else the PF sends then
        (notices, answers to other VFs) goes over the mailbox as usual."""
        pf = self._pf()
        pf.mailbox_receive(vf, data, self.now)
        msg_id = peek_msg_id(data)
        replies = []
        for target, message in pf.mailbox_messages():
            if target == vf and _is_reply_to(message, msg_id):
                replies.append(message)
            else:
                self._schedule(self._mailbox_ns, _OTHER, partial(self._to_vf, target, message))
        self.settle(self.endpoints[self.pf_name()].stack)
        return replies

    def _pf(self) -> PfDriver:
        if self.pf is None:
            raise UsageError("add the PF host first (add_pf_host)")
        return self.pf

    def pf_name(self) -> str:
        return next(name for name, ep in self.endpoints.items() if ep.driver is self.pf)

    def add_peer(
        self,
        name: str,
        mac: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        vlans: tuple[VlanTag, ...] = (),
    ) -> HostStack:
        """A remote host on the wire doing ESP in software (on a VLAN if `vlans`)."""
        mac_b, vlans = self._check_new(name, mac, ipv4, ipv6, vlans)
        driver = PlainDriver(mac_b)
        stack = self._new_stack(name, driver, mac_b, ipv4, ipv6, vlans)
        self._add(Endpoint(stack, driver, None))
        return stack

    def add_linux_peer(
        self,
        name: str,
        mac: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        vlans: tuple[VlanTag, ...] = (),
    ) -> LinuxPeer:
        """A remote host on the wire whose IP and ESP are a real Linux kernel's: a network
        namespace of the Linux guest (the testbed's `linux_guest`, else the one this process
        boots once and shares, `sim.linux.guest.shared_guest`). Frames to and from it cross
        in real time while the simulation waits for them; docs/linux-peer.md."""
        mac_b, vlans = self._check_new(name, mac, ipv4, ipv6, vlans)
        if self.linux is None:
            self.linux = LinuxWire(self._linux_guest or shared_guest())
        peer = LinuxPeer(self.linux, name, mac_b, host_addresses(name, ipv4, ipv6), vlans)
        self._add(Endpoint(peer, self.linux, None))
        return peer

    def _check_new(
        self, name: str, mac: str, ipv4: str | None, ipv6: str | None, vlans: object
    ) -> tuple[bytes, tuple[VlanTag, ...]]:
        """A new host's MAC and VLANs, once all it is given is checked, before anything is
        built: a unicast MAC that is not the agent's, addresses of their families, and none
        of them another host's in its L2 domain (its VLAN stack)."""
        if name in self.endpoints:
            raise UsageError(f"a host named {name!r} exists")
        value = _mac(mac, f"host {name}")
        if value == self.agent.config.mac:
            raise UsageError(f"host {name}: {mac} is the agent's MAC; give the host its own")
        tags = check_vlans(vlans, f"host {name}")
        addresses = set(host_addresses(name, ipv4, ipv6).values())
        domain = vlan_key(tags)
        for other in self.endpoints.values():
            if vlan_key(other.stack.vlans) != domain:
                continue
            if other.stack.mac == value:
                raise UsageError(f"host {name}: {other.stack.name} has its MAC already")
            shared = set(other.stack.addresses.values()) & addresses
            if shared:
                raise UsageError(
                    f"host {name}: {other.stack.name} has {ip_to_str(shared.pop())}"
                    " already (traffic to it would reach neither)"
                )
        return value, tags

    def _new_stack(
        self,
        name: str,
        driver: PfDriver | VfDriver | PlainDriver,
        mac: bytes,
        ipv4: str | None,
        ipv6: str | None,
        vlans: tuple[VlanTag, ...],
    ) -> HostStack:
        return HostStack(
            name, driver, mac, ipv4=ipv4, ipv6=ipv6, vlans=vlans, own_sequence=self.own_sequence
        )

    def _add(self, ep: Endpoint) -> None:
        """Join a host to the L2 domain of its VLAN stack: hosts there learn each other."""
        stack = ep.stack
        domain = vlan_key(stack.vlans)
        for other in self.endpoints.values():
            if vlan_key(other.stack.vlans) != domain:
                continue
            for addr in other.stack.addresses.values():
                stack.neighbors[addr] = other.stack.mac
            for addr in stack.addresses.values():
                other.stack.neighbors[addr] = stack.mac
        self.endpoints[stack.name] = ep
        if isinstance(ep.driver, RingDriver):
            ep.driver.wait = partial(self._wait, ep)

    def _remove(self, ep: Endpoint) -> None:
        del self.endpoints[ep.stack.name]
        self.retired[ep.stack.name] = ep

    def endpoint(self, stack: Host | str) -> Endpoint:
        name = stack if isinstance(stack, str) else stack.name
        try:
            return self.endpoints[name]
        except KeyError:
            raise UsageError(f"no host named {name!r} on this testbed") from None

    def _stack(self, host: Host | str) -> Host:
        """A host on this testbed, live or destroyed."""
        if not isinstance(host, str):
            return host
        ep = self.endpoints.get(host, self.retired.get(host))
        if ep is None:
            raise UsageError(f"no host named {host!r} on this testbed, live or destroyed")
        return ep.stack

    # -- security associations ------------------------------------------------------------

    def secure(
        self,
        a: Host,
        b: Host,
        *,
        family: int = 4,
        mode: Mode = Mode.TRANSPORT,
        algorithm: Algorithm = Algorithm.AES_GCM_128,
        esn: bool = False,
        replay_window: int = 64,
        offload_a: bool = True,
        offload_b: bool = False,
        protocol: int | None = None,
        spis: tuple[int, int] | None = None,
        seq_start: int = 0,
        soft_lifetime_packets: int = 0,
        lifetime_packets: int = 0,
        soft_lifetime_bytes: int = 0,
        lifetime_bytes: int = 0,
    ) -> SaBundle:
        """Create, install and wait for a pair of SAs (a->b and b->a) with policies between
        a's and b's addresses of `family` (4 or 6). Keys come from the seeded generator, SPIs
        too unless `spis` (a->b, b->a) names them; offload is asked where the host's device
        has it. Every SA's keys go into `sa_keys`. The four states share a new reqid, which
        their rekeys (`rekey`) keep.

        `seq_start` starts the SAs mid-stream: both outbound states have used the numbers up
        to it (the first packet carries `seq_start` + 1) and both inbound windows have seen
        them (to let an ESN SA cross 2^32 within a few packets). The lifetimes (packets, 0:
        none) and bytes go to every state; the agent reports the limits of offloaded ones."""
        size = 4 if family == 4 else 16
        if a.addresses.get(size) is None or b.addresses.get(size) is None:
            raise UsageError(f"{a.name} and {b.name} both need an IPv{family} address")
        last = _SEQ_LIMIT[esn] - 1
        if not 0 <= seq_start <= last:
            bits = "64-bit sequence numbers (ESN)" if esn else "32-bit sequence numbers (no ESN)"
            raise UsageError(
                f"seq_start {seq_start}: with {bits} use 0 .. {last:#x}, so that the first"
                " packet's number, seq_start + 1, fits"
            )
        self._next_reqid += 1
        reqid = self._next_reqid  # the adds below run the port: another secure may come
        pair = _Pair(
            a,
            b,
            size,
            {
                "algorithm": algorithm,
                "mode": mode,
                "esn": esn,
                "replay_window": replay_window,
                "soft_lifetime_packets": soft_lifetime_packets,
                "lifetime_packets": lifetime_packets,
                "soft_lifetime_bytes": soft_lifetime_bytes,
                "lifetime_bytes": lifetime_bytes,
                "reqid": reqid,
            },
            offload_a,
            offload_b,
            protocol,
        )
        bundle = self._install(pair, spis, seq_start)
        self._pairs[reqid] = (pair, bundle)
        return bundle

    def current(self, bundle: SaBundle) -> SaBundle:
        """The SAs that protect `bundle`'s pair now: `bundle` itself, or its latest rekey."""
        pair = self._pairs.get(bundle.a_out.reqid)
        return bundle if pair is None else pair[1]

    def rekey(self, bundle: SaBundle) -> SaBundle:
        """A new pair of SAs in place of `bundle` (new SPIs and keys, the same reqid and
        settings), make before break: the new states and the policies naming them are
        installed at once, and the old states stay for `rekey_grace` seconds to take what is
        still in flight, then are deleted. As an IKE daemon answers a soft expiry."""
        reqid = bundle.a_out.reqid
        pair, current = self._pairs.get(reqid, (None, None))
        if pair is None or current is not bundle:
            raise UsageError("rekey takes the current SaBundle of a pair made by secure")
        # the adds wait for the agent, and the port runs meanwhile: a second soft expiry of
        # the pair must not start a second rekey
        self._rekeying.add(reqid)
        try:
            new = self._install(pair, None, 0)
        finally:
            self._rekeying.discard(reqid)
        self._pairs[reqid] = (pair, new)
        self.rekeys += 1

        def retire() -> None:
            for stack, state in (
                (pair.a, bundle.a_out),
                (pair.a, bundle.a_in),
                (pair.b, bundle.b_out),
                (pair.b, bundle.b_in),
            ):
                if self.endpoints.get(stack.name) is not None and state.handle in stack.states:
                    stack.delete_state(state.handle, self.now)
            self.settle(pair.a, pair.b)

        self.at(self.now + self.rekey_grace, retire, config=True)
        return new

    def _install(self, pair: _Pair, spis: tuple[int, int] | None, seq_start: int) -> SaBundle:
        """Create and install a pair's four states and the policies naming them (a policy
        with the selector of one already there replaces it)."""
        a, b, size, common = pair.a, pair.b, pair.size, pair.common
        a_addr, b_addr = a.addresses[size], b.addresses[size]
        key_len = 16 if common["algorithm"] == Algorithm.AES_GCM_128 else 32
        ab_key = self.rng.randbytes(key_len + 4)
        ba_key = self.rng.randbytes(key_len + 4)
        ab_spi, ba_spi = spis if spis is not None else (self._spi(), self._spi())
        self._used_spis.update((ab_spi, ba_spi))
        self.sa_keys[a_addr, b_addr, ab_spi] = SaKey(ab_key, common["algorithm"], common["esn"])
        self.sa_keys[b_addr, a_addr, ba_spi] = SaKey(ba_key, common["algorithm"], common["esn"])
        new = partial(self._state, common=common, seq_start=seq_start)
        bundle = SaBundle(
            a_out=new(Direction.OUTBOUND, ab_spi, a_addr, b_addr, ab_key),
            a_in=new(Direction.INBOUND, ba_spi, b_addr, a_addr, ba_key),
            b_out=new(Direction.OUTBOUND, ba_spi, b_addr, a_addr, ba_key),
            b_in=new(Direction.INBOUND, ab_spi, a_addr, b_addr, ab_key),
        )
        for stack, out, inn, offload, peer in (
            (a, bundle.a_out, bundle.a_in, pair.offload_a, b_addr),
            (b, bundle.b_out, bundle.b_in, pair.offload_b, a_addr),
        ):
            stack.add_state(out, self.now, offload=offload)
            stack.add_state(inn, self.now, offload=offload)
            own = stack.addresses[size]
            stack.add_policy(
                XfrmPolicy(
                    Direction.OUTBOUND,
                    host_network(own),
                    host_network(peer),
                    out.handle,
                    pair.protocol,
                )
            )
            stack.add_policy(
                XfrmPolicy(
                    Direction.INBOUND,
                    host_network(peer),
                    host_network(own),
                    inn.handle,
                    pair.protocol,
                )
            )
            self.settle(stack)
        return bundle

    def _rekey_on(self, events: list[StackEvent]) -> None:
        """The simulated key manager: a soft expiry of a state of a pair's current SAs asks
        for a rekey of that pair (once: a state of an older pair is already replaced)."""
        for event in events:
            if not isinstance(event, StateExpire) or event.hard:
                continue
            for _pair, bundle in self._pairs.values():
                handles = (bundle.a_out, bundle.a_in, bundle.b_out, bundle.b_in)
                if any(s.handle == event.handle for s in handles):
                    self.at(self.now, partial(self._rekey_current, bundle), config=True)

    def _rekey_current(self, bundle: SaBundle) -> None:
        """Rekey `bundle` unless it was rekeyed meanwhile (both its directions expire)."""
        reqid = bundle.a_out.reqid
        _pair, current = self._pairs[reqid]
        if current is bundle and reqid not in self._rekeying:
            self.rekey(bundle)

    def _spi(self) -> int:
        """The next SPI not used by any SA of this testbed."""
        self._next_spi += 1
        while self._next_spi in self._used_spis:
            self._next_spi += 1
        return self._next_spi

    def _state(
        self,
        direction: Direction,
        spi: int,
        src: bytes,
        dst: bytes,
        key: bytes,
        common: dict[str, Any],
        seq_start: int,
    ) -> XfrmState:
        handle = self._next_handle
        self._next_handle += 1
        state = XfrmState(handle, direction, spi, src, dst, key_material=key, **common)
        self.states_made[handle] = state
        if direction == Direction.OUTBOUND:
            state.oseq = seq_start
        else:
            state.replay = ReplayWindow(state.replay_window, state.esn, seq_start)
        return state

    def esp_sa_entries(self) -> list[EspSaEntry]:
        """Every SA of every host, once each, for Wireshark's esp_sa file."""
        seen: dict[tuple[bytes, bytes, int], EspSaEntry] = {}
        for ep in self.endpoints.values():
            for s in ep.stack.states.values():
                seen.setdefault(
                    (s.src, s.dst, s.spi),
                    EspSaEntry(s.src, s.dst, s.spi, s.key_material, int(s.algorithm), s.esn),
                )
        return list(seen.values())

    # -- running --------------------------------------------------------------------------

    def settle(self, *stacks: Host) -> None:
        """Let the given hosts act on what their API calls queued, then run until idle but
        for the agent's timers (the resends of its unanswered events, which `run()` fires in
        their time, as does any later run through it) and the PF's periodic GET_CAPS probe.

        Called from an action already running in the loop (a scheduled scenario event), it
        only queues: the loop that is running carries on in time order."""
        for stack in stacks:
            self._flush(self.endpoint(stack))
        if not self._running:
            self._run(None, quiet=True)

    def at(self, time: float, action: Callable[[], None], *, config: bool = False) -> None:
        """Run `action` at simulated time `time` (not before now). A `config` action (an
        `ip xfrm` command, the key manager's rekey) that comes due while another waits for
        the agent runs once that one returns: Linux runs xfrm configuration one command at a
        time (xfrm_cfg_mutex), while the port, faults and traffic go on meanwhile."""
        if config:
            action = partial(self._config, action)
        self._schedule(max(0, to_ns(time) - self.now_ns), _OTHER, action)

    def _config(self, action: Callable[[], None]) -> None:
        if self._configuring is not None:
            self._configuring.append(action)
            return
        self._configuring = [action]
        try:
            while self._configuring:
                self._configuring.pop(0)()
        finally:
            self._configuring = None

    def run(self, until: float | None = None) -> None:
        """Process events until simulated time `until`, or without it until none is left but
        the PF's periodic GET_CAPS probe (a poll for ever: `run(until=...)` fires it in its
        time); the agent's event resends included (`settle` stops short of those)."""
        self._run(until, quiet=False)

    def _run(self, until: float | None, *, quiet: bool) -> None:
        """The event loop. Without `until`, stop when nothing but periodic timers is left;
        `quiet`: stop as well when nothing but those and the agent's timers is left (the
        resends of events nobody answers must not move a host's API calls 60 ms on)."""
        if self._running:
            raise UsageError("Testbed.run() is already running (call it from outside events)")
        processed = 0
        queue = self._queue
        until_ns = None if until is None else to_ns(until)
        self._running = True
        try:
            while queue and (until_ns is None or queue[0][0] <= until_ns):
                idle = self._periodic_queued if until is None else 0
                if quiet:
                    idle += self._agent_timers_queued
                if len(queue) == idle:
                    break
                processed = self._step(processed)
        finally:
            self._running = False
        if until_ns is not None:
            self.now_ns = max(self.now_ns, until_ns)

    def _step(self, processed: int) -> int:
        """Run the next event of the queue; `processed` counts those run so far."""
        at, prio, _seq, action = heapq.heappop(self._queue)
        if prio == _AGENT_TIMER:
            self._agent_timers_queued -= 1
        if isinstance(action, _Timer):
            self._periodic_queued -= action.periodic
            if action.cancelled:
                return processed
        self.now_ns = max(self.now_ns, at)
        action()
        if processed >= self.max_events:
            raise SimulationError(f"no quiet after {self.max_events} events")
        return processed + 1

    def _wait(self, ep: Endpoint, done: Callable[[], bool], now: float) -> float:
        """A driver's `wait` (an xdo_dev_* call that needs the agent's answer, as a Linux
        driver sleeps on a completion): send what it queued, then run the port's events in
        time order until `done()`, from inside the loop or outside it. Returns the time."""
        self._flush_driver(ep)
        running, self._running = self._running, True
        processed = 0
        try:
            while not done():
                if not self._queue:
                    raise SimulationError(
                        f"{ep.stack.name}'s driver waits for an answer nothing left can give"
                    )
                processed = self._step(processed)
        finally:
            self._running = running
        return self.now

    @property
    def next_event_time(self) -> float | None:
        """When the next queued event happens, in seconds (None: nothing queued)."""
        return seconds(self._queue[0][0]) if self._queue else None

    def delivered(self, stack: Host) -> list[Delivered]:
        """Everything the host's applications received so far (also once it is gone)."""
        if not self.capture:
            raise UsageError(
                "this Testbed keeps no deliveries (capture=False): count them with"
                " stack.counters.rx_delivered, or make it with capture=True"
            )
        return [e for e in self._log(stack) if isinstance(e, Delivered)]

    def results(self, stack: Host) -> list[StateResult]:
        """The outcome of every state operation the host made so far."""
        return [e for e in self._log(stack) if isinstance(e, StateResult)]

    def _log(self, stack: Host) -> list[StackEvent]:
        gone = self.retired.get(stack.name)
        return gone.log if gone is not None and gone.stack is stack else self.endpoint(stack).log

    # -- faults and attacks -----------------------------------------------------------------

    def lose(self, link: str, count: int = 1, match: Callable[[bytes], bool] | None = None) -> None:
        """Lose the next `count` frames on a link, or messages in a mailbox direction (those
        `match` selects, default all)."""
        self._fault(Fault(link, count, match or _every, FaultKind.LOSE))

    def duplicate(
        self, link: str, count: int = 1, match: Callable[[bytes], bool] | None = None
    ) -> None:
        """Carry each of the next `count` frames (messages) on a link twice, back to back."""
        self._fault(Fault(link, count, match or _every, FaultKind.DUPLICATE))

    def delay(
        self,
        link: str,
        count: int,
        seconds: float,
        match: Callable[[bytes], bool] | None = None,
    ) -> None:
        """Carry each of the next `count` frames (messages) on a link `seconds` later than it
        would be; what follows it on the link meanwhile overtakes it."""
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
            raise UsageError(f"delay of {seconds!r} seconds: give a number above 0")
        self._fault(Fault(link, count, match or _every, FaultKind.DELAY, float(seconds)))

    def _fault(self, fault: Fault) -> None:
        if fault.link not in FAULT_TARGETS:
            raise UsageError(f"unknown link {fault.link!r}: use one of {', '.join(FAULT_TARGETS)}")
        if not isinstance(fault.count, int) or fault.count < 1:
            raise UsageError(f"a fault's count is {fault.count!r}: give how many items, 1 or more")
        self.faults.append(fault)

    def wire_inject(self, frames: Iterable[bytes]) -> None:
        """An attacker on the wire: `frames` reach the agent as a peer's would (recorded on
        wire-to-agent, subject to its faults) and are remembered in `wire_injections`."""
        burst = list(frames)
        if not all(isinstance(frame, bytes) for frame in burst):
            raise UsageError("wire_inject takes frames as bytes")
        self.wire_injections.extend(burst)
        self._schedule(self._link_ns, _WIRE_SECOND, lambda: self._agent_wire(burst))
        if not self._running:
            self._run(None, quiet=True)

    def peer_inject(self, frames: Iterable[bytes]) -> None:
        """An attacker on the wire: `frames` reach the remote peers as the agent's would (they
        are remembered in `wire_injections`; no link records them)."""
        burst = list(frames)
        if not all(isinstance(frame, bytes) for frame in burst):
            raise UsageError("peer_inject takes frames as bytes")
        self.wire_injections.extend(burst)
        self._schedule(self._link_ns, _OTHER, lambda: self._peers_rx(burst))
        if not self._running:
            self._run(None, quiet=True)

    def wire_frames_to(self, host: Host | str, last: int | None = None) -> list[bytes]:
        """The ESP frames captured on wire-to-agent so far whose destination MAC is `host`'s
        (a live or a destroyed one), oldest first; with `last`, only the last that many: what
        an attacker on the wire replays."""
        if not self.capture:
            raise UsageError("this Testbed keeps no frames: make it with capture=True")
        if last is not None and last < 0:
            raise UsageError(f"last={last}: give how many frames, 0 or more (None: all)")
        mac = self._stack(host).mac
        meta = self.agent.config.meta_ethertype
        frames = []
        for record in self.captures["wire-to-agent"].records:
            esp = find_esp(record.frame, meta)
            if esp is not None and esp.eth.dst == mac:
                frames.append(record.frame)
        return frames if last is None else frames[max(0, len(frames) - last) :]

    # -- the plumbing ---------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The clock in seconds, as the sans-IO cores take `now`."""
        return seconds(self.now_ns)

    @property
    def link_delay(self) -> float:
        """Seconds a hop over a link takes (whole nanoseconds)."""
        return seconds(self._link_ns)

    @link_delay.setter
    def link_delay(self, value: float) -> None:
        self._link_ns = to_ns(value)

    @property
    def mailbox_delay(self) -> float:
        """Seconds a mailbox message takes (whole nanoseconds)."""
        return seconds(self._mailbox_ns)

    @mailbox_delay.setter
    def mailbox_delay(self, value: float) -> None:
        self._mailbox_ns = to_ns(value)

    def _schedule(self, delay_ns: int, prio: int, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now_ns + delay_ns, prio, self._seq, action))

    def _carry(self, link: str, items: list[bytes], onward: Callable[[list[bytes]], None]) -> None:
        """Hand `items` (frames or mailbox messages) at the end of `link` to `onward`, through
        the link's faults."""
        if self.faults:
            items = self._faulted(link, items, onward)
        if items:
            onward(items)

    def _faulted(
        self, link: str, items: list[bytes], onward: Callable[[list[bytes]], None]
    ) -> list[bytes]:
        """The items to hand on now: without a lost one, with a duplicated one twice in a row
        and without a delayed one, which is handed on alone when its delay is over."""
        carried = []
        for item in items:
            fault = next((f for f in self.faults if f.link == link and f.match(item)), None)
            if fault is None:
                carried.append(item)
                continue
            fault.count -= 1
            if fault.count <= 0:
                self.faults.remove(fault)
            if fault.kind == FaultKind.LOSE:
                self.link_drops[link] += 1
            elif fault.kind == FaultKind.DUPLICATE:
                self.link_duplicates[link] += 1
                carried += (item, item)
            else:
                self.link_delays[link] += 1
                order = _ARRIVAL_ORDER.get(link, _OTHER)
                self._schedule(to_ns(fault.seconds), order, partial(onward, [item]))
        return carried

    def _record(self, link: str, frames: Iterable[bytes]) -> None:
        if self.capture:
            self.captures[link].add_burst(self.now_ns, frames)

    def _flush(self, ep: Endpoint) -> None:
        """After a host acted: collect its events, send what its driver queued, arm timers."""
        if self.endpoints.get(ep.stack.name) is not ep:
            return  # the VM was destroyed meanwhile
        ep.stack.poll(self.now)
        events = ep.stack.events()
        if self.capture:
            ep.log.extend(events)
        else:  # the payloads would grow with the traffic: keep the rest
            ep.log.extend(e for e in events if not isinstance(e, Delivered))
        if self.key_manager:
            self._rekey_on(events)
        self._flush_driver(ep)

    def _flush_driver(self, ep: Endpoint) -> None:
        """Send what a host's driver queued (frames, admin commands, mailbox messages) and
        keep its timer armed."""
        driver = ep.driver
        if isinstance(driver, LinuxWire):
            frames, touched = driver.take_frames(self.now)
            self._from_peers(frames)
            for peer in touched - {ep.stack}:
                self._flush(self.endpoint(peer))
            return
        if isinstance(driver, PlainDriver):
            self._from_peers(driver.take_frames())
            return
        descs = driver.tx_descriptors()
        if descs:
            assert ep.vsi is not None
            vsi = ep.vsi
            self._schedule(0, _OTHER, lambda: self._nic_tx(vsi, descs))
        if isinstance(driver, VfDriver):
            for data in driver.mailbox_messages():
                self._schedule(self._mailbox_ns, _OTHER, partial(self._to_pf, driver.vf_id, data))
        else:
            for command in driver.admin_commands():
                self.nic.execute(command)
            for vf, data in driver.mailbox_messages():
                self._schedule(self._mailbox_ns, _OTHER, partial(self._to_vf, vf, data))
        next_timer = driver.next_timer()
        deadline = None if next_timer is None else deadline_ns(next_timer)
        periodic = isinstance(driver, PfDriver) and not driver.waiting
        timer = ep.timer
        if timer is not None and timer.at == deadline and timer.periodic == periodic:
            return
        if timer is not None:
            timer.cancelled = True
            ep.timer = None
        if deadline is not None:
            ep.timer = _Timer(deadline, lambda: self._timer(ep), periodic=periodic)
            self._periodic_queued += periodic
            self._schedule(max(0, deadline - self.now_ns), _OTHER, ep.timer)

    def _to_pf(self, vf: int, data: bytes) -> None:
        self._carry("vf-to-pf", [data], partial(self._pf_mailbox, vf))

    def _pf_mailbox(self, vf: int, messages: list[bytes]) -> None:
        pf = self._pf()
        for data in messages:
            self.mailbox_log.append(MailboxRecord(self.now, vf, True, data))
            pf.mailbox_receive(vf, data, self.now)
        self._flush(self.endpoints[self.pf_name()])

    def _to_vf(self, vf: int, data: bytes) -> None:
        self._carry("pf-to-vf", [data], partial(self._vf_mailbox, vf))

    def _vf_mailbox(self, vf: int, messages: list[bytes]) -> None:
        for data in messages:
            self.mailbox_log.append(MailboxRecord(self.now, vf, False, data))
            for ep in self.endpoints.values():
                if ep.vf == vf and isinstance(ep.driver, VfDriver):
                    ep.driver.mailbox_receive(data, self.now)
                    self._flush(ep)

    def _timer(self, ep: Endpoint) -> None:
        ep.timer = None
        assert isinstance(ep.driver, PfDriver | VfDriver)
        ep.driver.handle_timer(self.now)
        self._flush(ep)

    def _nic_tx(self, vsi: int, descs: list[TxDescriptor]) -> None:
        out = self.nic.transmit(vsi, descs, self.now)
        self._nic_rx(out.rx)
        if out.to_agent:
            frames = out.to_agent
            self._schedule(self._link_ns, _HOST_FIRST, lambda: self._agent_host(frames))

    def _agent_host(self, frames: list[bytes]) -> None:
        self._carry("nic-to-agent", frames, self._host_side_in)

    def _host_side_in(self, frames: list[bytes]) -> None:
        self._start_agent()
        self._record("nic-to-agent", frames)
        self._agent_out(self.agent.from_host(frames, self.now))

    def _agent_wire(self, frames: list[bytes]) -> None:
        self._carry("wire-to-agent", frames, self._wire_side_in)

    def _wire_side_in(self, frames: list[bytes]) -> None:
        self._start_agent()
        self._record("wire-to-agent", frames)
        self._agent_out(self.agent.from_wire(frames, self.now))

    def _start_agent(self) -> None:
        """The agent starts when the first frame reaches it, as the golden model's does
        (before the first input record): AGENT_STARTED where it has a destination."""
        if not self._agent_started:
            self._agent_started = True
            self._agent_out(self.agent.start(self.now))

    def _agent_tick(self) -> None:
        self._agent_timer = None
        self._agent_out(self.agent.on_timer(self.now))

    def _agent_out(self, out: AgentOutput) -> None:
        if out.to_host or out.to_wire or out.hairpin:
            self._record("agent-to-nic", out.to_host)
            self._record("agent-to-wire", out.to_wire)
            self._record("agent-hairpin", out.hairpin)
            self._carry("agent-to-nic", out.to_host, self._toward_nic)
            self._carry("agent-to-wire", out.to_wire, self._toward_wire)
        self._arm_agent_timer()

    def _arm_agent_timer(self) -> None:
        """Keep one event in the queue at the agent's `next_timer()` (its event resends)."""
        next_timer = self.agent.next_timer()
        deadline = None if next_timer is None else deadline_ns(next_timer)
        timer = self._agent_timer
        if timer is not None and timer.at == deadline:
            return
        if timer is not None:
            timer.cancelled = True
            self._agent_timer = None
        if deadline is not None:
            self._agent_timer = fire = _Timer(deadline, self._agent_tick)
            action: Callable[[], None] = fire
            self._seq += 1
            self._agent_timers_queued += 1
            # at the agent's own time, not now + a difference, so that it fires exactly then
            heapq.heappush(self._queue, (deadline, _AGENT_TIMER, self._seq, action))

    def _toward_nic(self, frames: list[bytes]) -> None:
        self._schedule(self._link_ns, _OTHER, lambda: self._from_agent(frames))

    def _toward_wire(self, frames: list[bytes]) -> None:
        self._schedule(self._link_ns, _OTHER, lambda: self._peers_rx(frames))

    def _from_agent(self, frames: list[bytes]) -> None:
        self._nic_rx(self.nic.from_agent(frames, self.now).rx)

    def _nic_rx(self, rx: list[tuple[int, RxDescriptor]]) -> None:
        by_vsi: dict[int, list[RxDescriptor]] = {}
        for vsi, desc in rx:
            by_vsi.setdefault(vsi, []).append(desc)
        for ep in list(self.endpoints.values()):
            descs = by_vsi.get(ep.vsi) if ep.vsi is not None else None
            if descs and isinstance(ep.driver, RingDriver):
                ep.driver.receive(descs, self.now)
                self._flush(ep)

    def _from_peers(self, frames: list[bytes]) -> None:
        """Frames the remote peers sent: to the agent, over the wire."""
        if frames:
            self._schedule(self._link_ns, _WIRE_SECOND, lambda: self._agent_wire(frames))

    def _peers_rx(self, frames: list[bytes]) -> None:
        for ep in list(self.endpoints.values()):
            if isinstance(ep.driver, PlainDriver):
                ep.driver.receive(frames, self.now)
                self._flush(ep)
        linux = self.linux
        if linux is not None and linux.peers:
            touched = linux.receive(frames, self.now)
            frames_back, more = linux.take_frames(self.now)
            self._from_peers(frames_back)
            for peer in touched | more:
                if self.endpoints.get(peer.name) is not None:
                    self._flush(self.endpoint(peer))


def _is_reply_to(message: bytes, msg_id: int) -> bool:
    """Whether a PF's mailbox message answers the message `msg_id`."""
    try:
        parsed = parse_mailbox(message)
    except ParseError:
        return False
    return parsed.is_reply and parsed.msg_id == msg_id


def _every(_item: bytes) -> bool:
    return True


def _mac(text: str, what: str) -> bytes:
    """A host's MAC from its text: six bytes, unicast, not all zeros."""
    try:
        value = bytes.fromhex(text.replace(":", ""))
    except (ValueError, AttributeError):
        value = b""
    if len(value) != 6:
        raise UsageError(f"{what}: {text!r} is not a MAC address (write it as 02:00:00:00:00:10)")
    return check_unicast_mac(value, what)
