"""The simulator: one port (NIC + agent) between host stacks and a wire with remote peers.

Theory of operation: a deterministic discrete-event loop on an integer nanosecond clock
(`now_ns`; `now` is it in seconds, as the cores take it; `sim/clock.py`). Every hop over a link
takes `link_delay`; events at the same time run in the order `sim/clock.py` documents (the
agent's timers, then frames reaching the agent from the host side, then from the wire, then the
rest, first scheduled first), the order the golden model shares, so a run is the same every
time and its replay exact. The testbed is the only place where the sans-IO cores meet: it moves
descriptors from drivers to the NIC, frames from the NIC to the agent and on to the wire, and
back; it fires the drivers' retransmission timers and the agent's event resends (before the
frames that reach the agent at the same time, as the golden model does).

It owns four parts, along the real system's seams, and offers their API as its own: the
agent between the NIC's link and the wire, started by the first frame that reaches it and
restarted by `restart_agent` (`sim/agent_slot.py`), the hosts and what the hypervisor does to
them (`sim/topology.py`), the links between the parts with their faults and captures
(`sim/links.py`: spec sections 8 and 9; an attacker on the wire is `wire_inject`), and the key
manager, an IKE daemon's stand-in (`sim/keymanager.py`: `secure` records every SA's keys in
`sa_keys` so that an observer can check the wire, `sim/observer.py`). The parts reach the loop
only through the callables it hands them.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.driver.plain import PlainDriver
from ipsec_offload.driver.ring import RingDriver
from ipsec_offload.driver.vf import VfDriver
from ipsec_offload.errors import SimulationError, UsageError
from ipsec_offload.host.stack import Delivered
from ipsec_offload.nic.descriptors import RxDescriptor, TxDescriptor
from ipsec_offload.nic.nic import Nic, SwitchMode
from ipsec_offload.sim.agent_slot import AgentSlot
from ipsec_offload.sim.clock import Order, Timer, rearm, seconds, to_ns
from ipsec_offload.sim.keymanager import KeyManager
from ipsec_offload.sim.keymanager import SaBundle as SaBundle
from ipsec_offload.sim.keymanager import SaKey as SaKey
from ipsec_offload.sim.links import FAULT_TARGETS as FAULT_TARGETS
from ipsec_offload.sim.links import LinkCapture as LinkCapture
from ipsec_offload.sim.links import LinkEnds, Links
from ipsec_offload.sim.linux.guest import LinuxGuest
from ipsec_offload.sim.linux.peer import LinuxWire
from ipsec_offload.sim.topology import Endpoint as Endpoint
from ipsec_offload.sim.topology import Host as Host
from ipsec_offload.sim.topology import Topology


@dataclass(frozen=True, slots=True)
class MailboxRecord:
    """One mailbox message as it was delivered."""

    time: float
    vf: int
    to_pf: bool
    data: bytes


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
        self.agent_slot = AgentSlot(
            agent or AgentConfig(),
            self.rng,
            now=lambda: self.now,
            record=lambda name, frames: self.links.record(name, frames),
            send=lambda out: self.links.from_agent(out),
            queue=self._queue_agent_timer,
            settle=self.settle,
        )
        """The agent's place (`sim/agent_slot.py`)."""
        self._agent_timers_queued = 0
        self._periodic_queued = 0
        self.nic = Nic(mode=mode, meta_ethertype=self.agent.config.meta_ethertype)
        self.now_ns = 0
        """The clock, in integer nanoseconds."""
        self.mailbox_log: list[MailboxRecord] = []
        self.max_events = max_events
        self.key_manager = key_manager
        """The simulated key manager (an IKE daemon's stand-in): a soft expiry of a state of a
        pair made by `secure` asks for a rekey of the pair (`rekey`)."""
        self._configuring: list[Callable[[], None]] | None = None
        """While a config action runs: those that came due meanwhile, to run after it."""
        self._queue: list[tuple[int, int, int, Callable[[], None]]] = []
        self._seq = 0
        self._running = False
        self.topology = Topology(
            self.nic,
            self.agent.config,
            own_sequence=own_sequence,
            linux_guest=linux_guest,
            now=lambda: self.now,
            settle=self.settle,
            wait=self._wait,
            post=self._post,
            to_vf=lambda vf, data: self.links.pf_to_vf(vf, data),
            capture=lambda: self.links.capture,
        )
        """The hosts (`sim/topology.py`)."""
        ends = LinkEnds(
            self.agent_slot.host_side_in,
            self.agent_slot.wire_side_in,
            self._from_agent,
            self._peers_rx,
            self._pf_mailbox,
            self._vf_mailbox,
        )
        self.links = Links(
            ends,
            link_delay=link_delay,
            mailbox_delay=mailbox_delay,
            capture=capture,
            meta_ethertype=self.agent.config.meta_ethertype,
            now_ns=lambda: self.now_ns,
            schedule=self._schedule,
            settle=self.settle,
            find=self.topology.host,
        )
        """The links, their faults and captures (`sim/links.py`)."""
        self.keys = KeyManager(
            self.rng,
            self.topology.endpoints,
            now=lambda: self.now,
            settle=self.settle,
            configure=partial(self.at, config=True),
            rekey_grace=rekey_grace,
        )
        """The key manager (`sim/keymanager.py`)."""
        # The parts' API as the testbed's own: the same methods and containers (each
        # documented where it is defined), so that a signature is written once.
        topology, links, keys = self.topology, self.links, self.keys
        self.restart_agent = self.agent_slot.restart
        self.endpoints = topology.endpoints
        self.retired = topology.retired
        self.add_pf_host = topology.add_pf_host
        self.add_vm = topology.add_vm
        self.destroy_vm = topology.destroy_vm
        self.reset_vf = topology.reset_vf
        self.remove_vf = topology.remove_vf
        self.reset_pf = topology.reset_pf
        self.add_peer = topology.add_peer
        self.add_linux_peer = topology.add_linux_peer
        self.pf_name = topology.pf_name
        self.endpoint = topology.endpoint
        self._remove = topology.retire  # as the tests knew it
        self.inject = topology.inject
        self.mailbox_inject = topology.mailbox_inject
        self.delivered = topology.delivered
        self.results = topology.results
        self.captures = links.captures
        self.link_drops = links.link_drops
        self.link_duplicates = links.link_duplicates
        self.link_delays = links.link_delays
        self.faults = links.faults
        self.wire_injections = links.wire_injections
        self.lose = links.lose
        self.duplicate = links.duplicate
        self.delay = links.delay
        self.wire_inject = links.wire_inject
        self.peer_inject = links.peer_inject
        self.wire_frames_to = links.wire_frames_to
        self.sa_keys = keys.sa_keys
        self.states_made = keys.states_made
        self.secure = keys.secure
        self.current = keys.current
        self.rekey = keys.rekey
        self.esp_sa_entries = keys.esp_sa_entries

    @property
    def agent(self) -> IpsecAgent:
        """The agent now running (`restart_agent` replaces it)."""
        return self.agent_slot.agent

    @property
    def agent_restarts(self) -> int:
        """The agent's restarts (`restart_agent`)."""
        return self.agent_slot.restarts

    @property
    def pf(self) -> PfDriver | None:
        """The PF host's driver, once it is added."""
        return self.topology.pf

    @property
    def linux(self) -> LinuxWire | None:
        """The Linux peers and their guest, once a Linux peer is added."""
        return self.topology.linux

    @property
    def own_sequence(self) -> bool:
        """Passed to every host stack (HostStack.own_sequence)."""
        return self.topology.own_sequence

    @property
    def capture(self) -> bool:
        """Whether the links' frames and the hosts' deliveries are kept."""
        return self.links.capture

    @capture.setter
    def capture(self, value: bool) -> None:
        self.links.capture = value

    @property
    def link_delay(self) -> float:
        """Seconds a hop over a link takes (whole nanoseconds)."""
        return self.links.link_delay

    @link_delay.setter
    def link_delay(self, value: float) -> None:
        self.links.link_delay = value

    @property
    def mailbox_delay(self) -> float:
        """Seconds a mailbox message takes (whole nanoseconds)."""
        return self.links.mailbox_delay

    @mailbox_delay.setter
    def mailbox_delay(self, value: float) -> None:
        self.links.mailbox_delay = value

    @property
    def rekeys(self) -> int:
        """The rekeys the key manager made."""
        return self.keys.rekeys

    @property
    def rekey_grace(self) -> float:
        """Seconds a rekeyed pair's old states stay, for what is still in flight."""
        return self.keys.rekey_grace

    @rekey_grace.setter
    def rekey_grace(self, value: float) -> None:
        self.keys.rekey_grace = value

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
        self._schedule(max(0, to_ns(time) - self.now_ns), Order.OTHER, action)

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
        if prio == Order.AGENT_TIMER:
            self._agent_timers_queued -= 1
        if isinstance(action, Timer):
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

    # -- the plumbing ---------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The clock in seconds, as the sans-IO cores take `now`."""
        return seconds(self.now_ns)

    def _schedule(self, delay_ns: int, prio: int, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now_ns + delay_ns, prio, self._seq, action))

    def _post(self, vsi: int, descs: list[TxDescriptor]) -> None:
        """Descriptors on VSI `vsi`'s Tx ring: the NIC takes them now."""
        self._schedule(0, Order.OTHER, lambda: self._nic_tx(vsi, descs))

    def _flush(self, ep: Endpoint) -> None:
        """After a host acted: collect its events, send what its driver queued, arm timers."""
        if self.endpoints.get(ep.stack.name) is not ep:
            return  # the VM was destroyed meanwhile
        ep.stack.poll(self.now)
        events = ep.stack.events()
        if self.links.capture:
            ep.log.extend(events)
        else:  # the payloads would grow with the traffic: keep the rest
            ep.log.extend(e for e in events if not isinstance(e, Delivered))
        if self.key_manager:
            self.keys.on_events(events)
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
            self._post(ep.vsi, descs)
        if isinstance(driver, VfDriver):
            for data in driver.mailbox_messages():
                self.links.vf_to_pf(driver.vf_id, data)
        else:
            for command in driver.admin_commands():
                self.nic.execute(command)
            for vf, data in driver.mailbox_messages():
                self.links.pf_to_vf(vf, data)
        ep.timer = rearm(
            ep.timer,
            driver.next_timer(),
            lambda: self._timer(ep),
            self._queue_driver_timer,
            periodic=isinstance(driver, PfDriver) and not driver.waiting,
        )

    def _queue_driver_timer(self, timer: Timer) -> None:
        self._periodic_queued += timer.periodic
        self._schedule(max(0, timer.at - self.now_ns), Order.OTHER, timer)

    def _pf_mailbox(self, vf: int, messages: list[bytes]) -> None:
        pf = self.topology.pf_driver()
        for data in messages:
            self.mailbox_log.append(MailboxRecord(self.now, vf, True, data))
            pf.mailbox_receive(vf, data, self.now)
        self._flush(self.endpoints[self.pf_name()])

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
            self.links.host_to_agent(out.to_agent)

    def _queue_agent_timer(self, timer: Timer) -> None:
        action: Callable[[], None] = timer
        self._seq += 1
        self._agent_timers_queued += 1
        # at the agent's own time, not now + a difference, so that it fires exactly then
        heapq.heappush(self._queue, (timer.at, Order.AGENT_TIMER, self._seq, action))

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
            self.links.wire_to_agent(frames)

    def _peers_rx(self, frames: list[bytes]) -> None:
        for ep in list(self.endpoints.values()):
            if isinstance(ep.driver, PlainDriver):
                ep.driver.receive(frames, self.now)
                self._flush(ep)
        linux = self.topology.linux
        if linux is not None and linux.peers:
            touched = linux.receive(frames, self.now)
            frames_back, more = linux.take_frames(self.now)
            self._from_peers(frames_back)
            for peer in touched | more:
                if self.endpoints.get(peer.name) is not None:
                    self._flush(self.endpoint(peer))
