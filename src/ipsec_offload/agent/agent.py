"""The inline IPsec Agent (spec sections 3-5 and 7).

Theory of operation: the agent sits between the NIC's MAC (the host side) and the wire. It has
no control plane of its own. From the host side it takes

- untagged config frames addressed to its own MAC: requests, answered on the host side;
- frames with a Tx metadata tag: OFFLOAD=0 is stripped and passed (bypass), OFFLOAD=1 is
  encrypted with the outbound SA the ESP header names, in the frame's domain (source MAC and
  VLANs), with sequence number and IV from the SA's IVDB;
- anything else, passed unchanged.

From the wire it takes data frames, looks ESP up in the inbound SAD (destination MAC and VLANs
as the domain), checks the replay window, decrypts in place, and hands every frame to the host
side with an Rx metadata tag that says what happened. A frame leaving the Tx path toward an
address registered with ADD_LOCAL_ADDR is turned around (hairpin) and goes through the Rx path
instead of the wire.

Config requests are the config channel's (`config_channel.py`: one handler per opcode, the
reply cache). Unasked, the agent sends EVENT frames toward the PF (spec 9, `events.py`):
AGENT_STARTED from `start`, and SOFT_EXPIRE, HARD_EXPIRE and SEQ_SOFT_LIMIT when the data path
counts a packet that brings an SA to a threshold; `next_timer` / `on_timer` resend the
unanswered ones.

Everything is sans-IO: frames in, frames out (`AgentOutput`), `now` in simulated seconds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag

from ipsec_offload.agent import fastpath
from ipsec_offload.agent.config_channel import ConfigChannel
from ipsec_offload.agent.counters import AgentCounters, DropReason, Path
from ipsec_offload.agent.events import EventChannel, TxnSpace
from ipsec_offload.agent.fastpath import FAST_PATH_BUILT
from ipsec_offload.agent.replay import MAX_WINDOW_SIZE, ReplayWindow
from ipsec_offload.agent.sad import Domain, SecurityAssociation, SecurityAssociationDatabase
from ipsec_offload.burst import reference_items
from ipsec_offload.crypto.esp import esp_open, esp_seal_parts
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.errors import AuthenticationError, ParseError, UsageError
from ipsec_offload.wire.addr import ip_to_str, mac_to_str
from ipsec_offload.wire.config import Direction, EventType
from ipsec_offload.wire.esp import ESP_HEADER_LEN, ESP_IV_LEN, ICV_LEN
from ipsec_offload.wire.ethernet import (
    EtherType,
    VlanKey,
    VlanTag,
    check_ethertype,
    ethernet_fields,
    vlan_key,
)
from ipsec_offload.wire.ip import (
    IPV6_HEADER_LEN,
    IpProto,
    ipv4_fields,
    ipv4_with_length,
    ipv6_fields,
    ipv6_upper_layer,
    ipv6_with_length,
)
from ipsec_offload.wire.metadata import (
    RxMetadata,
    RxStatus,
    build_rx_metadata,
    rx_metadata_word,
    tx_metadata_fields,
)

DEFAULT_AGENT_MAC = bytes.fromhex("020000000001")
_NO_META = -1
_ESP = struct.Struct(">II")
_ESP_IV = struct.Struct(">IIQ")
"""SPI, sequence number and the IV, as the stack writes them in a Tx offload frame."""
_META_TAG = struct.Struct(">HI")
_SEQ_LIMIT = {False: (1 << 32) - 1, True: (1 << 64) - 1}
_NOT_ESP_WORD = build_rx_metadata(RxMetadata(ipsec=False))
# Enum members the data path reads for every frame, bound once: reading a member off its class
# costs a descriptor call in Python 3.11, as much as a dict lookup.
_OUTBOUND, _INBOUND = Direction.OUTBOUND, Direction.INBOUND
_TX_ENCRYPTED, _RX_ESP = Path.TX_ENCRYPTED, Path.RX_ESP
_RX_OK = RxStatus.OK
_IPV4 = EtherType.IPV4
_PROTO_ESP = IpProto.ESP


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Build-time parameters of the agent (the hardware's fixed sizes among them)."""

    mac: bytes = DEFAULT_AGENT_MAC
    pf_mac: bytes | None = None
    """The PF driver's MAC: config frames from any other source are ignored and counted
    (spec 9, invariant 3). None accepts any source, as in spec 1.0."""
    sad_size: int = 4096
    max_replay_window: int = 4096
    default_replay_window: int = 64
    ports: int = 1
    hairpin_size: int = 256
    txn_memory: int = 256
    meta_ethertype: int = EtherType.META
    config_ethertype: int = EtherType.CONFIG
    keks: Mapping[int, bytes] = field(default_factory=dict)
    ivdb: bool = True
    """False models the naive design: the IV and sequence number the stack wrote are used."""
    fast_path: bool = True
    """Use the compiled fast path where it is built (`FAST_PATH_BUILT`); False sends every
    frame through the Python reference path. Both give the same bytes, state and counters."""
    boot_id: int = 1
    """BOOT_ID (spec 9, u64): new at every agent start (the testbed draws one for every agent
    it creates); in every GET_CAPS reply and EVENT."""
    event_slots: int = 64
    """The table of pending (unanswered) events: a new event finding it full is not sent
    and is counted (TABLE_FULL)."""

    def __post_init__(self) -> None:
        if len(self.mac) != 6:
            raise UsageError("AgentConfig.mac must be 6 bytes")
        if self.pf_mac is not None and len(self.pf_mac) != 6:
            raise UsageError("AgentConfig.pf_mac must be 6 bytes (or None to accept any source)")
        if not 1 <= self.sad_size < 1 << 24:
            raise UsageError("AgentConfig.sad_size must be 1 .. 2^24-1 (SA_INDEX is 24 bits)")
        if not 0 <= self.default_replay_window <= self.max_replay_window <= MAX_WINDOW_SIZE:
            raise UsageError(
                "AgentConfig needs 0 <= default_replay_window <= max_replay_window <= 2^31"
            )
        if not 1 <= self.ports <= 256:
            raise UsageError("AgentConfig.ports must be 1 .. 256 (the header's port is a u8)")
        if not 0 <= self.boot_id < 1 << 64:
            raise UsageError("AgentConfig.boot_id must be 0 .. 2^64-1 (BOOT_ID is a u64)")
        if self.event_slots < 1:
            raise UsageError("AgentConfig.event_slots must be >= 1")
        if self.hairpin_size < 0 or self.txn_memory < 0:
            raise UsageError("AgentConfig.hairpin_size and txn_memory must be >= 0")
        check_ethertype(self.meta_ethertype, "AgentConfig.meta_ethertype")
        check_ethertype(self.config_ethertype, "AgentConfig.config_ethertype")


@dataclass(slots=True)
class AgentOutput:
    """Frames the agent emits, in order, toward each side; `hairpin` is a tap of the frames
    it turned around, as they were between its egress and ingress processing."""

    to_host: list[bytes] = field(default_factory=list)
    to_wire: list[bytes] = field(default_factory=list)
    hairpin: list[bytes] = field(default_factory=list)


_Burst = Callable[[list[bytes], int, list[bytes]], int]
"""`Datapath.tx_burst` or `rx_burst`: (frames, start, out) -> the first frame it left."""


class IpsecAgent:
    """The bump-in-the-wire ESP engine; see the module docstring."""

    def __init__(self, config: AgentConfig | None = None, *, txns: TxnSpace | None = None) -> None:
        """`txns`: the txn_ids of its EVENT frames (default 1, 2, ...); agents that share a
        link with the PF, the live agent's workers, each get their own (`TxnSpace`)."""
        self.config = config or AgentConfig()
        self.sad = SecurityAssociationDatabase(self.config.sad_size)
        self.counters = AgentCounters()
        self.local_addrs: set[Domain] = set()
        self._meta = self.config.meta_ethertype
        self.channel = ConfigChannel(
            self.config,
            self.sad,
            self.local_addrs,
            self.counters,
            _META_TAG.pack(self._meta, _NOT_ESP_WORD),
            txns,
        )
        self.events: EventChannel = self.channel.events
        self._now = 0.0
        self._fast: fastpath.Datapath | None = None
        table = self.sad.table
        if self.config.fast_path and fastpath.Datapath is not None and table is not None:
            self._fast = fastpath.Datapath(
                sad_table=table,
                local_addrs=self.local_addrs,
                invalid_tag=InvalidTag,
                paths=self.counters.paths,
                rx_status=self.counters.rx_status,
                tx_encrypted=_TX_ENCRYPTED,
                rx_esp=_RX_ESP,
                rx_ok=_RX_OK,
                meta_ethertype=self._meta,
                config_ethertype=self.config.config_ethertype,
                ivdb=self.config.ivdb,
                sa_type=SecurityAssociation,
                replay_type=ReplayWindow,
                aead_type=EspAead,
            )

    # -- entry points ---------------------------------------------------------------------

    def start(self, now: float = 0.0) -> AgentOutput:
        """The agent starts (its SAD is empty): AGENT_STARTED toward the PF, where it has a
        destination (spec 9). Call it once, before the first frame."""
        self._now = now
        self.events.emit(EventType.AGENT_STARTED, None, 0, now)
        out = AgentOutput()
        self._flush_events(out)
        return out

    def next_timer(self) -> float | None:
        """When `on_timer` next has work (an event to resend or give up), or None."""
        return self.events.next_timer()

    def on_timer(self, now: float) -> AgentOutput:
        """Resend the unanswered events due at `now` (every 10 ms, 5 times) toward the host."""
        self._now = now
        return AgentOutput(to_host=self.events.on_timer(now))

    def from_host(self, frames: Iterable[bytes], now: float = 0.0) -> AgentOutput:
        """Process a burst of frames arriving from the NIC (the host side)."""
        self._now = now
        out = AgentOutput()
        fast = None if self._fast is None else self._fast.tx_burst
        outbox = self.events.outbox
        for frame in _reference_frames(frames, fast, out.to_wire):
            self._host_frame(frame, out)
            if outbox:
                self._flush_events(out)
        return out

    def from_wire(self, frames: Iterable[bytes], now: float = 0.0) -> AgentOutput:
        """Process a burst of frames arriving from the wire."""
        self._now = now
        out = AgentOutput()
        fast = None if self._fast is None else self._fast.rx_burst
        outbox = self.events.outbox
        for frame in _reference_frames(frames, fast, out.to_host):
            rx = self._ingress(frame)
            if rx is not None:
                out.to_host.append(rx)
            if outbox:
                self._flush_events(out)
        return out

    def _flush_events(self, out: AgentOutput) -> None:
        """The events a frame raised go toward the host after what the frame produced."""
        out.to_host.extend(self.events.outbox)
        self.events.outbox.clear()

    def _counted(self, sa: SecurityAssociation) -> None:
        """After a packet was counted on `sa`: raise the lifetime events it reached."""
        watch_packets, watch_bytes = sa.watch_packets, sa.watch_bytes
        if (watch_packets and sa.packets >= watch_packets) or (
            watch_bytes and sa.bytes >= watch_bytes
        ):
            for kind in sa.lifetime_events():
                self.events.emit(kind, sa.index, sa.port, self._now)

    # -- Tx path --------------------------------------------------------------------------

    def _host_frame(self, frame: bytes, out: AgentOutput) -> None:
        try:
            dst, src, ethertype, vlans, metadata, l2_len = ethernet_fields(frame, self._meta)
        except ParseError:
            self.counters.drops[DropReason.MALFORMED_FRAME] += 1
            return
        if metadata is None:
            if ethertype == self.config.config_ethertype and not vlans and dst == self.config.mac:
                pf_mac = self.config.pf_mac
                if pf_mac is not None and src != pf_mac:
                    self.counters.drops[DropReason.CONFIG_NOT_FROM_PF] += 1
                    return
                self.channel.frame(frame, src, l2_len, out.to_host)
                return
            self.counters.paths[Path.TX_UNTAGGED] += 1
            self._forward(frame, dst, vlans, out)
            return
        try:
            offload, next_header, l3, esp_words = tx_metadata_fields(metadata)
        except ParseError:
            self.counters.drops[DropReason.METADATA_RESERVED] += 1
            return
        if not offload:
            self.counters.paths[Path.TX_BYPASS] += 1
            self._forward(_untag(frame), dst, vlans, out)
            return
        if l3 != l2_len - _META_TAG.size:
            # spec 3: L3_OFFSET must point right after the L2 header of the frame
            self.counters.drops[DropReason.BAD_OFFSETS] += 1
            return
        encrypted = self._encrypt(frame, l2_len, src, ethertype, vlans, esp_words * 4, next_header)
        if encrypted is not None:
            self.counters.paths[_TX_ENCRYPTED] += 1
            self._forward(encrypted, dst, vlans, out)

    def _forward(
        self, frame: bytes, dst: bytes, vlans: tuple[VlanTag, ...], out: AgentOutput
    ) -> None:
        """Send a processed host frame to the wire, or turn it around to a local address."""
        local = self.local_addrs
        if local:
            multicast = bool(dst[0] & 1)
            if multicast or Domain(dst, vlan_key(vlans)) in local:
                self.counters.paths[Path.HAIRPIN] += 1
                out.hairpin.append(frame)
                rx = self._ingress(frame)
                if rx is not None:
                    out.to_host.append(rx)
                if not multicast:
                    return
        out.to_wire.append(frame)

    def _encrypt(
        self,
        frame: bytes,
        l2_len: int,
        src: bytes,
        ethertype: int,
        vlans: tuple[VlanTag, ...],
        esp_off: int,
        next_header: int,
    ) -> bytes | None:
        """Encrypt a frame with an OFFLOAD=1 tag and return it without the tag (None: dropped).

        `frame` still has the tag, its L2 header is `l2_len` bytes; offsets here are in the
        tagged frame (the metadata's L3 offset, checked by the caller, is 6 bytes less).
        """
        drops = self.counters.drops
        located = _locate_esp(frame, l2_len, ethertype, esp_off)
        if located is None:
            drops[DropReason.BAD_OFFSETS] += 1
            return None
        esp_start, ip_end, ip_src, ip_dst = located
        spi, _stack_seq, seq = _ESP_IV.unpack_from(frame, esp_start)
        sa = self.sad.lookup(_OUTBOUND, spi, ip_dst, src, vlan_key(vlans))
        if sa is None or (sa.src is not None and sa.src != ip_src):
            drops[DropReason.NO_OUTBOUND_SA] += 1
            return None
        if sa.expired():
            drops[DropReason.SA_EXPIRED] += 1
            sa.errors[RxStatus.SA_EXPIRED - 1] += 1
            return None
        if self.config.ivdb:
            # spec 7: the IVDB rule (`seq` is the IV the stack wrote)
            if sa.ivdb <= seq:
                sa.ivdb = seq + 1
            else:
                seq = sa.ivdb
                sa.ivdb += 1
        if seq == 0 or seq > _SEQ_LIMIT[sa.esn]:
            drops[DropReason.SEQ_EXHAUSTED] += 1
            return None
        if sa.watch_seq and seq >= sa.watch_seq:
            # spec 9: the SA has used 2^31 of its 2^32 numbers (2^63 of 2^64 with ESN)
            sa.raised.add(EventType.SEQ_SOFT_LIMIT)
            sa.rewatch()
            self.events.emit(EventType.SEQ_SOFT_LIMIT, sa.index, sa.port, self._now)
        payload = memoryview(frame)[esp_start + ESP_HEADER_LEN + ESP_IV_LEN : ip_end]
        esp_header, sealed = esp_seal_parts(sa.aead, spi, seq, sa.esn, payload, next_header)
        esp_len = len(esp_header) + len(sealed)
        ip_header = _resize_ip(frame, l2_len, esp_start, ethertype, esp_start - l2_len + esp_len)
        if ip_header is None:
            drops[DropReason.TOO_LARGE] += 1
            return None
        sa.packets += 1
        sa.bytes += len(payload)
        self._counted(sa)
        # the frame without its tag: the MAC addresses, the rest of the L2 header, the ESP packet
        untagged_l2 = frame[12 + _META_TAG.size : l2_len]
        return b"".join((frame[:12], untagged_l2, ip_header, esp_header, sealed))

    # -- Rx path --------------------------------------------------------------------------

    def _ingress(self, frame: bytes) -> bytes | None:
        """Rx processing of one frame; returns it with its Rx metadata tag, or None (dropped)."""
        counters = self.counters
        try:
            dst, _, ethertype, vlans, _, l3 = ethernet_fields(frame, _NO_META)
        except ParseError:
            counters.drops[DropReason.MALFORMED_FRAME] += 1
            return None
        if ethertype == self.config.config_ethertype:
            counters.drops[DropReason.CONFIG_FROM_WIRE] += 1
            return None
        located = _locate_esp(frame, l3, ethertype, None)
        if located is None:
            counters.paths[Path.RX_NOT_ESP] += 1
            return self._tag(frame, _NOT_ESP_WORD)
        counters.paths[_RX_ESP] += 1
        esp_start, ip_end, ip_src, ip_dst = located
        if esp_start + ESP_HEADER_LEN > ip_end:
            # ESP too short to name its SA
            return self._rx_status(frame, RxStatus.MALFORMED, None)
        spi, seq_lo = _ESP.unpack_from(frame, esp_start)
        sa = self.sad.lookup(_INBOUND, spi, ip_dst, dst, vlan_key(vlans))
        if sa is None or (sa.src is not None and sa.src != ip_src):
            return self._rx_status(frame, RxStatus.NO_SA, None)
        if sa.expired():
            return self._rx_status(frame, RxStatus.SA_EXPIRED, sa)
        ct_start = esp_start + ESP_HEADER_LEN + ESP_IV_LEN
        body = ip_end - ct_start - ICV_LEN
        if body < 4 or body % 4:
            return self._rx_status(frame, RxStatus.MALFORMED, sa)
        assert sa.replay is not None
        full_seq = sa.replay.check(seq_lo)
        if full_seq is None:
            return self._rx_status(frame, RxStatus.REPLAY, sa)
        try:
            plaintext, payload_len, _next_header = esp_open(
                sa.aead,
                spi,
                full_seq,
                sa.esn,
                frame[ct_start - ESP_IV_LEN : ct_start],
                memoryview(frame)[ct_start:ip_end],
            )
        except AuthenticationError:
            return self._rx_status(frame, RxStatus.AUTH_FAILED, sa)
        except ParseError:
            sa.replay.accept(full_seq)
            return self._rx_status(frame, RxStatus.MALFORMED, sa)
        sa.replay.accept(full_seq)
        sa.packets += 1
        sa.bytes += payload_len
        self._counted(sa)
        ip_header = _resize_ip(frame, l3, esp_start, ethertype, ip_end - l3 - ICV_LEN)
        assert ip_header is not None  # shorter than what arrived
        counters.rx_status[_RX_OK] += 1
        tag = _META_TAG.pack(self._meta, rx_metadata_word(True, _RX_OK, sa.index))
        # decrypted in place and tagged: L2 | tag | ... | IP | ESP header | IV | plaintext
        return b"".join(
            (frame[:12], tag, frame[12:l3], ip_header, frame[esp_start:ct_start], plaintext)
        )

    def _rx_status(self, frame: bytes, status: RxStatus, sa: SecurityAssociation | None) -> bytes:
        """Pass an ESP frame unchanged with a non-OK status (spec 3: the host drops it)."""
        self.counters.rx_status[status] += 1
        if sa is not None:
            sa.errors[status - 1] += 1
        word = rx_metadata_word(True, status, sa.index if sa else 0)
        return self._tag(frame, word)

    def _tag(self, frame: bytes, word: int) -> bytes:
        return frame[:12] + _META_TAG.pack(self._meta, word) + frame[12:]

    # -- state dump -----------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The agent's state as plain data (no key material): SAD, hairpin table, counters."""
        return {
            "sad_size": self.config.sad_size,
            "sad_used": len(self.sad),
            "sas": [_dump_sa(sa) for sa in self.sad],
            "local_addrs": sorted(_dump_domain(d) for d in self.local_addrs),
            "counters": self.counters.snapshot(),
            "boot_id": self.config.boot_id,
            "pending_events": self.events.dump(),
        }


def _reference_frames(
    frames: Iterable[bytes], fast: _Burst | None, out: list[bytes]
) -> Iterable[bytes]:
    """The frames of a burst that the reference path must handle, in order: with the fast
    path, it handles each run of common frames (appending to `out`) and yields the others."""
    if fast is None:
        return frames
    return reference_items(frames, lambda burst, start: fast(burst, start, out))


_LocatedIp = tuple[int, int, bytes, bytes]


_IP_VERSIONS: dict[int, int] = {EtherType.IPV4: 4, EtherType.IPV6: 6}


def _locate_esp(frame: bytes, l3: int, ethertype: int, esp_off: int | None) -> _LocatedIp | None:
    """Find the IP header at `l3` (after an L2 header of EtherType `ethertype`) and its ESP.

    Returns (ESP start, IP end) as offsets in `frame` and the IP source and destination, or
    None when the bytes are not an ESP packet there. The IP version must agree with the
    EtherType. With `esp_off` (Tx metadata, spec 3) the ESP header must be exactly there and
    hold the ESP header and IV; the agent never trusts the offsets. Without it (Rx) the ESP
    header only has to start inside the IP packet: the caller judges a short one MALFORMED.
    """
    if l3 < 14 or l3 >= len(frame):
        return None
    version = frame[l3] >> 4
    if _IP_VERSIONS.get(ethertype) != version:
        return None
    try:
        if version == 4:
            offset, _, ip_len, _, flags_fragment, _, protocol, _, src, dst = ipv4_fields(frame, l3)
            if protocol != _PROTO_ESP or flags_fragment & 0x3FFF:
                return None
        else:  # 6, the only other version an EtherType names
            _, payload_length, _, _, src, dst = ipv6_fields(frame, l3)
            protocol, offset = ipv6_upper_layer(frame, l3)
            if protocol != _PROTO_ESP:
                return None
            ip_len = IPV6_HEADER_LEN + payload_length
    except ParseError:
        return None
    if esp_off is not None and esp_off != offset:
        return None
    needed = 0 if esp_off is None else ESP_HEADER_LEN + ESP_IV_LEN
    if ip_len > len(frame) - l3 or offset + needed > ip_len:
        return None
    return l3 + offset, l3 + ip_len, src, dst


def _resize_ip(frame: bytes, l3: int, esp_start: int, ethertype: int, new_len: int) -> bytes | None:
    """The IP header bytes at `l3` (with IPv4 options or IPv6 extension headers, up to the
    ESP header) for a packet of `new_len` bytes; None when that does not fit the length."""
    header = frame[l3:esp_start]
    if ethertype == _IPV4:
        return ipv4_with_length(header, new_len) if new_len <= 0xFFFF else None
    payload_length = new_len - IPV6_HEADER_LEN
    return ipv6_with_length(header, payload_length) if payload_length <= 0xFFFF else None


def _untag(frame: bytes) -> bytes:
    """The frame without its metadata tag (the outermost tag, after the MAC addresses)."""
    return frame[:12] + frame[12 + _META_TAG.size :]


def _dump_domain(domain: Domain) -> str:
    tags = "".join(f".{tpid:04x}:{vid}" for tpid, vid in domain.vlans)
    return mac_to_str(domain.mac) + tags


def _dump_sa(sa: SecurityAssociation) -> dict[str, Any]:
    return {
        "index": sa.index,
        "port": sa.port,
        "direction": sa.direction.name,
        "spi": f"0x{sa.spi:08x}",
        "dst": ip_to_str(sa.dst),
        "src": None if sa.src is None else ip_to_str(sa.src),
        "domain": None if sa.domain is None else _dump_domain(sa.domain),
        "algorithm": sa.algorithm.name,
        "esn": sa.esn,
        "next_seq": sa.ivdb if sa.direction == Direction.OUTBOUND else None,
        "highest_seq": None if sa.replay is None else sa.replay.highest,
        "packets": sa.packets,
        "bytes": sa.bytes,
        "errors": dict(zip([s.name for s in list(RxStatus)[1:]], sa.errors, strict=True)),
        "lifetime": {
            "packets": sa.lifetime_packets,
            "bytes": sa.lifetime_bytes,
            "soft_packets": sa.soft_lifetime_packets,
            "soft_bytes": sa.soft_lifetime_bytes,
        },
        "events_raised": sorted(kind.name for kind in sa.raised),
    }


__all__ = [
    "DEFAULT_AGENT_MAC",
    "FAST_PATH_BUILT",
    "AgentConfig",
    "AgentOutput",
    "IpsecAgent",
    "VlanKey",
]
