"""The host stack's IP layer: one interface on its device, its neighbours, the headers and
transmit of IP packets, and the parse of the frames the device hands up.

Theory of operation: the interface has a MAC, a VLAN stack and an IPv4 and/or an IPv6
address; a static neighbour table gives the MAC of each destination. `xmit` puts an IP header
(IPv4: the next identification) and the Ethernet header toward the neighbour in front of an
upper-layer body and hands the frame to the device. An offloaded ESP send names its state and
next header, and the device gets the `TxOffload` (where the IP and ESP headers start) with the
frame, and the MSS when it is a large send for the device to cut (TSO: its segments take
consecutive identifications from the first). Ethernet headers and TxOffloads are built once
per layout and kept. A burst of UDP datagrams is built in one call (`udp_frames`) and handed
down in one (`xmit_burst`), where its datagrams take their identifications.

On receive, `receive` takes an Ethernet frame to the (source, destination, protocol,
upper-layer bytes) of an IP packet for this host, and `packet` does the IP part of it, for the
inner packet of a tunnel too; both count a drop and return None for anything else. Which
upper layer gets the packet is the stack's choice (`HostStack`).

The packets it builds carry no IPv4 options nor IPv6 extension headers.
"""

from __future__ import annotations

from collections.abc import Sequence

from ipsec_offload.driver.ring import TxOffload
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.host.events import StackCounters
from ipsec_offload.host.offload import NetDevice
from ipsec_offload.wire.addr import ip_from_str
from ipsec_offload.wire.ethernet import (
    EthernetHeader,
    EtherType,
    VlanTag,
    build_ethernet,
    check_vlans,
    ethernet_fields,
)
from ipsec_offload.wire.frames import build_udp_frames
from ipsec_offload.wire.ip import (
    IPv6Header,
    build_ipv6,
    ipv4_fields,
    ipv4_header,
    ipv6_fields,
    ipv6_upper_layer,
)

_ETHERTYPE = {4: EtherType.IPV4, 16: EtherType.IPV6}
"""The EtherType of a packet by its address length."""
_ETHERTYPE_VERSION: dict[int, int] = {EtherType.IPV4: 4, EtherType.IPV6: 6}

Packet = tuple[bytes, bytes, int, memoryview]
"""A received IP packet for this host: source, destination, upper-layer protocol and bytes."""


def host_addresses(name: str, ipv4: str | None, ipv6: str | None) -> dict[int, bytes]:
    """A host's addresses by length (4: IPv4, 16: IPv6) from their texts; a UsageError naming
    the host when there is none or one is not of its family."""
    if ipv4 is None and ipv6 is None:
        raise UsageError(f"host {name}: give it an IPv4 or an IPv6 address (or both)")
    addresses: dict[int, bytes] = {}
    for text, size, option in ((ipv4, 4, "ipv4"), (ipv6, 16, "ipv6")):
        if text is None:
            continue
        try:
            packed = ip_from_str(text) if isinstance(text, str) else b""
        except UsageError:
            packed = b""
        if len(packed) != size:
            family = 4 if size == 4 else 6
            raise UsageError(f"host {name}: {option}={text!r} is not an IPv{family} address")
        addresses[size] = packed
    return addresses


class IpLayer:
    """One interface's IP: addresses, neighbours, headers, transmit and receive parse."""

    __slots__ = (
        "_ident",
        "_l2",
        "_tx_offloads",
        "addresses",
        "counters",
        "device",
        "mac",
        "name",
        "neighbors",
        "vlans",
    )

    def __init__(
        self,
        name: str,
        device: NetDevice,
        mac: bytes,
        vlans: tuple[VlanTag, ...],
        ipv4: str | None,
        ipv6: str | None,
        counters: StackCounters,
    ) -> None:
        self.name = name
        self.device = device
        self.mac = mac
        self.vlans = check_vlans(vlans, f"host {name}")
        self.addresses = host_addresses(name, ipv4, ipv6)
        """The interface's addresses by length (4: IPv4, 16: IPv6)."""
        self.neighbors: dict[bytes, bytes] = {}
        """IP address -> MAC address (a static neighbour table)."""
        self.counters = counters
        self._ident = 1
        """The IPv4 identification the next packet takes."""
        self._l2: dict[tuple[bytes, bytes, tuple[VlanTag, ...], int], bytes] = {}
        """Ethernet headers built so far, by (destination, source, VLANs, EtherType)."""
        self._tx_offloads: dict[tuple[int, int, int, int], TxOffload] = {}
        """The TxOffload of each (state handle, next header, L3 offset, ESP offset) so far."""

    # -- sending --------------------------------------------------------------------------

    def source(self, dst: bytes) -> bytes:
        """The interface's address of `dst`'s family."""
        try:
            return self.addresses[len(dst)]
        except KeyError:
            family = "IPv4" if len(dst) == 4 else "IPv6"
            raise UsageError(f"host {self.name} has no {family} address") from None

    def xmit(
        self,
        src: bytes,
        dst: bytes,
        protocol: int,
        body: bytes | memoryview,
        offload: tuple[int, int] | None = None,
        esp: bytes = b"",
        mss: int = 0,
        segments: int = 1,
    ) -> None:
        """Send `esp` || `body` in an IP packet. An offloaded ESP send gives `offload` (its
        state's handle and next header) and `esp` (ESP header and IV), and a large send for
        the device to cut its `mss` and the `segments` it gives."""
        mac = self.neighbors.get(dst)
        if mac is None:
            self.counters.drop("no_neighbor")
            return
        l2 = self._l2_header(mac, _ETHERTYPE[len(dst)])
        length = len(esp) + len(body)
        ip = self.ip_header(src, dst, protocol, length, segments)
        frame = b"".join((l2, ip, esp, body))
        if offload is None:
            self.device.xmit(frame)
            return
        handle, next_header = offload
        tx = self._tx_offload(handle, next_header, len(l2), len(ip))
        if not mss:
            self.device.xmit(frame, tx)
        else:
            self.device.xmit(frame, tx, mss)
            self.counters.tx_tso_sends += 1

    def udp_frames(
        self,
        mac: bytes,
        src: bytes,
        dst: bytes,
        esp: tuple[int, int] | None,
        src_port: int,
        dst_port: int,
        payloads: Sequence[bytes],
    ) -> list[bytes]:
        """The frames of UDP datagrams to `dst` through the neighbour `mac`, behind ESP with
        `esp` (SPI, first sequence number), as `wire.frames.build_udp_frames` builds them,
        numbered from the next IPv4 identification; `xmit_burst` takes the identifications
        when it hands them down. A UsageError for datagrams it cannot build."""
        l2 = self._l2_header(mac, _ETHERTYPE[len(dst)])
        return build_udp_frames(l2, src, dst, self._ident, esp, src_port, dst_port, payloads)

    def xmit_burst(
        self,
        mac: bytes,
        dst: bytes,
        frames: Sequence[bytes],
        offload: tuple[int, int] | None = None,
    ) -> None:
        """Hand down, in one call, the `frames` `udp_frames` built for `mac` and `dst`; they
        take their identifications. An offloaded ESP burst gives `offload` (its state's handle
        and next header)."""
        v4 = len(dst) == 4
        if v4:
            self._ident = (self._ident + len(frames)) & 0xFFFF
        if offload is None:
            self.device.xmit_burst(frames)
            return
        l3_offset = len(self._l2_header(mac, _ETHERTYPE[len(dst)]))
        handle, next_header = offload
        tx = self._tx_offload(handle, next_header, l3_offset, 20 if v4 else 40)
        self.device.xmit_burst(frames, tx)

    def _tx_offload(
        self, handle: int, next_header: int, l3_offset: int, esp_offset: int
    ) -> TxOffload:
        """The device's offload request for a send of the state `handle`, built once per
        layout."""
        key = (handle, next_header, l3_offset, esp_offset)
        tx = self._tx_offloads.get(key)
        if tx is None:
            tx = self._tx_offloads[key] = TxOffload(*key)
        return tx

    def _l2_header(self, dst: bytes, ethertype: int) -> bytes:
        """The Ethernet header from this host to `dst`, built once."""
        key = (dst, self.mac, self.vlans, ethertype)
        header = self._l2.get(key)
        if header is None:
            header = build_ethernet(EthernetHeader(dst, self.mac, ethertype, self.vlans))
            self._l2[key] = header
        return header

    def ip_header(
        self, src: bytes, dst: bytes, protocol: int, length: int, packets: int = 1
    ) -> bytes:
        """An IP header; IPv4 takes the next identification, or `packets` of them for a TSO
        send (the NIC numbers its segments on from the first)."""
        if len(dst) == 16:
            return build_ipv6(IPv6Header(src, dst, protocol, length))
        ident = self._ident
        self._ident = (ident + packets) & 0xFFFF
        return ipv4_header(src, dst, protocol, 20 + length, ident)

    # -- receiving ------------------------------------------------------------------------

    def receive(self, frame: bytes) -> Packet | None:
        """The IP packet for this host in an Ethernet frame; None after counting a drop."""
        try:
            _, _, ethertype, _, _, header_len = ethernet_fields(frame, -1)
        except ParseError:
            self.counters.drop("malformed")
            return None
        version = _ETHERTYPE_VERSION.get(ethertype)
        if version is None:
            self.counters.drop("not_ip")
            return None
        return self.packet(memoryview(frame)[header_len:], version, "")

    def packet(self, buf: memoryview, version: int, reason: str) -> Packet | None:
        """(source, destination, upper-layer protocol, upper-layer bytes) of an IP packet for
        this host; None after counting a drop (`reason` prefixes its name)."""
        try:
            if version == 4:
                upper, _, end, _, _, _, protocol, _, src, dst = ipv4_fields(buf)
            else:
                _, payload_length, _, _, src, dst = ipv6_fields(buf)
                protocol, upper = ipv6_upper_layer(buf)
                end = 40 + payload_length
        except ParseError:
            self.counters.drop(reason + "malformed")
            return None
        if end > len(buf):
            self.counters.drop(reason + "truncated")
            return None
        if dst not in self.addresses.values():
            self.counters.drop(reason + "not_for_us")
            return None
        return src, dst, protocol, buf[upper:end]
