"""A host of the model on real interfaces: its stack's applications are a real kernel's (a TUN
device), its frames go out on a real interface (docs/live.md).

Theory of operation: the kernel of the TUN device's namespace does the applications' work
(ping, TCP, curl); each IP packet it routes into the TUN device is an upper-layer segment the
model's `HostStack` sends (`send_ip`: policy, ESP offloaded or not), and each segment the stack
receives (`SegmentReceived`) goes back into the TUN device under a new IP header. Below the
stack sits either the port (`kind="pf"`: PF driver and NIC, the agent on the far end of
`iface`) or a plain NIC driver (`kind="peer"`: a software peer on the wire). The loop waits on
the TUN device, the interface's packet socket and the driver's timer; an xdo_dev_* call that
waits for the agent's answer runs the same loop (bounded) until it has it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from ipsec_offload.agent.agent import DEFAULT_AGENT_MAC
from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.driver.plain import PlainDriver
from ipsec_offload.errors import ParseError, SimulationError, UsageError
from ipsec_offload.host.events import SegmentReceived
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import XfrmPolicy, XfrmState, host_network
from ipsec_offload.live.packet_socket import PacketSocket
from ipsec_offload.nic.nic import Nic, NicOutput, SwitchMode, VsiKind
from ipsec_offload.wire.config import Algorithm, Direction
from ipsec_offload.wire.ip import (
    IPv4Header,
    IPv6Header,
    build_ipv4,
    build_ipv6,
    ipv6_upper_layer,
    parse_ipv4,
)

_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
_IFREQ = struct.Struct("16sH22x")
WAIT_LIMIT = 10.0
"""Seconds an xdo_dev_* call may wait for the agent before the host gives up."""


class Tun:
    """A TUN device of the current network namespace (made if need be), without packet
    information: each read is one IP packet, each write one."""

    def __init__(self, name: str) -> None:
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        except OSError as exc:
            raise UsageError(f"cannot open /dev/net/tun: {exc.strerror}") from None
        try:
            fcntl.ioctl(fd, _TUNSETIFF, _IFREQ.pack(name.encode(), _IFF_TUN | _IFF_NO_PI))
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"TUN device {name}: {exc.strerror} (root needed)") from None
        self.fd = fd
        self.name = name

    def fileno(self) -> int:
        return self.fd

    def read_burst(self, limit: int = 64) -> list[bytes]:
        packets: list[bytes] = []
        while len(packets) < limit:
            try:
                packets.append(os.read(self.fd, 65535))
            except BlockingIOError:
                break
        return packets

    def write(self, packet: bytes) -> None:
        # a packet the kernel refuses (the device is down) is dropped, as by a full queue
        with contextlib.suppress(OSError):
            os.write(self.fd, packet)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class LiveSa:
    """One SA of the live topology, as both ends install it."""

    spi_out: int
    spi_in: int
    key_out: bytes
    key_in: bytes
    local: bytes
    remote: bytes


class LiveHost:
    """A host stack between a TUN device and a real interface."""

    def __init__(
        self,
        kind: Literal["pf", "peer"],
        name: str,
        mac: bytes,
        addresses: dict[str, str],
        iface: str,
        tun: str,
        *,
        agent_mac: bytes = DEFAULT_AGENT_MAC,
        neighbors: dict[bytes, bytes] | None = None,
    ) -> None:
        self.kind = kind
        self.nic: Nic | None = None
        self.driver: PfDriver | PlainDriver
        if kind == "pf":
            self.nic = Nic(mode=SwitchMode.VEB)
            vsi = self.nic.add_vsi(VsiKind.PF, mac, ())
            self.driver = PfDriver(
                mac, vsi_id=vsi.vsi_id, agent_mac=agent_mac, timeout=0.05, retries=5
            )
            self.driver.wait = self._wait
        else:
            self.driver = PlainDriver(mac)
        self.stack = HostStack(
            name, self.driver, mac, ipv4=addresses.get("ipv4"), ipv6=addresses.get("ipv6"),
            segments=True,
        )  # fmt: skip
        self.stack.neighbors.update(neighbors or {})
        self.port = PacketSocket(iface)
        self.tun = Tun(tun)
        self._started = time.monotonic()
        self._stopping = False

    @property
    def now(self) -> float:
        return time.monotonic() - self._started

    def start(self) -> None:
        """The PF driver's probe of the agent (GET_CAPS), waited for."""
        if isinstance(self.driver, PfDriver):
            self.driver.probe(self.now)
            self._pump()

    def secure(self, sas: Iterable[LiveSa], handles: Iterable[int], *, offload: bool) -> None:
        """Install each SA's two states and the policies between its addresses (the key
        manager's work); offloaded ones wait for the agent."""
        numbers = iter(handles)
        for sa in sas:
            for direction, spi, key, src, dst in (
                (Direction.OUTBOUND, sa.spi_out, sa.key_out, sa.local, sa.remote),
                (Direction.INBOUND, sa.spi_in, sa.key_in, sa.remote, sa.local),
            ):
                algorithm = Algorithm.AES_GCM_128 if len(key) == 20 else Algorithm.AES_GCM_256
                state = XfrmState(next(numbers), direction, spi, src, dst, algorithm, key)
                self.stack.add_state(state, self.now, offload=offload)
                self.stack.add_policy(
                    XfrmPolicy(direction, host_network(src), host_network(dst), state.handle)
                )
                self._pump()

    def stop(self) -> None:
        self._stopping = True

    def run(self, until: Callable[[], bool] | None = None, limit: float | None = None) -> None:
        """Move packets until stopped, `until()` is true or `limit` seconds passed."""
        deadline = None if limit is None else time.monotonic() + limit
        while not self._stopping and not (until is not None and until()):
            timeout = 0.2
            timer = self._timer()
            if timer is not None:
                timeout = max(0.0, min(timeout, timer - self.now))
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                timeout = min(timeout, left)
            watched: list[Tun | PacketSocket] = [self.tun, self.port]
            ready, _, _ = select.select(watched, [], [], timeout)
            if self.tun in ready:
                for packet in self.tun.read_burst():
                    self._send(packet)
            if self.port in ready:
                self._receive(self.port.recv_burst())
            timer = self._timer()
            if timer is not None and timer <= self.now and isinstance(self.driver, PfDriver):
                self.driver.handle_timer(self.now)
            self._pump()

    def _wait(self, done: Callable[[], bool], now: float) -> float:
        del now
        self._pump()
        self.run(until=done, limit=WAIT_LIMIT)
        if not done():
            raise SimulationError(
                f"the agent did not answer within {WAIT_LIMIT:g} s (is it running on the other"
                f" end of {self.port.ifname}?)"
            )
        return self.now

    def _timer(self) -> float | None:
        return self.driver.next_timer() if isinstance(self.driver, PfDriver) else None

    def _send(self, packet: bytes) -> None:
        """An IP packet the kernel routed into the TUN device: its segment, through the stack."""
        try:
            if packet[:1] and packet[0] >> 4 == 4:
                v4 = parse_ipv4(packet)
                dst, protocol = v4.dst, v4.protocol
                segment = packet[v4.header_len : v4.total_length]
            else:
                protocol, offset = ipv6_upper_layer(packet)
                dst, segment = packet[24:40], packet[offset:]
        except ParseError:
            self.stack.counters.drop("tun_not_ip")
            return
        try:
            self.stack.send_ip(dst, protocol, segment, self.now)
        except UsageError:  # a family the host has no address of
            self.stack.counters.drop("tun_no_source")

    def _receive(self, frames: list[bytes]) -> None:
        if not frames:
            return
        if isinstance(self.driver, PlainDriver):
            self.driver.receive(frames, self.now)
            return
        assert self.nic is not None
        self._rx(self.nic.from_agent(frames, self.now))

    def _rx(self, out: NicOutput) -> None:
        descs = [desc for _vsi, desc in out.rx]
        if descs and isinstance(self.driver, PfDriver):
            self.driver.receive(descs, self.now)

    def _pump(self) -> None:
        """Let the stack take its device's events and write what it received into the TUN
        device, and send what the driver queued, until neither has more (what the NIC
        switches back to the host's own VSI comes round again)."""
        for _ in range(16):
            now = self.now
            self.stack.poll(now)
            for event in self.stack.events():
                if isinstance(event, SegmentReceived):
                    self.tun.write(_ip_packet(event.src, event.dst, event.protocol, event.segment))
            if not self._transmit(now):
                return

    def _transmit(self, now: float) -> bool:
        """Send what the driver queued; whether the host's own VSI got anything back."""
        driver = self.driver
        if isinstance(driver, PlainDriver):
            self.port.send(driver.take_frames())
            return False
        assert self.nic is not None
        for command in driver.admin_commands():
            self.nic.execute(command)
        descs = driver.tx_descriptors()
        if not descs:
            return False
        out = self.nic.transmit(driver.vsi_id, descs, now)
        self.port.send(out.to_agent)
        self._rx(out)
        return bool(out.rx)

    def close(self) -> None:
        self.port.close()
        self.tun.close()


def _ip_packet(src: bytes, dst: bytes, protocol: int, segment: bytes) -> bytes:
    if len(src) == 4:
        return build_ipv4(IPv4Header(src, dst, protocol, 20 + len(segment))) + segment
    return build_ipv6(IPv6Header(src, dst, protocol, len(segment))) + segment
