"""The PF driver: the xdo_dev_* offload calls, the config channel and the data rings.

Theory of operation: the host stack calls `xdo_dev_state_add` and friends as Linux's xfrm layer
does. Each call becomes a config frame on the Tx ring; the reply arrives on the Rx ring and
becomes an event carrying the call's return value (0 or a negative errno). The driver is
sans-IO: it queues Tx descriptors (`tx_descriptors`) and events (`events`), and wants
`handle_timer` called at `next_timer` so lost frames are retried.

On the data path the stack hands frames with a `TxOffload` (the skb's offload fields); the
driver writes the metadata word into the descriptor's L2TAG fields. On receive the driver reads
the Rx metadata from the descriptor: OK and NO_SA frames (and frames the agent did not look at)
go up to the stack; AUTH_FAILED, REPLAY, MALFORMED and SA_EXPIRED are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ipsec_offload.driver.control import Completion, ConfigChannel, Errno
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.nic.descriptors import RxDescriptor, TxDescriptor
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    Caps,
    Direction,
    Opcode,
    SaStats,
    Tlv,
    decode_caps,
    decode_sa_index,
    decode_sa_stats,
    encode_add_sa,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import EtherType, VlanTag, parse_ethernet
from ipsec_offload.wire.metadata import (
    RxMetadata,
    RxStatus,
    TxMetadata,
    build_tx_metadata,
    parse_rx_metadata,
)

DEFAULT_AGENT_MAC = bytes.fromhex("020000000001")


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
    lifetime_packets: int = 0
    lifetime_bytes: int = 0


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
    handle: int
    rc: int
    sa_index: int | None


@dataclass(frozen=True, slots=True)
class StateDeleteDone:
    handle: int
    rc: int


@dataclass(frozen=True, slots=True)
class StatsDone:
    handle: int
    rc: int
    stats: SaStats | None


@dataclass(frozen=True, slots=True)
class CapsDone:
    rc: int
    caps: Caps | None


@dataclass(frozen=True, slots=True)
class PacketReceived:
    """A frame for the stack, with what the agent did to it (None: no Rx metadata)."""

    frame: bytes
    rx: RxMetadata | None


DriverEvent = StateAddDone | StateDeleteDone | StatsDone | CapsDone | PacketReceived


_PASSED = frozenset((RxStatus.OK, RxStatus.NO_SA))
"""Rx statuses the driver hands up to the stack; the others it drops and counts."""


@dataclass(slots=True)
class DriverCounters:
    tx_offloaded: int = 0
    tx_plain: int = 0
    rx_delivered: int = 0
    rx_bad_metadata: int = 0
    rx_dropped: dict[str, int] = field(
        default_factory=lambda: {s.name: 0 for s in RxStatus if s not in _PASSED}
    )


class PfDriver:
    """The PF driver of one port: the only party that talks to the agent's config channel."""

    hw_esp_offload = True

    def __init__(
        self,
        mac: bytes,
        *,
        vlans: tuple[VlanTag, ...] = (),
        agent_mac: bytes = DEFAULT_AGENT_MAC,
        port: int = 0,
        timeout: float = 0.001,
        retries: int = 3,
        extended_key: bool = True,
        config_ethertype: int = EtherType.CONFIG,
    ) -> None:
        self.mac = mac
        self.vlans = vlans
        self.agent_mac = agent_mac
        self.extended_key = extended_key
        """False models the naive SA key: SAs are added without the domain fields."""
        self.channel = ConfigChannel(
            mac, agent_mac, port, timeout, retries, config_ethertype=config_ethertype
        )
        self.counters = DriverCounters()
        self.caps: Caps | None = None
        self.sa_index: dict[int, int] = {}
        """The stack's handle of each offloaded state -> its index in the agent SAD."""
        self._txn: dict[int, int] = {}
        self._tx: list[TxDescriptor] = []
        self._events: list[DriverEvent] = []
        self._config_ethertype = config_ethertype

    # -- the xdo_dev_* operations -----------------------------------------------------------

    def probe(self, now: float) -> None:
        """Ask the agent what it can do (GET_CAPS); completes with CapsDone."""
        self._submit(Opcode.GET_CAPS, (), -1, now)

    def xdo_dev_state_add(self, state: OffloadState, now: float) -> None:
        """Offload a state; completes with StateAddDone (rc 0 or a negative errno)."""
        if state.handle in self.sa_index:
            raise UsageError(f"xfrm state {state.handle} is already offloaded")
        refusal = self._refuse(state)
        if refusal:
            self._events.append(StateAddDone(state.handle, refusal, None))
            return
        request = AddSaRequest(
            direction=state.direction,
            spi=state.spi,
            dst=state.dst,
            src=state.src,
            alg=state.algorithm,
            key=state.key_material,
            local_mac=self.mac if self.extended_key else None,
            vlans=self.vlans if self.extended_key else (),
            esn=state.esn,
            seq=state.seq,
            replay_window=state.replay_window if state.direction == Direction.INBOUND else None,
            lifetime_packets=state.lifetime_packets or None,
            lifetime_bytes=state.lifetime_bytes or None,
        )
        self._submit(Opcode.ADD_SA, encode_add_sa(request), state.handle, now)

    def _refuse(self, state: OffloadState) -> int:
        """-EOPNOTSUPP for what the agent's capabilities rule out, without asking it."""
        caps = self.caps
        if caps is None:
            return 0
        if state.algorithm not in caps.algorithms:
            return -Errno.EOPNOTSUPP
        if state.direction == Direction.INBOUND and state.replay_window > caps.max_replay_window:
            return -Errno.EOPNOTSUPP
        return 0

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Remove an offloaded state from the agent; completes with StateDeleteDone."""
        index = self.sa_index.get(handle)
        if index is None:
            self._events.append(StateDeleteDone(handle, -Errno.ENOENT))
            return
        self._submit(Opcode.REMOVE_SA, encode_sa_index(index), handle, now)

    def xdo_dev_state_free(self, handle: int) -> None:
        """Forget a state after its delete completed (Linux frees driver memory here)."""
        self.sa_index.pop(handle, None)

    def xdo_dev_offload_ok(self, handle: int) -> bool:
        """May a packet of this state be handed down for offload?"""
        return handle in self.sa_index

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> None:
        """Fetch the agent's counters of a state; completes with StatsDone."""
        index = self.sa_index.get(handle)
        if index is None:
            self._events.append(StatsDone(handle, -Errno.ENOENT, None))
            return
        self._submit(Opcode.GET_SA_STATS, encode_sa_index(index), handle, now)

    def _submit(self, opcode: Opcode, tlvs: tuple[Tlv, ...], handle: int, now: float) -> None:
        txn_id, frame = self.channel.submit(opcode, tlvs, now)
        self._txn[txn_id] = handle
        self._tx.append(TxDescriptor(frame))

    def _complete(self, done: Completion) -> None:
        handle = self._txn.pop(done.txn_id)
        tlvs = done.reply.tlvs if done.reply is not None and done.rc == 0 else None
        try:
            event = self._finish(done.opcode, handle, done.rc, tlvs)
        except ParseError:
            self.channel.counters.bad_replies += 1
            event = self._finish(done.opcode, handle, -Errno.EINVAL, None)
        self._events.append(event)

    def _finish(
        self, opcode: Opcode, handle: int, rc: int, tlvs: tuple[Tlv, ...] | None
    ) -> DriverEvent:
        """The event (and driver state change) for a finished transaction."""
        if opcode == Opcode.ADD_SA:
            index = None if tlvs is None else decode_sa_index(tlvs)
            if index is not None:
                self.sa_index[handle] = index
            return StateAddDone(handle, rc, index)
        if opcode == Opcode.REMOVE_SA:
            return StateDeleteDone(handle, rc)
        if opcode == Opcode.GET_SA_STATS:
            return StatsDone(handle, rc, None if tlvs is None else decode_sa_stats(tlvs))
        if tlvs is not None:
            self.caps = decode_caps(tlvs)
        return CapsDone(rc, None if tlvs is None else self.caps)

    # -- data path --------------------------------------------------------------------------

    def xmit(self, frame: bytes, offload: TxOffload | None = None) -> None:
        """Queue a frame on the Tx ring, with the metadata word when it is offloaded."""
        if offload is None:
            self.counters.tx_plain += 1
            self._tx.append(TxDescriptor(frame))
            return
        if offload.handle not in self.sa_index:
            raise UsageError(f"xfrm state {offload.handle} is not offloaded on this device")
        if offload.esp_offset % 4:
            raise UsageError("TxOffload.esp_offset must be a multiple of 4 bytes")
        word = build_tx_metadata(
            TxMetadata(True, offload.next_header, offload.l3_offset, offload.esp_offset // 4)
        )
        self.counters.tx_offloaded += 1
        self._tx.append(TxDescriptor(frame, word))

    def receive(self, descriptors: Iterable[RxDescriptor], now: float) -> None:
        """Process descriptors from the Rx ring."""
        for desc in descriptors:
            self._receive_one(desc)

    def _receive_one(self, desc: RxDescriptor) -> None:
        try:
            eth = parse_ethernet(desc.frame, -1)
        except ParseError:
            self.counters.rx_bad_metadata += 1
            return
        if eth.ethertype == self._config_ethertype and eth.src == self.agent_mac:
            done = self.channel.on_reply(memoryview(desc.frame)[eth.header_len :])
            if done is not None and done.txn_id in self._txn:
                self._complete(done)
            return
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

    # -- sans-IO plumbing -------------------------------------------------------------------

    def tx_descriptors(self) -> list[TxDescriptor]:
        """Take the descriptors queued for the NIC's Tx ring."""
        tx, self._tx = self._tx, []
        return tx

    def events(self) -> list[DriverEvent]:
        """Take the events queued for the stack."""
        events, self._events = self._events, []
        return events

    def next_timer(self) -> float | None:
        return self.channel.next_deadline()

    def handle_timer(self, now: float) -> None:
        resend, done = self.channel.on_timer(now)
        self._tx.extend(TxDescriptor(frame) for frame in resend)
        for completion in done:
            self._complete(completion)

    def dump(self) -> dict[str, Any]:
        return {
            "mac": self.mac.hex(":"),
            "offloaded": dict(sorted(self.sa_index.items())),
            "pending": self.channel.pending,
            "control": asdict(self.channel.counters),
            "counters": asdict(self.counters),
        }
