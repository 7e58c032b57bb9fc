"""AES Key Wrap with Padding (RFC 5649) for SA key material on the config channel.

The wrapped form of n bytes of key material is ceil(n / 8) * 8 + 8 bytes; the key-encryption
key (KEK) is an AES key of 16, 24 or 32 bytes.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from ipsec_offload.errors import KeyUnwrapError, UsageError

__all__ = ["KEK_LENGTHS", "unwrap_key", "wrap_key"]

KEK_LENGTHS: Final = (16, 24, 32)
"""Valid key-encryption key lengths in bytes (AES-128, AES-192, AES-256)."""


def wrap_key(kek: bytes, key_material: bytes) -> bytes:
    """Wrap ``key_material`` (1 byte or more) under ``kek`` per RFC 5649.

    Raises :class:`UsageError` for a KEK that is not 16, 24 or 32 bytes or empty key material.
    """
    if len(kek) not in KEK_LENGTHS:
        raise UsageError(f"the KEK must be 16, 24 or 32 bytes (an AES key), got {len(kek)}")
    if not key_material:
        raise UsageError("key material to wrap must be at least 1 byte")
    return aes_key_wrap_with_padding(bytes(kek), bytes(key_material))


def unwrap_key(kek: bytes, blob: bytes) -> bytes:
    """Unwrap ``blob`` (RFC 5649) under ``kek`` and return the key material.

    Raises :class:`KeyUnwrapError` when the blob does not unwrap under this KEK (wrong KEK,
    corrupted or truncated blob) and when the KEK is not a valid AES key length.
    """
    if len(kek) not in KEK_LENGTHS:
        raise KeyUnwrapError(
            f"the KEK must be 16, 24 or 32 bytes (an AES key), got {len(kek)}: cannot unwrap"
        )
    try:
        return aes_key_unwrap_with_padding(bytes(kek), bytes(blob))
    except InvalidUnwrap:
        raise KeyUnwrapError(
            f"{len(blob)}-byte wrapped key did not unwrap under this {len(kek)}-byte KEK:"
            " wrong KEK, or the blob is corrupted or truncated"
        ) from None
