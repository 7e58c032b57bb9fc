"""AES key wrap with padding (RFC 5649): the RFC's examples, wrong KEKs, corrupted blobs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.crypto import unwrap_key, wrap_key
from ipsec_offload.errors import KeyUnwrapError, UsageError

# RFC 5649 section 6 ("Padded Key Wrap Example"): both examples use this 192-bit KEK.
RFC5649_KEK = bytes.fromhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")

RFC5649_EXAMPLES = [
    # RFC 5649 section 6, first example: 20 octets of key data with a 192-bit KEK.
    pytest.param(
        bytes.fromhex("c37b7e6492584340bed1220780894115 5068f738"),
        bytes.fromhex("138bdeaa9b8fa7fc61f97742e72248ee 5ae6ae5360d1ae6a5f54f373fa543b6a"),
        id="rfc5649-20-octets",
    ),
    # RFC 5649 section 6, second example: 7 octets of key data with a 192-bit KEK.
    pytest.param(
        bytes.fromhex("466f7250617369"),
        bytes.fromhex("afbeb0f07dfbf5419200f2ccb50bb24f"),
        id="rfc5649-7-octets",
    ),
]


@pytest.mark.parametrize(("key", "wrapped"), RFC5649_EXAMPLES)
def test_wrap_matches_rfc5649(key: bytes, wrapped: bytes) -> None:
    assert wrap_key(RFC5649_KEK, key) == wrapped


@pytest.mark.parametrize(("key", "wrapped"), RFC5649_EXAMPLES)
def test_unwrap_matches_rfc5649(key: bytes, wrapped: bytes) -> None:
    assert unwrap_key(RFC5649_KEK, wrapped) == key


@pytest.mark.parametrize(("key", "wrapped"), RFC5649_EXAMPLES)
def test_wrong_kek_is_key_unwrap_error(key: bytes, wrapped: bytes) -> None:
    wrong = bytes([RFC5649_KEK[0] ^ 1]) + RFC5649_KEK[1:]
    with pytest.raises(KeyUnwrapError, match="did not unwrap"):
        unwrap_key(wrong, wrapped)


@pytest.mark.parametrize(("key", "wrapped"), RFC5649_EXAMPLES)
def test_every_bit_flip_is_key_unwrap_error(key: bytes, wrapped: bytes) -> None:
    for index in range(len(wrapped)):
        tampered = bytearray(wrapped)
        tampered[index] ^= 0x80 >> (index % 8)
        with pytest.raises(KeyUnwrapError):
            unwrap_key(RFC5649_KEK, bytes(tampered))


@pytest.mark.parametrize("length", [0, 7, 8, 15, 17, 23])
def test_bad_blob_length_is_key_unwrap_error(length: int) -> None:
    with pytest.raises(KeyUnwrapError):
        unwrap_key(RFC5649_KEK, bytes(length))


def test_truncated_blob_is_key_unwrap_error() -> None:
    _, wrapped = RFC5649_EXAMPLES[0].values
    assert isinstance(wrapped, bytes)
    with pytest.raises(KeyUnwrapError):
        unwrap_key(RFC5649_KEK, wrapped[:-8])


@pytest.mark.parametrize("kek_len", [0, 8, 20, 33])
def test_bad_kek_length(kek_len: int) -> None:
    with pytest.raises(KeyUnwrapError, match="16, 24 or 32 bytes"):
        unwrap_key(bytes(kek_len), bytes(24))
    with pytest.raises(UsageError, match="16, 24 or 32 bytes"):
        wrap_key(bytes(kek_len), bytes(20))


def test_empty_key_material_cannot_be_wrapped() -> None:
    with pytest.raises(UsageError, match="at least 1 byte"):
        wrap_key(bytes(16), b"")


@given(
    kek=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    key=st.binary(min_size=1, max_size=80),
)
def test_round_trip(kek: bytes, key: bytes) -> None:
    wrapped = wrap_key(kek, key)
    assert len(wrapped) == -(-len(key) // 8) * 8 + 8
    assert unwrap_key(kek, wrapped) == key
