"""The Tx and Rx metadata words (spec section 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.metadata import (
    RxMetadata,
    RxStatus,
    TxMetadata,
    build_rx_metadata,
    build_tx_metadata,
    parse_rx_metadata,
    parse_tx_metadata,
)

u8 = st.integers(0, 255)
words = st.integers(0, 0xFFFF_FFFF)


def test_tx_known_word() -> None:
    m = TxMetadata(offload=True, next_header=4, l3_offset=14, esp_offset=5)
    assert build_tx_metadata(m) == 0x80040E05
    assert parse_tx_metadata(0x80040E05) == m
    assert parse_tx_metadata(0) == TxMetadata(offload=False)


def test_rx_known_word() -> None:
    m = RxMetadata(ipsec=True, status=RxStatus.AUTH_FAILED, sa_index=7)
    assert build_rx_metadata(m) == 0x90000007
    assert parse_rx_metadata(0x90000007) == m
    assert parse_rx_metadata(0xA8FFFFFF) == RxMetadata(True, RxStatus.SA_EXPIRED, 0xFFFFFF)
    assert parse_rx_metadata(0) == RxMetadata(ipsec=False)


@given(st.booleans(), u8, u8, u8)
def test_tx_round_trip(offload: bool, next_header: int, l3: int, esp: int) -> None:
    m = TxMetadata(offload, next_header, l3, esp)
    assert parse_tx_metadata(build_tx_metadata(m)) == m


@given(st.booleans(), st.sampled_from(RxStatus), st.integers(0, 0xFFFFFF))
def test_rx_round_trip(ipsec: bool, status: RxStatus, sa_index: int) -> None:
    m = RxMetadata(ipsec, status, sa_index)
    parsed = parse_rx_metadata(build_rx_metadata(m))
    assert parsed == m
    assert type(parsed.status) is RxStatus


@given(words)
def test_any_word_parses_back_exactly_or_is_a_parse_error(word: int) -> None:
    try:
        tx = parse_tx_metadata(word)
    except ParseError as exc:
        assert (exc.layer, exc.offset) == ("metadata", 0)
        assert word & 0x7F00_0000
    else:
        assert build_tx_metadata(tx) == word
    try:
        rx = parse_rx_metadata(word)
    except ParseError as exc:
        assert exc.layer == "metadata"
        assert (word >> 27) & 0xF > 5 or word & 0x0700_0000
    else:
        assert build_rx_metadata(rx) == word


@pytest.mark.parametrize("bit", range(24, 31))
def test_tx_reserved_bits(bit: int) -> None:
    with pytest.raises(ParseError, match="reserved"):
        parse_tx_metadata(1 << bit)


@pytest.mark.parametrize("status", range(6, 16))
def test_rx_reserved_status(status: int) -> None:
    with pytest.raises(ParseError, match=f"reserved Rx status {status}"):
        parse_rx_metadata(0x8000_0000 | status << 27)


@pytest.mark.parametrize("bit", range(24, 27))
def test_rx_reserved_bits(bit: int) -> None:
    with pytest.raises(ParseError, match="reserved bits"):
        parse_rx_metadata(1 << bit)


@pytest.mark.parametrize("word", [-1, 1 << 32])
def test_not_a_32_bit_word(word: int) -> None:
    with pytest.raises(ParseError):
        parse_tx_metadata(word)
    with pytest.raises(ParseError):
        parse_rx_metadata(word)


@pytest.mark.parametrize(
    ("m", "message"),
    [
        (TxMetadata(True, next_header=256), "next header"),
        (TxMetadata(True, l3_offset=-1), "L3 offset"),
        (TxMetadata(True, esp_offset=300), "ESP offset"),
    ],
)
def test_tx_build_rejects_impossible_values(m: TxMetadata, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_tx_metadata(m)


def test_rx_build_rejects_impossible_values() -> None:
    with pytest.raises(UsageError, match="SA index"):
        build_rx_metadata(RxMetadata(True, RxStatus.OK, 1 << 24))
    with pytest.raises(UsageError, match="Rx status"):
        build_rx_metadata(RxMetadata(True, 6, 0))  # type: ignore[arg-type]
