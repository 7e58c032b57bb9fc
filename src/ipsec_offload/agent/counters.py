"""What the agent counts: drops by named reason and frames by path and Rx status."""

from __future__ import annotations

from enum import IntEnum

from ipsec_offload.wire.metadata import RxStatus


class DropReason(IntEnum):
    """Why the agent dropped a frame (it never leaves the agent)."""

    MALFORMED_FRAME = 1
    """Ethernet or metadata tag that does not parse."""
    METADATA_RESERVED = 2
    """Tx metadata with a reserved bit (30-24) set (spec section 3)."""
    BAD_OFFSETS = 3
    """OFFLOAD=1 but L3_OFFSET/ESP_OFFSET do not point at an IP header and its ESP header."""
    NO_OUTBOUND_SA = 4
    """OFFLOAD=1 and no outbound SA of the frame's domain: never sent in the clear."""
    SA_EXPIRED = 5
    """OFFLOAD=1 on an outbound SA past its hard lifetime."""
    SEQ_EXHAUSTED = 6
    """The outbound SA's sequence/IV counter is used up (2^32 without ESN, 2^64 with)."""
    CONFIG_FROM_WIRE = 7
    """A config frame arrived from the wire side."""
    CONFIG_MALFORMED = 8
    """A config frame too short to carry a header: no reply is possible."""
    CONFIG_NOT_REQUEST = 9
    """A config frame from the host with the reply bit set."""
    TOO_LARGE = 10
    """The encrypted frame would exceed the IP length field."""
    CONFIG_NOT_FROM_PF = 11
    """A config frame from a source other than the PF's MAC (when the agent is given it)."""


class Path(IntEnum):
    """Where a frame went through the agent."""

    TX_BYPASS = 1
    TX_ENCRYPTED = 2
    TX_UNTAGGED = 3
    RX_NOT_ESP = 4
    RX_ESP = 5
    CONFIG_REQUEST = 6
    CONFIG_RETRANSMIT = 7
    HAIRPIN = 8


class EventCounter(IntEnum):
    """What became of the agent's EVENT frames (spec 9)."""

    RAISED = 1
    """Events the agent raised (each of the others counts some of these)."""
    SENT = 2
    """First transmissions."""
    RESENT = 3
    """Resends of an unanswered event (every 10 ms, at most 5 per event)."""
    ACKNOWLEDGED = 4
    """Events the PF answered (opcode 0x89, same txn_id)."""
    GIVEN_UP = 5
    """Events still unanswered after their 5 resends."""
    TABLE_FULL = 6
    """Events not sent: the table of pending events was full."""
    NO_DESTINATION = 7
    """Events not sent: no PF MAC configured and no request accepted yet."""


class AgentCounters:
    """Counters of the whole agent (per-SA counters live in each SA)."""

    __slots__ = ("drops", "events", "paths", "rx_status")

    def __init__(self) -> None:
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self.paths: dict[Path, int] = dict.fromkeys(Path, 0)
        self.rx_status: dict[RxStatus, int] = dict.fromkeys(RxStatus, 0)
        self.events: dict[EventCounter, int] = dict.fromkeys(EventCounter, 0)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """A plain-dict copy for reports and tests, names as keys."""
        return {
            "drops": {r.name: n for r, n in self.drops.items()},
            "paths": {p.name: n for p, n in self.paths.items()},
            "rx_status": {s.name: n for s, n in self.rx_status.items()},
            "events": {e.name: n for e, n in self.events.items()},
        }
