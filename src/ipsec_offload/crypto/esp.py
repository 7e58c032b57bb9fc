"""ESP payload protection with AES-GCM (RFC 4303 with RFC 4106), shared by the agent's
hardware path and the host stack's software path so both produce the same bytes."""

from __future__ import annotations

import struct

from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.wire.esp import ESP_HEADER_LEN, build_esp_trailer, esp_trailer_fields

_ESP_HEADER_IV = struct.Struct(">IIQ")
"""SPI, the low 32 bits of the sequence number, the 64-bit IV."""
_IV = struct.Struct(">Q")


def explicit_iv(seq: int) -> bytes:
    """The 8-byte explicit IV for a packet: the SA's 64-bit packet counter (spec section 2)."""
    return _IV.pack(seq)


def esp_seal(
    aead: EspAead, spi: int, seq: int, esn: bool, payload: bytes | memoryview, next_header: int
) -> bytes:
    """ESP header || IV || ciphertext || ICV protecting `payload` with sequence number `seq`.

    The trailer pads payload || pad || pad length || next header to 4 bytes (RFC 4303 2.4);
    the ESP header carries the low 32 bits of `seq` and the IV all 64 (spec section 2).
    """
    header, sealed = esp_seal_parts(aead, spi, seq, esn, payload, next_header)
    return header + sealed


def esp_seal_parts(
    aead: EspAead, spi: int, seq: int, esn: bool, payload: bytes | memoryview, next_header: int
) -> tuple[bytes, bytes]:
    """`esp_seal` in its two parts, ESP header || IV and ciphertext || ICV, for a caller that
    joins them into a frame (the ciphertext is then copied once, not twice)."""
    header = _ESP_HEADER_IV.pack(spi, seq & 0xFFFFFFFF, seq)
    plaintext = b"".join((payload, build_esp_trailer(len(payload), next_header)))
    return header, aead.seal(spi, seq, esn, header[ESP_HEADER_LEN:], plaintext)


def esp_open(
    aead: EspAead, spi: int, seq: int, esn: bool, iv: bytes, sealed: bytes | memoryview
) -> tuple[bytes, int, int]:
    """Decrypt ciphertext || ICV: (plaintext with its trailer, payload length, next header).

    Raises AuthenticationError for an ICV that does not verify and ParseError for a trailer
    whose padding is wrong (RFC 4303 2.4).
    """
    plaintext = aead.open(spi, seq, esn, iv, sealed)
    _, next_header, payload_len = esp_trailer_fields(plaintext)
    return plaintext, payload_len, next_header
