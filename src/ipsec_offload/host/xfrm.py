"""The xfrm-like stack's objects: states (SAs) and selector policies, and who owns a state's
sequence numbers and replay window (`SequenceOwnership`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.crypto.gcm import EspAead, key_material_length
from ipsec_offload.driver.ring import OffloadType
from ipsec_offload.errors import UsageError
from ipsec_offload.wire.config import Algorithm, Direction

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SEQ_LIMIT = {False: (1 << 32) - 1, True: (1 << 64) - 1}
"""The last sequence number of a state without and with ESN (RFC 4303 3.3.3: never cycled)."""


class Mode(IntEnum):
    """IPsec mode of a state (RFC 4301 4.1)."""

    TRANSPORT = 0
    TUNNEL = 1


class Offload(IntEnum):
    """Where a state's ESP work happens."""

    SOFTWARE = 0
    """In the stack (never offloaded, or refused with -EOPNOTSUPP)."""
    PENDING = 1
    """xdo_dev_state_add sent, reply not yet in; traffic meanwhile uses software."""
    DEVICE = 2
    """Offloaded to the agent."""


@dataclass(slots=True)
class XfrmStats:
    """A state's error counters (Linux's struct xfrm_stats, `ip -s xfrm state`'s "stats"):
    the stack's own drops, and the device's once `update_stats` merged them."""

    replay_window: int = 0
    """Packets dropped as outside the window (too old)."""
    replay: int = 0
    """Packets dropped as replayed (a number seen already)."""
    integrity_failed: int = 0
    """Packets whose ICV did not verify."""


@dataclass(slots=True)
class XfrmState:
    """One SA as the stack holds it (`ip xfrm state`), with its live software state."""

    handle: int
    direction: Direction
    spi: int
    src: bytes
    dst: bytes
    algorithm: Algorithm
    key_material: bytes = field(repr=False)
    mode: Mode = Mode.TRANSPORT
    replay_window: int = 64
    esn: bool = False
    lifetime_packets: int = 0
    lifetime_bytes: int = 0
    soft_lifetime_packets: int = 0
    """Packets after which the agent asks for a rekey (SOFT_EXPIRE); 0 none."""
    soft_lifetime_bytes: int = 0
    reqid: int = 0
    """States of one SA across its rekeys share a reqid (0: none): an inbound policy admits a
    packet that came through any state of the reqid of the state it names, as a Linux policy's
    template matches states by reqid, so the old state still serves while a rekey settles."""
    offload: Offload = Offload.SOFTWARE
    offload_type: OffloadType = OffloadType.CRYPTO
    """Asked of the device when the state is added to be offloaded."""
    add_rc: int = 0
    """The return value of xdo_dev_state_add (0 when never asked)."""
    oseq: int = 0
    """Outbound: the last sequence number used."""
    packets: int = 0
    """Linux's curlft.packets: packets the state protected or opened."""
    bytes: int = 0
    """curlft.bytes: their payload bytes."""
    add_time: float = 0.0
    """curlft.add_time: when the state was added (simulated seconds)."""
    stats: XfrmStats = field(default_factory=XfrmStats)
    replay: ReplayWindow | None = None
    _aead: EspAead | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.spi <= 0xFFFFFFFF:
            raise UsageError(f"SPI {self.spi} is out of range: use 1 .. 2^32-1")
        if len(self.src) != len(self.dst) or len(self.src) not in (4, 16):
            raise UsageError("a state's src and dst must both be IPv4 (4 bytes) or IPv6 (16)")
        if len(self.key_material) != key_material_length(self.algorithm):
            raise UsageError(
                f"{Algorithm(self.algorithm).name} needs "
                f"{key_material_length(self.algorithm)} bytes of key || salt"
            )
        if self.direction == Direction.INBOUND and self.replay is None:
            self.replay = ReplayWindow(self.replay_window, self.esn)

    @property
    def aead(self) -> EspAead:
        if self._aead is None:
            self._aead = EspAead(self.algorithm, self.key_material)
        return self._aead

    @property
    def next_seq(self) -> int:
        """Outbound: the sequence number (and IV) the next packet takes."""
        return self.oseq + 1

    def handover_seq(self) -> int | None:
        """The SEQ an (re-)install of this state carries: outbound the next sequence number,
        inbound the highest accepted; None while that is the agent's default (1, 0)."""
        if self.direction == Direction.OUTBOUND:
            return self.next_seq if self.oseq else None
        assert self.replay is not None
        return self.replay.highest or None


class SendRefused(Exception):
    """A send its state cannot take: its packet lifetime or its sequence numbers are used up.
    `reason` is the drop's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SequenceOwnership:
    """Who owns the states' sequence numbers and replay windows: the stack, as in Linux (spec
    section 9, invariants 1 and 2), or, in the naive design, the device for what it handles.

    When the stack owns them, a send takes its numbers from its state before it goes down, one
    per segment of a TSO send (Linux's xfrm_replay_overflow_offload adds the segment count),
    so the state's counter is never below a number the agent used; a received packet goes
    through its state's replay window even when the agent decrypted it (Linux checks
    CRYPTO_DONE packets too); and every install and re-install hands the device the state's
    position (`XfrmState.handover_seq`). `owned` False is the naive design: a TSO send takes
    one number, packets the agent decrypted pass unchecked, and an install carries no SEQ.

    A send calls `reserve` before it goes down. A receive asks `checks`, then calls
    `ReplayWindow.check` before opening the packet and `ReplayWindow.accept` once its ICV
    verified.
    """

    __slots__ = ("owned",)

    def __init__(self, owned: bool) -> None:
        self.owned = owned

    def reserve(self, state: XfrmState, sends: int, segments: int, nbytes: int) -> int:
        """Take from the outbound `state` the sequence numbers of `sends` sends of `segments`
        segments in all, and count their segments and `nbytes` bytes; returns the first
        number. SendRefused, and nothing taken, when they would pass the state's packet
        lifetime ("out_state_expired") or its last sequence number ("out_seq_exhausted")."""
        if state.lifetime_packets and state.packets + sends > state.lifetime_packets:
            raise SendRefused("out_state_expired")
        first = state.next_seq
        last = state.oseq + (segments if self.owned else sends)
        if last > _SEQ_LIMIT[state.esn]:
            raise SendRefused("out_seq_exhausted")
        state.oseq = last
        state.packets += segments
        state.bytes += nbytes
        return first

    def checks(self, offloaded: bool) -> bool:
        """Whether a received packet goes through its state's replay window (`offloaded`: the
        agent decrypted it)."""
        return self.owned or not offloaded

    def handover(self, state: XfrmState) -> Callable[[], int | None] | None:
        """Where an add of `state` to the device reads its SEQ from
        (`OffloadState.handover_seq`); None: nowhere, the agent starts at its default."""
        return state.handover_seq if self.owned else None


@dataclass(frozen=True, slots=True)
class XfrmPolicy:
    """A selector policy (`ip xfrm policy`): traffic it selects must use the named state.

    The policy names its state directly, as a template with a unique reqid does in Linux.
    Outbound, a selected packet is protected with the state; inbound, a selected packet is
    accepted only if it arrived through the state.
    """

    direction: Direction
    src: IpNetwork
    dst: IpNetwork
    state: int
    protocol: int | None = None

    _match: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)
    """(address bytes, src network, src mask, dst network, dst mask) as integers."""

    def __post_init__(self) -> None:
        if self.src.max_prefixlen != self.dst.max_prefixlen:
            raise UsageError("a policy's src and dst must be of one family")
        match = (
            self.src.max_prefixlen // 8,
            int(self.src.network_address),
            int(self.src.netmask),
            int(self.dst.network_address),
            int(self.dst.netmask),
        )
        object.__setattr__(self, "_match", match)

    @property
    def selector(self) -> tuple[Direction, IpNetwork, IpNetwork, int | None]:
        """What identifies the policy in the SPD: its direction and selector."""
        return (self.direction, self.src, self.dst, self.protocol)

    def selects(self, src: bytes, dst: bytes, protocol: int) -> bool:
        """Does the selector take a packet (per packet: integer compares only)?"""
        size, src_net, src_mask, dst_net, dst_mask = self._match
        return (
            len(src) == size
            and int.from_bytes(src) & src_mask == src_net
            and int.from_bytes(dst) & dst_mask == dst_net
            and (self.protocol is None or self.protocol == protocol)
        )


def host_network(addr: bytes) -> IpNetwork:
    """The network of one address (/32 or /128): a policy's selector between two hosts."""
    return ipaddress.ip_network(ipaddress.ip_address(addr))
