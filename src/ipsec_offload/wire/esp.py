"""ESP header and trailer (RFC 4303); the IV and ICV sizes of AES-GCM ESP (RFC 4106)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ipsec_offload.errors import ParseError, UsageError

__all__ = [
    "ESP_HEADER_LEN",
    "ESP_IV_LEN",
    "ESP_TRAILER_LEN",
    "ICV_LEN",
    "EspHeader",
    "EspTrailer",
    "build_esp",
    "build_esp_trailer",
    "esp_fields",
    "esp_header",
    "esp_trailer_fields",
    "parse_esp",
    "parse_esp_trailer",
]

ESP_HEADER_LEN = 8
ESP_IV_LEN = 8
ICV_LEN = 16
ESP_TRAILER_LEN = 2
"""Pad length and next header, after the padding."""

_ESP = struct.Struct("!II")
_PAD = bytes(range(1, 256))
_MAX_ALIGN = 256


@dataclass(frozen=True, slots=True)
class EspHeader:
    """SPI and the low 32 bits of the sequence number."""

    spi: int
    seq: int


def esp_fields(buf: bytes | memoryview) -> tuple[int, int]:
    """`parse_esp` as a tuple, for the data path: (SPI, sequence number)."""
    size = len(buf)
    if size < ESP_HEADER_LEN:
        # RFC 4303 2: SPI u32 || sequence number u32
        raise ParseError("esp", f"{size} bytes is shorter than the 8-byte header", size)
    spi, seq = _ESP.unpack_from(buf)
    return spi, seq


def parse_esp(buf: bytes | memoryview) -> EspHeader:
    """Parse the 8-byte ESP header at the start of `buf`."""
    spi, seq = esp_fields(memoryview(buf))
    return EspHeader(spi, seq)


def esp_header(spi: int, seq: int) -> bytes:
    """`build_esp(EspHeader(spi, seq))` without the object, for the data path."""
    if not (0 <= spi <= 0xFFFF_FFFF and 0 <= seq <= 0xFFFF_FFFF):
        for name, value in (("SPI", spi), ("sequence number", seq)):
            if not 0 <= value <= 0xFFFF_FFFF:
                raise UsageError(f"ESP {name} {value} does not fit 32 bits")
    return _ESP.pack(spi, seq)


def build_esp(h: EspHeader) -> bytes:
    """Encode the 8-byte ESP header."""
    return esp_header(h.spi, h.seq)


@dataclass(frozen=True, slots=True)
class EspTrailer:
    """The two bytes that end the ESP plaintext."""

    pad_length: int
    next_header: int


def build_esp_trailer(payload_len: int, next_header: int, align: int = 4) -> bytes:
    """Padding 1, 2, 3, ..., pad length and next header for a payload of `payload_len` bytes.

    payload || padding || pad length || next header is the smallest multiple of `align`
    (RFC 4303 2.4).
    """
    if payload_len < 0:
        raise UsageError(f"payload length {payload_len} is negative")
    if not 0 <= next_header <= 0xFF:
        raise UsageError(f"next header {next_header} does not fit 8 bits")
    if not 1 <= align <= _MAX_ALIGN:
        raise UsageError(f"alignment {align}; use 1..256 so that the pad length fits a byte")
    pad = -(payload_len + ESP_TRAILER_LEN) % align
    return _PAD[:pad] + bytes((pad, next_header))


def esp_trailer_fields(plaintext: bytes | memoryview) -> tuple[int, int, int]:
    """`parse_esp_trailer` as a tuple, for the data path: (pad length, next header, payload
    length), without building the trailer object."""
    size = len(plaintext)
    if size < ESP_TRAILER_LEN:
        # RFC 4303 2.4: pad length u8 || next header u8 end the plaintext
        raise ParseError("esp", f"{size} bytes cannot hold the 2-byte trailer", 0)
    pad_length = plaintext[size - 2]
    next_header = plaintext[size - 1]
    payload_len = size - ESP_TRAILER_LEN - pad_length
    if payload_len < 0:
        # RFC 4303 2.5: pad length counts the padding bytes before it
        raise ParseError("esp", f"pad length {pad_length} exceeds the data", size - 2)
    if plaintext[payload_len : size - ESP_TRAILER_LEN] != _PAD[:pad_length]:
        # RFC 4303 2.4: padding bytes are 1, 2, 3, ...
        bad = next(i for i in range(pad_length) if plaintext[payload_len + i] != i + 1)
        found = plaintext[payload_len + bad]
        raise ParseError("esp", f"pad byte {bad + 1} is {found}, not {bad + 1}", payload_len + bad)
    return pad_length, next_header, payload_len


def parse_esp_trailer(plaintext: bytes | memoryview) -> tuple[EspTrailer, int]:
    """Read the trailer at the end of a decrypted ESP payload and check the padding.

    Returns the trailer and the length of the payload before the padding.
    """
    pad_length, next_header, payload_len = esp_trailer_fields(plaintext)
    return EspTrailer(pad_length, next_header), payload_len
