"""The host stack's upper layers: UDP, TCP segments and ICMP echo over IP, through ESP where an
outbound policy says so, and the delivery of what arrives.

Theory of operation: a send finds the state an outbound policy names for it
(`Spd.output_state`) and goes to the ESP output with it, or to the IP layer in clear. Large
sends (`send_tcp`, `send_udp` with an MSS) go to the device's TSO where the ESP output can
hand them down so (`EspOutput.tso`); otherwise (software ESP, tunnel mode, no IPsec) they are
cut here, with the same rules as the NIC (`nic.tso.segment_l4`), and each segment is sent as
a packet of its own. A burst of UDP datagrams (`send_udp_burst`) is built in one call and
queued on the device in one, when it goes out in clear or through an offloaded
transport-mode state with room for it all; any other burst goes datagram by datagram. TCP has
no connection state: no handshake, acknowledgment or retransmission.

Delivery (`deliver`): a received segment, in clear or from the ESP input with its state,
passes the inbound policy check (`Spd.admits`) and its checksum, and becomes a `Delivered`
event; an echo request is answered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.host.esp_output import EspOutput
from ipsec_offload.host.events import Delivered, SegmentReceived, StackCounters, StackEvent
from ipsec_offload.host.ip import IpLayer
from ipsec_offload.host.spd import Spd
from ipsec_offload.host.xfrm import SendRefused, XfrmState
from ipsec_offload.nic.tso import L4Header, segment_l4
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.transport import (
    UDP_HEADER_LEN,
    IcmpEcho,
    IcmpType,
    Icmpv6Type,
    TcpFlags,
    TcpHeader,
    UdpHeader,
    build_icmp_echo,
    parse_icmp_echo,
    parse_tcp,
    transport_checksum,
    udp_fields,
)

DEFAULT_MSS = 1400
"""TCP payload bytes per segment unless told otherwise: a segment with ESP (header, IV, up to
5 bytes of trailer, ICV) and its IPv4 or IPv6 and TCP headers fits a 1500-byte MTU."""

_ECHO_REQUEST = {4: IcmpType.ECHO_REQUEST, 16: Icmpv6Type.ECHO_REQUEST}
_ECHO_REPLY = {4: IcmpType.ECHO_REPLY, 16: Icmpv6Type.ECHO_REPLY}
_ICMP = {4: IpProto.ICMP, 16: IpProto.ICMPV6}
_SEQ_MASK = 0xFFFF_FFFF
# Enum members bound once: reading one off its class per packet costs a descriptor call.
_UDP, _TCP = IpProto.UDP, IpProto.TCP
_ICMP4, _ICMP6 = IpProto.ICMP, IpProto.ICMPV6


class Transport:
    """The upper layers of one stack."""

    __slots__ = (
        "_counters",
        "_esp",
        "_esp_output",
        "_events",
        "_ip",
        "_output_state",
        "_source",
        "_spd",
        "_xmit",
        "segments",
    )

    def __init__(
        self,
        ip: IpLayer,
        spd: Spd,
        esp: EspOutput,
        counters: StackCounters,
        events: list[StackEvent],
    ) -> None:
        self._ip = ip
        self._spd = spd
        self._esp = esp
        self._counters = counters
        self._events = events
        # the per-packet calls, bound once
        self._source = ip.source
        self._xmit = ip.xmit
        self._output_state = spd.output_state
        self._esp_output = esp.output
        self.segments = False
        """Hand received segments up whole (`SegmentReceived`), not parsed and delivered."""

    # -- sending --------------------------------------------------------------------------

    def send_udp(
        self,
        dst: str | bytes,
        src_port: int,
        dst_port: int,
        payload: bytes,
        now: float,
        mss: int = 0,
    ) -> None:
        """`HostStack.send_udp`."""
        self._send_l4(address_bytes(dst), _UDP, UdpHeader(src_port, dst_port), payload, mss, now)

    def send_udp_burst(
        self,
        dst: str | bytes,
        src_port: int,
        dst_port: int,
        payloads: Sequence[bytes],
        now: float,
    ) -> None:
        """`HostStack.send_udp_burst`."""
        dst_b = address_bytes(dst)
        src = self._source(dst_b)
        ip = self._ip
        mac = ip.neighbors.get(dst_b)
        try:
            state = self._output_state(src, dst_b, _UDP)
        except SendRefused:  # a policy without its state: each datagram's drop is counted
            mac = state = None
        if mac is None or (state is not None and not self._esp.offloadable(state)):
            self._send_each(dst_b, src_port, dst_port, payloads, now)
            return
        esp = None if state is None else (state.spi, state.next_seq)
        try:
            frames = ip.udp_frames(mac, src, dst_b, esp, src_port, dst_port, payloads)
        except UsageError:
            # send_udp says which datagram is wrong, after sending those before it
            self._send_each(dst_b, src_port, dst_port, payloads, now)
            return
        if state is None:
            ip.xmit_burst(mac, dst_b, frames)
            self._counters.tx_plain += len(frames)
            return
        nbytes = UDP_HEADER_LEN * len(payloads) + sum(map(len, payloads))
        try:
            self._esp.xmit_burst(state, _UDP, mac, dst_b, frames, nbytes)
        except SendRefused:
            # not all of them: send_udp sends those the state takes and drops the others
            self._send_each(dst_b, src_port, dst_port, payloads, now)

    def _send_each(
        self, dst: bytes, src_port: int, dst_port: int, payloads: Sequence[bytes], now: float
    ) -> None:
        for payload in payloads:
            self.send_udp(dst, src_port, dst_port, payload, now)

    def send_tcp(
        self,
        dst: str | bytes,
        src_port: int,
        dst_port: int,
        data: bytes,
        now: float,
        *,
        seq: int,
        ack: int,
        flags: TcpFlags,
        window: int,
        mss: int,
    ) -> int:
        """`HostStack.send_tcp`."""
        header = TcpHeader(src_port, dst_port, seq, ack, flags, window)
        self._send_l4(address_bytes(dst), _TCP, header, data, mss, now)
        return next_tcp_seq(seq, data, flags)

    def send_echo(self, dst: str | bytes, ident: int, seq: int, payload: bytes, now: float) -> None:
        """`HostStack.send_echo`."""
        dst_b = address_bytes(dst)
        self._send_icmp(dst_b, _ECHO_REQUEST[len(dst_b)], ident, seq, payload, now)

    def send_ip(self, dst: bytes, protocol: int, segment: bytes, now: float) -> None:
        """`HostStack.send_ip`."""
        src = self._source(dst)
        try:
            state = self._output_state(src, dst, protocol)
        except SendRefused as refused:
            self._counters.drop(refused.reason)
            return
        if state is None:
            self._xmit(src, dst, protocol, segment)
            self._counters.tx_plain += 1
            return
        self._esp_output(state, src, dst, protocol, segment)

    def _send_l4(
        self,
        dst: bytes,
        protocol: IpProto,
        header: L4Header,
        payload: bytes,
        mss: int,
        now: float,
    ) -> None:
        """Send `payload` behind `header`, cut into `mss`-byte segments (0: one segment)."""
        if mss < 0:
            raise UsageError(f"MSS {mss}: give 0 (no segmentation) or the bytes per segment")
        src = self._source(dst)
        if 0 < mss < len(payload):
            try:
                state = self._output_state(src, dst, protocol)
            except SendRefused:  # each segment's drop is counted by send_ip
                state = None
            if state is not None and self._esp.tso(state, src, dst, protocol, header, payload, mss):
                return
            self._counters.tx_sw_segmented += 1
        for segment in segment_l4(header, payload, mss or max(1, len(payload)), src, dst):
            self.send_ip(dst, protocol, segment, now)

    def _send_icmp(
        self, dst: bytes, kind: int, ident: int, seq: int, payload: bytes, now: float
    ) -> None:
        src = self._source(dst)
        segment = build_icmp_echo(IcmpEcho(kind, 0, ident, seq), payload, src, dst)
        self.send_ip(dst, _ICMP[len(dst)], segment, now)

    # -- receiving ------------------------------------------------------------------------

    def deliver(
        self,
        src: bytes,
        dst: bytes,
        protocol: int,
        segment: memoryview,
        state: XfrmState | None,
        offloaded: bool,
        now: float,
    ) -> None:
        """Deliver a received upper-layer `segment` that came through `state` (None: in
        clear; `offloaded`: the agent decrypted it)."""
        if not self._spd.admits(src, dst, protocol, state):
            self._counters.drop("in_policy_violation")
            return
        if transport_checksum(src, dst, protocol, segment) != 0:
            self._counters.drop("bad_checksum")
            return
        handle = None if state is None else state.handle
        if self.segments:
            self._counters.rx_delivered += 1
            self._events.append(
                SegmentReceived(now, src, dst, protocol, bytes(segment), handle, offloaded)
            )
            return
        try:
            found = upper_layer(protocol, segment)
        except ParseError:
            self._counters.drop("malformed")
            return
        if found is None:
            self._counters.drop("unknown_protocol")
            return
        ports, payload, _tcp = found
        if protocol in (_ICMP4, _ICMP6) and segment[0] == _ECHO_REQUEST[len(src)]:
            self._send_icmp(src, _ECHO_REPLY[len(src)], ports[0], ports[1], payload, now)
        self._counters.rx_delivered += 1
        self._events.append(delivery(now, protocol, src, dst, found, handle, offloaded))


def upper_layer(
    protocol: int, segment: bytes | memoryview
) -> tuple[tuple[int, int], bytes, TcpHeader | None] | None:
    """What a delivery of `segment` carries: its ports (an echo's identifier and sequence
    number), its payload, and its TCP header (None for other protocols); None for a protocol
    the stack does not deliver. Raises ParseError on a malformed segment."""
    if protocol == _UDP:
        src_port, dst_port, length, _ = udp_fields(segment)
        return (src_port, dst_port), bytes(segment[UDP_HEADER_LEN:length]), None
    if protocol == _TCP:
        tcp = parse_tcp(segment)
        return (tcp.src_port, tcp.dst_port), bytes(segment[tcp.header_len :]), tcp
    if protocol in (_ICMP4, _ICMP6):
        echo = parse_icmp_echo(segment)
        return (echo.ident, echo.seq), bytes(segment[8:]), None
    return None


def delivery(
    now: float,
    protocol: int,
    src: bytes,
    dst: bytes,
    found: tuple[tuple[int, int], bytes, TcpHeader | None],
    state: int | None,
    offloaded: bool,
) -> Delivered:
    """The `Delivered` event of a segment `upper_layer` read (`found`)."""
    ports, payload, tcp = found
    return Delivered(
        now,
        protocol,
        src,
        dst,
        ports[0],
        ports[1],
        payload,
        state,
        offloaded,
        None if tcp is None else tcp.seq,
        None if tcp is None else tcp.flags,
    )


def next_tcp_seq(seq: int, data: bytes, flags: TcpFlags) -> int:
    """The sequence number that follows a send of `data` from `seq` (SYN and FIN count one
    each)."""
    consumed = len(data) + bool(flags & TcpFlags.SYN) + bool(flags & TcpFlags.FIN)
    return (seq + consumed) & _SEQ_MASK


def address_bytes(value: str | bytes) -> bytes:
    """An IP address as 4 or 16 bytes, from its bytes or its text."""
    return value if isinstance(value, bytes) else ipaddress.ip_address(value).packed
