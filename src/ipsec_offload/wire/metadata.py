"""The 32-bit metadata word of the metadata tag, Tx and Rx layouts (spec section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

from ipsec_offload.errors import ParseError, UsageError

__all__ = [
    "RxFlag",
    "RxMetadata",
    "RxStatus",
    "TxFlag",
    "TxMetadata",
    "build_rx_metadata",
    "build_tx_metadata",
    "parse_rx_metadata",
    "parse_tx_metadata",
    "rx_metadata_word",
    "tx_metadata_fields",
]

_LAYER = "metadata"
_WORD_MAX = 0xFFFF_FFFF
_TX_RESERVED = 0x7F00_0000
_RX_RESERVED = 0x0700_0000
_RX_STATUS_SHIFT = 27
_SA_INDEX_MASK = 0x00FF_FFFF


class TxFlag(IntFlag):
    """Flag bits of the Tx metadata word."""

    OFFLOAD = 1 << 31


class RxFlag(IntFlag):
    """Flag bits of the Rx metadata word."""

    IPSEC = 1 << 31


class RxStatus(IntEnum):
    """What the agent did with a received frame (Rx bits 30-27); 6-15 are reserved."""

    OK = 0
    NO_SA = 1
    AUTH_FAILED = 2
    REPLAY = 3
    MALFORMED = 4
    SA_EXPIRED = 5


_RX_STATUSES = frozenset(RxStatus)
_OFFLOAD = int(TxFlag.OFFLOAD)
_IPSEC = int(RxFlag.IPSEC)


@dataclass(frozen=True, slots=True)
class TxMetadata:
    """Host-to-agent metadata: whether and where to encrypt."""

    offload: bool
    next_header: int = 0
    l3_offset: int = 0
    esp_offset: int = 0


@dataclass(frozen=True, slots=True)
class RxMetadata:
    """Agent-to-host metadata: whether the frame was ESP, the verdict and the SA used."""

    ipsec: bool
    status: RxStatus = RxStatus.OK
    sa_index: int = 0


def _check_word(word: int) -> None:
    if not 0 <= word <= _WORD_MAX:
        # spec 3: the metadata is one big-endian u32
        raise ParseError(_LAYER, f"{word:#x} is not a 32-bit word", 0)


def tx_metadata_fields(word: int) -> tuple[bool, int, int, int]:
    """`parse_tx_metadata` as a tuple, for the data path: (offload, next header, L3 offset,
    ESP offset in 4-byte words), without building the metadata object."""
    _check_word(word)
    if word & _TX_RESERVED:
        # spec 3: Tx bits 30-24 are reserved, must be 0
        raise ParseError(_LAYER, f"Tx reserved bits set in {word:#010x}", 0)
    return bool(word & _OFFLOAD), (word >> 16) & 0xFF, (word >> 8) & 0xFF, word & 0xFF


def parse_tx_metadata(word: int) -> TxMetadata:
    """Decode a Tx metadata word; reserved bits 30-24 set is a ParseError."""
    offload, next_header, l3_offset, esp_offset = tx_metadata_fields(word)
    return TxMetadata(offload, next_header, l3_offset, esp_offset)


def build_tx_metadata(m: TxMetadata) -> int:
    """Encode a Tx metadata word."""
    for name, value in (
        ("next header", m.next_header),
        ("L3 offset", m.l3_offset),
        ("ESP offset (4-byte words)", m.esp_offset),
    ):
        if not 0 <= value <= 0xFF:
            raise UsageError(f"Tx metadata {name} {value} does not fit 8 bits")
    flags = TxFlag.OFFLOAD if m.offload else 0
    return int(flags) | m.next_header << 16 | m.l3_offset << 8 | m.esp_offset


def parse_rx_metadata(word: int) -> RxMetadata:
    """Decode an Rx metadata word; a reserved status or reserved bits 26-24 is a ParseError."""
    _check_word(word)
    status = (word >> _RX_STATUS_SHIFT) & 0xF
    if status not in _RX_STATUSES:
        # spec 3: Rx status 6-15 reserved
        raise ParseError(_LAYER, f"reserved Rx status {status}", 0)
    if word & _RX_RESERVED:
        # spec 3: Rx bits 26-24 are reserved, 0
        raise ParseError(_LAYER, f"Rx reserved bits set in {word:#010x}", 0)
    return RxMetadata(
        ipsec=bool(word & RxFlag.IPSEC),
        status=RxStatus(status),
        sa_index=word & _SA_INDEX_MASK,
    )


def build_rx_metadata(m: RxMetadata) -> int:
    """Encode an Rx metadata word."""
    if m.status not in _RX_STATUSES:
        raise UsageError(f"Rx status {m.status!r}; use an RxStatus value 0..5")
    if not 0 <= m.sa_index <= _SA_INDEX_MASK:
        raise UsageError(f"SA index {m.sa_index} does not fit the 24-bit SA_INDEX field")
    return rx_metadata_word(m.ipsec, m.status, m.sa_index)


def rx_metadata_word(ipsec: bool, status: int, sa_index: int) -> int:
    """`build_rx_metadata` without the metadata object, for the data path; the caller
    guarantees what `build_rx_metadata` checks (a status of RxStatus, a 24-bit index)."""
    return (_IPSEC if ipsec else 0) | status << _RX_STATUS_SHIFT | sa_index
