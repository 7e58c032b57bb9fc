"""VF <-> PF mailbox messages (spec section 6), with virtchnl inline IPsec's capabilities.

Header, 12 bytes, big-endian: `version u8 (=1) | opcode u8 | status u8 | reserved u8 |
msg_id u32 | length u16 | reserved u16`, then `length` bytes of body. A reply has
opcode | 0x80, echoes msg_id and carries a status: 0 for success, else a positive Linux errno,
each named in `MbxStatus` (virtchnl's INLINE_IPSEC_ERR_* names where one means the same).
A message is at most MAILBOX_MAX bytes: the hardware mailbox buffer.

| opcode | name              | request body                        | reply body              |
|--------|-------------------|-------------------------------------|-------------------------|
| 0x01   | REQUEST_RESOURCES | -                                   | u32 SA quota            |
| 0x02   | ADD_SA            | u32 handle, then config TLVs        | u32 SA index            |
| 0x03   | DEL_SA            | u32 handle                          | -                       |
| 0x04   | RESET             | -                                   | -                       |
| 0x05   | EVENT_PF_RESET    | - (PF to VF, no reply)              |                         |
| 0x07   | EVENT_SA_EXPIRE   | u32 handle, u8 kind (PF->VF)        | - (the VF's ack)        |
| 0x08   | GET_CAPS          | -                                   | VfCaps (20 + n bytes)   |
| 0x09   | UPDATE_SA         | u32 handle, u32 esn_hi, u32 esn_lo  | -                       |
| 0x0A   | DEL_SAS           | DelSas (4 + 4n bytes)               | DelSasResult (4 + n)    |
| 0x0B   | READ_SA           | u32 handle                          | u32 SA index, 7 u64     |
| 0x0C   | EVENT_CRYPTO      | u8 CryptoState (PF->VF)             | - (the VF's ack)        |
| 0x86   | ERROR (reply)     |                                     | - (status says why)     |

EVENT_PF_RESET is answered by the VF's REQUEST_RESOURCES, EVENT_SA_EXPIRE and EVENT_CRYPTO by
their reply (0x87 / 0x8C, same msg_id, status 0); the PF resends each until then, a bounded
number of times, and the VF acts on a copy (same msg_id) only once. EVENT_SA_EXPIRE's kind
takes the agent's EVENT_TYPE values (`ExpireKind`): 2 soft expiry, 3 hard expiry, 4 the
sequence numbers' soft limit. EVENT_CRYPTO tells the VF that inline crypto was switched on (1)
or off (0) for it (its trust changed): virtchnl's INLINE_IPSEC_EVENT_CRYPTO_ON / _OFF.

GET_CAPS (virtchnl's INLINE_IPSEC_OP_GET_CAP) answers `flags u8 (bit 0 CRYPTO: the VF may
offload, bit 1 ESN) | n u8 | reserved u16 | quota u32 | held u32 | max SAs u32 | max replay
window u32 | n x u8 algorithm id` (`VfCaps`). UPDATE_SA (INLINE_IPSEC_OP_SA_UPDATE) carries a
state's 64-bit ESN as two u32 halves (`SaUpdate`). DEL_SAS (INLINE_IPSEC_OP_SA_DESTROY) is
`flags u8 (bit 0 ALL) | n u8 | reserved u16 | n x u32 handle`: 1..DEL_SAS_MAX distinct
handles, or none with ALL, every SA of the VF (`DelSas`); its reply, `removed u16 | n u8 |
reserved u8 | n x u8 status`, counts the SAs removed and gives each listed handle's status in
request order, none for ALL (`DelSasResult`). READ_SA (INLINE_IPSEC_OP_SA_READ) answers the
SA index, then the agent's GET_SA_STATS counters: packets, bytes and the errors per Rx status
1..5, each a u64 (`SaRead`).

A message the PF cannot parse is answered with ERROR carrying the msg_id when the header
holds one (0 otherwise) and the errno: EMSGSIZE for an oversized one, EINVAL otherwise.

ADD_SA's TLVs are those of the agent's ADD_SA (spec section 4) without LOCAL_MAC and VLAN:
the PF adds the VF's own domain.

Every decoder's ParseError names the field, at its offset from the start of the message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import (
    RX_ERROR_STATUSES,
    Algorithm,
    SaStats,
    Tlv,
    _decodable,
    build_tlvs,
    parse_tlvs,
)

__all__ = [
    "DEL_SAS_MAX",
    "MAILBOX_HEADER_LEN",
    "MAILBOX_MAX",
    "MAILBOX_VERSION",
    "CryptoState",
    "DelSas",
    "DelSasResult",
    "ExpireKind",
    "MailboxMessage",
    "MbxOpcode",
    "MbxStatus",
    "SaExpire",
    "SaRead",
    "SaUpdate",
    "VfCaps",
    "build_mailbox",
    "decode_crypto_event",
    "decode_del_sas",
    "decode_del_sas_result",
    "decode_handle",
    "decode_handle_tlvs",
    "decode_sa_expire",
    "decode_sa_read",
    "decode_sa_update",
    "decode_vf_caps",
    "encode_crypto_event",
    "encode_del_sas",
    "encode_del_sas_result",
    "encode_handle",
    "encode_handle_tlvs",
    "encode_sa_expire",
    "encode_sa_read",
    "encode_sa_update",
    "encode_vf_caps",
    "parse_mailbox",
    "peek_msg_id",
]

_LAYER = "mailbox"
_HEADER = struct.Struct("!BBBBIHH")
_U32 = struct.Struct("!I")
_SA_EXPIRE = struct.Struct("!IB")
_VF_CAPS = struct.Struct("!BBHIIII")
_SA_UPDATE = struct.Struct("!III")
_DEL_SAS_HEAD = struct.Struct("!BBH")
_DEL_SAS_REPLY_HEAD = struct.Struct("!HBB")
_SA_READ = struct.Struct(f"!I{2 + RX_ERROR_STATUSES}Q")
MAILBOX_HEADER_LEN = _HEADER.size
MAILBOX_VERSION = 1
MAILBOX_MAX = 512
"""Bytes of the hardware mailbox buffer: no message is longer."""
_REPLY = 0x80


class MbxOpcode(IntEnum):
    """Mailbox message types."""

    REQUEST_RESOURCES = 0x01
    ADD_SA = 0x02
    DEL_SA = 0x03
    RESET = 0x04
    EVENT_PF_RESET = 0x05
    ERROR = 0x06
    """Sent only as a reply (0x86): to a message the PF could not parse."""
    EVENT_SA_EXPIRE = 0x07
    """PF to VF: the agent reported an expiry of one of the VF's SAs (spec 9)."""
    GET_CAPS = 0x08
    """The VF's inline IPsec capabilities (virtchnl's INLINE_IPSEC_OP_GET_CAP)."""
    UPDATE_SA = 0x09
    """A state's ESN (virtchnl's INLINE_IPSEC_OP_SA_UPDATE)."""
    DEL_SAS = 0x0A
    """Remove a list of the VF's SAs, or all (virtchnl's INLINE_IPSEC_OP_SA_DESTROY)."""
    READ_SA = 0x0B
    """An SA's counters in the agent (virtchnl's INLINE_IPSEC_OP_SA_READ)."""
    EVENT_CRYPTO = 0x0C
    """PF to VF: inline crypto switched on or off for the VF (INLINE_IPSEC_EVENT_CRYPTO_*)."""
    REPLY = _REPLY


class MbxStatus(IntEnum):
    """A reply's status: 0, or the positive Linux errno of the failure, named after virtchnl's
    inline IPsec response codes (INLINE_IPSEC_ERR_*) where one means the same."""

    SUCCESS = 0
    """Done (INLINE_IPSEC_SUCCESS)."""
    VF_DOWN = 1
    """EPERM: the VF has not been granted its resources (INIT; INLINE_IPSEC_ERR_VF_DOWN)."""
    NOT_FOUND = 2
    """ENOENT: the handle is not one of this VF's SAs (foreign, stale or still being added)."""
    NOT_PERMITTED = 13
    """EACCES: inline crypto is not permitted for this VF (untrusted): its ADD_SA and
    UPDATE_SA, as ixgbe answers."""
    NOT_READY = 16
    """EBUSY: the VF is resetting or being removed, or the agent's capabilities are not known
    yet (INLINE_IPSEC_ERR_NOT_READY)."""
    EXISTS = 17
    """EEXIST: the VF already has an SA with this handle."""
    INVALID_PARAMS = 22
    """EINVAL: a malformed message or field (INLINE_IPSEC_ERR_INVALID_PARAMS)."""
    NO_MEM = 28
    """ENOSPC: the VF's SA quota or the agent's SAD is full (INLINE_IPSEC_ERR_NO_MEM)."""
    TOO_BIG = 90
    """EMSGSIZE: longer than the mailbox."""
    UNSUPPORTED = 95
    """EOPNOTSUPP: the agent cannot offload this SA."""
    FIFO_FULL = 105
    """ENOBUFS: too many of this VF's requests are under way (INLINE_IPSEC_ERR_FIFO_FULL)."""
    TIMED_OUT = 110
    """ETIMEDOUT: the agent did not answer."""


_OPCODES = frozenset(op for op in MbxOpcode if op != MbxOpcode.REPLY)


@dataclass(frozen=True, slots=True)
class MailboxMessage:
    """One mailbox message; `opcode` has the REPLY bit on replies."""

    opcode: int
    msg_id: int
    body: bytes = b""
    status: int = 0
    version: int = MAILBOX_VERSION

    @property
    def is_reply(self) -> bool:
        return bool(self.opcode & _REPLY)

    @property
    def base_opcode(self) -> int:
        return self.opcode & ~_REPLY & 0xFF


def parse_mailbox(buf: bytes | memoryview) -> MailboxMessage:
    """Parse a mailbox message; every malformed field is a ParseError."""
    mv = memoryview(buf)
    size = len(mv)
    if size > MAILBOX_MAX:
        # spec 6: the mailbox buffer bounds a message
        raise ParseError(_LAYER, f"{size} bytes exceed the {MAILBOX_MAX}-byte mailbox", 0)
    if size < MAILBOX_HEADER_LEN:
        # spec 6: a small fixed header
        raise ParseError(_LAYER, f"{size} bytes is shorter than the 12-byte header", size)
    version, opcode, status, reserved, msg_id, length, reserved2 = _HEADER.unpack_from(mv)
    if version != MAILBOX_VERSION:
        raise ParseError(_LAYER, f"version {version}, only {MAILBOX_VERSION} is known", 0)
    if opcode & ~_REPLY not in _OPCODES:
        raise ParseError(_LAYER, f"unknown opcode {opcode:#04x}", 1)
    if reserved or reserved2:
        raise ParseError(_LAYER, "reserved header fields are not 0", 3 if reserved else 10)
    if length != size - MAILBOX_HEADER_LEN:
        raise ParseError(
            _LAYER, f"length {length} but {size - MAILBOX_HEADER_LEN} body bytes follow", 8
        )
    return MailboxMessage(opcode, msg_id, bytes(mv[MAILBOX_HEADER_LEN:]), status, version)


def build_mailbox(msg: MailboxMessage) -> bytes:
    """Encode a mailbox message; UsageError if it would not fit the mailbox."""
    if msg.opcode & ~_REPLY not in _OPCODES or not 0 <= msg.opcode <= 0xFF:
        raise UsageError(f"mailbox opcode {msg.opcode:#x} is not a MbxOpcode (| REPLY)")
    if not 0 <= msg.status <= 0xFF or not 0 <= msg.msg_id <= 0xFFFFFFFF:
        raise UsageError("mailbox status is a u8 and msg_id a u32")
    if MAILBOX_HEADER_LEN + len(msg.body) > MAILBOX_MAX:
        raise UsageError(f"a mailbox message is at most {MAILBOX_MAX} bytes")
    header = _HEADER.pack(msg.version, msg.opcode, msg.status, 0, msg.msg_id, len(msg.body), 0)
    return header + msg.body


def peek_msg_id(buf: bytes | memoryview) -> int:
    """The msg_id field of a message too broken to parse, or 0 if it is too short."""
    mv = memoryview(buf)
    return int(_U32.unpack_from(mv, 4)[0]) if len(mv) >= 8 else 0


def _body_error(what: str, offset: int = 0) -> ParseError:
    """A ParseError at `offset` in a message body (its offset in the message)."""
    return ParseError(_LAYER, what, MAILBOX_HEADER_LEN + offset)


def _exact_length(body: bytes, size: int, name: str) -> None:
    if len(body) != size:
        raise _body_error(f"{name} body of {len(body)} bytes, expected {size}")


def _check_uint(value: int, bits: int, what: str) -> None:
    if not 0 <= value < 1 << bits:
        raise UsageError(f"{what} {value} does not fit a u{bits}")


def encode_handle(handle: int) -> bytes:
    """A u32 body: a handle, an SA index or a quota."""
    _check_uint(handle, 32, "u32 body")
    return _U32.pack(handle)


def decode_handle(body: bytes) -> int:
    """The u32 of a body that is exactly one u32."""
    _exact_length(body, _U32.size, "u32")
    (value,) = _U32.unpack(body)
    return int(value)


def encode_handle_tlvs(handle: int, tlvs: tuple[Tlv, ...]) -> bytes:
    """ADD_SA's body: the VF's handle, then config TLVs."""
    return encode_handle(handle) + build_tlvs(tlvs)


def decode_handle_tlvs(body: bytes) -> tuple[int, tuple[Tlv, ...]]:
    """ADD_SA's body back to (handle, TLVs)."""
    if len(body) < _U32.size:
        raise _body_error("ADD_SA body shorter than its 4-byte handle")
    return decode_handle(body[: _U32.size]), parse_tlvs(body, _U32.size)


class ExpireKind(IntEnum):
    """What expired, in EVENT_SA_EXPIRE: the agent's EVENT_TYPE values (spec 9)."""

    SOFT = 2
    """A soft lifetime ran out: Linux's soft expiry, a request to rekey."""
    HARD = 3
    """A hard lifetime ran out: the SA passes no more traffic (Linux deletes the state)."""
    SEQ_SOFT_LIMIT = 4
    """An outbound SA used 2^31 of its 2^32 numbers (2^63 with ESN): rekey soon."""


_EXPIRE_KINDS = frozenset(ExpireKind)


@dataclass(frozen=True, slots=True)
class SaExpire:
    """EVENT_SA_EXPIRE's body: which of the VF's states (its handle) and what expired."""

    handle: int
    kind: ExpireKind


def encode_sa_expire(event: SaExpire) -> bytes:
    """EVENT_SA_EXPIRE's body: u32 handle, u8 kind."""
    if not 0 <= event.handle <= 0xFFFFFFFF or event.kind not in _EXPIRE_KINDS:
        raise UsageError("EVENT_SA_EXPIRE takes a u32 handle and an ExpireKind")
    return _SA_EXPIRE.pack(event.handle, event.kind)


def decode_sa_expire(body: bytes) -> SaExpire:
    """EVENT_SA_EXPIRE's body back; a wrong length or an unknown kind is a ParseError (offsets
    count from the start of the message)."""
    _exact_length(body, _SA_EXPIRE.size, "EVENT_SA_EXPIRE")
    handle, kind = _SA_EXPIRE.unpack(body)
    if kind not in _EXPIRE_KINDS:
        raise _body_error(f"unknown expiry kind {kind}", 4)
    return SaExpire(int(handle), ExpireKind(kind))


# -- virtchnl inline IPsec's capabilities -----------------------------------------------------

_CAPS_CRYPTO = 0x01
_CAPS_ESN = 0x02
_DEL_SAS_ALL = 0x01
_ALGORITHMS = frozenset(Algorithm)
_STATUSES = frozenset(MbxStatus)
DEL_SAS_MAX = (MAILBOX_MAX - MAILBOX_HEADER_LEN - _DEL_SAS_HEAD.size) // _U32.size
"""Handles one DEL_SAS can list: as many as the mailbox holds (124)."""


@dataclass(frozen=True, slots=True)
class VfCaps:
    """GET_CAPS's reply: the inline IPsec a VF may use (virtchnl's virtchnl_ipsec_cap)."""

    crypto: bool
    """The VF may offload SAs: it is trusted (VIRTCHNL_IPSEC_* crypto caps present)."""
    esn: bool
    """The agent takes SAs with extended sequence numbers (VIRTCHNL_IPSEC_ESN_ENA)."""
    quota: int
    """How many SAs the VF may hold (virtchnl's max_sa_num)."""
    held: int
    """How many it holds, adds under way included: what counts against the quota."""
    max_sas: int
    """The agent's SAD size, shared by every function of the port."""
    max_replay_window: int
    algorithms: tuple[Algorithm, ...]
    """The agent's algorithms, in its order."""


def encode_vf_caps(caps: VfCaps) -> bytes:
    """GET_CAPS's reply body: flags, n, reserved, four u32, n algorithm ids."""
    if len(caps.algorithms) > 0xFF or not set(caps.algorithms) <= _ALGORITHMS:
        raise UsageError("GET_CAPS carries at most 255 algorithms, each an Algorithm")
    values = (caps.quota, caps.held, caps.max_sas, caps.max_replay_window)
    for name, value in zip(("quota", "held", "max_sas", "max_replay_window"), values, strict=True):
        _check_uint(value, 32, name)
    flags = (_CAPS_CRYPTO if caps.crypto else 0) | (_CAPS_ESN if caps.esn else 0)
    return _VF_CAPS.pack(flags, len(caps.algorithms), 0, *values) + bytes(caps.algorithms)


def decode_vf_caps(body: bytes) -> VfCaps:
    """GET_CAPS's reply body back; unknown flag bits or algorithm ids, a reserved field not 0
    or a count that does not match the length are ParseErrors."""
    head = _VF_CAPS.size
    if len(body) < head:
        raise _body_error(f"GET_CAPS reply body of {len(body)} bytes, shorter than {head}")
    flags, count, reserved, quota, held, max_sas, window = _VF_CAPS.unpack_from(body)
    if flags & ~(_CAPS_CRYPTO | _CAPS_ESN):
        raise _body_error(f"GET_CAPS flags {flags:#04x} set unknown bits")
    if reserved:
        raise _body_error("GET_CAPS reserved field is not 0", 2)
    if len(body) != head + count:
        raise _body_error(f"GET_CAPS count {count} but {len(body) - head} ids follow", 1)
    for offset in range(head, len(body)):
        if body[offset] not in _ALGORITHMS:
            raise _body_error(f"GET_CAPS unknown algorithm {body[offset]}", offset)
    algorithms = tuple(Algorithm(a) for a in body[head:])
    crypto, esn = bool(flags & _CAPS_CRYPTO), bool(flags & _CAPS_ESN)
    return VfCaps(crypto, esn, quota, held, max_sas, window, algorithms)


@dataclass(frozen=True, slots=True)
class SaUpdate:
    """UPDATE_SA's body: a state's handle and its 64-bit ESN (virtchnl_ipsec_sa_update)."""

    handle: int
    esn: int


def encode_sa_update(update: SaUpdate) -> bytes:
    """UPDATE_SA's body: u32 handle, u32 esn_hi, u32 esn_lo."""
    _check_uint(update.handle, 32, "handle")
    _check_uint(update.esn, 64, "esn")
    return _SA_UPDATE.pack(update.handle, update.esn >> 32, update.esn & 0xFFFFFFFF)


def decode_sa_update(body: bytes) -> SaUpdate:
    """UPDATE_SA's body back; any other length than 12 is a ParseError."""
    _exact_length(body, _SA_UPDATE.size, "UPDATE_SA")
    handle, esn_hi, esn_lo = _SA_UPDATE.unpack(body)
    return SaUpdate(handle, esn_hi << 32 | esn_lo)


@dataclass(frozen=True, slots=True)
class DelSas:
    """DEL_SAS's body: the handles to remove, or `all_sas` (no handles): every SA of the VF
    (virtchnl_ipsec_sa_destroy, whose all-zero flag means all)."""

    handles: tuple[int, ...] = ()
    all_sas: bool = False


def encode_del_sas(request: DelSas) -> bytes:
    """DEL_SAS's body: u8 flags (bit 0 ALL), u8 count, u16 reserved, count u32 handles."""
    if len(request.handles) > 0xFF:
        raise UsageError(f"DEL_SAS lists at most {DEL_SAS_MAX} handles")
    for handle in request.handles:
        _check_uint(handle, 32, "handle")
    flags = _DEL_SAS_ALL if request.all_sas else 0
    head = _DEL_SAS_HEAD.pack(flags, len(request.handles), 0)
    body = head + b"".join(_U32.pack(h) for h in request.handles)
    return _decodable(body, decode_del_sas, "DelSas")


def decode_del_sas(body: bytes) -> DelSas:
    """DEL_SAS's body back: ALL with no handles, or 1..DEL_SAS_MAX distinct handles."""
    head = _DEL_SAS_HEAD.size
    if len(body) < head:
        raise _body_error(f"DEL_SAS body of {len(body)} bytes, shorter than {head}")
    flags, count, reserved = _DEL_SAS_HEAD.unpack_from(body)
    if flags & ~_DEL_SAS_ALL:
        raise _body_error(f"DEL_SAS flags {flags:#04x} set unknown bits")
    if reserved:
        raise _body_error("DEL_SAS reserved field is not 0", 2)
    all_sas = bool(flags & _DEL_SAS_ALL)
    if all_sas == bool(count) or count > DEL_SAS_MAX:
        want = "0 with ALL" if all_sas else f"1..{DEL_SAS_MAX} without ALL"
        raise _body_error(f"DEL_SAS count {count}, expected {want}", 1)
    _exact_length(body, head + count * _U32.size, "DEL_SAS")
    handles = tuple(h for (h,) in _U32.iter_unpack(body[head:]))
    for i, handle in enumerate(handles):
        if handle in handles[:i]:
            raise _body_error(f"DEL_SAS lists handle {handle} twice", head + i * _U32.size)
    return DelSas(handles, all_sas)


@dataclass(frozen=True, slots=True)
class DelSasResult:
    """DEL_SAS's reply body: how many SAs the agent removed, and the status of each listed
    handle in request order (none for ALL)."""

    removed: int
    statuses: tuple[MbxStatus, ...] = ()


def encode_del_sas_result(result: DelSasResult) -> bytes:
    """DEL_SAS's reply body: u16 removed, u8 count, u8 reserved, count u8 statuses."""
    _check_uint(result.removed, 16, "removed")
    if len(result.statuses) > DEL_SAS_MAX or not set(result.statuses) <= _STATUSES:
        raise UsageError(f"DEL_SAS answers at most {DEL_SAS_MAX} statuses, each a MbxStatus")
    head = _DEL_SAS_REPLY_HEAD.pack(result.removed, len(result.statuses), 0)
    return _decodable(head + bytes(result.statuses), decode_del_sas_result, "DelSasResult")


def decode_del_sas_result(body: bytes) -> DelSasResult:
    """DEL_SAS's reply body back; with statuses, `removed` must count their successes."""
    head = _DEL_SAS_REPLY_HEAD.size
    if len(body) < head:
        raise _body_error(f"DEL_SAS reply body of {len(body)} bytes, shorter than {head}")
    removed, count, reserved = _DEL_SAS_REPLY_HEAD.unpack_from(body)
    if reserved:
        raise _body_error("DEL_SAS reply reserved field is not 0", 3)
    if len(body) != head + count or count > DEL_SAS_MAX:
        raise _body_error(f"DEL_SAS reply count {count} but {len(body) - head} follow", 2)
    for offset in range(head, len(body)):
        if body[offset] not in _STATUSES:
            raise _body_error(f"DEL_SAS reply unknown status {body[offset]}", offset)
    statuses = tuple(MbxStatus(s) for s in body[head:])
    if count and removed != statuses.count(MbxStatus.SUCCESS):
        raise _body_error(f"DEL_SAS reply removed {removed} of {count} handles", 0)
    return DelSasResult(removed, statuses)


@dataclass(frozen=True, slots=True)
class SaRead:
    """READ_SA's reply body: the SA's index in the agent and its GET_SA_STATS counters."""

    sa_index: int
    stats: SaStats


def encode_sa_read(read: SaRead) -> bytes:
    """READ_SA's reply body: u32 SA index, u64 packets, u64 bytes, 5 u64 errors."""
    if len(read.stats.errors) != RX_ERROR_STATUSES:
        raise UsageError(f"READ_SA carries {RX_ERROR_STATUSES} error counters")
    _check_uint(read.sa_index, 32, "sa_index")
    counters = (read.stats.packets, read.stats.bytes, *read.stats.errors)
    for value in counters:
        _check_uint(value, 64, "counter")
    return _SA_READ.pack(read.sa_index, *counters)


def decode_sa_read(body: bytes) -> SaRead:
    """READ_SA's reply body back; any other length than 60 is a ParseError."""
    _exact_length(body, _SA_READ.size, "READ_SA reply")
    index, packets, octets, e1, e2, e3, e4, e5 = _SA_READ.unpack(body)
    return SaRead(index, SaStats(packets, octets, (e1, e2, e3, e4, e5)))


class CryptoState(IntEnum):
    """EVENT_CRYPTO's body: inline crypto for the VF from now on."""

    OFF = 0
    """Not permitted any more (INLINE_IPSEC_EVENT_CRYPTO_OFF): the VF lost its trust."""
    ON = 1
    """Permitted (INLINE_IPSEC_EVENT_CRYPTO_ON): the VF was made trusted."""


_CRYPTO_STATES = frozenset(CryptoState)


def encode_crypto_event(state: CryptoState) -> bytes:
    """EVENT_CRYPTO's body: one u8."""
    if state not in _CRYPTO_STATES:
        raise UsageError(f"EVENT_CRYPTO takes a CryptoState, not {state!r}")
    return bytes((state,))


def decode_crypto_event(body: bytes) -> CryptoState:
    """EVENT_CRYPTO's body back; another length or value is a ParseError."""
    _exact_length(body, 1, "EVENT_CRYPTO")
    if body[0] not in _CRYPTO_STATES:
        raise _body_error(f"EVENT_CRYPTO unknown crypto state {body[0]}")
    return CryptoState(body[0])
