"""The ESP packet inside a whole frame, for readers of captures (the testbed's replay helper,
the wire observer): Ethernet with its metadata and VLAN tags, IPv4 or IPv6 with extension
headers, then the ESP header and the explicit IV of RFC 4106."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ipsec_offload.errors import ParseError
from ipsec_offload.wire.esp import ESP_HEADER_LEN, ESP_IV_LEN, esp_fields
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, ethernet_fields
from ipsec_offload.wire.ip import (
    IPV6_HEADER_LEN,
    IpProto,
    ipv4_fields,
    ipv6_fields,
    ipv6_upper_layer,
)

__all__ = ["EspFrame", "find_esp"]

_IV = struct.Struct("!Q")
_FRAGMENT = 0x3FFF
"""MF and the fragment offset of the IPv4 flags/fragment word (RFC 791)."""


@dataclass(frozen=True, slots=True)
class EspFrame:
    """An ESP packet found in a frame."""

    eth: EthernetHeader
    src: bytes
    """The IP source address (the outer one in tunnel mode)."""
    dst: bytes
    spi: int
    seq: int
    """The ESP header's sequence number: the low 32 bits of the SA's counter."""
    iv: int
    """The 8-byte explicit IV as an integer: the SA's 64-bit counter (spec section 2)."""
    sealed: bytes
    """Ciphertext || ICV: the IP packet's bytes after the IV."""


def find_esp(frame: bytes, meta_ethertype: int = EtherType.META) -> EspFrame | None:
    """The ESP packet of `frame`, or None when it holds none: not IPv4 or IPv6, another
    protocol, a fragment, an IP packet too short for the ESP header and IV, or bytes that do
    not parse. A tag of `meta_ethertype` is the metadata tag (spec 3). The IPv4 checksum is
    not checked: a frame with a bad one still carries what was encrypted."""
    try:
        dst, src, ethertype, vlans, metadata, l3 = ethernet_fields(frame, meta_ethertype)
        if ethertype == EtherType.IPV4:
            header_len, _, length, _, fragment, _, protocol, _, ip_src, ip_dst = ipv4_fields(
                frame, l3, verify_checksum=False
            )
            if fragment & _FRAGMENT:
                return None
        elif ethertype == EtherType.IPV6:
            _, payload_length, _, _, ip_src, ip_dst = ipv6_fields(frame, l3)
            protocol, header_len = ipv6_upper_layer(frame, l3)
            length = IPV6_HEADER_LEN + payload_length
        else:
            return None
    except ParseError:
        return None
    esp = l3 + header_len
    sealed = esp + ESP_HEADER_LEN + ESP_IV_LEN
    end = l3 + length
    if protocol != IpProto.ESP or sealed > end:
        return None
    spi, seq = esp_fields(memoryview(frame)[esp:sealed])
    (iv,) = _IV.unpack_from(frame, esp + ESP_HEADER_LEN)
    eth = EthernetHeader(dst, src, ethertype, vlans, metadata)
    return EspFrame(eth, ip_src, ip_dst, spi, seq, iv, frame[sealed:end])
