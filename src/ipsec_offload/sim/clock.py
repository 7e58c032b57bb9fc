"""The simulator's clock: integer nanoseconds, and one order for what happens at one time.

Theory of operation: the testbed and the golden model count time in integer nanoseconds
(`now_ns`), so that two frames are simultaneous exactly when their times are equal, and a
pcap with nanosecond timestamps holds every time exactly. The sans-IO cores take `now` in
seconds (a float): each is handed `seconds(now_ns)`, and a deadline a core computes in seconds
goes back to the clock through `deadline_ns`: the nearest nanosecond, or the next one where
that would read as a moment before the deadline, so that a timer always fires at a `now` the
core takes as due (a core's own arithmetic, such as now + 0.001, is off from a whole
nanosecond by far less than one half).

What happens at one time happens in this order (`Order`), in the testbed and in the golden
model alike, so that fed a run's inputs the golden model reproduces its outputs exactly:

1. the agent's timers (its EVENT resends) due then;
2. frames reaching the agent from the host side (the nic-to-agent link);
3. frames reaching the agent from the wire (the wire-to-agent link);
4. everything else (frames leaving the agent, drivers' timers, mailbox messages, a host's
   actions), in the order they were scheduled.

Within one class, first scheduled runs first; a pcap's records keep that order.

A part with a timer (a driver, the agent) keeps one event in the queue at its next deadline:
`rearm` leaves its `Timer` where the deadline is the same, else cancels it and has the caller
queue a new one (a cancelled timer leaves the queue without moving simulated time).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

NS_PER_S = 1_000_000_000
"""Nanoseconds in a second."""


class Order(IntEnum):
    """Where an event goes among those of its time (smaller first)."""

    AGENT_TIMER = -1
    HOST_SIDE = 0
    WIRE_SIDE = 1
    OTHER = 2


def to_ns(seconds: float) -> int:
    """A time or a delay in seconds as whole nanoseconds (the nearest)."""
    return round(seconds * NS_PER_S)


def seconds(ns: int) -> float:
    """A clock reading in seconds, as the sans-IO cores take `now`."""
    return ns / NS_PER_S


def deadline_ns(deadline: float) -> int:
    """The first clock reading at which a core's timer of `deadline` seconds is due: the
    nearest nanosecond, one more where that one reads as before the deadline."""
    ns = round(deadline * NS_PER_S)
    return ns if seconds(ns) >= deadline else ns + 1


class Timer:
    """A timer in the testbed's event queue; a re-armed one cancels the old, which then
    leaves the queue without moving simulated time."""

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


def rearm(
    timer: Timer | None,
    next_timer: float | None,
    fire: Callable[[], None],
    queue: Callable[[Timer], None],
    *,
    periodic: bool = False,
) -> Timer | None:
    """A part's timer after its core's `next_timer()` (seconds; None: nothing due): `timer`
    itself where it is for that deadline already (and as `periodic`); else `timer` cancelled
    and, with a deadline, a new one that calls `fire`, handed to `queue` to be queued."""
    deadline = None if next_timer is None else deadline_ns(next_timer)
    if timer is not None:
        if timer.at == deadline and timer.periodic == periodic:
            return timer
        timer.cancelled = True
    if deadline is None:
        return None
    timer = Timer(deadline, fire, periodic=periodic)
    queue(timer)
    return timer
