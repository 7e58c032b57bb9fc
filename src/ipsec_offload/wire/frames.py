"""The frames of a burst of UDP datagrams, as the host stack hands them to its device.

`build_udp_frames` gives, for each payload of a burst from one source to one destination, the
bytes `HostStack.send_udp` puts into `device.xmit`: the Ethernet header, then

- without ESP: an IP header (protocol 17) and the UDP datagram;
- with an offloaded transport-mode state: an IP header (protocol 50), the ESP header and the
  explicit IV the stack writes, and the UDP datagram in clear (the agent encrypts it and adds
  trailer and ICV).

IPv4 headers take consecutive identifications, ESP packets consecutive sequence numbers (the
ESP header carries the low 32 bits, the IV all 64). `build_udp_frames` is the compiled
`_frames.c` where the package was built with a C compiler, else `reference_build_udp_frames`,
which is made of the codecs of `ip`, `transport` and `esp`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ipsec_offload.errors import UsageError
from ipsec_offload.wire.esp import ESP_HEADER_LEN, ESP_IV_LEN, esp_header
from ipsec_offload.wire.ethernet import EtherType
from ipsec_offload.wire.ip import (
    IPV4_MIN_HEADER_LEN,
    IpProto,
    IPv6Header,
    build_ipv6,
    ipv4_header,
)
from ipsec_offload.wire.transport import UDP_HEADER_LEN, UdpHeader, build_udp

__all__ = ["Payload", "build_udp_frames", "reference_build_udp_frames"]

Payload = bytes | bytearray | memoryview
"""A datagram's payload: bytes, a bytearray or a C-contiguous memoryview (its raw bytes)."""

_ETH_HEADER_LEN = 14
_VLAN_TAG_LEN = 4
_MAX_VLANS = 2
_IP_PACKET_MAX = 0xFFFF
_SEQ_MASK = 0xFFFF_FFFF
_SEQ_MAX = (1 << 64) - 1
_ESP_LEN = ESP_HEADER_LEN + ESP_IV_LEN
_IV = struct.Struct("!Q")
"""crypto.esp.explicit_iv, which wire/ may not import (wire comes before crypto): the IV is
the 64-bit sequence number (spec section 2). The tests check the two agree."""
_FAMILY = {4: ("IPv4", EtherType.IPV4), 16: ("IPv6", EtherType.IPV6)}
_UDP, _ESP = IpProto.UDP, IpProto.ESP


def _check_int(name: str, value: object, bits: int) -> None:
    if not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise UsageError(f"{name} {value!r} does not fit {bits} bits; use 0..{(1 << bits) - 1}")


def _check_burst(
    l2: bytes,
    src: bytes,
    dst: bytes,
    ip_id: int,
    esp: tuple[int, int] | None,
    src_port: int,
    dst_port: int,
    payloads: Sequence[Payload],
) -> int:
    """Check the arguments that hold for the whole burst; returns the most payload bytes
    one datagram may carry."""
    for name, value in (("l2", l2), ("src", src), ("dst", dst)):
        if not isinstance(value, bytes):
            raise UsageError(f"{name} is a {type(value).__name__}; give bytes")
    if len(src) not in _FAMILY or len(src) != len(dst):
        raise UsageError(
            f"addresses of {len(src)} and {len(dst)} bytes; give two IPv4 (4) or two IPv6 (16)"
        )
    family, ethertype = _FAMILY[len(src)]
    tags, rest = divmod(len(l2) - _ETH_HEADER_LEN, _VLAN_TAG_LEN)
    if tags < 0 or rest or tags > _MAX_VLANS:
        raise UsageError(
            f"l2 of {len(l2)} bytes; give an Ethernet header: 14 bytes, 18 or 22 with VLAN tags"
        )
    if int.from_bytes(l2[-2:]) != ethertype:
        raise UsageError(
            f"l2 ends in EtherType {int.from_bytes(l2[-2:]):#06x} but the addresses are "
            f"{family}; give a header ending in {ethertype:#06x}"
        )
    _check_int("IPv4 identification", ip_id, 16)
    _check_int("UDP source port", src_port, 16)
    _check_int("UDP destination port", dst_port, 16)
    if not isinstance(payloads, list | tuple):
        raise UsageError(
            f"payloads is a {type(payloads).__name__}; give a list (or tuple) of payloads"
        )
    room = _IP_PACKET_MAX - UDP_HEADER_LEN - (IPV4_MIN_HEADER_LEN if len(src) == 4 else 0)
    if esp is not None:
        if not isinstance(esp, tuple) or len(esp) != 2:
            raise UsageError(f"esp {esp!r}; give None or (SPI, first sequence number)")
        spi, first = esp
        _check_int("ESP SPI", spi, 32)
        _check_int("ESP sequence number", first, 64)
        last = first + max(len(payloads) - 1, 0)
        if last > _SEQ_MAX:
            raise UsageError(
                f"ESP sequence numbers {first}..{last} do not fit 64 bits; send at most "
                f"{_SEQ_MAX - first + 1} datagrams from {first}"
            )
        room -= _ESP_LEN
    return room


def _check_payload(index: int, payload: object, room: int, v4: bool, esp: bool) -> None:
    """A payload must be of one of the Payload types and at most `room` bytes."""
    if not isinstance(payload, Payload) or (
        isinstance(payload, memoryview) and not payload.c_contiguous
    ):
        raise UsageError(
            f"payload {index} is a {type(payload).__name__}; give bytes, bytearray or a "
            "contiguous memoryview"
        )
    size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    if size > room:
        family = "IPv4" if v4 else "IPv6"
        with_esp = " with ESP" if esp else ""
        raise UsageError(
            f"payload {index} has {size} bytes; at most {room} fit one {family} packet{with_esp}"
        )


def reference_build_udp_frames(
    l2: bytes,
    src: bytes,
    dst: bytes,
    ip_id: int,
    esp: tuple[int, int] | None,
    src_port: int,
    dst_port: int,
    payloads: Sequence[Payload],
) -> list[bytes]:
    """The frame `HostStack.send_udp` transmits for each of `payloads`, from `src_port` at
    `src` to `dst_port` at `dst` (two IPv4 or two IPv6 addresses) behind the Ethernet header
    `l2` (VLAN tags included; its EtherType must match the addresses). `payloads` is a list
    (or tuple) of bytes, bytearrays or C-contiguous memoryviews.

    The i-th IPv4 header has identification `(ip_id + i) & 0xFFFF`. With `esp` = (SPI, first
    sequence number) each datagram follows an ESP header and explicit IV with sequence number
    `first + i` (protocol 50, for the agent to encrypt); without, it is plain UDP. Raises
    UsageError, saying what to fix, for any argument the frames cannot be built from.
    `build_udp_frames` is this, compiled where the package was built with a C compiler.
    """
    room = _check_burst(l2, src, dst, ip_id, esp, src_port, dst_port, payloads)
    v4 = len(src) == 4
    header = UdpHeader(src_port, dst_port)
    frames: list[bytes] = []
    for index, payload in enumerate(payloads):
        _check_payload(index, payload, room, v4, esp is not None)
        body = build_udp(header, bytes(payload), src, dst)
        protocol = _UDP
        if esp is not None:
            spi, first = esp
            seq = first + index
            body = esp_header(spi, seq & _SEQ_MASK) + _IV.pack(seq) + body
            protocol = _ESP
        if v4:
            total = IPV4_MIN_HEADER_LEN + len(body)
            ip = ipv4_header(src, dst, protocol, total, (ip_id + index) & 0xFFFF)
        else:
            ip = build_ipv6(IPv6Header(src, dst, protocol, len(body)))
        frames.append(l2 + ip + body)
    return frames


try:
    from ipsec_offload.wire._frames import build_udp_frames
except ImportError:  # built without a C compiler
    build_udp_frames = reference_build_udp_frames
