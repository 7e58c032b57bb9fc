"""The links between the port's parts, their faults and their captures.

Theory of operation: four link directions join the agent to the NIC (nic-to-agent,
agent-to-nic) and to the wire with its remote peers (wire-to-agent, agent-to-wire), and the
mailbox joins the VFs to the PF (vf-to-pf, pf-to-vf). A hop over a link takes `link_delay`, a
mailbox message `mailbox_delay`: `Links` schedules the hop in the testbed's event queue (frames
toward the agent in the order `sim/clock.py` gives them) and hands what arrives to the link's
end (`LinkEnds`, the testbed's). Faults (spec section 9) act on the four link directions and on
the two directions of the mailbox alike: a `Fault` loses, duplicates (carries twice, back to
back) or delays (carries `seconds` later, so that later items overtake it) the next items its
`match` selects. One `_carry` applies them where a link ends: at the agent for what goes into
it, as it emits for what comes out of it. A link's capture is taken at the agent, as the golden
model needs it (spec section 8): what reached the agent, after the link's faults and at the
time it arrived (a lost frame is absent, a duplicated one twice, a delayed one late), and what
the agent emitted, before them. An attacker on the wire injects frames as a peer's
(`wire_inject`) or as the agent's (`peer_inject`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from functools import partial

from ipsec_offload.agent.agent import AgentOutput
from ipsec_offload.errors import UsageError
from ipsec_offload.sim.clock import NS_PER_S, Order, seconds, to_ns
from ipsec_offload.sim.pcap import PcapRecord, PcapSink
from ipsec_offload.sim.topology import Host
from ipsec_offload.wire.packet import find_esp

LINKS = ("nic-to-agent", "agent-to-nic", "wire-to-agent", "agent-to-wire")
"""The link directions the testbed records and can inject faults on."""
MAILBOX_LINKS = ("vf-to-pf", "pf-to-vf")
"""The two directions of the mailbox, fault targets like the links (a fault's `match` gets
the message bytes)."""
FAULT_TARGETS = LINKS + MAILBOX_LINKS
TAPS = ("agent-hairpin",)
"""What the testbed records besides the links: frames the agent turned around (encrypted)."""

_ARRIVAL_ORDER = {"nic-to-agent": Order.HOST_SIDE, "wire-to-agent": Order.WIRE_SIDE}
"""Where a link's delayed frame goes among the events of its new time (default OTHER)."""
_PCAP_TIME_LIMIT = 2**32 * NS_PER_S


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


Frames = Callable[[list[bytes]], None]
Messages = Callable[[int, list[bytes]], None]


@dataclass(frozen=True, slots=True)
class LinkEnds:
    """Where the links end: what takes the frames (mailbox messages) each one carries."""

    agent_host: Frames
    """The agent's host side (nic-to-agent)."""
    agent_wire: Frames
    """The agent's wire side (wire-to-agent)."""
    nic: Frames
    """The NIC (agent-to-nic)."""
    peers: Frames
    """The remote peers (agent-to-wire)."""
    pf: Messages
    """The PF, the messages of VF `vf` (vf-to-pf)."""
    vf: Messages
    """VF `vf`, the PF's messages to it (pf-to-vf)."""


class Links:
    """The testbed's links and mailbox: their delays, faults and captures."""

    def __init__(
        self,
        ends: LinkEnds,
        *,
        link_delay: float,
        mailbox_delay: float,
        capture: bool,
        meta_ethertype: int,
        now_ns: Callable[[], int],
        schedule: Callable[[int, Order, Callable[[], None]], None],
        settle: Callable[[], None],
        find: Callable[[Host | str], Host],
    ) -> None:
        self._ends = ends
        self.link_delay = link_delay
        self.mailbox_delay = mailbox_delay
        self.capture = capture
        """Whether the links' frames are kept in `captures`."""
        self._meta_ethertype = meta_ethertype
        self._now_ns = now_ns
        self._schedule = schedule
        """Queue an action after a delay in nanoseconds, in an `Order` (`Testbed._schedule`)."""
        self._settle = settle
        """Run the port until idle unless it runs already (`Testbed.settle`)."""
        self._find = find
        """A host of the testbed by itself or its name, live or destroyed."""
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

    def host_to_agent(self, frames: list[bytes]) -> None:
        """Frames the NIC sent to the agent: over nic-to-agent."""
        self._schedule(
            self._link_ns,
            Order.HOST_SIDE,
            lambda: self._carry("nic-to-agent", frames, self._ends.agent_host),
        )

    def wire_to_agent(self, frames: list[bytes]) -> None:
        """Frames from the wire: to the agent, over wire-to-agent."""
        self._schedule(
            self._link_ns,
            Order.WIRE_SIDE,
            lambda: self._carry("wire-to-agent", frames, self._ends.agent_wire),
        )

    def from_agent(self, out: AgentOutput) -> None:
        """What the agent emitted: captured as it is, then over agent-to-nic and
        agent-to-wire."""
        self.record("agent-to-nic", out.to_host)
        self.record("agent-to-wire", out.to_wire)
        self.record("agent-hairpin", out.hairpin)
        self._carry("agent-to-nic", out.to_host, self._toward_nic)
        self._carry("agent-to-wire", out.to_wire, self._toward_wire)

    def _toward_nic(self, frames: list[bytes]) -> None:
        self._schedule(self._link_ns, Order.OTHER, lambda: self._ends.nic(frames))

    def _toward_wire(self, frames: list[bytes]) -> None:
        self._schedule(self._link_ns, Order.OTHER, lambda: self._ends.peers(frames))

    def vf_to_pf(self, vf: int, data: bytes) -> None:
        """A message of VF `vf` to the PF, over the mailbox."""
        self._schedule(self._mailbox_ns, Order.OTHER, partial(self._to_pf, vf, data))

    def pf_to_vf(self, vf: int, data: bytes) -> None:
        """A message of the PF to VF `vf`, over the mailbox."""
        self._schedule(self._mailbox_ns, Order.OTHER, partial(self._to_vf, vf, data))

    def _to_pf(self, vf: int, data: bytes) -> None:
        self._carry("vf-to-pf", [data], partial(self._ends.pf, vf))

    def _to_vf(self, vf: int, data: bytes) -> None:
        self._carry("pf-to-vf", [data], partial(self._ends.vf, vf))

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
        self.wire_to_agent(burst)
        self._settle()

    def peer_inject(self, frames: Iterable[bytes]) -> None:
        """An attacker on the wire: `frames` reach the remote peers as the agent's would (they
        are remembered in `wire_injections`; no link records them)."""
        burst = list(frames)
        if not all(isinstance(frame, bytes) for frame in burst):
            raise UsageError("peer_inject takes frames as bytes")
        self.wire_injections.extend(burst)
        self._schedule(self._link_ns, Order.OTHER, lambda: self._ends.peers(burst))
        self._settle()

    def wire_frames_to(self, host: Host | str, last: int | None = None) -> list[bytes]:
        """The ESP frames captured on wire-to-agent so far whose destination MAC is `host`'s
        (a live or a destroyed one), oldest first; with `last`, only the last that many: what
        an attacker on the wire replays."""
        if not self.capture:
            raise UsageError("this Testbed keeps no frames: make it with capture=True")
        if last is not None and last < 0:
            raise UsageError(f"last={last}: give how many frames, 0 or more (None: all)")
        mac = self._find(host).mac
        meta = self._meta_ethertype
        frames = []
        for record in self.captures["wire-to-agent"].records:
            esp = find_esp(record.frame, meta)
            if esp is not None and esp.eth.dst == mac:
                frames.append(record.frame)
        return frames if last is None else frames[max(0, len(frames) - last) :]

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
                order = _ARRIVAL_ORDER.get(link, Order.OTHER)
                self._schedule(to_ns(fault.seconds), order, partial(onward, [item]))
        return carried

    def record(self, link: str, frames: Iterable[bytes]) -> None:
        """Capture `frames` on `link` (or a tap) now, if this testbed keeps frames."""
        if self.capture:
            self.captures[link].add_burst(self._now_ns(), frames)


def _every(_item: bytes) -> bool:
    return True
