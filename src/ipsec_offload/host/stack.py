"""The xfrm-like host network stack: IP, UDP, ICMP echo, ESP in software or offloaded.

Theory of operation: the stack owns one interface (MAC, VLAN stack, IPv4 and/or IPv6 address)
bound to a network device (the PF or VF driver, or a plain NIC driver). States and policies
work as Linux's xfrm does:

- `add_state(..., offload=True)` calls the device's xdo_dev_state_add. Until the reply
  arrives the state is PENDING and traffic uses software. On 0 the state is offloaded; on
  -EOPNOTSUPP it stays in software (Linux's fallback) and traffic still flows; any other
  error removes the state, and the stack reports the error.
- Sending: an outbound policy that selects the packet names the state that protects it. The
  stack assigns the sequence number (the IV is the same 64-bit counter). An offloaded state's
  packet goes down as L2 | IP | ESP | IV | plaintext with a TxOffload; the agent adds trailer
  and ICV. A software state's packet is sealed here.
- Large sends (`send_tcp`, `send_udp` with an MSS): on a transport-mode state offloaded to a
  device with TSO, each large send (up to what the IP length field allows) goes down as one
  frame with its MSS; the NIC segments it and the agent numbers every segment (spec section
  7). Otherwise (software ESP, tunnel mode, no IPsec) the stack cuts the segments itself, with
  the same rules as the NIC (`nic.tso.segment_l4`), and sends each as a packet of its own.
- Receiving: Rx status OK means the agent decrypted in place; the stack strips ESP. A frame
  without a status (NO_SA, or not looked at) is decrypted here if the stack holds the state.
  Inbound policies then check the packet came through the state they name. Where the package
  was built with it, the compiled receive path (`fastpath.RxPath`) delivers the common packet,
  an in-order UDP datagram over a software transport-mode state, and hands every other event
  to the code here, which is the reference for both.

Sans-IO: the stack calls its device and reads the device's events in `poll(now)`; what it
delivers to applications and the outcome of state operations are its own `events()`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import partial
from typing import Any

from cryptography.exceptions import InvalidTag

from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.burst import reference_items
from ipsec_offload.crypto.esp import esp_open, esp_seal, explicit_iv
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.driver.ring import (
    OffloadLost,
    PacketReceived,
    StateAddDone,
    StateDeleteDone,
    StatsDone,
)
from ipsec_offload.errors import AuthenticationError, ParseError, UsageError
from ipsec_offload.host import fastpath
from ipsec_offload.host.events import Delivered, StackCounters, StackEvent, StateResult
from ipsec_offload.host.ip import ETHERTYPE, IpLayer
from ipsec_offload.host.offload import DeviceOffload, NetDevice, offload_ok
from ipsec_offload.host.sad import Sad
from ipsec_offload.host.spd import Spd
from ipsec_offload.host.xfrm import Mode, SequenceOwnership, XfrmPolicy, XfrmState
from ipsec_offload.nic.tso import L4Header, segment_l4
from ipsec_offload.wire.addr import ip_to_str
from ipsec_offload.wire.esp import (
    ESP_HEADER_LEN,
    ESP_IV_LEN,
    esp_fields,
    esp_header,
    esp_trailer_fields,
)
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.metadata import RxMetadata, RxStatus
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

__all__ = [
    "DEFAULT_MSS",
    "Delivered",
    "HostStack",
    "NetDevice",
    "StackCounters",
    "StackEvent",
    "StateResult",
]

DEFAULT_MSS = 1400
"""TCP payload bytes per segment unless told otherwise: a segment with ESP (header, IV, up to
5 bytes of trailer, ICV) and its IPv4 or IPv6 and TCP headers fits a 1500-byte MTU."""

_ECHO_REQUEST = {4: IcmpType.ECHO_REQUEST, 16: Icmpv6Type.ECHO_REQUEST}
_ECHO_REPLY = {4: IcmpType.ECHO_REPLY, 16: Icmpv6Type.ECHO_REPLY}
_ICMP = {4: IpProto.ICMP, 16: IpProto.ICMPV6}
_IN_TUNNEL = {4: IpProto.IPIP, 16: IpProto.IPV6}
_INNER_VERSION: dict[int, int] = {IpProto.IPIP: 4, IpProto.IPV6: 6}
_IP_PACKET_MAX = 0xFFFF
_SEQ_MASK = 0xFFFF_FFFF
_OFFLOAD_PREFIX = {4: 20 + ESP_HEADER_LEN + ESP_IV_LEN, 16: ESP_HEADER_LEN + ESP_IV_LEN}
"""Bytes of an offloaded large send before its L4 header that count against the IP length
field: IPv4 header, ESP header and IV; IPv6 (whose payload length excludes its header): ESP."""
_ESP_HEADER_END = ESP_HEADER_LEN + ESP_IV_LEN
# Enum members bound once: reading one off its class per packet costs a descriptor call.
_UDP, _TCP, _ESP = IpProto.UDP, IpProto.TCP, IpProto.ESP
_ICMP4, _ICMP6 = IpProto.ICMP, IpProto.ICMPV6
_TRANSPORT, _TUNNEL = Mode.TRANSPORT, Mode.TUNNEL
_RX_OK = RxStatus.OK


class HostStack:
    """One host's network stack on one interface."""

    def __init__(
        self,
        name: str,
        device: NetDevice,
        mac: bytes,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        vlans: tuple[VlanTag, ...] = (),
        own_sequence: bool = True,
    ) -> None:
        self.counters = StackCounters()
        self._events: list[StackEvent] = []
        self._sequences = SequenceOwnership(own_sequence)
        self._ip = IpLayer(name, device, mac, vlans, ipv4, ipv6, self.counters)
        self._sad = Sad(name)
        self._spd = Spd(self._sad)
        self._offload = DeviceOffload(
            device, self._sad, self._spd, self._sequences, self.counters, self._events
        )
        self.name = name
        self.device = device
        self.addresses = self._ip.addresses
        self.neighbors = self._ip.neighbors
        self.states = self._sad.states
        self.policies = self._spd.policies
        self.hw_stats = self._offload.hw_stats
        self._rx_fast: fastpath.RxPath | None = None
        if fastpath.RxPath is not None:
            self._rx_fast = fastpath.RxPath(
                inbound=self._sad.inbound,
                addresses=self.addresses,
                counters=self.counters,
                admits=self._spd.admits,
                transport=_TRANSPORT,
                rx_ok=_RX_OK,
                invalid_tag=InvalidTag,
                packet_type=PacketReceived,
                rx_type=RxMetadata,
                state_type=XfrmState,
                replay_type=ReplayWindow,
                aead_type=EspAead,
                delivered_type=Delivered,
            )

    @property
    def own_sequence(self) -> bool:
        """The stack owns sequence numbers and replay windows, as Linux does (spec 9): one
        number per segment of a TSO send, SEQ on every (re-)install, and the replay check
        for packets the agent decrypted too. False is the naive hand-over to the device."""
        return self._sequences.owned

    @own_sequence.setter
    def own_sequence(self, owned: bool) -> None:
        self._sequences.owned = owned

    @property
    def mac(self) -> bytes:
        """The interface's MAC address."""
        return self._ip.mac

    @mac.setter
    def mac(self, mac: bytes) -> None:
        self._ip.mac = mac

    @property
    def vlans(self) -> tuple[VlanTag, ...]:
        """The interface's VLAN tags, outermost first."""
        return self._ip.vlans

    @vlans.setter
    def vlans(self, vlans: tuple[VlanTag, ...]) -> None:
        self._ip.vlans = vlans

    # -- configuration --------------------------------------------------------------------

    def add_state(self, state: XfrmState, now: float, *, offload: bool = False) -> None:
        """Install a state; with `offload`, ask the device (outcome: a StateResult event)."""
        self._offload.add_state(state, now, offload)

    def delete_state(self, handle: int, now: float) -> None:
        """Remove a state; an offloaded one is removed from the device first (outcome: a
        StateResult event)."""
        self._offload.delete_state(handle, now)

    def update_stats(self, handle: int, now: float) -> None:
        """Ask the device for an offloaded state's counters (xdo_dev_state_update_stats); they
        arrive in `hw_stats`."""
        self._offload.update_stats(handle, now)

    def add_policy(self, policy: XfrmPolicy) -> None:
        """Add a policy after the others; it must name a state of the stack."""
        self._spd.add(policy)

    # -- sending --------------------------------------------------------------------------

    def send_udp(
        self,
        dst: str | bytes,
        src_port: int,
        dst_port: int,
        payload: bytes,
        now: float,
        *,
        mss: int = 0,
    ) -> None:
        """Send one UDP datagram; with `mss`, a large send cut into datagrams of `mss` payload
        bytes each (Linux's UDP_SEGMENT), by the NIC when the state allows TSO."""
        self._send_l4(_addr(dst), _UDP, UdpHeader(src_port, dst_port), payload, mss, now)

    def send_udp_burst(
        self,
        dst: str | bytes,
        src_port: int,
        dst_port: int,
        payloads: Sequence[bytes],
        now: float,
    ) -> None:
        """Send UDP datagrams from one port to one destination port, as `send_udp` sends each
        in turn (Linux's sendmmsg): the same frames, counters and state.

        Route, policy, state and neighbour are resolved once for the burst, and the frames
        built together (`wire.frames.build_udp_frames`) and queued on the device in one call,
        when the datagrams go out in clear or through an offloaded transport-mode state with
        room for them all (lifetime, sequence numbers). Any other burst is sent datagram by
        datagram."""
        dst_b = _addr(dst)
        src = self._ip.source(dst_b)
        mac = self._ip.neighbors.get(dst_b)
        state = self._spd.output_state(src, dst_b, _UDP)
        count = len(payloads)
        if mac is None or (state is not None and not self._room_offloaded(state, count)):
            for payload in payloads:
                self.send_udp(dst_b, src_port, dst_port, payload, now)
            return
        l2 = self._ip.l2_header(mac, ETHERTYPE[len(dst_b)])
        esp = None if state is None else (state.spi, state.next_seq)
        try:
            frames = self._ip.udp_frames(l2, src, dst_b, esp, src_port, dst_port, payloads)
        except UsageError:
            # send_udp says which datagram is wrong, after sending those before it
            for payload in payloads:
                self.send_udp(dst_b, src_port, dst_port, payload, now)
            return
        if state is None:
            self.device.xmit_burst(frames)
            self.counters.tx_plain += count
            return
        nbytes = UDP_HEADER_LEN * count + sum(map(len, payloads))
        self._sequences.reserve(state, count, count, nbytes)
        tx = self._ip.tx_offload(state.handle, _UDP, len(l2), 20 if len(dst_b) == 4 else 40)
        self.device.xmit_burst(frames, tx)
        self.counters.tx_esp_offloaded += count

    def _room_offloaded(self, state: XfrmState, count: int) -> bool:
        """Whether `count` packets may go down through `state` as an offloaded burst: a
        transport-mode state the device holds, with the lifetime and sequence numbers for them."""
        return (
            state.mode == _TRANSPORT
            and offload_ok(self.device, state)
            and self._sequences.refusal(state, count, count) is None
        )

    def send_tcp(
        self,
        dst: str | bytes,
        src_port: int,
        dst_port: int,
        data: bytes,
        now: float,
        *,
        seq: int = 0,
        ack: int = 0,
        flags: TcpFlags = TcpFlags.ACK | TcpFlags.PSH,
        window: int = 0xFFFF,
        mss: int = DEFAULT_MSS,
    ) -> int:
        """Send `data` as TCP segments of at most `mss` payload bytes (0: one segment), the
        first numbered `seq`; returns the sequence number that follows (SYN and FIN count
        one each).

        The segments carry `ack`, `window` and `flags` (FIN and PSH only on the last, CWR only
        on the first). There is no connection state: no handshake, acknowledgment or
        retransmission. An offloaded transport-mode state hands the data down as TSO sends.
        """
        header = TcpHeader(src_port, dst_port, seq, ack, flags, window)
        self._send_l4(_addr(dst), _TCP, header, data, mss, now)
        consumed = len(data) + bool(flags & TcpFlags.SYN) + bool(flags & TcpFlags.FIN)
        return (seq + consumed) & _SEQ_MASK

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
        src = self._ip.source(dst)
        device = self.device
        large = 0 < mss < len(payload)
        state = self._tso_state(src, dst, protocol) if large else None
        if state is None or not device.hw_tso:
            if large:
                self.counters.tx_sw_segmented += 1
            for segment in segment_l4(header, payload, mss or max(1, len(payload)), src, dst):
                self.send_ip(dst, protocol, segment, now)
            return
        l4_len = header.header_len if isinstance(header, TcpHeader) else UDP_HEADER_LEN
        room = _IP_PACKET_MAX - _OFFLOAD_PREFIX[len(dst)] - l4_len
        per_send = room // mss * mss
        if not per_send:
            raise UsageError(f"MSS {mss}: a segment must fit an IP packet; use at most {room}")
        for index, send in enumerate(segment_l4(header, payload, per_send, src, dst)):
            chunk = min(per_send, len(payload) - index * per_send)
            self._xmit_esp(state, protocol, send, mss, -(-chunk // mss))

    def send_echo(self, dst: str | bytes, ident: int, seq: int, payload: bytes, now: float) -> None:
        """Send an ICMP (or ICMPv6) echo request."""
        dst_b = _addr(dst)
        self._send_icmp(dst_b, _ECHO_REQUEST[len(dst_b)], ident, seq, payload, now)

    def _send_icmp(
        self, dst: bytes, kind: int, ident: int, seq: int, payload: bytes, now: float
    ) -> None:
        src = self._ip.source(dst)
        segment = build_icmp_echo(IcmpEcho(kind, 0, ident, seq), payload, src, dst)
        self.send_ip(dst, _ICMP[len(dst)], segment, now)

    def send_ip(self, dst: bytes, protocol: int, segment: bytes, now: float) -> None:
        """Send an upper-layer segment to `dst`, through IPsec if a policy selects it."""
        src = self._ip.source(dst)
        state = self._spd.output_state(src, dst, protocol)
        if state is None:
            self._ip.xmit(src, dst, protocol, segment)
            self.counters.tx_plain += 1
            return
        if state.mode == _TUNNEL:
            inner = self._ip.ip_header(src, dst, protocol, len(segment)) + segment
            self._xmit_esp(state, _IN_TUNNEL[len(dst)], inner)
        else:
            self._xmit_esp(state, protocol, segment)

    def _tso_state(self, src: bytes, dst: bytes, protocol: int) -> XfrmState | None:
        """The state whose packets to `dst` may go down as TSO sends: a transport-mode state
        the device holds (tunnel-mode sends are segmented by the stack)."""
        state = self._spd.output_state(src, dst, protocol)
        return (
            state
            if state is not None and state.mode == _TRANSPORT and offload_ok(self.device, state)
            else None
        )

    def _xmit_esp(
        self, state: XfrmState, next_header: int, payload: bytes, mss: int = 0, segments: int = 1
    ) -> None:
        """Protect `payload` with `state`; `mss` (only for an offloaded state) makes it one
        large send of `segments` segments for the device to cut, numbered here and per segment
        by the agent."""
        refusal = self._sequences.refusal(state, 1, segments)
        if refusal is not None:
            self.counters.drop(refusal)
            return
        seq = self._sequences.reserve(state, 1, segments, len(payload))
        if offload_ok(self.device, state):
            esp = esp_header(state.spi, seq & _SEQ_MASK) + explicit_iv(seq)
            offload = (state.handle, next_header)
            self._ip.xmit(state.src, state.dst, _ESP, payload, offload, esp, mss, segments)
            self.counters.tx_esp_offloaded += 1
            return
        sealed = esp_seal(state.aead, state.spi, seq, state.esn, payload, next_header)
        self._ip.xmit(state.src, state.dst, _ESP, sealed)
        self.counters.tx_esp_software += 1

    # -- receiving ------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Handle what the device reported: state operations done, packets received (the
        common ones by the compiled receive path, where there is one)."""
        fast = self._rx_fast
        burst = None if fast is None else partial(fast.burst, now, self._events)
        for event in reference_items(self.device.events(), burst):
            if isinstance(event, PacketReceived):
                self._input(event.frame, event.rx, now)
            elif isinstance(event, StateAddDone):
                self._offload.added(event, now)
            elif isinstance(event, StateDeleteDone):
                self._offload.deleted(event, now)
            elif isinstance(event, StatsDone):
                self._offload.stats(event)
            elif isinstance(event, OffloadLost):
                self._offload.lost(event, now)

    def _input(self, frame: bytes, rx: RxMetadata | None, now: float) -> None:
        packet = self._ip.receive(frame)
        if packet is None:
            return
        src, dst, protocol, body = packet
        if protocol != _ESP:
            self._deliver(src, dst, protocol, body, None, False, now)
            return
        self._input_esp(src, dst, body, rx, now)

    def _input_esp(
        self, src: bytes, dst: bytes, body: memoryview, rx: RxMetadata | None, now: float
    ) -> None:
        try:
            spi, seq = esp_fields(body)
        except ParseError:
            self.counters.drop("esp_malformed")
            return
        if len(body) < _ESP_HEADER_END:
            # RFC 4106 section 3.1: the 8-byte IV follows the ESP header
            self.counters.drop("esp_malformed")
            return
        state = self._sad.inbound.get((spi, dst))
        if state is None:
            self.counters.drop("in_no_state")
            return
        offloaded = rx is not None and rx.ipsec and rx.status == _RX_OK
        replay = state.replay
        assert replay is not None
        checked = self._sequences.checks(offloaded)
        full = replay.check(seq) if checked else seq
        if full is None:
            self.counters.drop("in_replay")
            return
        try:
            if offloaded:
                plaintext = bytes(body[_ESP_HEADER_END:])
                _, next_header, payload_len = esp_trailer_fields(plaintext)
                self.counters.rx_esp_offloaded += 1
            else:
                plaintext, payload_len, next_header = _open(state, full, body)
                self.counters.rx_esp_software += 1
        except AuthenticationError:
            self.counters.drop("in_auth_failed")
            return
        except ParseError:
            # the ICV verified (here or in the agent): the number is used up all the same
            if checked:
                replay.accept(full)
            self.counters.drop("in_malformed")
            return
        if checked:
            replay.accept(full)
        state.packets += 1
        state.bytes += payload_len
        payload = memoryview(plaintext)[:payload_len]
        if state.mode == _TRANSPORT:
            self._deliver(src, dst, next_header, payload, state, offloaded, now)
            return
        self._input_tunnel(next_header, payload, state, offloaded, now)

    def _input_tunnel(
        self, next_header: int, inner: memoryview, state: XfrmState, offloaded: bool, now: float
    ) -> None:
        version = _INNER_VERSION.get(next_header)
        if version is None:
            self.counters.drop("in_tunnel_not_ip")
            return
        packet = self._ip.packet(inner, version, "in_tunnel_")
        if packet is not None:
            src, dst, protocol, body = packet
            self._deliver(src, dst, protocol, body, state, offloaded, now)

    def _deliver(
        self,
        src: bytes,
        dst: bytes,
        protocol: int,
        segment: memoryview,
        state: XfrmState | None,
        offloaded: bool,
        now: float,
    ) -> None:
        if not self._spd.admits(src, dst, protocol, state):
            self.counters.drop("in_policy_violation")
            return
        if transport_checksum(src, dst, protocol, segment) != 0:
            self.counters.drop("bad_checksum")
            return
        handle = None if state is None else state.handle
        tcp: TcpHeader | None = None
        try:
            if protocol == _UDP:
                src_port, dst_port, length, _ = udp_fields(segment)
                ports = (src_port, dst_port)
                payload = bytes(segment[UDP_HEADER_LEN:length])
            elif protocol == _TCP:
                tcp = parse_tcp(segment)
                ports = (tcp.src_port, tcp.dst_port)
                payload = bytes(segment[tcp.header_len :])
            elif protocol in (_ICMP4, _ICMP6):
                echo = parse_icmp_echo(segment)
                ports = (echo.ident, echo.seq)
                payload = bytes(segment[8:])
                if echo.type == _ECHO_REQUEST[len(src)]:
                    self._send_icmp(src, _ECHO_REPLY[len(src)], echo.ident, echo.seq, payload, now)
            else:
                self.counters.drop("unknown_protocol")
                return
        except ParseError:
            self.counters.drop("malformed")
            return
        self.counters.rx_delivered += 1
        self._events.append(
            Delivered(
                now,
                protocol,
                src,
                dst,
                ports[0],
                ports[1],
                payload,
                handle,
                offloaded,
                None if tcp is None else tcp.seq,
                None if tcp is None else tcp.flags,
            )
        )

    # -- sans-IO plumbing -----------------------------------------------------------------

    def events(self) -> list[StackEvent]:
        """Take what the stack delivered and reported since the last call."""
        # one list for the stack's life: its layers (and the compiled path) append to it
        events = self._events.copy()
        self._events.clear()
        return events

    def dump(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "states": [
                {
                    "handle": s.handle,
                    "direction": s.direction.name,
                    "spi": f"0x{s.spi:08x}",
                    "src": ip_to_str(s.src),
                    "dst": ip_to_str(s.dst),
                    "mode": s.mode.name,
                    "offload": s.offload.name,
                    "add_rc": s.add_rc,
                    "packets": s.packets,
                    "bytes": s.bytes,
                }
                for s in self.states.values()
            ],
            "counters": {
                "tx_plain": self.counters.tx_plain,
                "tx_esp_software": self.counters.tx_esp_software,
                "tx_esp_offloaded": self.counters.tx_esp_offloaded,
                "tx_tso_sends": self.counters.tx_tso_sends,
                "tx_sw_segmented": self.counters.tx_sw_segmented,
                "rx_delivered": self.counters.rx_delivered,
                "rx_esp_offloaded": self.counters.rx_esp_offloaded,
                "rx_esp_software": self.counters.rx_esp_software,
                "offload_fallbacks": self.counters.offload_fallbacks,
                "offload_lost": self.counters.offload_lost,
                "drops": dict(sorted(self.counters.drops.items())),
            },
        }


def _open(state: XfrmState, full_seq: int, body: memoryview) -> tuple[bytes, int, int]:
    """Open the ESP packet `body` of `state` numbered `full_seq` (its replay check passed):
    (plaintext with trailer, payload length, next header)."""
    iv = bytes(body[ESP_HEADER_LEN:_ESP_HEADER_END])
    return esp_open(state.aead, state.spi, full_seq, state.esn, iv, body[_ESP_HEADER_END:])


def _addr(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else ipaddress.ip_address(value).packed
