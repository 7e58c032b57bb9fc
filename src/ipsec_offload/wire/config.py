"""Config frames: the 12-byte header, TLVs and the typed message bodies (spec sections 4, 9)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TypeVar

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.ethernet import MAX_VLANS, EtherType, VlanTag

__all__ = [
    "CONFIG_HEADER_LEN",
    "CONFIG_VERSION",
    "LIST_SAS_MAX_TLV_BYTES",
    "RX_ERROR_STATUSES",
    "SALT_LEN",
    "TLV_HEADER_LEN",
    "AddSaRequest",
    "Algorithm",
    "Caps",
    "ConfigMessage",
    "ConfigStatus",
    "Direction",
    "Event",
    "EventType",
    "ListSasReply",
    "ListSasRequest",
    "LocalAddr",
    "Opcode",
    "SaEntry",
    "SaStats",
    "Tlv",
    "TlvType",
    "build_config",
    "build_tlvs",
    "decode_add_sa",
    "decode_caps",
    "decode_count",
    "decode_empty",
    "decode_event",
    "decode_list_sas_reply",
    "decode_list_sas_request",
    "decode_local_addr",
    "decode_sa_entry",
    "decode_sa_index",
    "decode_sa_stats",
    "encode_add_sa",
    "encode_caps",
    "encode_count",
    "encode_event",
    "encode_list_sas_reply",
    "encode_list_sas_request",
    "encode_local_addr",
    "encode_sa_entry",
    "encode_sa_index",
    "encode_sa_stats",
    "pack_list_sas_reply",
    "parse_config",
    "parse_config_header",
    "parse_tlvs",
]

_LAYER = "config"
CONFIG_VERSION = 1
CONFIG_HEADER_LEN = 12
TLV_HEADER_LEN = 4
SALT_LEN = 4
RX_ERROR_STATUSES = 5
"""STATS carries one error counter per Rx STATUS value 1..5."""
LIST_SAS_MAX_TLV_BYTES = 1400
"""A LIST_SAS reply carries at most this many bytes of TLVs, its SA_INDEX cursor included."""

_HEADER = struct.Struct("!BBBBBBIH")
_TLV = struct.Struct("!HH")
_VLAN = struct.Struct("!HH")
_STATS = struct.Struct(f"!{2 + RX_ERROR_STATUSES}Q")
_CAPS_TAIL = struct.Struct("!II")
_SA_ENTRY_HEAD = struct.Struct("!IBIB")
_SA_ENTRY_SEQ = struct.Struct("!Q")
_MAC_LEN = 6
_ADDR_LENS = (4, 16)
_VLAN_TPIDS = frozenset((EtherType.VLAN, EtherType.QINQ))
_REPLY_BIT = 0x80


class Opcode(IntEnum):
    """Request opcodes; a reply carries `opcode | Opcode.REPLY`."""

    ADD_SA = 0x01
    REMOVE_SA = 0x02
    REMOVE_ALL_SAS = 0x03
    ADD_LOCAL_ADDR = 0x04
    REMOVE_LOCAL_ADDR = 0x05
    GET_SA_STATS = 0x06
    GET_CAPS = 0x07
    LIST_SAS = 0x08
    EVENT = 0x09
    REPLY = _REPLY_BIT


class ConfigStatus(IntEnum):
    """Reply status."""

    OK = 0
    BAD_REQUEST = 1
    UNSUPPORTED = 2
    NO_SPACE = 3
    EXISTS = 4
    NOT_FOUND = 5
    KEY_UNWRAP_FAILED = 6
    BAD_VERSION = 7


class TlvType(IntEnum):
    """TLV types."""

    SA_INDEX = 0x0001
    DIR = 0x0002
    SPI = 0x0003
    DST_ADDR = 0x0004
    SRC_ADDR = 0x0005
    ALG = 0x0006
    KEY = 0x0007
    WRAPPED_KEY = 0x0008
    LOCAL_MAC = 0x0009
    VLAN = 0x000A
    ESN = 0x000B
    REPLAY_WINDOW = 0x000C
    LIFETIME_PACKETS = 0x000D
    LIFETIME_BYTES = 0x000E
    COUNT = 0x000F
    STATS = 0x0010
    CAPS = 0x0011
    KEK_ID = 0x0012
    SEQ = 0x0013
    SA_ENTRY = 0x0014
    EVENT_TYPE = 0x0015
    BOOT_ID = 0x0016
    SOFT_LIFETIME_PACKETS = 0x0017
    SOFT_LIFETIME_BYTES = 0x0018


class Direction(IntEnum):
    """SA direction: inbound SAs decrypt, outbound SAs encrypt."""

    INBOUND = 0
    OUTBOUND = 1


class Algorithm(IntEnum):
    """ESP AEAD algorithms (RFC 4106), both with a 16-byte ICV."""

    AES_GCM_128 = 1
    AES_GCM_256 = 2

    @property
    def key_length(self) -> int:
        """AES key bytes: 16 or 32."""
        return 16 if self is Algorithm.AES_GCM_128 else 32

    @property
    def key_material_length(self) -> int:
        """KEY TLV bytes: the AES key and the 4-byte salt."""
        return self.key_length + SALT_LEN

    @property
    def wrapped_key_length(self) -> int:
        """WRAPPED_KEY TLV bytes: RFC 5649 pads the key material to 8 bytes and adds 8."""
        return -(-self.key_material_length // 8) * 8 + 8


class EventType(IntEnum):
    """What an EVENT tells the PF (spec 9)."""

    AGENT_STARTED = 1
    SOFT_EXPIRE = 2
    HARD_EXPIRE = 3
    SEQ_SOFT_LIMIT = 4


_TLV_TYPES = frozenset(TlvType)
_DIRECTIONS = frozenset(Direction)
_ALGORITHMS = frozenset(Algorithm)
_EVENT_TYPES = frozenset(EventType)
_SA_ENTRY_LENS = tuple(_SA_ENTRY_HEAD.size + n + _SA_ENTRY_SEQ.size for n in _ADDR_LENS)


@dataclass(frozen=True, slots=True)
class Tlv:
    """One TLV; `type` may be a value this model does not know."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class ConfigMessage:
    """A config request or reply: the header fields and the TLVs, in frame order."""

    opcode: int
    txn_id: int
    tlvs: tuple[Tlv, ...]
    status: int = ConfigStatus.OK
    flags: int = 0
    port: int = 0
    version: int = CONFIG_VERSION

    @property
    def is_reply(self) -> bool:
        """True when the REPLY bit of the opcode is set."""
        return bool(self.opcode & _REPLY_BIT)

    @property
    def base_opcode(self) -> int:
        """The opcode without the REPLY bit (compare with `Opcode` members)."""
        return self.opcode & ~_REPLY_BIT & 0xFF


def parse_config_header(buf: bytes | memoryview) -> ConfigMessage:
    """Parse only the 12-byte header of a config message (`tlvs` is empty).

    Enough to answer any request, a BAD_VERSION or BAD_REQUEST reply included.
    """
    mv = memoryview(buf)
    size = len(mv)
    if size < CONFIG_HEADER_LEN:
        # spec 4: header is 12 bytes
        raise ParseError(_LAYER, f"{size} bytes is shorter than the 12-byte header", size)
    version, opcode, status, flags, port, _, txn_id, _ = _HEADER.unpack_from(mv)
    return ConfigMessage(opcode, txn_id, (), status, flags, port, version)


def parse_config(buf: bytes | memoryview) -> ConfigMessage:
    """Parse a config message: the bytes after the CONFIG EtherType.

    A version other than 1 yields the header only (no TLVs) so that the agent can answer
    BAD_VERSION. Bytes after the `tlv_length` TLV bytes are Ethernet padding and ignored.
    """
    mv = memoryview(buf)
    header = parse_config_header(mv)
    if header.version != CONFIG_VERSION:
        # spec 4: only version 1 defines the body; the reply is BAD_VERSION
        return header
    _, _, _, _, _, reserved, _, tlv_length = _HEADER.unpack_from(mv)
    if reserved:
        # spec 4: reserved u8 is 0
        raise ParseError(_LAYER, f"reserved header byte is {reserved:#04x}, not 0", 5)
    size = len(mv)
    end = CONFIG_HEADER_LEN + tlv_length
    if end > size:
        # spec 4: tlv_length counts the TLV bytes after the header
        raise ParseError(
            _LAYER, f"tlv_length {tlv_length} exceeds the {size - CONFIG_HEADER_LEN} bytes", 10
        )
    tlvs = parse_tlvs(mv[:end], CONFIG_HEADER_LEN)
    return replace(header, tlvs=tlvs)


def build_config(msg: ConfigMessage) -> bytes:
    """Encode a config message (header and TLVs), the bytes after the CONFIG EtherType."""
    for name, value in (
        ("version", msg.version),
        ("opcode", msg.opcode),
        ("status", msg.status),
        ("flags", msg.flags),
        ("port", msg.port),
    ):
        _check_uint(f"config {name}", value, 1)
    _check_uint("config txn_id", msg.txn_id, 4)
    body = build_tlvs(msg.tlvs)
    header = _HEADER.pack(
        msg.version, msg.opcode, msg.status, msg.flags, msg.port, 0, msg.txn_id, len(body)
    )
    return header + body


def parse_tlvs(buf: bytes | memoryview, offset: int = 0) -> tuple[Tlv, ...]:
    """The TLVs filling `buf` from `offset` to its end (`type u16 | length u16 | value`)."""
    mv = memoryview(buf)
    end = len(mv)
    tlvs: list[Tlv] = []
    while offset < end:
        if offset + TLV_HEADER_LEN > end:
            # spec 4: TLV is type u16 | length u16 | value
            raise ParseError(_LAYER, "truncated TLV header", offset)
        tlv_type, length = _TLV.unpack_from(mv, offset)
        start = offset + TLV_HEADER_LEN
        if start + length > end:
            # spec 4: the value fits inside tlv_length
            raise ParseError(
                _LAYER, f"TLV {_tlv_name(tlv_type)} value of {length} bytes is truncated", offset
            )
        tlvs.append(Tlv(tlv_type, bytes(mv[start : start + length])))
        offset = start + length
    return tuple(tlvs)


def build_tlvs(tlvs: Iterable[Tlv]) -> bytes:
    """Encode TLVs back to back; at most 65535 bytes in all."""
    parts = []
    for tlv in tlvs:
        _check_uint("TLV type", tlv.type, 2)
        if len(tlv.value) > 0xFFFF:
            raise UsageError(f"TLV {_tlv_name(tlv.type)} value of {len(tlv.value)} bytes > 65535")
        parts.append(_TLV.pack(tlv.type, len(tlv.value)))
        parts.append(bytes(tlv.value))
    body = b"".join(parts)
    if len(body) > 0xFFFF:
        raise UsageError(f"TLVs of {len(body)} bytes; tlv_length allows at most 65535")
    return body


def _tlv_name(tlv_type: int) -> str:
    return TlvType(tlv_type).name if tlv_type in _TLV_TYPES else f"{tlv_type:#06x}"


_Encoded = TypeVar("_Encoded", tuple[Tlv, ...], bytes)


def _decodable(encoded: _Encoded, decode: Callable[[_Encoded], object], what: str) -> _Encoded:
    """`encoded` once its decoder takes it: an encoder never builds what the agent or the
    driver would refuse; UsageError names the field that is wrong."""
    try:
        decode(encoded)
    except ParseError as exc:
        raise UsageError(f"invalid {what}: {exc.what}") from exc
    return encoded


def _check_uint(name: str, value: int, size: int) -> None:
    if not 0 <= value < 1 << 8 * size:
        raise UsageError(f"{name} {value} does not fit {8 * size} bits")


def _uint_tlv(tlv_type: TlvType, value: int, size: int) -> Tlv:
    _check_uint(tlv_type.name, value, size)
    return Tlv(tlv_type, value.to_bytes(size, "big"))


class _Reader:
    """The TLVs of one message body, checked against the types that body allows.

    Offsets in errors are byte offsets in the config message, assuming the TLVs are in frame
    order right after the header (as `parse_config` returns them).
    """

    def __init__(
        self,
        tlvs: Iterable[Tlv],
        allowed: frozenset[TlvType],
        repeatable: frozenset[TlvType] = frozenset(),
    ) -> None:
        self._found: dict[int, list[tuple[int, bytes]]] = {}
        offset = CONFIG_HEADER_LEN
        for tlv in tlvs:
            if tlv.type not in _TLV_TYPES:
                # spec 4: unknown TLV types in a request are BAD_REQUEST
                raise ParseError(_LAYER, f"unknown TLV type {tlv.type:#06x}", offset)
            if tlv.type not in allowed:
                # spec 4: each opcode's table row lists its TLVs
                raise ParseError(_LAYER, f"TLV {_tlv_name(tlv.type)} does not belong here", offset)
            seen = self._found.setdefault(tlv.type, [])
            if seen and tlv.type not in repeatable:
                # spec 4, 9: only VLAN (and SA_ENTRY in a LIST_SAS reply) repeats
                raise ParseError(_LAYER, f"duplicate TLV {_tlv_name(tlv.type)}", offset)
            seen.append((offset, tlv.value))
            offset += TLV_HEADER_LEN + len(tlv.value)
        self.end = offset

    def every(self, tlv_type: TlvType, sizes: tuple[int, ...] | None) -> list[tuple[int, bytes]]:
        """Every (offset, value) of that type; `sizes` lists the allowed lengths, None any."""
        found = self._found.get(tlv_type, [])
        for offset, value in found:
            if sizes is not None and len(value) not in sizes:
                # spec 4: TLV type table, value column
                want = " or ".join(str(s) for s in sizes)
                raise ParseError(
                    _LAYER,
                    f"TLV {tlv_type.name} value has {len(value)} bytes, not {want}",
                    offset + 2,
                )
        return found

    def get(self, tlv_type: TlvType, sizes: tuple[int, ...] | None) -> tuple[int, bytes] | None:
        found = self.every(tlv_type, sizes)
        return found[0] if found else None

    def need(self, tlv_type: TlvType, sizes: tuple[int, ...] | None) -> tuple[int, bytes]:
        found = self.get(tlv_type, sizes)
        if found is None:
            # spec 4: opcode table, required TLVs
            raise ParseError(_LAYER, f"missing TLV {tlv_type.name}", self.end)
        return found

    def uint(self, tlv_type: TlvType, size: int) -> int | None:
        found = self.get(tlv_type, (size,))
        return None if found is None else int.from_bytes(found[1], "big")

    def need_uint(self, tlv_type: TlvType, size: int) -> tuple[int, int]:
        offset, value = self.need(tlv_type, (size,))
        return offset, int.from_bytes(value, "big")


@dataclass(frozen=True, slots=True)
class AddSaRequest:
    """The body of ADD_SA. Exactly one of `key` / `wrapped_key` (which needs `kek_id`)."""

    direction: Direction
    spi: int
    dst: bytes
    alg: Algorithm
    key: bytes | None = None
    wrapped_key: bytes | None = None
    kek_id: int | None = None
    src: bytes | None = None
    local_mac: bytes | None = None
    vlans: tuple[VlanTag, ...] = ()
    esn: bool = False
    seq: int | None = None
    replay_window: int | None = None
    lifetime_packets: int | None = None
    lifetime_bytes: int | None = None
    soft_lifetime_packets: int | None = None
    soft_lifetime_bytes: int | None = None


_ADD_SA_TLVS = frozenset(
    (
        TlvType.DIR,
        TlvType.SPI,
        TlvType.DST_ADDR,
        TlvType.SRC_ADDR,
        TlvType.ALG,
        TlvType.KEY,
        TlvType.WRAPPED_KEY,
        TlvType.KEK_ID,
        TlvType.LOCAL_MAC,
        TlvType.VLAN,
        TlvType.ESN,
        TlvType.SEQ,
        TlvType.REPLAY_WINDOW,
        TlvType.LIFETIME_PACKETS,
        TlvType.LIFETIME_BYTES,
        TlvType.SOFT_LIFETIME_PACKETS,
        TlvType.SOFT_LIFETIME_BYTES,
    )
)
_VLAN_ONLY = frozenset((TlvType.VLAN,))
_SA_ENTRY_ONLY = frozenset((TlvType.SA_ENTRY,))


def _vlan_tlvs(vlans: tuple[VlanTag, ...]) -> list[Tlv]:
    tlvs = []
    for tag in vlans:
        _check_uint("VLAN TPID", tag.tpid, 2)
        _check_uint("VLAN TCI", tag.tci, 2)
        tlvs.append(Tlv(TlvType.VLAN, _VLAN.pack(tag.tpid, tag.tci)))
    return tlvs


def _read_vlans(reader: _Reader) -> tuple[VlanTag, ...]:
    found = reader.every(TlvType.VLAN, (_VLAN.size,))
    if len(found) > MAX_VLANS:
        # spec 4: VLAN repeated, at most 2
        raise ParseError(_LAYER, f"{len(found)} VLAN TLVs, at most {MAX_VLANS}", found[2][0])
    vlans = []
    for offset, value in found:
        tpid, tci = _VLAN.unpack(value)
        if tpid not in _VLAN_TPIDS:
            # spec 3/4: TPID 0x8100 or 0x88A8
            raise ParseError(_LAYER, f"VLAN TPID {tpid:#06x} is not 0x8100 or 0x88a8", offset + 4)
        vlans.append(VlanTag(tpid, tci))
    return tuple(vlans)


def encode_add_sa(req: AddSaRequest) -> tuple[Tlv, ...]:
    """TLVs of an ADD_SA request, in the spec table's order; rejects what decode would."""
    tlvs = [
        _uint_tlv(TlvType.DIR, req.direction, 1),
        _uint_tlv(TlvType.SPI, req.spi, 4),
        Tlv(TlvType.DST_ADDR, bytes(req.dst)),
    ]
    if req.src is not None:
        tlvs.append(Tlv(TlvType.SRC_ADDR, bytes(req.src)))
    tlvs.append(_uint_tlv(TlvType.ALG, req.alg, 1))
    if req.key is not None:
        tlvs.append(Tlv(TlvType.KEY, bytes(req.key)))
    if req.wrapped_key is not None:
        tlvs.append(Tlv(TlvType.WRAPPED_KEY, bytes(req.wrapped_key)))
    if req.kek_id is not None:
        tlvs.append(_uint_tlv(TlvType.KEK_ID, req.kek_id, 4))
    if req.local_mac is not None:
        tlvs.append(Tlv(TlvType.LOCAL_MAC, bytes(req.local_mac)))
    tlvs.extend(_vlan_tlvs(req.vlans))
    if req.esn:
        tlvs.append(Tlv(TlvType.ESN, b""))
    for tlv_type, value, size in (
        (TlvType.SEQ, req.seq, 8),
        (TlvType.REPLAY_WINDOW, req.replay_window, 4),
        (TlvType.LIFETIME_PACKETS, req.lifetime_packets, 8),
        (TlvType.LIFETIME_BYTES, req.lifetime_bytes, 8),
        (TlvType.SOFT_LIFETIME_PACKETS, req.soft_lifetime_packets, 8),
        (TlvType.SOFT_LIFETIME_BYTES, req.soft_lifetime_bytes, 8),
    ):
        if value is not None:
            tlvs.append(_uint_tlv(tlv_type, value, size))
    return _decodable(tuple(tlvs), decode_add_sa, "AddSaRequest")


def decode_add_sa(tlvs: Iterable[Tlv]) -> AddSaRequest:
    """Validate and decode the TLVs of an ADD_SA request (ParseError means BAD_REQUEST)."""
    reader = _Reader(tlvs, _ADD_SA_TLVS, _VLAN_ONLY)
    offset, direction = reader.need_uint(TlvType.DIR, 1)
    if direction not in _DIRECTIONS:
        # spec 4: DIR u8, 0 inbound or 1 outbound
        raise ParseError(_LAYER, f"DIR {direction} is neither 0 nor 1", offset + 4)
    offset, spi = reader.need_uint(TlvType.SPI, 4)
    if spi == 0:
        # spec 4: SPI u32, not 0 (RFC 4303 2.1)
        raise ParseError(_LAYER, "SPI 0 is reserved", offset + 4)
    _, dst = reader.need(TlvType.DST_ADDR, _ADDR_LENS)
    src_found = reader.get(TlvType.SRC_ADDR, _ADDR_LENS)
    src = None
    if src_found is not None:
        offset, src = src_found
        if len(src) != len(dst):
            # spec 4: SRC_ADDR and DST_ADDR of one family
            raise ParseError(_LAYER, "SRC_ADDR and DST_ADDR are of different families", offset)
    offset, alg_id = reader.need_uint(TlvType.ALG, 1)
    if alg_id not in _ALGORITHMS:
        # spec 4: ALG 1 AES-GCM-128 or 2 AES-GCM-256
        raise ParseError(_LAYER, f"unknown ALG {alg_id}", offset + 4)
    alg = Algorithm(alg_id)
    key_found = reader.get(TlvType.KEY, (alg.key_material_length,))
    wrapped_found = reader.get(TlvType.WRAPPED_KEY, (alg.wrapped_key_length,))
    kek_id = reader.uint(TlvType.KEK_ID, 4)
    if (key_found is None) == (wrapped_found is None):
        # spec 4: KEY or WRAPPED_KEY, exactly one
        raise ParseError(_LAYER, "need exactly one of KEY and WRAPPED_KEY", reader.end)
    if (wrapped_found is None) != (kek_id is None):
        # spec 4: KEK_ID names the key-encryption key of WRAPPED_KEY, and only that
        raise ParseError(_LAYER, "KEK_ID goes with WRAPPED_KEY, one needs the other", reader.end)
    mac = reader.get(TlvType.LOCAL_MAC, (_MAC_LEN,))
    esn = reader.get(TlvType.ESN, (0,))
    return AddSaRequest(
        direction=Direction(direction),
        spi=spi,
        dst=dst,
        alg=alg,
        key=None if key_found is None else key_found[1],
        wrapped_key=None if wrapped_found is None else wrapped_found[1],
        kek_id=kek_id,
        src=src,
        local_mac=None if mac is None else mac[1],
        vlans=_read_vlans(reader),
        esn=esn is not None,
        seq=reader.uint(TlvType.SEQ, 8),
        replay_window=reader.uint(TlvType.REPLAY_WINDOW, 4),
        lifetime_packets=reader.uint(TlvType.LIFETIME_PACKETS, 8),
        lifetime_bytes=reader.uint(TlvType.LIFETIME_BYTES, 8),
        soft_lifetime_packets=reader.uint(TlvType.SOFT_LIFETIME_PACKETS, 8),
        soft_lifetime_bytes=reader.uint(TlvType.SOFT_LIFETIME_BYTES, 8),
    )


def decode_empty(tlvs: Iterable[Tlv]) -> None:
    """Check that a body has no TLVs (GET_CAPS and REMOVE_ALL_SAS requests, empty replies)."""
    _Reader(tlvs, frozenset())


def encode_sa_index(index: int) -> tuple[Tlv, ...]:
    """The SA_INDEX TLV (REMOVE_SA and GET_SA_STATS requests, ADD_SA reply)."""
    return (_uint_tlv(TlvType.SA_INDEX, index, 4),)


def decode_sa_index(tlvs: Iterable[Tlv]) -> int:
    """The SA index of a body holding exactly one SA_INDEX TLV."""
    return _Reader(tlvs, frozenset((TlvType.SA_INDEX,))).need_uint(TlvType.SA_INDEX, 4)[1]


def encode_count(count: int) -> tuple[Tlv, ...]:
    """The COUNT TLV of a REMOVE_ALL_SAS reply."""
    return (_uint_tlv(TlvType.COUNT, count, 4),)


def decode_count(tlvs: Iterable[Tlv]) -> int:
    """The count of a body holding exactly one COUNT TLV."""
    return _Reader(tlvs, frozenset((TlvType.COUNT,))).need_uint(TlvType.COUNT, 4)[1]


@dataclass(frozen=True, slots=True)
class LocalAddr:
    """The body of ADD_LOCAL_ADDR / REMOVE_LOCAL_ADDR: a VSI's MAC and VLAN stack."""

    mac: bytes
    vlans: tuple[VlanTag, ...] = ()


def encode_local_addr(addr: LocalAddr) -> tuple[Tlv, ...]:
    """LOCAL_MAC then the VLAN TLVs, outermost first."""
    tlvs = (Tlv(TlvType.LOCAL_MAC, bytes(addr.mac)), *_vlan_tlvs(addr.vlans))
    return _decodable(tlvs, decode_local_addr, "LocalAddr")


def decode_local_addr(tlvs: Iterable[Tlv]) -> LocalAddr:
    """Validate and decode LOCAL_MAC and up to two VLAN TLVs."""
    reader = _Reader(tlvs, frozenset((TlvType.LOCAL_MAC, TlvType.VLAN)), _VLAN_ONLY)
    _, mac = reader.need(TlvType.LOCAL_MAC, (_MAC_LEN,))
    return LocalAddr(mac, _read_vlans(reader))


@dataclass(frozen=True, slots=True)
class SaStats:
    """The GET_SA_STATS reply: packets, bytes and errors per Rx status NO_SA..SA_EXPIRED."""

    packets: int
    bytes: int
    errors: tuple[int, int, int, int, int]


def encode_sa_stats(stats: SaStats) -> tuple[Tlv, ...]:
    """The STATS TLV: seven u64."""
    if len(stats.errors) != RX_ERROR_STATUSES:
        raise UsageError(f"{len(stats.errors)} error counters; give one per Rx status 1..5")
    values = (stats.packets, stats.bytes, *stats.errors)
    for value in values:
        _check_uint("STATS counter", value, 8)
    return (Tlv(TlvType.STATS, _STATS.pack(*values)),)


def decode_sa_stats(tlvs: Iterable[Tlv]) -> SaStats:
    """Decode a body holding exactly one STATS TLV."""
    reader = _Reader(tlvs, frozenset((TlvType.STATS,)))
    _, value = reader.need(TlvType.STATS, (_STATS.size,))
    packets, octets, e1, e2, e3, e4, e5 = _STATS.unpack(value)
    return SaStats(packets, octets, (e1, e2, e3, e4, e5))


@dataclass(frozen=True, slots=True)
class Caps:
    """The GET_CAPS reply; `boot_id` is None in the reply of a spec 1.0 agent (no BOOT_ID)."""

    algorithms: tuple[Algorithm, ...]
    sad_size: int
    max_replay_window: int
    boot_id: int | None = None


def encode_caps(caps: Caps) -> tuple[Tlv, ...]:
    """The CAPS TLV (u8 count, one u8 per algorithm, u32 SAD size, u32 max replay window),
    then BOOT_ID (u64) unless `boot_id` is None."""
    if len(caps.algorithms) > 0xFF:
        raise UsageError(f"{len(caps.algorithms)} algorithms; the count is a u8")
    for alg in caps.algorithms:
        if alg not in _ALGORITHMS:
            raise UsageError(f"algorithm {alg!r}; use Algorithm members")
    _check_uint("SAD size", caps.sad_size, 4)
    _check_uint("max replay window", caps.max_replay_window, 4)
    value = bytes((len(caps.algorithms), *caps.algorithms)) + _CAPS_TAIL.pack(
        caps.sad_size, caps.max_replay_window
    )
    tlvs = [Tlv(TlvType.CAPS, value)]
    if caps.boot_id is not None:
        tlvs.append(_uint_tlv(TlvType.BOOT_ID, caps.boot_id, 8))
    return tuple(tlvs)


_CAPS_TLVS = frozenset((TlvType.CAPS, TlvType.BOOT_ID))


def decode_caps(tlvs: Iterable[Tlv]) -> Caps:
    """Decode a body holding one CAPS TLV and at most one BOOT_ID (absent: a spec 1.0 agent,
    `boot_id` None); algorithm ids this model lacks are skipped."""
    reader = _Reader(tlvs, _CAPS_TLVS)
    offset, value = reader.need(TlvType.CAPS, None)
    count = value[0] if value else 0
    if len(value) != 1 + count + _CAPS_TAIL.size:
        # spec 4: CAPS is u8 count + ids, u32, u32
        raise ParseError(
            _LAYER, f"CAPS of {len(value)} bytes does not match {count} algorithms", offset + 2
        )
    algorithms = tuple(Algorithm(a) for a in value[1 : 1 + count] if a in _ALGORITHMS)
    sad_size, max_window = _CAPS_TAIL.unpack_from(value, 1 + count)
    # spec 9: BOOT_ID u64, in every GET_CAPS reply of a spec 1.1 agent
    boot_id = reader.uint(TlvType.BOOT_ID, 8)
    return Caps(algorithms, sad_size, max_window, boot_id)


# -- spec 1.1 (section 9): LIST_SAS and EVENT ---------------------------------------------


@dataclass(frozen=True, slots=True)
class SaEntry:
    """One SA in a LIST_SAS reply (the SA_ENTRY TLV).

    `seq`: for an outbound SA the number its next packet uses, for an inbound SA the highest
    number it has accepted (the values an ADD_SA's SEQ re-installs it with).
    """

    sa_index: int
    direction: Direction
    spi: int
    dst: bytes
    seq: int


def encode_sa_entry(entry: SaEntry) -> bytes:
    """The SA_ENTRY value: u32 SA index, u8 DIR, u32 SPI, u8 address length (4 or 16), the
    destination address, u64 SEQ (22 or 34 bytes)."""
    for name, number, size in (
        ("SA_ENTRY SA index", entry.sa_index, 4),
        ("SA_ENTRY DIR", entry.direction, 1),
        ("SA_ENTRY SPI", entry.spi, 4),
        ("SA_ENTRY SEQ", entry.seq, 8),
    ):
        _check_uint(name, number, size)
    if len(entry.dst) not in _ADDR_LENS:
        raise UsageError(f"SA_ENTRY address of {len(entry.dst)} bytes; give 4 or 16")
    value = (
        _SA_ENTRY_HEAD.pack(entry.sa_index, entry.direction, entry.spi, len(entry.dst))
        + bytes(entry.dst)
        + _SA_ENTRY_SEQ.pack(entry.seq)
    )
    return _decodable(value, decode_sa_entry, "SaEntry")


def decode_sa_entry(value: bytes | memoryview, offset: int = 0) -> SaEntry:
    """Validate and decode one SA_ENTRY value.

    `offset` is where the value starts in the config message (error offsets count from it).
    """
    size = len(value)
    if size not in _SA_ENTRY_LENS:
        # spec 9: SA_ENTRY is u32, u8, u32, u8, a 4- or 16-byte address, u64: 22 or 34 bytes
        raise ParseError(_LAYER, f"TLV SA_ENTRY value has {size} bytes, not 22 or 34", offset)
    sa_index, direction, spi, addr_len = _SA_ENTRY_HEAD.unpack_from(value)
    if direction not in _DIRECTIONS:
        # spec 9: SA_ENTRY's DIR is a DIR value (spec 4), 0 inbound or 1 outbound
        raise ParseError(_LAYER, f"SA_ENTRY DIR {direction} is neither 0 nor 1", offset + 4)
    if spi == 0:
        # spec 4: SPI u32, not 0; no SA in the agent has SPI 0
        raise ParseError(_LAYER, "SA_ENTRY SPI 0 is reserved", offset + 5)
    if addr_len not in _ADDR_LENS:
        # spec 9: SA_ENTRY address length 4 or 16
        raise ParseError(_LAYER, f"SA_ENTRY address length {addr_len} is not 4 or 16", offset + 9)
    if size != _SA_ENTRY_HEAD.size + addr_len + _SA_ENTRY_SEQ.size:
        # spec 9: the address has the address length, then u64 SEQ ends the value
        raise ParseError(
            _LAYER,
            f"SA_ENTRY address length {addr_len} does not match the {size}-byte value",
            offset + 9,
        )
    start = _SA_ENTRY_HEAD.size
    dst = bytes(value[start : start + addr_len])
    (seq,) = _SA_ENTRY_SEQ.unpack_from(value, start + addr_len)
    return SaEntry(sa_index, Direction(direction), spi, dst, seq)


@dataclass(frozen=True, slots=True)
class ListSasRequest:
    """The body of LIST_SAS: an optional domain and an optional cursor.

    Without `local_mac` (and then without VLANs) every SA is listed; with it, the SAs of the
    domain that `local_mac` and `vlans` name (spec 5). `cursor` lists from that SA index on;
    None, like 0, from the start.
    """

    local_mac: bytes | None = None
    vlans: tuple[VlanTag, ...] = ()
    cursor: int | None = None


_LIST_SAS_TLVS = frozenset((TlvType.LOCAL_MAC, TlvType.VLAN, TlvType.SA_INDEX))


def encode_list_sas_request(req: ListSasRequest) -> tuple[Tlv, ...]:
    """[LOCAL_MAC], the VLAN TLVs outermost first, [SA_INDEX] (the cursor)."""
    tlvs = []
    if req.local_mac is not None:
        tlvs.append(Tlv(TlvType.LOCAL_MAC, bytes(req.local_mac)))
    tlvs.extend(_vlan_tlvs(req.vlans))
    if req.cursor is not None:
        tlvs.append(_uint_tlv(TlvType.SA_INDEX, req.cursor, 4))
    return _decodable(tuple(tlvs), decode_list_sas_request, "ListSasRequest")


def decode_list_sas_request(tlvs: Iterable[Tlv]) -> ListSasRequest:
    """Validate and decode a LIST_SAS request: [LOCAL_MAC], up to two VLAN, [SA_INDEX]."""
    reader = _Reader(tlvs, _LIST_SAS_TLVS, _VLAN_ONLY)
    mac = reader.get(TlvType.LOCAL_MAC, (_MAC_LEN,))
    vlans = _read_vlans(reader)
    if vlans and mac is None:
        # spec 9: the domain is LOCAL_MAC with its VLANs (spec 5); VLANs alone name none
        offset = reader.every(TlvType.VLAN, None)[0][0]
        raise ParseError(_LAYER, "VLAN without LOCAL_MAC names no domain", offset)
    return ListSasRequest(
        local_mac=None if mac is None else mac[1],
        vlans=vlans,
        cursor=reader.uint(TlvType.SA_INDEX, 4),
    )


@dataclass(frozen=True, slots=True)
class ListSasReply:
    """The LIST_SAS reply: SA entries in ascending SA index, then the cursor to ask with next
    (0: the listing is complete)."""

    entries: tuple[SaEntry, ...]
    next_cursor: int


_SA_INDEX_TLV_LEN = TLV_HEADER_LEN + 4


def _sa_entry_tlv_len(entry: SaEntry) -> int:
    return TLV_HEADER_LEN + _SA_ENTRY_HEAD.size + len(entry.dst) + _SA_ENTRY_SEQ.size


def encode_list_sas_reply(reply: ListSasReply) -> tuple[Tlv, ...]:
    """One SA_ENTRY per entry, then SA_INDEX = the next cursor; at most 1400 bytes of TLVs."""
    tlvs = (
        *(Tlv(TlvType.SA_ENTRY, encode_sa_entry(entry)) for entry in reply.entries),
        _uint_tlv(TlvType.SA_INDEX, reply.next_cursor, 4),
    )
    return _decodable(tlvs, decode_list_sas_reply, "ListSasReply")


def decode_list_sas_reply(tlvs: Iterable[Tlv]) -> ListSasReply:
    """Validate and decode a LIST_SAS reply: SA_ENTRY TLVs and one SA_INDEX (the cursor)."""
    tlvs = tuple(tlvs)
    reader = _Reader(tlvs, frozenset((TlvType.SA_ENTRY, TlvType.SA_INDEX)), _SA_ENTRY_ONLY)
    end = CONFIG_HEADER_LEN
    for tlv in tlvs:
        if end + TLV_HEADER_LEN + len(tlv.value) > CONFIG_HEADER_LEN + LIST_SAS_MAX_TLV_BYTES:
            # spec 9: a LIST_SAS reply holds at most 1400 bytes of TLVs
            raise ParseError(
                _LAYER,
                f"{reader.end - CONFIG_HEADER_LEN} bytes of TLVs; LIST_SAS replies hold at most "
                f"{LIST_SAS_MAX_TLV_BYTES}",
                end,
            )
        end += TLV_HEADER_LEN + len(tlv.value)
    entries: list[SaEntry] = []
    for offset, value in reader.every(TlvType.SA_ENTRY, _SA_ENTRY_LENS):
        entry = decode_sa_entry(value, offset + TLV_HEADER_LEN)
        if entries and entry.sa_index <= entries[-1].sa_index:
            # spec 9: the cursor lists "from this index on": entries ascend by SA index
            raise ParseError(
                _LAYER,
                f"SA_ENTRY index {entry.sa_index} after {entries[-1].sa_index}: not ascending",
                offset + TLV_HEADER_LEN,
            )
        entries.append(entry)
    offset, cursor = reader.need_uint(TlvType.SA_INDEX, 4)
    if cursor and entries and cursor <= entries[-1].sa_index:
        # spec 9: the next cursor lists the SAs after the ones in this reply
        raise ParseError(
            _LAYER,
            f"next cursor {cursor} is not above the last SA_ENTRY index {entries[-1].sa_index}",
            offset + TLV_HEADER_LEN,
        )
    return ListSasReply(tuple(entries), cursor)


def pack_list_sas_reply(
    entries: Iterable[SaEntry], max_tlv_bytes: int = LIST_SAS_MAX_TLV_BYTES
) -> ListSasReply:
    """The reply to LIST_SAS from the SAs to list, in ascending SA index from the cursor on.

    Takes entries while they and the SA_INDEX cursor fit `max_tlv_bytes` of TLVs; the next
    cursor is the index of the first entry left out, 0 when all fit. Reads `entries` no
    further than that first entry left out.
    """
    if not _SA_INDEX_TLV_LEN < max_tlv_bytes <= LIST_SAS_MAX_TLV_BYTES:
        raise UsageError(
            f"max_tlv_bytes {max_tlv_bytes}; give {_SA_INDEX_TLV_LEN + 1}..{LIST_SAS_MAX_TLV_BYTES}"
        )
    budget = max_tlv_bytes - _SA_INDEX_TLV_LEN
    taken: list[SaEntry] = []
    for entry in entries:
        if taken and entry.sa_index <= taken[-1].sa_index:
            raise UsageError(
                f"SA index {entry.sa_index} after {taken[-1].sa_index}; give ascending indexes"
            )
        size = _sa_entry_tlv_len(entry)
        if size > budget:
            if not taken:
                raise UsageError(f"max_tlv_bytes {max_tlv_bytes} cannot hold one SA_ENTRY")
            return ListSasReply(tuple(taken), entry.sa_index)
        taken.append(entry)
        budget -= size
    return ListSasReply(tuple(taken), 0)


@dataclass(frozen=True, slots=True)
class Event:
    """The body of EVENT, which the agent sends unsolicited to the PF.

    `sa_index` names the SA of SOFT_EXPIRE, HARD_EXPIRE and SEQ_SOFT_LIMIT, and is None for
    AGENT_STARTED (the SAD is empty). The PF answers with an empty EVENT reply, status OK.
    """

    event_type: EventType
    boot_id: int
    sa_index: int | None = None


_EVENT_TLVS = frozenset((TlvType.EVENT_TYPE, TlvType.BOOT_ID, TlvType.SA_INDEX))


def encode_event(event: Event) -> tuple[Tlv, ...]:
    """EVENT_TYPE, BOOT_ID, [SA_INDEX]."""
    tlvs = [
        _uint_tlv(TlvType.EVENT_TYPE, event.event_type, 1),
        _uint_tlv(TlvType.BOOT_ID, event.boot_id, 8),
    ]
    if event.sa_index is not None:
        tlvs.append(_uint_tlv(TlvType.SA_INDEX, event.sa_index, 4))
    return _decodable(tuple(tlvs), decode_event, "Event")


def decode_event(tlvs: Iterable[Tlv]) -> Event:
    """Validate and decode an EVENT request: EVENT_TYPE, BOOT_ID and, but for AGENT_STARTED,
    SA_INDEX."""
    reader = _Reader(tlvs, _EVENT_TLVS)
    offset, event_type = reader.need_uint(TlvType.EVENT_TYPE, 1)
    if event_type not in _EVENT_TYPES:
        # spec 9: EVENT_TYPE 1 AGENT_STARTED, 2 SOFT_EXPIRE, 3 HARD_EXPIRE, 4 SEQ_SOFT_LIMIT
        raise ParseError(_LAYER, f"unknown EVENT_TYPE {event_type}", offset + TLV_HEADER_LEN)
    kind = EventType(event_type)
    _, boot_id = reader.need_uint(TlvType.BOOT_ID, 8)
    found = reader.get(TlvType.SA_INDEX, (4,))
    if kind is EventType.AGENT_STARTED and found is not None:
        # spec 9: AGENT_STARTED means the SAD is empty: no SA to name
        raise ParseError(_LAYER, "SA_INDEX does not go with AGENT_STARTED", found[0])
    if kind is not EventType.AGENT_STARTED and found is None:
        # spec 9: SOFT_EXPIRE, HARD_EXPIRE and SEQ_SOFT_LIMIT are about one SA
        raise ParseError(_LAYER, f"missing TLV SA_INDEX: {kind.name} names an SA", reader.end)
    return Event(kind, boot_id, None if found is None else int.from_bytes(found[1], "big"))
