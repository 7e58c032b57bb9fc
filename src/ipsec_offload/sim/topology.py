"""The testbed's topology: the hosts behind the NIC (the PF's, the VMs') and those on the wire.

Theory of operation: each host is an `Endpoint`, a stack with its driver (and its VSI behind
the NIC). Adding one checks it against the hosts of its L2 domain (its VLAN stack: no MAC or
address twice, never the agent's MAC) and makes the hosts there learn each other; the PF
host's driver probes the agent, a VM's VF is enabled on first use and asks the PF for
resources. Destroyed VMs stay in `retired`, for what they received. The topology changes the
port as the hypervisor and the drivers do (destroy_vm, reset_vf, remove_vf, reset_pf) and
lets the testbed run the port through the callables it hands over (the clock, `settle`, and
the `wait` of a driver that sleeps on the agent's answer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.driver.pf import PfDriver, VfState
from ipsec_offload.driver.plain import PlainDriver
from ipsec_offload.driver.ring import RingDriver
from ipsec_offload.driver.vf import Kek, VfDriver
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.host.ip import host_addresses
from ipsec_offload.host.stack import Delivered, HostStack, StackEvent, StateResult
from ipsec_offload.nic.descriptors import TxDescriptor
from ipsec_offload.nic.nic import Nic, SwitchMode, VsiKind
from ipsec_offload.sim.clock import Timer
from ipsec_offload.sim.linux.guest import LinuxGuest, shared_guest
from ipsec_offload.sim.linux.peer import LinuxPeer, LinuxWire
from ipsec_offload.wire.addr import check_unicast_mac, ip_to_str
from ipsec_offload.wire.ethernet import VlanTag, check_vlans, vlan_key
from ipsec_offload.wire.mailbox import parse_mailbox, peek_msg_id

Host = HostStack | LinuxPeer
"""A host of the testbed: a software stack (behind the NIC or a software peer on the wire),
or a Linux peer (a namespace of the Linux guest)."""


@dataclass(slots=True)
class Endpoint:
    """A host stack with its driver, and its VSI when it sits behind the NIC."""

    stack: Host
    driver: PfDriver | VfDriver | PlainDriver | LinuxWire
    vsi: int | None
    vf: int | None = None
    log: list[StackEvent] = field(default_factory=list)
    timer: Timer | None = None


Wait = Callable[[Endpoint, Callable[[], bool], float], float]
"""A driver's `wait` (`RingDriver.wait`) for the host of an endpoint."""


class Topology:
    """The hosts of one port and its wire, and what the hypervisor does to them."""

    def __init__(
        self,
        nic: Nic,
        agent: AgentConfig,
        *,
        own_sequence: bool,
        linux_guest: LinuxGuest | None,
        now: Callable[[], float],
        settle: Callable[..., None],
        wait: Wait,
        post: Callable[[int, list[TxDescriptor]], None],
        to_vf: Callable[[int, bytes], None],
        capture: Callable[[], bool],
    ) -> None:
        self._nic = nic
        self._agent = agent
        """The agent's configuration (its MAC and EtherTypes, which a restart keeps)."""
        self.own_sequence = own_sequence
        """Passed to every host stack (HostStack.own_sequence)."""
        self._linux_guest = linux_guest
        self._now = now
        self._settle = settle
        """Let the given hosts act and run the port until idle (`Testbed.settle`)."""
        self._wait = wait
        self._post = post
        """Put descriptors on a VSI's Tx ring, for the NIC to take now."""
        self._to_vf = to_vf
        """Send a PF's message to a VF over the mailbox."""
        self._capture = capture
        """Whether the testbed keeps deliveries."""
        self.pf: PfDriver | None = None
        self.endpoints: dict[str, Endpoint] = {}
        self.retired: dict[str, Endpoint] = {}
        """Hosts that are gone (destroyed VMs), kept for what they received."""
        self.linux: LinuxWire | None = None
        """The Linux peers and their guest, once a Linux peer is added."""

    def add_pf_host(
        self,
        name: str,
        mac: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        vlans: tuple[VlanTag, ...] = (),
        extended_key: bool = True,
        ownership_db: bool = True,
        port_tagging: bool = True,
        hairpin: bool = True,
        vf_filter: bool = True,
        resync: bool = True,
        caps_interval: float | None = 1.0,
        timeout: float = 0.001,
        retries: int = 3,
        port: int = 0,
    ) -> HostStack:
        """The host stack on the PF, with its PF driver (which probes the agent's caps and,
        in VEPA mode with `hairpin`, registers local addresses for the hairpin)."""
        if self.pf is not None:
            raise UsageError("this port has a PF host already")
        mac_b, vlans = self._check_new(name, mac, ipv4, ipv6, vlans)
        vsi = self._nic.add_vsi(VsiKind.PF, mac_b, vlans)
        driver = PfDriver(
            mac_b,
            vsi_id=vsi.vsi_id,
            vlans=vlans,
            agent_mac=self._agent.mac,
            port=port,
            timeout=timeout,
            retries=retries,
            extended_key=extended_key,
            ownership_db=ownership_db,
            port_tagging=port_tagging,
            hairpin=hairpin and self._nic.mode == SwitchMode.VEPA,
            vf_filter=vf_filter,
            resync=resync,
            caps_interval=caps_interval,
            config_ethertype=self._agent.config_ethertype,
            meta_ethertype=self._agent.meta_ethertype,
        )
        self.pf = driver
        stack = self._new_stack(name, driver, mac_b, ipv4, ipv6, vlans)
        self._add(Endpoint(stack, driver, vsi.vsi_id))
        driver.probe(self._now())
        driver.register_own_address(self._now())
        self._settle(stack)
        return stack

    def add_vm(
        self,
        name: str,
        vf: int,
        mac: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        vlans: tuple[VlanTag, ...] = (),
        trusted: bool = True,
        kek: Kek | None = None,
        quota: int = 128,
    ) -> HostStack:
        """A VM on VF `vf`: the VF is enabled (its VSI created) on first use; a VF whose
        previous VM was destroyed is reused. The VF driver asks the PF for resources."""
        pf = self.pf_driver()
        if any(ep.vf == vf for ep in self.endpoints.values()):
            raise UsageError(f"VF {vf} has a VM already; destroy it first")
        mac_b, vlans = self._check_new(name, mac, ipv4, ipv6, vlans)
        info = pf.vfs.get(vf)
        if info is None or info.state == VfState.DISABLED:
            vsi = self._nic.add_vsi(VsiKind.VF, mac_b, vlans)
            pf.enable_vf(
                vf, vsi.vsi_id, mac_b, vlans, trusted=trusted, quota=quota, now=self._now()
            )
            vsi_id = vsi.vsi_id
        elif (info.mac, vlan_key(info.vlans)) != (mac_b, vlan_key(vlans)):
            raise UsageError(f"VF {vf} has MAC and VLANs set by the PF; use them for its VM")
        else:
            vsi_id = info.vsi_id
        driver = VfDriver(vf, mac_b, vlans, kek=kek)
        stack = self._new_stack(name, driver, mac_b, ipv4, ipv6, vlans)
        self._add(Endpoint(stack, driver, vsi_id, vf))
        driver.start(self._now())
        self._settle(stack, self.endpoints[self.pf_name()].stack)
        return stack

    def destroy_vm(self, vm: HostStack | str) -> None:
        """`virsh destroy`: the VM vanishes without a word; the hypervisor resets its VF."""
        ep = self.endpoint(vm)
        if ep.vf is None:
            raise UsageError(f"{ep.stack.name} is not a VM")
        self.retire(ep)
        self.pf_driver().vf_flr(ep.vf, self._now())
        self._settle(self.endpoints[self.pf_name()].stack)

    def reset_vf(self, vm: HostStack | str) -> None:
        """The VF driver inside the VM reloads: RESET, REQUEST_RESOURCES, re-add its SAs."""
        ep = self.endpoint(vm)
        if not isinstance(ep.driver, VfDriver):
            raise UsageError(f"{ep.stack.name} is not a VM")
        ep.driver.reset(self._now())
        self._settle(ep.stack)

    def remove_vf(self, vf: int) -> None:
        """Remove a VF (destroying its VM first, if any) and, once clean, its VSI."""
        for ep in list(self.endpoints.values()):
            if ep.vf == vf:
                self.retire(ep)
        pf = self.pf_driver()
        pf.remove_vf(vf, self._now())
        self._settle(self.endpoints[self.pf_name()].stack)
        info = pf.vfs[vf]
        if info.state == VfState.DISABLED:
            self._nic.remove_vsi(info.vsi_id)

    def reset_pf(self) -> None:
        """The PF driver reloads: it flushes the port and the VFs re-add their SAs."""
        self.pf_driver().reset(self._now())
        self._settle(*[ep.stack for ep in self.endpoints.values()])

    def pf_driver(self) -> PfDriver:
        """The PF's driver; a UsageError before the PF host is added."""
        if self.pf is None:
            raise UsageError("add the PF host first (add_pf_host)")
        return self.pf

    def pf_name(self) -> str:
        """The PF host's name."""
        return next(name for name, ep in self.endpoints.items() if ep.driver is self.pf)

    def add_peer(
        self,
        name: str,
        mac: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        vlans: tuple[VlanTag, ...] = (),
    ) -> HostStack:
        """A remote host on the wire doing ESP in software (on a VLAN if `vlans`)."""
        mac_b, vlans = self._check_new(name, mac, ipv4, ipv6, vlans)
        driver = PlainDriver(mac_b)
        stack = self._new_stack(name, driver, mac_b, ipv4, ipv6, vlans)
        self._add(Endpoint(stack, driver, None))
        return stack

    def add_linux_peer(
        self,
        name: str,
        mac: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        vlans: tuple[VlanTag, ...] = (),
    ) -> LinuxPeer:
        """A remote host on the wire whose IP and ESP are a real Linux kernel's: a network
        namespace of the Linux guest (the testbed's `linux_guest`, else the one this process
        boots once and shares, `sim.linux.guest.shared_guest`). Frames to and from it cross
        in real time while the simulation waits for them; docs/linux-peer.md."""
        mac_b, vlans = self._check_new(name, mac, ipv4, ipv6, vlans)
        if self.linux is None:
            self.linux = LinuxWire(self._linux_guest or shared_guest())
        peer = LinuxPeer(self.linux, name, mac_b, host_addresses(name, ipv4, ipv6), vlans)
        self._add(Endpoint(peer, self.linux, None))
        return peer

    def inject(self, host: HostStack | str, frame: bytes, l2tag: int | None = None) -> None:
        """A raw frame on a host's Tx ring, as a (possibly malicious) driver would post it."""
        ep = self.endpoint(host)
        if ep.vsi is None:
            raise UsageError(f"{ep.stack.name} is not behind the NIC")
        if not isinstance(frame, bytes):
            raise UsageError(f"inject takes the frame as bytes, not {type(frame).__name__}")
        if l2tag is not None and not (isinstance(l2tag, int) and 0 <= l2tag <= 0xFFFFFFFF):
            raise UsageError(f"l2tag {l2tag!r}: the descriptor's L2TAG is 32 bits (0 .. 2^32-1)")
        self._post(ep.vsi, [TxDescriptor(frame, l2tag)])
        self._settle()

    def mailbox_inject(self, vf: int, data: bytes) -> list[bytes]:
        """Raw bytes into the PF from VF `vf`'s mailbox (a hostile VF); returns the PF's
        immediate answers to them (its msg_id, to VF `vf`). Whatever else the PF sends then
        (notices, answers to other VFs) goes over the mailbox as usual."""
        pf = self.pf_driver()
        pf.mailbox_receive(vf, data, self._now())
        msg_id = peek_msg_id(data)
        replies = []
        for target, message in pf.mailbox_messages():
            if target == vf and _is_reply_to(message, msg_id):
                replies.append(message)
            else:
                self._to_vf(target, message)
        self._settle(self.endpoints[self.pf_name()].stack)
        return replies

    def _check_new(
        self, name: str, mac: str, ipv4: str | None, ipv6: str | None, vlans: object
    ) -> tuple[bytes, tuple[VlanTag, ...]]:
        """A new host's MAC and VLANs, once all it is given is checked, before anything is
        built: a unicast MAC that is not the agent's, addresses of their families, and none
        of them another host's in its L2 domain (its VLAN stack)."""
        if name in self.endpoints:
            raise UsageError(f"a host named {name!r} exists")
        value = _mac(mac, f"host {name}")
        if value == self._agent.mac:
            raise UsageError(f"host {name}: {mac} is the agent's MAC; give the host its own")
        tags = check_vlans(vlans, f"host {name}")
        addresses = set(host_addresses(name, ipv4, ipv6).values())
        domain = vlan_key(tags)
        for other in self.endpoints.values():
            if vlan_key(other.stack.vlans) != domain:
                continue
            if other.stack.mac == value:
                raise UsageError(f"host {name}: {other.stack.name} has its MAC already")
            shared = set(other.stack.addresses.values()) & addresses
            if shared:
                raise UsageError(
                    f"host {name}: {other.stack.name} has {ip_to_str(shared.pop())}"
                    " already (traffic to it would reach neither)"
                )
        return value, tags

    def _new_stack(
        self,
        name: str,
        driver: PfDriver | VfDriver | PlainDriver,
        mac: bytes,
        ipv4: str | None,
        ipv6: str | None,
        vlans: tuple[VlanTag, ...],
    ) -> HostStack:
        return HostStack(
            name, driver, mac, ipv4=ipv4, ipv6=ipv6, vlans=vlans, own_sequence=self.own_sequence
        )

    def _add(self, ep: Endpoint) -> None:
        """Join a host to the L2 domain of its VLAN stack: hosts there learn each other."""
        stack = ep.stack
        domain = vlan_key(stack.vlans)
        for other in self.endpoints.values():
            if vlan_key(other.stack.vlans) != domain:
                continue
            for addr in other.stack.addresses.values():
                stack.neighbors[addr] = other.stack.mac
            for addr in stack.addresses.values():
                other.stack.neighbors[addr] = stack.mac
        self.endpoints[stack.name] = ep
        if isinstance(ep.driver, RingDriver):
            ep.driver.wait = partial(self._wait, ep)

    def retire(self, ep: Endpoint) -> None:
        """A host leaves without a word (a destroyed VM); its log stays in `retired`."""
        del self.endpoints[ep.stack.name]
        self.retired[ep.stack.name] = ep

    def endpoint(self, stack: Host | str) -> Endpoint:
        """A live host's endpoint, by the host or its name."""
        name = stack if isinstance(stack, str) else stack.name
        try:
            return self.endpoints[name]
        except KeyError:
            raise UsageError(f"no host named {name!r} on this testbed") from None

    def host(self, host: Host | str) -> Host:
        """A host on this testbed, live or destroyed."""
        if not isinstance(host, str):
            return host
        ep = self.endpoints.get(host, self.retired.get(host))
        if ep is None:
            raise UsageError(f"no host named {host!r} on this testbed, live or destroyed")
        return ep.stack

    def delivered(self, stack: Host) -> list[Delivered]:
        """Everything the host's applications received so far (also once it is gone)."""
        if not self._capture():
            raise UsageError(
                "this Testbed keeps no deliveries (capture=False): count them with"
                " stack.counters.rx_delivered, or make it with capture=True"
            )
        return [e for e in self._log(stack) if isinstance(e, Delivered)]

    def results(self, stack: Host) -> list[StateResult]:
        """The outcome of every state operation the host made so far."""
        return [e for e in self._log(stack) if isinstance(e, StateResult)]

    def _log(self, stack: Host) -> list[StackEvent]:
        gone = self.retired.get(stack.name)
        return gone.log if gone is not None and gone.stack is stack else self.endpoint(stack).log


def _is_reply_to(message: bytes, msg_id: int) -> bool:
    """Whether a PF's mailbox message answers the message `msg_id`."""
    try:
        parsed = parse_mailbox(message)
    except ParseError:
        return False
    return parsed.is_reply and parsed.msg_id == msg_id


def _mac(text: str, what: str) -> bytes:
    """A host's MAC from its text: six bytes, unicast, not all zeros."""
    try:
        value = bytes.fromhex(text.replace(":", ""))
    except (ValueError, AttributeError):
        value = b""
    if len(value) != 6:
        raise UsageError(f"{what}: {text!r} is not a MAC address (write it as 02:00:00:00:00:10)")
    return check_unicast_mac(value, what)
