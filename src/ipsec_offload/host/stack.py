"""The xfrm-like host network stack: IP, UDP, TCP segments, ICMP echo and ESP, in software or
offloaded, on one interface (MAC, VLAN stack, IPv4 and/or IPv6 address) bound to a network
device (the PF or VF driver, or a plain NIC driver).

Theory of operation: `HostStack` is the stack's face, and its layers, cut where Linux cuts
its stack, do the work, each in a module of its own and each knowing only those below it:

- `xfrm`: states and policies (`ip xfrm`), and `SequenceOwnership`: what a send takes from
  its state (lifetime, sequence numbers, one per TSO segment), whether a received packet goes
  through the state's replay window, the SEQ an install carries (spec section 9);
- `sad`, `spd`: the state and policy databases;
- `offload` (xfrm_device.c): a state's add, delete and stats toward the device and the
  device's answers, and whether a send goes down for offload;
- `ip`: the interface, neighbours, Ethernet and IP headers and transmit, the receive parse;
- `esp_output` (xfrm_output): protect a packet with its state, in software or offloaded,
  TSO for large sends;
- `esp_input` (xfrm_input): find, check, open and hand up a received ESP packet;
- `transport`: UDP, TCP and ICMP echo over IP, and the delivery of what arrives;
- `events`: the events and counters the stack gives its user.

A send goes transport -> (SPD) -> ESP output -> IP -> device. `poll` hands the device's events
out: the answers to state operations to `offload`, received frames to the IP layer, then ESP
packets to the ESP input and the others to the transport layer, which delivers them; the ESP
input hands its decrypted packets up to it the same way. Where the package was built with it,
the compiled receive path (`fastpath.RxPath`) delivers the common packet, an in-order UDP
datagram over a software transport-mode state, on the same objects (the SAD's inbound table,
the addresses, the counters, the SPD's check, the event list), and hands every other event to
the code here, which is the reference for both.

Sans-IO: the stack calls its device and reads the device's events in `poll(now)`; what it
delivers to applications and the outcome of state operations are its own `events()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from cryptography.exceptions import InvalidTag

from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.burst import reference_items
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.driver.ring import (
    OffloadLost,
    PacketReceived,
    StateAddDone,
    StateExpired,
)
from ipsec_offload.host import fastpath
from ipsec_offload.host.esp_input import EspInput
from ipsec_offload.host.esp_output import EspOutput
from ipsec_offload.host.events import (
    Delivered,
    StackCounters,
    StackEvent,
    StateExpire,
    StateResult,
)
from ipsec_offload.host.ip import IpLayer
from ipsec_offload.host.offload import DeviceOffload, NetDevice
from ipsec_offload.host.sad import Sad
from ipsec_offload.host.spd import Spd
from ipsec_offload.host.transport import DEFAULT_MSS, Transport
from ipsec_offload.host.xfrm import Mode, SequenceOwnership, XfrmPolicy, XfrmState
from ipsec_offload.wire.addr import ip_to_str
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.metadata import RxMetadata, RxStatus
from ipsec_offload.wire.transport import TcpFlags

__all__ = [
    "DEFAULT_MSS",
    "Delivered",
    "HostStack",
    "NetDevice",
    "StackCounters",
    "StackEvent",
    "StateExpire",
    "StateResult",
]

_ESP = IpProto.ESP


class HostStack:
    """One host's network stack on one interface.

    `addresses` (by length: 4 IPv4, 16 IPv6), `neighbors` (IP address -> MAC address, a
    static table), `states` (by handle), `policies` (in order) and `counters` are
    the layers' own tables: change them in place. `mac`, `vlans` and `own_sequence` may be
    set at any time; `name` and `device` are fixed. With `segments`, the stack's applications
    are a real kernel's (live mode's TUN device): what it receives goes up whole, as
    `SegmentReceived` events, with no echo answered (the kernel answers), and the compiled
    receive path is off.
    """

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
        segments: bool = False,
    ) -> None:
        counters = StackCounters()
        events: list[StackEvent] = []
        sequences = SequenceOwnership(own_sequence)
        ip = IpLayer(name, device, mac, vlans, ipv4, ipv6, counters)
        sad = Sad(name)
        spd = Spd(sad)
        offload = DeviceOffload(device, sad, spd, sequences, counters, events)
        transport = Transport(ip, spd, EspOutput(ip, device, sequences, counters), counters, events)
        esp_input = EspInput(
            sad.inbound, sequences, counters, ip.packet, transport.deliver, offload.advance_esn
        )
        self._name = name
        self._device = device
        self._sequences = sequences
        self._ip = ip
        self._offload = offload
        self._spd = spd
        self._transport = transport
        self._events = events
        """One list for the stack's life: the layers and the compiled path append to it."""
        # what _input calls per frame, bound once
        self._receive = ip.receive
        self._deliver = transport.deliver
        self._input_esp = esp_input.input
        self.addresses = ip.addresses
        self.neighbors = ip.neighbors
        self.states = sad.states
        self.policies = spd.policies
        self.counters = counters
        transport.segments = segments
        self._rx_fast: fastpath.RxPath | None = None
        if fastpath.RxPath is not None and not segments:
            self._rx_fast = fastpath.RxPath(
                inbound=sad.inbound,
                addresses=ip.addresses,
                counters=counters,
                admits=spd.admits,
                transport=Mode.TRANSPORT,
                rx_ok=RxStatus.OK,
                invalid_tag=InvalidTag,
                packet_type=PacketReceived,
                rx_type=RxMetadata,
                state_type=XfrmState,
                replay_type=ReplayWindow,
                aead_type=EspAead,
                delivered_type=Delivered,
            )

    @property
    def name(self) -> str:
        """The host's name, in errors and dumps."""
        return self._name

    @property
    def device(self) -> NetDevice:
        """The network device the interface is bound to."""
        return self._device

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

    @property
    def own_sequence(self) -> bool:
        """The stack owns sequence numbers and replay windows, as Linux does (spec 9): one
        number per segment of a TSO send, SEQ on every (re-)install, and the replay check
        for packets the agent decrypted too. False is the naive hand-over to the device."""
        return self._sequences.owned

    @own_sequence.setter
    def own_sequence(self, owned: bool) -> None:
        self._sequences.owned = owned

    # -- configuration --------------------------------------------------------------------

    def add_state(self, state: XfrmState, now: float, *, offload: bool = False) -> None:
        """Install a state; with `offload`, ask the device and wait for its answer (outcome:
        a StateResult event)."""
        self._offload.add_state(state, now, offload)

    def delete_state(self, handle: int, now: float) -> None:
        """Remove a state and the policies that name it; an offloaded one is removed from the
        device too, waited for (outcome: a StateResult event)."""
        self._offload.delete_state(handle, now)

    def update_stats(self, handle: int, now: float) -> None:
        """Merge the device's counters of an offloaded state into its `stats`
        (xdo_dev_state_update_stats: the replays and ICV failures the agent dropped)."""
        self._offload.update_stats(handle, now)

    def add_policy(self, policy: XfrmPolicy) -> None:
        """Add a policy after the others (the state it names need not be in the SAD)."""
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
        self._transport.send_udp(dst, src_port, dst_port, payload, now, mss)

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
        self._transport.send_udp_burst(dst, src_port, dst_port, payloads, now)

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
        return self._transport.send_tcp(
            dst,
            src_port,
            dst_port,
            data,
            now,
            seq=seq,
            ack=ack,
            flags=flags,
            window=window,
            mss=mss,
        )

    def send_echo(self, dst: str | bytes, ident: int, seq: int, payload: bytes, now: float) -> None:
        """Send an ICMP (or ICMPv6) echo request."""
        self._transport.send_echo(dst, ident, seq, payload, now)

    def send_ip(self, dst: bytes, protocol: int, segment: bytes, now: float) -> None:
        """Send an upper-layer segment to `dst`, through IPsec if a policy selects it."""
        self._transport.send_ip(dst, protocol, segment, now)

    # -- receiving ------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Handle what the device reported: state operations done, packets received (the
        common ones by the compiled receive path, where there is one)."""
        fast = self._rx_fast
        burst = None if fast is None else partial(fast.burst, now, self._events)
        offload = self._offload
        for event in reference_items(self._device.events(), burst):
            if isinstance(event, PacketReceived):
                self._input(event.frame, event.rx, now)
            elif isinstance(event, StateAddDone):
                offload.added(event, now)
            elif isinstance(event, OffloadLost):
                offload.lost(event, now)
            elif isinstance(event, StateExpired):
                offload.expired(event, now)

    def _input(self, frame: bytes, rx: RxMetadata | None, now: float) -> None:
        """A received frame: its IP packet for this host goes to the ESP input or, in clear,
        up to the transport layer."""
        packet = self._receive(frame)
        if packet is None:
            return
        src, dst, protocol, body = packet
        if protocol != _ESP:
            self._deliver(src, dst, protocol, body, None, False, now)
            return
        self._input_esp(src, dst, body, rx, now)

    # -- sans-IO plumbing -----------------------------------------------------------------

    def events(self) -> list[StackEvent]:
        """Take what the stack delivered and reported since the last call."""
        events = self._events.copy()
        self._events.clear()
        return events

    def dump(self) -> dict[str, Any]:
        """The stack's states and counters as plain data (no key material)."""
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
                "hard_expiries": self.counters.hard_expiries,
                "drops": dict(sorted(self.counters.drops.items())),
            },
        }
