"""Text forms of MAC and IP addresses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.errors import UsageError
from ipsec_offload.wire.addr import ip_from_str, ip_to_str, mac_from_str, mac_to_str


def test_known_values() -> None:
    assert mac_to_str(bytes.fromhex("020000000001")) == "02:00:00:00:00:01"
    assert mac_from_str("02-00-00-00-00-0A") == bytes.fromhex("02000000000a")
    assert ip_to_str(bytes([192, 0, 2, 1])) == "192.0.2.1"
    assert ip_to_str(bytes.fromhex("20010db8000000000000000000000001")) == "2001:db8::1"
    assert ip_from_str("2001:db8::1") == bytes.fromhex("20010db8000000000000000000000001")
    assert ip_from_str("10.0.0.1") == b"\x0a\x00\x00\x01"


@given(st.binary(min_size=6, max_size=6))
def test_mac_round_trip(mac: bytes) -> None:
    assert mac_from_str(mac_to_str(mac)) == mac


@given(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16))
def test_ip_round_trip(addr: bytes) -> None:
    assert ip_from_str(ip_to_str(addr)) == addr


@pytest.mark.parametrize(
    "text", ["", "02:00:00:00:00", "02:00:00:00:00:01:02", "0g:00:00:00:00:01", "2:0:0:0:0:1"]
)
def test_bad_mac_text(text: str) -> None:
    with pytest.raises(UsageError, match="MAC"):
        mac_from_str(text)


@pytest.mark.parametrize("text", ["", "10.0.0", "10.0.0.256", "2001:db8::1::2", "host"])
def test_bad_ip_text(text: str) -> None:
    with pytest.raises(UsageError, match="not an IPv4 or IPv6"):
        ip_from_str(text)


def test_bad_lengths() -> None:
    with pytest.raises(UsageError, match="give exactly 6"):
        mac_to_str(bytes(5))
    with pytest.raises(UsageError, match="give 4"):
        ip_to_str(bytes(6))
