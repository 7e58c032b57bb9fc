"""ESP header and trailer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.esp import (
    ESP_HEADER_LEN,
    ESP_IV_LEN,
    ICV_LEN,
    EspHeader,
    EspTrailer,
    build_esp,
    build_esp_trailer,
    esp_fields,
    esp_header,
    parse_esp,
    parse_esp_trailer,
)


def test_constants() -> None:
    assert (ESP_HEADER_LEN, ESP_IV_LEN, ICV_LEN) == (8, 8, 16)


def test_header_known_bytes() -> None:
    wire = build_esp(EspHeader(spi=0x00001234, seq=0xDEADBEEF))
    assert wire.hex() == "00001234deadbeef"
    assert parse_esp(wire + b"iv......") == EspHeader(0x1234, 0xDEADBEEF)


@given(st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFFFF_FFFF))
def test_header_round_trip_and_truncations(spi: int, seq: int) -> None:
    wire = build_esp(EspHeader(spi, seq))
    assert parse_esp(memoryview(wire)) == EspHeader(spi, seq)
    for cut in range(len(wire)):
        with pytest.raises(ParseError):
            parse_esp(wire[:cut])


@pytest.mark.parametrize(("spi", "seq"), [(-1, 0), (1 << 32, 0), (1, 1 << 32)])
def test_header_build_rejects_out_of_range(spi: int, seq: int) -> None:
    with pytest.raises(UsageError):
        build_esp(EspHeader(spi, seq))


@pytest.mark.parametrize(
    ("payload_len", "trailer"),
    [
        (0, "01020204"),
        (1, "010104"),
        (2, "0004"),
        (3, "0102030304"),
        (4, "01020204"),
        (5, "010104"),
        (6, "0004"),
        (7, "0102030304"),
        (8, "01020204"),
    ],
)
def test_trailer_padding_exact_bytes(payload_len: int, trailer: str) -> None:
    assert build_esp_trailer(payload_len, 4).hex() == trailer
    plaintext = b"\xaa" * payload_len + bytes.fromhex(trailer)
    assert len(plaintext) % 4 == 0
    assert parse_esp_trailer(plaintext) == (EspTrailer(len(trailer) // 2 - 2, 4), payload_len)


def test_trailer_other_alignments() -> None:
    assert build_esp_trailer(5, 41, align=16).hex() == "0102030405060708090929"
    assert build_esp_trailer(5, 41, align=1).hex() == "0029"
    assert build_esp_trailer(0, 59, align=256) == bytes(range(1, 255)) + b"\xfe\x3b"


@given(st.binary(max_size=64), st.integers(0, 255), st.sampled_from([1, 4, 8, 16, 256]))
def test_trailer_round_trip(payload: bytes, next_header: int, align: int) -> None:
    trailer = build_esp_trailer(len(payload), next_header, align)
    plaintext = payload + trailer
    assert len(plaintext) % align == 0
    assert len(trailer) - 2 < align
    parsed, payload_len = parse_esp_trailer(plaintext)
    assert parsed == EspTrailer(len(trailer) - 2, next_header)
    assert payload_len == len(payload)


@given(st.binary(max_size=40))
def test_trailer_random_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        trailer, payload_len = parse_esp_trailer(data)
    except ParseError as exc:
        assert exc.layer == "esp"
    else:
        pad = bytes(range(1, trailer.pad_length + 1))
        assert data[payload_len:] == pad + bytes((trailer.pad_length, trailer.next_header))


@pytest.mark.parametrize(
    ("plaintext", "offset", "message"),
    [
        (b"", 0, "2-byte trailer"),
        (b"\x04", 0, "2-byte trailer"),
        (bytes.fromhex("010304"), 1, "pad length 3 exceeds"),
        (bytes.fromhex("aa01050204"), 2, "pad byte 2 is 5, not 2"),
        (bytes.fromhex("aaaa02020204"), 2, "pad byte 1 is 2, not 1"),
    ],
)
def test_trailer_malformed(plaintext: bytes, offset: int, message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        parse_esp_trailer(plaintext)
    assert info.value.offset == offset


@pytest.mark.parametrize(
    ("payload_len", "next_header", "align"),
    [(-1, 4, 4), (0, 256, 4), (0, 4, 0), (0, 4, 257)],
)
def test_trailer_build_rejects_impossible_values(
    payload_len: int, next_header: int, align: int
) -> None:
    with pytest.raises(UsageError):
        build_esp_trailer(payload_len, next_header, align)


@given(st.binary(min_size=8, max_size=12))
def test_esp_fields_are_parse_esp(buf: bytes) -> None:
    header = parse_esp(buf)
    assert esp_fields(buf) == esp_fields(memoryview(buf)) == (header.spi, header.seq)
    assert esp_header(header.spi, header.seq) == build_esp(header) == buf[:8]


@pytest.mark.parametrize("size", range(ESP_HEADER_LEN))
def test_esp_fields_refuse_what_parse_esp_refuses(size: int) -> None:
    with pytest.raises(ParseError) as error:
        parse_esp(bytes(size))
    with pytest.raises(ParseError) as again:
        esp_fields(bytes(size))
    assert str(again.value) == str(error.value)


@pytest.mark.parametrize(("spi", "seq"), [(-1, 0), (1 << 32, 0), (1, 1 << 32)])
def test_esp_header_rejects_out_of_range(spi: int, seq: int) -> None:
    with pytest.raises(UsageError, match="does not fit 32 bits"):
        esp_header(spi, seq)
