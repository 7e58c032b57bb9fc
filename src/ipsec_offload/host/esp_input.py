"""ESP input (Linux's xfrm_input and esp_input): a received ESP packet for this host is matched
to its inbound state, checked against the state's replay window, opened, and handed up.

Theory of operation: the SPI and destination address name the state (`Sad.inbound`); a packet
of no state is dropped. Rx status OK means the agent decrypted it in place, and the stack
strips ESP header, IV and trailer; a packet without that status (NO_SA, or not looked at) is
decrypted here (`crypto.esp.esp_open`). The replay window is checked before and advanced
after (RFC 4303 3.4.3), for a packet the agent decrypted too where the stack owns the window
(`SequenceOwnership.checks`); a packet whose ICV verified uses its number up even when its
trailer is bad. Transport mode hands the payload up as the upper-layer segment; tunnel mode
hands up the inner IP packet's. Up is `deliver` (`Transport.deliver`: the inbound policy
check and the upper layers), with the state the packet came through.

The compiled receive path (`_rxpath.c`) does the same for the common packet: an in-order UDP
datagram over a software transport-mode state.
"""

from __future__ import annotations

from collections.abc import Callable

from ipsec_offload.crypto.esp import esp_open
from ipsec_offload.errors import AuthenticationError, ParseError
from ipsec_offload.host.events import StackCounters
from ipsec_offload.host.ip import Packet
from ipsec_offload.host.xfrm import Mode, SequenceOwnership, XfrmState
from ipsec_offload.wire.esp import ESP_HEADER_LEN, ESP_IV_LEN, esp_fields, esp_trailer_fields
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.metadata import RxMetadata, RxStatus

Deliver = Callable[[bytes, bytes, int, memoryview, XfrmState | None, bool, float], None]
"""Hands a received upper-layer segment up: (source, destination, protocol, segment, the state
it came through or None, whether the agent decrypted it, now)."""

_ESP_HEADER_END = ESP_HEADER_LEN + ESP_IV_LEN
_INNER_VERSION: dict[int, int] = {IpProto.IPIP: 4, IpProto.IPV6: 6}
_TRANSPORT = Mode.TRANSPORT
_RX_OK = RxStatus.OK


class EspInput:
    """The ESP input of one stack."""

    __slots__ = ("_advance_esn", "_counters", "_deliver", "_inbound", "_packet", "_sequences")

    def __init__(
        self,
        inbound: dict[tuple[int, bytes], XfrmState],
        sequences: SequenceOwnership,
        counters: StackCounters,
        packet: Callable[[memoryview, int, str], Packet | None],
        deliver: Deliver,
        advance_esn: Callable[[XfrmState, int, float], None],
    ) -> None:
        self._inbound = inbound
        self._sequences = sequences
        self._counters = counters
        self._packet = packet
        """The IP layer's parse of a packet for this host (`IpLayer.packet`)."""
        self._deliver = deliver
        self._advance_esn = advance_esn
        """The device's xdo_dev_state_advance_esn, for an offloaded ESN state."""

    def input(
        self, src: bytes, dst: bytes, body: memoryview, rx: RxMetadata | None, now: float
    ) -> None:
        """Take the ESP packet `body` from `src` to `dst` (`rx`: what the agent did)."""
        counters = self._counters
        try:
            spi, seq = esp_fields(body)
        except ParseError:
            counters.drop("esp_malformed")
            return
        if len(body) < _ESP_HEADER_END:
            # RFC 4106 section 3.1: the 8-byte IV follows the ESP header
            counters.drop("esp_malformed")
            return
        state = self._inbound.get((spi, dst))
        if state is None:
            counters.drop("in_no_state")
            return
        offloaded = rx is not None and rx.ipsec and rx.status == _RX_OK
        replay = state.replay
        assert replay is not None
        checked = self._sequences.checks(offloaded)
        full = replay.check(seq) if checked else seq
        if full is None:
            counters.drop("in_replay")
            state.stats.replay += 1
            return
        try:
            if offloaded:
                plaintext = bytes(body[_ESP_HEADER_END:])
                _, next_header, payload_len = esp_trailer_fields(plaintext)
                counters.rx_esp_offloaded += 1
            else:
                plaintext, payload_len, next_header = _open(state, full, body)
                counters.rx_esp_software += 1
        except AuthenticationError:
            counters.drop("in_auth_failed")
            state.stats.integrity_failed += 1
            return
        except ParseError:
            # the ICV verified (here or in the agent): the number is used up all the same
            if checked:
                replay.accept(full)
            counters.drop("in_malformed")
            return
        if checked:
            # an offloaded ESN state's window entering a new 2^32 subspace: the device hears
            crossed = offloaded and state.esn and full >> 32 > replay.highest >> 32
            replay.accept(full)
            if crossed:
                self._advance_esn(state, full, now)
        state.packets += 1
        state.bytes += payload_len
        payload = memoryview(plaintext)[:payload_len]
        if state.mode == _TRANSPORT:
            self._deliver(src, dst, next_header, payload, state, offloaded, now)
            return
        self._tunnel(next_header, payload, state, offloaded, now)

    def _tunnel(
        self, next_header: int, inner: memoryview, state: XfrmState, offloaded: bool, now: float
    ) -> None:
        version = _INNER_VERSION.get(next_header)
        if version is None:
            self._counters.drop("in_tunnel_not_ip")
            return
        packet = self._packet(inner, version, "in_tunnel_")
        if packet is not None:
            src, dst, protocol, body = packet
            self._deliver(src, dst, protocol, body, state, offloaded, now)


def _open(state: XfrmState, full_seq: int, body: memoryview) -> tuple[bytes, int, int]:
    """Open the ESP packet `body` of `state` numbered `full_seq` (its replay check passed):
    (plaintext with trailer, payload length, next header)."""
    iv = bytes(body[ESP_HEADER_LEN:_ESP_HEADER_END])
    return esp_open(state.aead, state.spi, full_seq, state.esn, iv, body[_ESP_HEADER_END:])
