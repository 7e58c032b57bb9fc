"""The agent's place in the testbed: between the NIC's link and the wire.

Theory of operation: the agent (a sans-IO `IpsecAgent`) starts when the first frame reaches
it, from either side, as the golden model's does before its first input record
(AGENT_STARTED where it has a destination); what it emits goes to the links, and after every
call its next deadline (the resends of its unanswered events) is kept as one timer in the
testbed's queue (`clock.rearm`), which the testbed runs before the frames of the same time
(`clock.Order.AGENT_TIMER`). A restart (spec 9, an FPGA reload) replaces the agent with one
of the same configuration and a new BOOT_ID drawn from the testbed's seeded generator; the
NIC's links stay. The slot holds no clock, queue or link of its own: the testbed hands it
callables for each.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from ipsec_offload.agent.agent import AgentConfig, AgentOutput, IpsecAgent
from ipsec_offload.sim.clock import Timer, rearm


class AgentSlot:
    """The agent between the NIC's link and the wire: its start at the first frame, its
    restarts with a new BOOT_ID, its timer."""

    def __init__(
        self,
        config: AgentConfig,
        rng: random.Random,
        *,
        now: Callable[[], float],
        record: Callable[[str, list[bytes]], None],
        send: Callable[[AgentOutput], None],
        queue: Callable[[Timer], None],
        settle: Callable[[], None],
    ) -> None:
        self._rng = rng
        self.agent = IpsecAgent(self._with_boot_id(config))
        """The agent now running (a restart replaces it)."""
        self.restarts = 0
        """The agent's restarts (`restart`)."""
        self._started = False
        self._timer: Timer | None = None
        self._now = now
        self._record = record
        self._send = send
        self._queue = queue
        self._settle = settle

    def restart(self) -> None:
        """The agent restarts (spec 9): it loses its SAD, hairpin table, txn memory and
        pending events, and comes up with a new BOOT_ID from the testbed's generator and the
        same configuration otherwise; the NIC's links stay. It starts at once (AGENT_STARTED
        where it has a destination: the PF's MAC, if it was given it)."""
        if self._timer is not None:
            self._timer.cancelled = True
            self._timer = None
        self.agent = IpsecAgent(self._with_boot_id(self.agent.config))
        self.restarts += 1
        self._started = True
        self._out(self.agent.start(self._now()))
        self._settle()

    def host_side_in(self, frames: list[bytes]) -> None:
        """Frames reaching the agent over the nic-to-agent link."""
        self._start()
        self._record("nic-to-agent", frames)
        self._out(self.agent.from_host(frames, self._now()))

    def wire_side_in(self, frames: list[bytes]) -> None:
        """Frames reaching the agent over the wire-to-agent link."""
        self._start()
        self._record("wire-to-agent", frames)
        self._out(self.agent.from_wire(frames, self._now()))

    def _with_boot_id(self, config: AgentConfig) -> AgentConfig:
        """`config` with a new BOOT_ID (u64) drawn from the testbed's seeded generator."""
        return replace(config, boot_id=self._rng.getrandbits(64))

    def _start(self) -> None:
        """The agent starts when the first frame reaches it, as the golden model's does
        (before the first input record): AGENT_STARTED where it has a destination."""
        if not self._started:
            self._started = True
            self._out(self.agent.start(self._now()))

    def _tick(self) -> None:
        self._timer = None
        self._out(self.agent.on_timer(self._now()))

    def _out(self, out: AgentOutput) -> None:
        if out.to_host or out.to_wire or out.hairpin:
            self._send(out)
        self._timer = rearm(self._timer, self.agent.next_timer(), self._tick, self._queue)
