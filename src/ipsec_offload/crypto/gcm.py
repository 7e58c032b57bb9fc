"""AES-GCM for ESP (RFC 4106) on top of the `cryptography` package.

An SA's key material is the AES key followed by a 4-byte salt (RFC 4106 section 8.1). Per
packet, the nonce is salt || the 8-byte explicit IV carried in the packet (section 4) and the
AAD is SPI || low 32 bits of the sequence number, or SPI || high 32 bits || low 32 bits when
the SA uses extended sequence numbers (section 5). The ICV is the full 16-byte GCM tag.

This sits on the data path: the AES key schedule is done once per SA (one `AESGCM` object per
:class:`EspAead`), the AAD layouts are precompiled, and a call does the nonce concatenation,
one pack and the AEAD operation.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsec_offload.errors import AuthenticationError, UsageError
from ipsec_offload.wire.esp import ESP_IV_LEN, ICV_LEN

__all__ = [
    "ICV_LEN",
    "IV_LEN",
    "SALT_LEN",
    "EspAead",
    "aad",
    "key_material_length",
]

SALT_LEN: Final = 4
"""Bytes of salt after the AES key in an SA's key material (RFC 4106 section 8.1)."""

IV_LEN: Final = ESP_IV_LEN
"""Bytes of explicit IV in each ESP packet (RFC 4106 section 3.1)."""

_KEY_LEN: Final = {1: 16, 2: 32}
"""AES key bytes by algorithm id (wire.config.Algorithm: AES_GCM_128 = 1, AES_GCM_256 = 2)."""

_SEQ32_MASK: Final = 0xFFFF_FFFF
_AAD: Final = struct.Struct(">II")
"""SPI || 32-bit sequence number (RFC 4106 section 5, figure 3)."""
_AAD_ESN: Final = struct.Struct(">IQ")
"""SPI || 64-bit extended sequence number, i.e. SPI || seq_hi || seq_lo (figure 4)."""


def _key_len(algorithm: int) -> int:
    try:
        return _KEY_LEN[algorithm]
    except (KeyError, TypeError):
        raise UsageError(
            f"unknown ESP algorithm {algorithm!r}: use 1 (AES-GCM-128) or 2 (AES-GCM-256)"
        ) from None


def key_material_length(algorithm: int) -> int:
    """The length of key || salt for ``algorithm``: 20 for AES-GCM-128, 36 for AES-GCM-256.

    Raises :class:`UsageError` for an algorithm id other than 1 or 2.
    """
    return _key_len(algorithm) + SALT_LEN


def aad(spi: int, seq: int, esn: bool) -> bytes:
    """The ESP AAD of RFC 4106 section 5 for ``spi`` and the full sequence number ``seq``.

    8 bytes (SPI || seq_lo) without ESN, where only the low 32 bits of ``seq`` are used;
    12 bytes (SPI || seq_hi || seq_lo) with ESN.
    """
    try:
        return _AAD_ESN.pack(spi, seq) if esn else _AAD.pack(spi, seq & _SEQ32_MASK)
    except struct.error:
        raise _bad_header(spi, seq, esn) from None


def _bad_header(spi: int, seq: int, esn: bool) -> UsageError:
    bits = 64 if esn else 32
    return UsageError(
        f"SPI must be an unsigned 32-bit int and seq an unsigned {bits}-bit int"
        f" (got spi={spi!r}, seq={seq!r})"
    )


class EspAead:
    """AES-GCM with a 16-byte ICV as ESP uses it (RFC 4106), for one SA's key material.

    ``algorithm`` is a ``wire.config.Algorithm`` (or its int value): 1 = AES-GCM-128 with
    20 bytes of key material, 2 = AES-GCM-256 with 36; ``key_material`` is key || 4-byte salt.
    """

    __slots__ = ("_algorithm", "_cipher", "_decrypt", "_encrypt", "_salt")

    def __init__(self, algorithm: int, key_material: bytes) -> None:
        key_len = _key_len(algorithm)
        if len(key_material) != key_len + SALT_LEN:
            raise UsageError(
                f"key material for algorithm {int(algorithm)} must be {key_len + SALT_LEN}"
                f" bytes ({key_len}-byte AES key || {SALT_LEN}-byte salt),"
                f" got {len(key_material)}"
            )
        cipher = AESGCM(bytes(key_material[:key_len]))
        self._algorithm = algorithm
        self._cipher = cipher  # the agent's compiled fast path calls it
        self._salt = bytes(key_material[key_len:])
        self._encrypt = cipher.encrypt
        self._decrypt = cipher.decrypt

    @property
    def algorithm(self) -> int:
        """The algorithm id this AEAD was created with."""
        return self._algorithm

    def __repr__(self) -> str:
        return f"EspAead(algorithm={self._algorithm!r})"

    def seal(
        self, spi: int, seq: int, esn: bool, iv: bytes, plaintext: bytes | memoryview
    ) -> bytes:
        """Encrypt ``plaintext`` (payload || padding || pad length || next header).

        Returns ciphertext || 16-byte ICV. ``seq`` is the full 64-bit sequence number (only
        its low 32 bits enter the AAD without ``esn``), ``iv`` the 8-byte explicit IV. The
        caller must never reuse an ``iv`` under one SA.
        """
        if len(iv) != IV_LEN:
            raise UsageError(f"the explicit IV must be {IV_LEN} bytes, got {len(iv)}")
        try:
            header = _AAD_ESN.pack(spi, seq) if esn else _AAD.pack(spi, seq & _SEQ32_MASK)
        except struct.error:
            raise _bad_header(spi, seq, esn) from None
        return self._encrypt(self._salt + iv, plaintext, header)

    def open(
        self, spi: int, seq: int, esn: bool, iv: bytes, ciphertext: bytes | memoryview
    ) -> bytes:
        """Verify and decrypt ``ciphertext`` (ciphertext || 16-byte ICV); return the plaintext.

        Raises :class:`AuthenticationError` when the ICV does not verify (which includes
        input shorter than the ICV, and a wrong ``seq`` or ``esn``).
        """
        if len(iv) != IV_LEN:
            raise UsageError(f"the explicit IV must be {IV_LEN} bytes, got {len(iv)}")
        try:
            header = _AAD_ESN.pack(spi, seq) if esn else _AAD.pack(spi, seq & _SEQ32_MASK)
        except struct.error:
            raise _bad_header(spi, seq, esn) from None
        try:
            return self._decrypt(self._salt + iv, ciphertext, header)
        except InvalidTag:
            raise AuthenticationError(
                f"ESP ICV did not verify (SPI {spi:#010x}, sequence number {seq:#x},"
                f" {len(ciphertext)} bytes of ciphertext and ICV)"
            ) from None
