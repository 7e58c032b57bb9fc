"""Text forms of MAC and IP addresses, which the rest of the model keeps as raw bytes."""

from __future__ import annotations

import ipaddress

from ipsec_offload.errors import UsageError

__all__ = ["ip_from_str", "ip_to_str", "mac_from_str", "mac_to_str"]

_MAC_LEN = 6


def mac_to_str(mac: bytes) -> str:
    """02:00:00:00:00:01 form of a 6-byte MAC address."""
    if len(mac) != _MAC_LEN:
        raise UsageError(f"MAC address of {len(mac)} bytes; give exactly 6")
    return ":".join(f"{b:02x}" for b in mac)


def mac_from_str(text: str) -> bytes:
    """Six hex bytes separated by ':' or '-' to a 6-byte MAC address."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != _MAC_LEN or not all(
        len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
    ):
        raise UsageError(f"{text!r} is not a MAC address; write it like 02:00:00:00:00:01")
    return bytes(int(p, 16) for p in parts)


def ip_to_str(addr: bytes) -> str:
    """Dotted IPv4 (4 bytes) or RFC 5952 IPv6 (16 bytes) text."""
    if len(addr) not in (4, 16):
        raise UsageError(f"IP address of {len(addr)} bytes; give 4 (IPv4) or 16 (IPv6)")
    return str(ipaddress.ip_address(bytes(addr)))


def ip_from_str(text: str) -> bytes:
    """IPv4 or IPv6 text to 4 or 16 bytes."""
    try:
        return ipaddress.ip_address(text).packed
    except ValueError as exc:
        raise UsageError(f"{text!r} is not an IPv4 or IPv6 address") from exc


def check_unicast_mac(mac: bytes, what: str) -> bytes:
    """`mac` if a host may have it: neither multicast (broadcast included) nor all zeros."""
    if mac[0] & 1:
        raise UsageError(f"{what}: {mac_to_str(mac)} is a multicast address; give a host's")
    if not any(mac):
        raise UsageError(f"{what}: 00:00:00:00:00:00 is not a host's MAC address")
    return mac
