"""Linux peers: remote hosts on the testbed's wire whose IP, xfrm and ESP are a real Linux
kernel's (the guest of `guest.py`).

Theory of operation: each peer is a network namespace in the guest with one macvlan interface
(its MAC, on a VLAN device for each of its tags) on the guest's eth0, its addresses, a default
route and a permanent neighbour entry for every host the testbed tells it of. Its SAs and
policies are `ip xfrm` commands, the key manager's as strongSwan or iked would issue them
(`add_state`, `add_policy`, `delete_state`). Its applications are peerd's sockets: a send is
an upper-layer segment built here and sent through the namespace's stack, and peerd reports
every UDP, TCP and ICMP packet the stack accepted, which becomes a `Delivered` event as a
software host's stack gives one.

The peers of a testbed share one `LinuxWire`: the frames the testbed carries to the peers go
into the guest in one exchange (its eth0 hands each to the macvlan of its destination MAC),
and what the guest sent comes back to be carried to the agent.

The software peer never answers what it is not asked (a datagram to a port nobody listens on,
a TCP segment of no connection); Linux would, with an ICMP port unreachable and a TCP reset.
Each namespace has policies that block those (outbound ICMP destination unreachable, and
TCP the kernel sends itself: peerd marks its own), so that a run tells the same story with
either peer. Echo requests are answered, by both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ipsec_offload.errors import LinuxGuestError, ParseError, UsageError
from ipsec_offload.host.events import StackCounters, StackEvent, StateResult
from ipsec_offload.host.transport import address_bytes, delivery, next_tcp_seq, upper_layer
from ipsec_offload.host.xfrm import Offload, XfrmPolicy, XfrmState
from ipsec_offload.nic.tso import segment_l4
from ipsec_offload.sim.linux.guest import Exchange, LinuxGuest
from ipsec_offload.sim.linux.xfrm_words import (
    LINUX_MAX_REPLAY_WINDOW,
    PRIORITY_BLOCK,
    PRIORITY_SA,
    QUIET,
    GuestSa,
    guest_sa_fields,
    parse_xfrm_state,
    selector_args,
    state_args,
)
from ipsec_offload.wire.addr import ip_to_str, mac_to_str
from ipsec_offload.wire.config import Direction
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.transport import (
    IcmpEcho,
    IcmpType,
    Icmpv6Type,
    TcpFlags,
    TcpHeader,
    UdpHeader,
    build_icmp_echo,
)

_TPID_QINQ = 0x88A8
_ECHO_REQUEST = {4: IcmpType.ECHO_REQUEST, 16: Icmpv6Type.ECHO_REQUEST}
_ICMP = {4: IpProto.ICMP, 16: IpProto.ICMPV6}


class LinuxPeer:
    """A remote host on the wire backed by a network namespace of the Linux guest; the same
    face to the testbed as a software host's `HostStack` (addresses, neighbours, states,
    policies, sends, events)."""

    def __init__(
        self,
        wire: LinuxWire,
        name: str,
        mac: bytes,
        addresses: dict[int, bytes],
        vlans: tuple[VlanTag, ...],
        *,
        quiet: bool = True,
    ) -> None:
        self._wire = wire
        self._name = name
        self.quiet = quiet
        """Hold back what the software peer never sends (the quiet policies; see above).
        False for real applications in the peer (live mode), whose TCP is the kernel's."""
        self.mac = mac
        self.vlans = vlans
        self.addresses = addresses
        self.netns = f"peer{len(wire.peers)}"
        """The guest's namespace for this peer."""
        self.neighbors: dict[bytes, bytes] = {}
        """Address -> MAC of the hosts in its L2 domain (the testbed fills it); each goes to
        the guest as a permanent neighbour before the next command or frame."""
        self._pushed: dict[bytes, bytes] = {}
        self.states: dict[int, XfrmState] = {}
        self.policies: list[XfrmPolicy] = []
        self.counters = StackCounters()
        """What the peer's applications sent (tx_plain: every send, whatever the guest did
        with it) and received (rx_delivered); the guest's own counters are `guest_sas`."""
        self._events: list[StackEvent] = []
        wire.attach(self)

    @property
    def name(self) -> str:
        return self._name

    # -- configuration (ip xfrm) ------------------------------------------------------------

    def add_state(self, state: XfrmState, now: float, *, offload: bool = False) -> None:
        """`ip xfrm state add` (in software: the guest has no offload device; `offload` is
        what the key manager would ask, and the kernel has nothing to give it)."""
        del offload
        self._neighbours()
        window = min(state.replay_window, LINUX_MAX_REPLAY_WINDOW)
        self._ip("xfrm", "state", "add", *state_args(state, window))
        self.states[state.handle] = state
        note = None
        if window < state.replay_window:
            note = f"replay window {state.replay_window} is above Linux's {window}: {window}"
        self._events.append(StateResult(now, state.handle, "add", 0, Offload.SOFTWARE, note))

    def delete_state(self, handle: int, now: float) -> None:
        """`ip xfrm state delete`, and the policies that name the state go too (as a software
        host's stack removes them)."""
        state = self.states.pop(handle, None)
        if state is None:
            raise UsageError(f"{self.name} has no state with handle {handle}")
        # the kernel may have deleted it already, at its hard lifetime (ESRCH: gone is gone)
        self._ip(
            "xfrm", "state", "delete", "src", ip_to_str(state.src), "dst", ip_to_str(state.dst),
            "proto", "esp", "spi", f"0x{state.spi:08x}", absent_ok=True,
        )  # fmt: skip
        for policy in [p for p in self.policies if p.state == handle]:
            self.policies.remove(policy)
            self._ip("xfrm", "policy", "delete", *selector_args(policy))
        self._events.append(StateResult(now, handle, "delete", 0, None))

    def add_policy(self, policy: XfrmPolicy) -> None:
        """`ip xfrm policy update`: a policy with the selector of one there replaces it. Its
        template names the state's reqid, mode and addresses, as Linux binds it."""
        state = self.states.get(policy.state)
        if state is None:
            raise UsageError(f"{self.name}: add the state a policy names before the policy")
        template = [
            "tmpl", "src", ip_to_str(state.src), "dst", ip_to_str(state.dst), "proto", "esp",
            "reqid", str(state.reqid), "mode", state.mode.name.lower(),
        ]  # fmt: skip
        self._ip(
            "xfrm", "policy", "update", *selector_args(policy), "priority", str(PRIORITY_SA),
            *template,
        )  # fmt: skip
        self.policies = [p for p in self.policies if p.selector != policy.selector]
        self.policies.append(policy)

    def guest_sas(self) -> list[GuestSa]:
        """The peer's SAs and their counters as the guest's `ip -s xfrm state` gives them."""
        return parse_xfrm_state(self.xfrm_text())

    def xfrm_text(self) -> str:
        """The guest's `ip -s xfrm state` for this peer, as it printed it."""
        return self._wire.guest.ip("-s", "xfrm", "state", netns=self.netns)

    # -- sending ----------------------------------------------------------------------------

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
        """Send a UDP datagram from the peer (with `mss`, datagrams of `mss` bytes each)."""
        del now
        self._send_l4(address_bytes(dst), IpProto.UDP, UdpHeader(src_port, dst_port), payload, mss)

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
        mss: int = 1460,
    ) -> int:
        """Send TCP segments from the peer (no connection, as `HostStack.send_tcp`); returns
        the sequence number that follows."""
        del now
        header = TcpHeader(src_port, dst_port, seq, ack, flags, window)
        self._send_l4(address_bytes(dst), IpProto.TCP, header, data, mss)
        return next_tcp_seq(seq, data, flags)

    def send_echo(self, dst: str | bytes, ident: int, seq: int, payload: bytes, now: float) -> None:
        """Send an ICMP (ICMPv6) echo request from the peer."""
        del now
        dst_b = address_bytes(dst)
        src = self._source(dst_b)
        header = IcmpEcho(_ECHO_REQUEST[len(dst_b)], 0, ident, seq)
        echo = build_icmp_echo(header, payload, src, dst_b)
        self._send(dst_b, _ICMP[len(dst_b)], echo)

    def _send_l4(
        self, dst: bytes, protocol: IpProto, header: UdpHeader | TcpHeader, payload: bytes, mss: int
    ) -> None:
        if mss < 0:
            raise UsageError(f"MSS {mss}: give 0 (no segmentation) or the bytes per segment")
        src = self._source(dst)
        for segment in segment_l4(header, payload, mss or max(1, len(payload)), src, dst):
            self._send(dst, protocol, segment)

    def _send(self, dst: bytes, protocol: int, segment: bytes) -> None:
        self._neighbours()
        self._wire.guest.send(self.netns, dst, protocol, segment)
        self._wire.sent = True
        self.counters.tx_plain += 1

    def _source(self, dst: bytes) -> bytes:
        src = self.addresses.get(len(dst))
        if src is None:
            raise UsageError(f"{self.name} has no IPv{4 if len(dst) == 4 else 6} address")
        return src

    # -- receiving --------------------------------------------------------------------------

    def deliver(self, src: bytes, dst: bytes, protocol: int, segment: bytes, now: float) -> None:
        """A packet the guest's stack accepted for this peer: a `Delivered` event."""
        try:
            found = upper_layer(protocol, segment)
        except ParseError:
            self.counters.drop("malformed")
            return
        if found is None:
            return
        state = self._inbound_state(src, dst, protocol)
        self.counters.rx_delivered += 1
        self._events.append(delivery(now, protocol, src, dst, found, state, False))

    def _inbound_state(self, src: bytes, dst: bytes, protocol: int) -> int | None:
        """The state the inbound policy selecting the packet names now (the guest accepted the
        packet, so it came through a state of that policy's reqid); None: no policy."""
        for policy in reversed(self.policies):
            if policy.direction == Direction.INBOUND and policy.selects(src, dst, protocol):
                return policy.state
        return None

    def poll(self, now: float) -> None:
        """Nothing to do: deliveries arrive with the wire's exchanges."""
        del now

    def events(self) -> list[StackEvent]:
        events = self._events.copy()
        self._events.clear()
        return events

    def dump(self) -> dict[str, Any]:
        """The peer's states (as ours) and the guest's counters of them."""
        return {
            "name": self.name,
            "linux": True,
            "netns": self.netns,
            "states": [
                {
                    "handle": s.handle,
                    "direction": s.direction.name,
                    "spi": f"0x{s.spi:08x}",
                    "src": ip_to_str(s.src),
                    "dst": ip_to_str(s.dst),
                    "mode": s.mode.name,
                }
                for s in self.states.values()
            ],
            "guest_sas": [guest_sa_fields(sa) for sa in self.guest_sas()],
            "counters": {
                "tx_sends": self.counters.tx_plain,
                "rx_delivered": self.counters.rx_delivered,
                "drops": dict(self.counters.drops),
            },
        }

    # -- the guest --------------------------------------------------------------------------

    def setup(self) -> None:
        """Make the peer's namespace, interface, addresses, routes and quiet policies."""
        guest, ns = self._wire.guest, self.netns
        lower = self._wire.vlan_device(self.vlans)
        temporary = f"mv{ns}"
        guest.ip("netns", "add", ns)
        guest.ip(
            "link", "add", "link", lower, "name", temporary, "address", mac_to_str(self.mac),
            "type", "macvlan", "mode", "vepa",
        )  # fmt: skip
        guest.ip("link", "set", temporary, "netns", ns)
        guest.ip("link", "set", temporary, "name", "eth0", netns=ns)
        guest.ip("link", "set", "lo", "up", netns=ns)
        guest.ip("link", "set", "eth0", "up", netns=ns)
        for size, address in sorted(self.addresses.items()):
            text = ip_to_str(address)
            family = "-4" if size == 4 else "-6"
            extra = () if size == 4 else ("nodad",)
            guest.ip(family, "addr", "add", f"{text}/{size * 8}", "dev", "eth0", *extra, netns=ns)
            guest.ip(family, "route", "add", "default", "dev", "eth0", netns=ns)
            any_net = "0.0.0.0/0" if size == 4 else "::/0"
            for sizes, selector in QUIET:
                if self.quiet and size in sizes:
                    guest.ip(
                        "xfrm", "policy", "add", "src", any_net, "dst", any_net, *selector,
                        "dir", "out", "priority", str(PRIORITY_BLOCK), "action", "block",
                        netns=ns,
                    )  # fmt: skip
        guest.open_netns(ns)

    def _neighbours(self) -> None:
        """Tell the guest of the neighbours the testbed added since the last time."""
        for address, mac in self.neighbors.items():
            if self._pushed.get(address) != mac:
                self._ip(
                    "neigh", "replace", ip_to_str(address), "lladdr", mac_to_str(mac),
                    "dev", "eth0", "nud", "permanent",
                )  # fmt: skip
                self._pushed[address] = mac

    def _ip(self, *args: str, absent_ok: bool = False) -> None:
        self._wire.check_owner()
        status, output = self._wire.guest.run("/sbin/ip", "-n", self.netns, *args, check=False)
        if status and not (absent_ok and "No such process" in output):
            raise LinuxGuestError(
                f"in the Linux guest, `ip -n {self.netns} {' '.join(args)}` failed: "
                + output.strip()
            )


class LinuxWire:
    """The Linux peers of one testbed and the guest that runs them: frames toward them go
    into the guest together, and what the guest sends comes back for the agent."""

    def __init__(self, guest: LinuxGuest) -> None:
        self.guest = guest
        self.peers: dict[str, LinuxPeer] = {}
        """By namespace."""
        self.sent = False
        """A peer sent since the last exchange: its frames are waiting in the guest."""
        self._frames: list[bytes] = []
        self.multicast_held = 0
        """Multicast frames the guest sent (its MLD reports for its addresses' groups), not
        carried: the testbed's hosts have static neighbours and join no group."""
        self._vlans: dict[tuple[tuple[int, int], ...], str] = {}
        self.exchanges = 0
        guest.reset()
        guest.owner = self

    def attach(self, peer: LinuxPeer) -> None:
        self.check_owner()
        self.peers[peer.netns] = peer
        peer.setup()

    def check_owner(self) -> None:
        if self.guest.owner is not self:
            raise LinuxGuestError(
                "the Linux guest now serves another testbed: a guest runs the peers of one"
                " testbed at a time"
            )

    def vlan_device(self, vlans: tuple[VlanTag, ...]) -> str:
        """The guest's device for a VLAN stack (made once; eth0 for none)."""
        device = "eth0"
        for depth in range(len(vlans)):
            key = tuple((t.tpid, t.vid) for t in vlans[: depth + 1])
            name = self._vlans.get(key)
            if name is None:
                name = f"vl{len(self._vlans)}"
                tag = vlans[depth]
                proto = "802.1ad" if tag.tpid == _TPID_QINQ else "802.1Q"
                self.guest.ip(
                    "link", "add", "link", device, "name", name, "type", "vlan",
                    "proto", proto, "id", str(tag.vid),
                )  # fmt: skip
                self.guest.ip("link", "set", name, "up")
                self._vlans[key] = name
            device = name
        return device

    def receive(self, frames: Iterable[bytes], now: float) -> set[LinuxPeer]:
        """Carry frames from the wire into the guest; returns the peers that got deliveries
        (their events hold them). What the guest sent meanwhile waits in `take_frames`."""
        self.check_owner()
        for peer in self.peers.values():
            peer._neighbours()
        return self._route(self.guest.exchange(frames), now)

    def take_frames(self, now: float) -> tuple[list[bytes], set[LinuxPeer]]:
        """The frames the guest sent (after an exchange if a peer sent since the last), and
        the peers that got deliveries in that exchange."""
        touched: set[LinuxPeer] = set()
        if self.sent:
            self.sent = False
            touched = self._route(self.guest.exchange([]), now)
        frames, self._frames = self._frames, []
        return frames, touched

    def _route(self, exchange: Exchange, now: float) -> set[LinuxPeer]:
        self.exchanges += 1
        for frame in exchange.frames:
            if frame[0] & 1:
                self.multicast_held += 1
            else:
                self._frames.append(frame)
        touched = set()
        for got in exchange.deliveries:
            peer = self.peers.get(got.netns)
            if peer is not None:
                peer.deliver(got.src, got.dst, got.protocol, got.segment, now)
                touched.add(peer)
        return touched
