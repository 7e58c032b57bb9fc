"""The agent's unsolicited EVENT frames and their resend timers (spec section 9).

Theory of operation: the agent tells the PF of what happened to it without being asked:
AGENT_STARTED when it starts (its SAD is empty), SOFT_EXPIRE, HARD_EXPIRE and SEQ_SOFT_LIMIT
when an SA reaches a threshold. An event goes to the PF's MAC where the agent was given it,
otherwise to the source MAC of the last request it accepted; with neither, there is nowhere
to send it and it is counted (NO_DESTINATION) and forgotten.

Each event has a txn_id of the agent's own (1, 2, ... per agent start; `TxnSpace` gives an
agent every step-th number instead, so that agents answered on one link, the live agent's
workers, never draw the same one) and stays pending in a
fixed table of `slots` entries (a hardware limit: a new event finding it full is counted,
TABLE_FULL, and not sent) until the PF answers with opcode 0x89 and the same txn_id. An
unanswered event is sent again every 10 ms of simulated time, at most 5 times; 10 ms after
the fifth resend it is given up (GIVEN_UP) and its slot freed.

Sans-IO: `emit(now)` queues the first transmission in `outbox`, `next_timer()` says when
`on_timer(now)` has work, and `on_timer` returns the resends due. No clock in here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipsec_offload.agent.counters import EventCounter
from ipsec_offload.errors import UsageError
from ipsec_offload.wire.config import (
    ConfigMessage,
    Event,
    EventType,
    Opcode,
    build_config,
    encode_event,
)
from ipsec_offload.wire.ethernet import EthernetHeader, build_ethernet

EVENT_RESEND_INTERVAL = 0.010
"""Seconds between two transmissions of an unanswered event (spec 9)."""
EVENT_RESENDS = 5
"""Resends of an unanswered event before the agent gives it up (spec 9)."""
_TXN_MAX = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class TxnSpace:
    """The EVENT txn_ids an agent draws: `first`, `first` + `step`, ... (the default: 1, 2,
    ...), from `first` again past 2^32 - 1. Agents given the same `step` and different
    `first` (1 .. `step`) never draw the same id, so each knows the PF's answers to the
    others' events (`mine`) and leaves them alone."""

    first: int = 1
    step: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.step < 1 << 16:
            raise UsageError(
                f"TxnSpace(first={self.first}, step={self.step}): give 1 <= first <= step < 2^16"
            )

    def after(self, txn_id: int) -> int:
        """The id drawn after `txn_id`."""
        following = txn_id + self.step
        return following if following <= _TXN_MAX else self.first

    def mine(self, txn_id: int) -> bool:
        """Whether this space draws `txn_id`."""
        return txn_id % self.step == self.first % self.step


@dataclass(slots=True)
class PendingEvent:
    """An event sent and not answered yet."""

    txn_id: int
    event: Event
    frame: bytes
    deadline: float
    """When it is resent next (or, after the last resend, given up)."""
    resends: int = 0


class EventChannel:
    """The agent's pending events: numbering, destination, table, resends and answers."""

    def __init__(
        self,
        *,
        mac: bytes,
        pf_mac: bytes | None,
        boot_id: int,
        config_ethertype: int,
        tag: bytes,
        slots: int,
        counters: dict[EventCounter, int],
        txns: TxnSpace | None = None,
    ) -> None:
        self.mac = mac
        self.pf_mac = pf_mac
        self.boot_id = boot_id
        self.slots = slots
        self.counters = counters
        self.last_source: bytes | None = None
        """The source MAC of the last request the agent accepted (the destination without
        `pf_mac`)."""
        self.pending: dict[int, PendingEvent] = {}
        self.outbox: list[bytes] = []
        """First transmissions of the events just raised, for the caller to send."""
        self._config_ethertype = config_ethertype
        self._tag = tag
        self.txns = txns or TxnSpace()
        self._next_txn = self.txns.first

    @property
    def destination(self) -> bytes | None:
        return self.pf_mac if self.pf_mac is not None else self.last_source

    def emit(self, kind: EventType, sa_index: int | None, port: int, now: float) -> None:
        """Raise an event: send it (into `outbox`) and keep it pending."""
        counters = self.counters
        counters[EventCounter.RAISED] += 1
        dst = self.destination
        if dst is None:
            counters[EventCounter.NO_DESTINATION] += 1
            return
        if len(self.pending) >= self.slots:
            counters[EventCounter.TABLE_FULL] += 1
            return
        txn_id = self._next_txn
        self._next_txn = self.txns.after(txn_id)
        event = Event(kind, self.boot_id, sa_index)
        message = ConfigMessage(
            opcode=Opcode.EVENT, txn_id=txn_id, tlvs=encode_event(event), port=port
        )
        header = build_ethernet(
            EthernetHeader(dst=dst, src=self.mac, ethertype=self._config_ethertype)
        )
        # like every frame toward the host side, with an Rx metadata tag (not ESP)
        frame = header[:12] + self._tag + header[12:] + build_config(message)
        self.pending[txn_id] = PendingEvent(txn_id, event, frame, now + EVENT_RESEND_INTERVAL)
        counters[EventCounter.SENT] += 1
        self.outbox.append(frame)

    def acknowledge(self, txn_id: int) -> bool:
        """An EVENT reply (0x89) from the host side: True when it completes a pending event."""
        if self.pending.pop(txn_id, None) is None:
            return False
        self.counters[EventCounter.ACKNOWLEDGED] += 1
        return True

    def next_timer(self) -> float | None:
        """When `on_timer` next has work, or None."""
        return min((p.deadline for p in self.pending.values()), default=None)

    def on_timer(self, now: float) -> list[bytes]:
        """The resends due at `now` (in txn_id order); gives up those resent 5 times."""
        frames = []
        for pending in list(self.pending.values()):
            if pending.deadline > now:
                continue
            if pending.resends >= EVENT_RESENDS:
                del self.pending[pending.txn_id]
                self.counters[EventCounter.GIVEN_UP] += 1
                continue
            pending.resends += 1
            pending.deadline += EVENT_RESEND_INTERVAL
            self.counters[EventCounter.RESENT] += 1
            frames.append(pending.frame)
        return frames

    def dump(self) -> list[dict[str, object]]:
        """The pending events as plain data."""
        return [
            {
                "txn_id": p.txn_id,
                "type": p.event.event_type.name,
                "sa_index": p.event.sa_index,
                "resends": p.resends,
                "deadline": p.deadline,
            }
            for p in self.pending.values()
        ]


__all__ = ["EVENT_RESENDS", "EVENT_RESEND_INTERVAL", "EventChannel", "PendingEvent", "TxnSpace"]
