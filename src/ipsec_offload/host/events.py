"""What the host stack gives its user: the events it queues (`HostStack.events()`) and the
counters it keeps.

`Delivered` is a packet delivered to an application; `StateResult` the outcome of a state
operation (add, delete, or the device losing the state). The compiled receive path
(`_rxpath.c`) builds `Delivered` events itself, field by field in the order of its definition,
and adds to `StackCounters.rx_esp_software` and `rx_delivered`: their names and order are part
of its contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsec_offload.host.xfrm import Offload
from ipsec_offload.wire.transport import TcpFlags


@dataclass(frozen=True, slots=True)
class Delivered:
    """A packet the stack delivered to an application (UDP datagram, TCP segment or ICMP
    echo; for an echo the ports are its identifier and sequence number)."""

    time: float
    protocol: int
    src: bytes
    dst: bytes
    src_port: int
    dst_port: int
    payload: bytes
    state: int | None
    """The handle of the state it arrived through, None if it came in clear."""
    offloaded: bool
    """True when the agent decrypted it (Rx status OK)."""
    tcp_seq: int | None = None
    """A TCP segment's sequence number (None for other protocols)."""
    tcp_flags: TcpFlags | None = None
    """A TCP segment's flags (None for other protocols)."""


@dataclass(frozen=True, slots=True)
class StateResult:
    """The outcome of add_state or delete_state: the xdo_dev_* return value and where the
    state's ESP work now happens (None: the state is gone); `extack`, the driver's message of
    a failed or refused offload (what `ip xfrm state add` prints)."""

    time: float
    handle: int
    operation: str
    rc: int
    offload: Offload | None
    extack: str | None = None


@dataclass(frozen=True, slots=True)
class StateExpire:
    """A state reached a limit (Linux's XFRM_MSG_EXPIRE to the key manager). Soft (`hard`
    False): the agent reported SOFT_EXPIRE or SEQ_SOFT_LIMIT, a request to rekey, told once
    per state. Hard: HARD_EXPIRE; the stack deletes the state (its policies stay and drop what
    they select until a new state takes over)."""

    time: float
    handle: int
    hard: bool


@dataclass(frozen=True, slots=True)
class SegmentReceived:
    """A received upper-layer segment, whole, for a stack whose applications are a real
    kernel's (a TUN device in live mode: `HostStack(segments=True)`): after the policy and
    checksum checks, in place of a `Delivered`."""

    time: float
    src: bytes
    dst: bytes
    protocol: int
    segment: bytes
    state: int | None
    offloaded: bool


StackEvent = Delivered | StateResult | StateExpire | SegmentReceived


@dataclass(slots=True)
class StackCounters:
    """What the stack counted: packets sent and received, by way, and drops by reason."""

    tx_plain: int = 0
    tx_esp_software: int = 0
    tx_esp_offloaded: int = 0
    tx_tso_sends: int = 0
    """Large sends handed down to the device's TSO (also counted in tx_esp_offloaded)."""
    tx_sw_segmented: int = 0
    """Large sends the stack cut into segments itself."""
    rx_delivered: int = 0
    rx_esp_offloaded: int = 0
    rx_esp_software: int = 0
    offload_fallbacks: int = 0
    offload_lost: int = 0
    hard_expiries: int = 0
    """States deleted at a hard expiry the agent reported."""
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
