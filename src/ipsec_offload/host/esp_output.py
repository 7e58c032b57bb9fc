"""ESP output (Linux's xfrm_output, esp_output and the offload decision of xfrm_device.c): a
packet an outbound policy protects with a state leaves here.

Theory of operation: tunnel mode first puts the packet behind an inner IP header (RFC 4301
4.1). The send then takes its sequence numbers from the state (`SequenceOwnership`), or is
dropped and counted when the state's packet lifetime or sequence numbers are used up. A state
the device holds (`offload.offload_ok`) sends the packet down as IP | ESP header | IV |
plaintext with a TxOffload, and the agent adds trailer and ICV; any other state seals it here
(`crypto.esp.esp_seal`). The IV is the sequence number, the 64-bit counter (RFC 4106 3.1).

Large sends (`tso`): through a transport-mode state offloaded to a device with TSO, a large
send goes down as frames of up to what the IP length field allows, each with its MSS; the NIC
cuts them and the agent numbers every segment (spec section 7), from the numbers the stack
reserved, one per segment. A burst of datagrams built in one call goes down through an
offloaded transport-mode state in one call (`xmit_burst`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ipsec_offload.crypto.esp import esp_seal, explicit_iv
from ipsec_offload.driver.ring import NetdevFeature
from ipsec_offload.errors import UsageError
from ipsec_offload.host.events import StackCounters
from ipsec_offload.host.ip import IpLayer
from ipsec_offload.host.offload import NetDevice, offload_ok
from ipsec_offload.host.xfrm import Mode, SendRefused, SequenceOwnership, XfrmState
from ipsec_offload.nic.tso import L4Header, segment_l4
from ipsec_offload.wire.esp import ESP_HEADER_LEN, ESP_IV_LEN, esp_header
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.transport import UDP_HEADER_LEN, TcpHeader

_IN_TUNNEL: dict[int, int] = {4: IpProto.IPIP, 16: IpProto.IPV6}
"""The next header of a tunnel-mode packet by its address length."""
_IP_PACKET_MAX = 0xFFFF
_OFFLOAD_PREFIX = {4: 20 + ESP_HEADER_LEN + ESP_IV_LEN, 16: ESP_HEADER_LEN + ESP_IV_LEN}
"""Bytes of an offloaded large send before its L4 header that count against the IP length
field: IPv4 header, ESP header and IV; IPv6 (whose payload length excludes its header): ESP."""
_SEQ_MASK = 0xFFFF_FFFF
# Enum members bound once: reading one off its class per packet costs a descriptor call.
_ESP = IpProto.ESP
_TRANSPORT, _TUNNEL = Mode.TRANSPORT, Mode.TUNNEL


class EspOutput:
    """The ESP output of one stack."""

    __slots__ = ("_counters", "_device", "_ip_header", "_reserve", "_xmit", "_xmit_burst")

    def __init__(
        self,
        ip: IpLayer,
        device: NetDevice,
        sequences: SequenceOwnership,
        counters: StackCounters,
    ) -> None:
        self._xmit = ip.xmit
        self._xmit_burst = ip.xmit_burst
        self._ip_header = ip.ip_header
        self._reserve = sequences.reserve
        self._device = device
        self._counters = counters

    def output(
        self,
        state: XfrmState,
        src: bytes,
        dst: bytes,
        protocol: int,
        segment: bytes,
        mss: int = 0,
        segments: int = 1,
    ) -> None:
        """Protect the upper-layer `segment` from `src` to `dst` with `state` and send it;
        `mss` (an offloaded transport-mode state only) makes it one large send of `segments`
        segments for the device to cut."""
        if state.mode == _TUNNEL:
            next_header = _IN_TUNNEL[len(dst)]
            payload = self._ip_header(src, dst, protocol, len(segment)) + segment
        else:
            next_header, payload = protocol, segment
        try:
            seq = self._reserve(state, 1, segments, len(payload))
        except SendRefused as refused:
            self._counters.drop(refused.reason)
            return
        if offload_ok(self._device, state):
            esp = esp_header(state.spi, seq & _SEQ_MASK) + explicit_iv(seq)
            offload = (state.handle, next_header)
            self._xmit(state.src, state.dst, _ESP, payload, offload, esp, mss, segments)
            self._counters.tx_esp_offloaded += 1
            return
        sealed = esp_seal(state.aead, state.spi, seq, state.esn, payload, next_header)
        self._xmit(state.src, state.dst, _ESP, sealed)
        self._counters.tx_esp_software += 1

    def tso(
        self,
        state: XfrmState,
        src: bytes,
        dst: bytes,
        protocol: int,
        header: L4Header,
        payload: bytes,
        mss: int,
    ) -> bool:
        """Send `payload` behind `header` through `state` as large sends for the device to cut
        into `mss`-byte segments, where the state and the device allow it: False (nothing
        sent) where they do not (a state in software or in tunnel mode, a device without
        TSO)."""
        if NetdevFeature.GSO_ESP not in self._device.features or not self.offloadable(state):
            return False
        l4_len = header.header_len if isinstance(header, TcpHeader) else UDP_HEADER_LEN
        room = _IP_PACKET_MAX - _OFFLOAD_PREFIX[len(dst)] - l4_len
        per_send = room // mss * mss
        if not per_send:
            raise UsageError(f"MSS {mss}: a segment must fit an IP packet; use at most {room}")
        for index, send in enumerate(segment_l4(header, payload, per_send, src, dst)):
            chunk = min(per_send, len(payload) - index * per_send)
            self.output(state, src, dst, protocol, send, mss, -(-chunk // mss))
        return True

    def offloadable(self, state: XfrmState) -> bool:
        """Whether sends of `state` may go down as large sends and bursts: it is in
        transport mode and the device holds it."""
        return state.mode == _TRANSPORT and offload_ok(self._device, state)

    def xmit_burst(
        self,
        state: XfrmState,
        next_header: int,
        mac: bytes,
        dst: bytes,
        frames: Sequence[bytes],
        nbytes: int,
    ) -> None:
        """Hand down `frames` (`IpLayer.udp_frames`) of an `offloadable` state, built behind
        its ESP header and IV from its next sequence number on, for the device to encrypt;
        `nbytes`: the bytes they protect. SendRefused, and nothing sent, when the state has
        not the lifetime or the numbers left for them all."""
        count = len(frames)
        self._reserve(state, count, count, nbytes)
        self._xmit_burst(mac, dst, frames, (state.handle, next_header))
        self._counters.tx_esp_offloaded += count
