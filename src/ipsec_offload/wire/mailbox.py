"""VF <-> PF mailbox messages (spec section 6).

Header, 12 bytes, big-endian: `version u8 (=1) | opcode u8 | status u8 | reserved u8 |
msg_id u32 | length u16 | reserved u16`, then `length` bytes of body. A reply has
opcode | 0x80, echoes msg_id and carries a status (a positive Linux errno, 0 for success).
A message is at most MAILBOX_MAX bytes: the hardware mailbox buffer.

| opcode | name              | request body                 | reply body          |
|--------|-------------------|------------------------------|---------------------|
| 0x01   | REQUEST_RESOURCES | -                            | u32 SA quota        |
| 0x02   | ADD_SA            | u32 handle, then config TLVs | u32 SA index        |
| 0x03   | DEL_SA            | u32 handle                   | -                   |
| 0x04   | RESET             | -                            | -                   |
| 0x05   | EVENT_PF_RESET    | - (PF to VF, no reply)       |                     |
| 0x07   | EVENT_SA_EXPIRE   | u32 handle, u8 kind (PF->VF) | - (the VF's ack)    |
| 0x86   | ERROR (reply)     |                              | - (status says why) |

EVENT_PF_RESET is answered by the VF's REQUEST_RESOURCES, EVENT_SA_EXPIRE by its reply (0x87,
same msg_id, status 0); the PF resends either until then, a bounded number of times, and the
VF acts on a copy (same msg_id) only once. EVENT_SA_EXPIRE's kind takes the agent's EVENT_TYPE
values (`ExpireKind`): 2 soft expiry, 3 hard expiry, 4 the sequence numbers' soft limit.

A message the PF cannot parse is answered with ERROR carrying the msg_id when the header
holds one (0 otherwise) and the errno: EMSGSIZE for an oversized one, EINVAL otherwise.

ADD_SA's TLVs are those of the agent's ADD_SA (spec section 4) without LOCAL_MAC and VLAN:
the PF adds the VF's own domain.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import Tlv, build_tlvs, parse_tlvs

__all__ = [
    "MAILBOX_HEADER_LEN",
    "MAILBOX_MAX",
    "MAILBOX_VERSION",
    "ExpireKind",
    "MailboxMessage",
    "MbxOpcode",
    "SaExpire",
    "build_mailbox",
    "decode_handle",
    "decode_handle_tlvs",
    "decode_sa_expire",
    "encode_handle",
    "encode_handle_tlvs",
    "encode_sa_expire",
    "parse_mailbox",
    "peek_msg_id",
]

_LAYER = "mailbox"
_HEADER = struct.Struct("!BBBBIHH")
_U32 = struct.Struct("!I")
_SA_EXPIRE = struct.Struct("!IB")
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
    REPLY = _REPLY


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


def encode_handle(handle: int) -> bytes:
    """A u32 body: a handle, an SA index or a quota."""
    if not 0 <= handle <= 0xFFFFFFFF:
        raise UsageError(f"{handle} does not fit a u32")
    return _U32.pack(handle)


def decode_handle(body: bytes) -> int:
    """The u32 of a body that is exactly one u32."""
    if len(body) != _U32.size:
        raise ParseError(_LAYER, f"body of {len(body)} bytes, expected a 4-byte u32", 12)
    (value,) = _U32.unpack(body)
    return int(value)


def encode_handle_tlvs(handle: int, tlvs: tuple[Tlv, ...]) -> bytes:
    """ADD_SA's body: the VF's handle, then config TLVs."""
    return encode_handle(handle) + build_tlvs(tlvs)


def decode_handle_tlvs(body: bytes) -> tuple[int, tuple[Tlv, ...]]:
    """ADD_SA's body back to (handle, TLVs)."""
    if len(body) < _U32.size:
        raise ParseError(_LAYER, "ADD_SA body shorter than its 4-byte handle", 12)
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
    if len(body) != _SA_EXPIRE.size:
        raise ParseError(_LAYER, f"EVENT_SA_EXPIRE body of {len(body)} bytes, expected 5", 12)
    handle, kind = _SA_EXPIRE.unpack(body)
    if kind not in _EXPIRE_KINDS:
        raise ParseError(_LAYER, f"unknown expiry kind {kind}", 16)
    return SaExpire(int(handle), ExpireKind(kind))
