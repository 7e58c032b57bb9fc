"""What the PF and VF drivers share: the xdo_dev_* types and events, and the data rings.

On the data path the stack hands frames with a `TxOffload` (the skb's offload fields); the
driver writes the metadata word into the descriptor's L2TAG fields, and `mss` for a TSO send.
On receive the driver reads the Rx metadata from the descriptor: OK and NO_SA frames (and
frames the agent did not look at) go up to the stack; AUTH_FAILED, REPLAY, MALFORMED and
SA_EXPIRED are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from ipsec_offload.errors import ParseError, SimulationError, UsageError
from ipsec_offload.nic import fastpath
from ipsec_offload.nic.descriptors import RxDescriptor, TxDescriptor
from ipsec_offload.wire.config import AddSaRequest, Algorithm, Caps, Direction
from ipsec_offload.wire.ethernet import EthernetHeader, VlanTag, parse_ethernet
from ipsec_offload.wire.mailbox import ExpireKind
from ipsec_offload.wire.metadata import (
    RxMetadata,
    RxStatus,
    TxMetadata,
    build_tx_metadata,
    parse_rx_metadata,
)


class NetdevFeature(IntFlag):
    """The IPsec features a net device announces (Linux's netdev_features_t bits by name)."""

    HW_ESP = 1
    """NETIF_F_HW_ESP: xfrmdev_ops are there; states may be offloaded."""
    HW_ESP_TX_CSUM = 2
    """NETIF_F_HW_ESP_TX_CSUM: the device computes the inner checksum of offloaded sends."""
    GSO_ESP = 4
    """NETIF_F_GSO_ESP: large sends over an offloaded state are segmented by the device."""


ESP_FEATURES = NetdevFeature.HW_ESP | NetdevFeature.HW_ESP_TX_CSUM | NetdevFeature.GSO_ESP


class ExtAck:
    """Linux's netlink extended ack as the xdo_dev_* calls fill it: one message for the user
    (`ip xfrm state add` prints it). `set` is NL_SET_ERR_MSG; `set_weak` is
    NL_SET_ERR_MSG_WEAK, which keeps a message set before."""

    __slots__ = ("msg",)

    def __init__(self) -> None:
        self.msg: str | None = None

    def set(self, msg: str) -> None:
        self.msg = msg

    def set_weak(self, msg: str) -> None:
        if self.msg is None:
            self.msg = msg


Waiter = Callable[[Callable[[], bool], float], float]
"""How a driver waits (Linux's wait_for_completion): its environment runs the port from `now`
until `done()` holds and returns the time then, or raises SimulationError when nothing is left
that could make it hold. The Testbed gives its drivers one."""


def no_waiter(_done: Callable[[], bool], _now: float) -> float:
    """The default `Waiter`: a driver alone cannot wait for anyone."""
    raise SimulationError(
        "this driver waits for the agent's answer: give it a `wait` that runs the port (the"
        " Testbed gives its drivers one)"
    )


_ERRNO_TEXT = {
    1: "the PF refused: the VF is not set up for offload yet",
    2: "the device does not hold this state",
    13: "this VF may not offload IPsec (not trusted)",
    16: "the VF is being reset",
    17: "the agent holds an SA with this SPI and destination already",
    22: "the agent refused the SA as invalid",
    28: "no room for another SA (the agent's SAD or the VF's quota is full)",
    90: "the request does not fit a mailbox message",
    95: "the device cannot offload this state",
    110: "no answer from the agent (the config channel gave up after its retries)",
}
"""The extack message a driver gives with each errno of a failed xdo_dev_state_add."""


def errno_text(rc: int) -> str:
    """The extack message for the negative errno `rc`."""
    return _ERRNO_TEXT.get(-rc, f"the device failed to offload this state (errno {-rc})")


class OffloadType(IntEnum):
    """What a device offload of a state does (Linux's enum xfrm_dev_offload_type)."""

    CRYPTO = 1
    """The device encrypts and decrypts; the stack keeps headers, numbers and lifetimes
    (XFRM_DEV_OFFLOAD_CRYPTO, `ip xfrm state ... offload crypto`)."""
    PACKET = 2
    """The device does the whole ESP processing (XFRM_DEV_OFFLOAD_PACKET): not supported by
    this device, refused at the add."""


@dataclass(frozen=True, slots=True)
class OffloadState:
    """What the stack hands to xdo_dev_state_add: one xfrm state, by the stack's handle."""

    handle: int
    direction: Direction
    spi: int
    dst: bytes
    src: bytes
    algorithm: Algorithm
    key_material: bytes = field(repr=False)
    esn: bool = False
    replay_window: int = 64
    seq: int | None = None
    """The SEQ TLV to send (None: the agent's default), when `handover_seq` is not given."""
    lifetime_packets: int = 0
    lifetime_bytes: int = 0
    soft_lifetime_packets: int = 0
    soft_lifetime_bytes: int = 0
    offload_type: OffloadType = OffloadType.CRYPTO
    handover_seq: Callable[[], int | None] | None = field(default=None, compare=False)
    """Reads the stack's live state at the moment an ADD_SA is built (Linux hands the driver
    the `struct xfrm_state` itself): outbound the next sequence number, inbound the highest
    accepted, None while they are the agent's defaults. Every add and re-install (after a
    PF or VF reset) carries it, so the agent never starts below the stack (spec 9)."""

    def seq_now(self) -> int | None:
        """The SEQ an ADD_SA of this state carries now."""
        return self.seq if self.handover_seq is None else self.handover_seq()


def add_sa_request(
    state: OffloadState,
    *,
    wrapped_key: bytes | None = None,
    kek_id: int | None = None,
) -> AddSaRequest:
    """The agent's ADD_SA for a state, without domain fields; with `wrapped_key` the key
    material travels wrapped (RFC 5649) under KEK `kek_id` instead of in the clear."""
    return AddSaRequest(
        direction=state.direction,
        spi=state.spi,
        dst=state.dst,
        src=state.src,
        alg=state.algorithm,
        key=None if wrapped_key is not None else state.key_material,
        wrapped_key=wrapped_key,
        kek_id=kek_id,
        esn=state.esn,
        seq=state.seq_now(),
        replay_window=state.replay_window if state.direction == Direction.INBOUND else None,
        lifetime_packets=state.lifetime_packets or None,
        lifetime_bytes=state.lifetime_bytes or None,
        soft_lifetime_packets=state.soft_lifetime_packets or None,
        soft_lifetime_bytes=state.soft_lifetime_bytes or None,
    )


@dataclass(frozen=True, slots=True)
class TxOffload:
    """The skb's offload fields for one send on an offloaded SA."""

    handle: int
    next_header: int
    l3_offset: int
    esp_offset: int
    """Bytes from the IP header to the ESP header (a multiple of 4)."""


@dataclass(frozen=True, slots=True)
class StateAddDone:
    """The driver re-installed an offloaded state nobody waited for (after a PF or VF reset,
    an agent restart, or a listing that missed it): it is in the agent again."""

    handle: int
    rc: int
    sa_index: int | None


@dataclass(frozen=True, slots=True)
class CapsDone:
    rc: int
    caps: Caps | None


@dataclass(frozen=True, slots=True)
class OffloadLost:
    """An offloaded state is no longer in the agent (after a PF or VF reset) and could not
    be re-added: the stack carries it in software from now on."""

    handle: int
    rc: int


@dataclass(frozen=True, slots=True)
class StateExpired:
    """The agent reported that an offloaded state reached a limit (spec 9's SOFT_EXPIRE,
    HARD_EXPIRE, SEQ_SOFT_LIMIT events): Linux's soft expiry of the xfrm state (a request to
    rekey) for `ExpireKind.SOFT` and `SEQ_SOFT_LIMIT`, its hard expiry (the state is to be
    deleted; the agent passes no more of its traffic) for `ExpireKind.HARD`."""

    handle: int
    kind: ExpireKind

    @property
    def hard(self) -> bool:
        return self.kind == ExpireKind.HARD


@dataclass(frozen=True, slots=True)
class PacketReceived:
    """A frame for the stack, with what the agent did to it (None: no Rx metadata)."""

    frame: bytes
    rx: RxMetadata | None


DriverEvent = StateAddDone | CapsDone | OffloadLost | StateExpired | PacketReceived


_PASSED = frozenset((RxStatus.OK, RxStatus.NO_SA))
"""Rx statuses the driver hands up to the stack; the others it drops and counts."""


_IPV4_NO_OPTIONS = 0x45
"""Version 4, IHL 5: an IPv4 header without options (RFC 791)."""
_ESP = 50
"""ESP's protocol number, as the next header of an IPv6 header without extensions."""


@dataclass(slots=True)
class DriverCounters:
    tx_offloaded: int = 0
    tx_plain: int = 0
    rx_delivered: int = 0
    rx_malformed: int = 0
    rx_bad_metadata: int = 0
    rx_dropped: dict[str, int] = field(
        default_factory=lambda: {s.name: 0 for s in RxStatus if s not in _PASSED}
    )
    offload_refused: int = 0
    """Packets `xdo_dev_offload_ok` turned away (IPv4 options, IPv6 extension headers)."""


class RingDriver:
    """The data path of a PF or VF driver: Tx and Rx rings, and the queue of events."""

    features = ESP_FEATURES
    ifname = "eth0"
    """The interface's name (a VF's in its VM; the PF's is i40e's `ens1f0`), as `ip` shows it."""

    def __init__(self, mac: bytes, vlans: tuple[VlanTag, ...] = ()) -> None:
        self.mac = mac
        self.vlans = vlans
        self.wait: Waiter = no_waiter
        """How the xdo_dev_* calls that need the agent's answer wait for it (set by the
        driver's environment: the Testbed's runs the port meanwhile)."""
        self.counters = DriverCounters()
        self.sa_index: dict[int, int] = {}
        """The stack's handle of each offloaded state -> its index in the agent SAD."""
        self._tx: list[TxDescriptor] = []
        self._events: list[DriverEvent] = []
        self._tx_words: dict[tuple[int, int, int], int] = {}
        """Tx metadata words built so far, by (next header, L3 offset, ESP offset)."""
        self._fast = None if fastpath.TxPath is None else fastpath.TxPath(TxDescriptor)

    def xdo_dev_offload_ok(self, handle: int, l3: bytes) -> bool:
        """May this packet of the state `handle` go down for offload? `l3` is its IP header
        as it leaves (Linux passes the skb). Like ixgbe's and mlx5's, the agent's parser takes
        no IPv4 options and no IPv6 extension header before ESP: such a packet is refused and
        the stack seals it itself, with the same state's next number."""
        if handle not in self.sa_index:
            return False
        if l3[0] == _IPV4_NO_OPTIONS or (l3[0] >> 4 == 6 and l3[6] == _ESP):
            return True
        self.counters.offload_refused += 1
        return False

    def xmit(self, frame: bytes, offload: TxOffload | None = None, mss: int = 0) -> None:
        """Queue a frame on the Tx ring, with the metadata word when it is offloaded and the
        MSS when it is one large send for the NIC to segment (TSO)."""
        if mss < 0:
            raise UsageError("mss must be 0 (no TSO) or a positive segment size")
        if offload is None:
            self.counters.tx_plain += 1
            self._tx.append(TxDescriptor(frame, None, mss))
            return
        if offload.handle not in self.sa_index:
            raise UsageError(f"xfrm state {offload.handle} is not offloaded on this device")
        word = self._tx_word(offload)
        self.counters.tx_offloaded += 1
        self._tx.append(TxDescriptor(frame, word, mss))

    def xmit_burst(self, frames: Sequence[bytes], offload: TxOffload | None = None) -> None:
        """Queue frames on the Tx ring as `xmit(frame, offload)` does each (no TSO), at a
        fraction of the cost per frame: the offload is checked and its word built once."""
        if not frames:
            return
        word: int | None = None
        if offload is None:
            self.counters.tx_plain += len(frames)
        else:
            if offload.handle not in self.sa_index:
                raise UsageError(f"xfrm state {offload.handle} is not offloaded on this device")
            word = self._tx_word(offload)
            self.counters.tx_offloaded += len(frames)
        if self._fast is None:
            self._tx.extend([TxDescriptor(frame, word) for frame in frames])
        else:
            self._tx.extend(self._fast.descriptors(frames, word))

    def _tx_word(self, offload: TxOffload) -> int:
        """The metadata word of an offloaded send, built once per layout."""
        key = (offload.next_header, offload.l3_offset, offload.esp_offset)
        word = self._tx_words.get(key)
        if word is None:
            next_header, l3_offset, esp_offset = key
            if esp_offset % 4:
                raise UsageError("TxOffload.esp_offset must be a multiple of 4 bytes")
            word = build_tx_metadata(TxMetadata(True, next_header, l3_offset, esp_offset // 4))
            self._tx_words[key] = word
        return word

    def receive(self, descriptors: Iterable[RxDescriptor], now: float) -> None:
        """Process descriptors from the Rx ring."""
        for desc in descriptors:
            try:
                eth = parse_ethernet(desc.frame, -1)
            except ParseError:
                self.counters.rx_malformed += 1
                continue
            if not self._control_frame(desc, eth, now):
                self._data_frame(desc)

    def _control_frame(self, desc: RxDescriptor, eth: EthernetHeader, now: float) -> bool:
        """A subclass consumes the frames of its control channel here (True: consumed)."""
        return False

    def _data_frame(self, desc: RxDescriptor) -> None:
        rx: RxMetadata | None = None
        if desc.l2tag is not None:
            try:
                rx = parse_rx_metadata(desc.l2tag)
            except ParseError:
                self.counters.rx_bad_metadata += 1
                return
            if rx.ipsec and rx.status not in _PASSED:
                self.counters.rx_dropped[rx.status.name] += 1
                return
        self.counters.rx_delivered += 1
        self._events.append(PacketReceived(desc.frame, rx))

    def tx_descriptors(self) -> list[TxDescriptor]:
        """Take the descriptors queued for the NIC's Tx ring."""
        tx, self._tx = self._tx, []
        return tx

    def events(self) -> list[DriverEvent]:
        """Take the events queued for the stack."""
        events, self._events = self._events, []
        return events
