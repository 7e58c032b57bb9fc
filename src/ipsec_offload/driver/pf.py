"""The PF driver: the facade over its parts, which follow the real PF driver's seams.

Theory of operation: the PF driver is the only party that talks to the agent, and it does so
through one place, `AgentControl` (control.py): every agent transaction carries a continuation
that runs with the reply's return code (0 or a negative errno; -ETIMEDOUT after the channel's
bounded retries) and TLVs. The other parts build on it, and none of them knows the facade:

- `OwnStates` (own_states.py): the PF host stack's own `xdo_dev_state_*` calls; each becomes a
  config frame on the Tx ring and, when the reply arrives, an event with the call's return
  value.
- `VfProxy` (vf_proxy.py): the VFs as the PF sees them, the table `VF_TRANSITIONS` driven by
  their mailbox messages and by the hypervisor (enable, trust, FLR, removal); it proxies their
  SAs to the agent with their domain added, and has their VSIs set up by `VsiSetup`
  (vsi_setup.py: port tag for untrusted VFs, Tx EtherType filter for trusted ones, hairpin
  addresses).
- `DomainCleanup` (cleanup.py): when a VF resets, its VM is destroyed (FLR) or the VF is
  removed, every SA of its domain is removed from the agent, the ownership database
  (`OwnershipDb`, ownership.py) telling which; the VF proxy answers the VF's
  REQUEST_RESOURCES only once the agent has answered for all of them.
- `Resync` (resync.py): recovery of the whole port. After a PF reset (`reset`) it flushes the
  port with REMOVE_ALL_SAS, re-adds the PF's own SAs and tells the VFs, which re-add theirs;
  after an agent restart (AGENT_STARTED, or a new BOOT_ID in the GET_CAPS it asks every
  `caps_interval` seconds) it re-adds every domain's SAs the same way; after an ADD_SA lost
  for good, and after either of those, it lists the agent's SAD (LIST_SAS) and removes the
  orphans.
- `AgentEvents` (agent_events.py): the agent's events (spec 9), answered by the config channel,
  routed: a restart to `Resync`, an SA's expiry to its owner (`StateExpired` for the PF's
  stack, EVENT_SA_EXPIRE through the mailbox for a VF's).

The facade owns the rings (`RingDriver`) and wires the parts together at construction; its
public API is the driver's. Each design choice of the deck can be switched off to watch it
fail: `extended_key` (domain fields on SAs), `ownership_db` (clean-up), `port_tagging`
(untrusted VFs), `hairpin`, `vf_filter` (the NIC's Tx EtherType filter on trusted VFs' config
and metadata frames), `resync` (spec 9's restart detection and reconciliation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ipsec_offload.driver.agent_events import AgentEvents
from ipsec_offload.driver.cleanup import CLEANUP_RETRIES, DomainCleanup
from ipsec_offload.driver.control import AgentControl, ConfigChannel
from ipsec_offload.driver.own_states import OwnStates
from ipsec_offload.driver.ownership import OwnershipDb
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.driver.resync import CAPS_INTERVAL, Resync
from ipsec_offload.driver.ring import DriverEvent, ExtAck, OffloadState, RingDriver
from ipsec_offload.driver.vf_proxy import VF_TRANSITIONS, VfInfo, VfInput, VfProxy, VfState
from ipsec_offload.driver.vsi_setup import UNTRUSTED_PORT_TAG, VsiSetup
from ipsec_offload.nic.admin import AdminCommand
from ipsec_offload.nic.descriptors import RxDescriptor, TxDescriptor
from ipsec_offload.wire.config import Caps, SaStats
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag

DEFAULT_AGENT_MAC = bytes.fromhex("020000000001")


class PfDriver(RingDriver):
    """The PF driver of one port."""

    ifname = "ens1f0"

    def __init__(
        self,
        mac: bytes,
        *,
        vsi_id: int = 0,
        vlans: tuple[VlanTag, ...] = (),
        agent_mac: bytes = DEFAULT_AGENT_MAC,
        port: int = 0,
        timeout: float = 0.001,
        retries: int = 3,
        extended_key: bool = True,
        ownership_db: bool = True,
        port_tagging: bool = True,
        hairpin: bool = False,
        vf_filter: bool = True,
        resync: bool = True,
        caps_interval: float | None = 1.0,
        config_ethertype: int = EtherType.CONFIG,
        meta_ethertype: int = EtherType.META,
    ) -> None:
        super().__init__(mac, vlans)
        self.vsi_id = vsi_id
        self.agent_mac = agent_mac
        self.channel = ConfigChannel(
            mac, agent_mac, port, timeout, retries, config_ethertype=config_ethertype
        )
        self.control = AgentControl(self.channel, self._send_config, self._emit)
        self.db = OwnershipDb()
        self.pf_counters = PfCounters()
        self.own_states = OwnStates(
            self.control,
            self.db,
            self.sa_index,
            self._emit,
            self._wait_for,
            mac,
            vlans,
            extended_key=extended_key,
        )
        self.cleanup = DomainCleanup(
            self.control, self.db, self.pf_counters, ownership_db=ownership_db
        )
        self.vsis = VsiSetup(
            self.control,
            agent_ethertypes=frozenset((config_ethertype, meta_ethertype)),
            port_tagging=port_tagging,
            vf_filter=vf_filter,
            hairpin=hairpin,
        )
        self.vf_proxy = VfProxy(
            self.control,
            self.db,
            self.cleanup,
            self.vsis,
            self.pf_counters,
            extended_key=extended_key,
        )
        self.resync = Resync(
            self.control,
            self.db,
            self.own_states,
            self.vf_proxy,
            self.cleanup,
            self.pf_counters,
            resync=resync,
            caps_interval=caps_interval,
        )
        self.agent_events = AgentEvents(
            self.db, self.resync, self.vf_proxy, self._emit, self.pf_counters
        )
        self.control.on_event = self.agent_events.on_event
        self.control.on_caps = self.resync.caps_seen
        self.control.on_timeout = self.resync.reconcile

    # -- what it was built with and what it holds -------------------------------------------

    @property
    def extended_key(self) -> bool:
        """SAs carry their domain (MAC and VLANs) in their key."""
        return self.own_states.extended_key

    @property
    def ownership_db(self) -> bool:
        """The clean-up of a domain removes its SAs from the agent."""
        return self.cleanup.ownership_db

    @property
    def port_tagging(self) -> bool:
        """Untrusted VFs get the port tag."""
        return self.vsis.port_tagging

    @property
    def hairpin(self) -> bool:
        """Local addresses are registered with the agent for the hairpin (VEPA)."""
        return self.vsis.hairpin

    @property
    def vf_filter(self) -> bool:
        """Trusted VFs get the Tx EtherType filter on the agent's EtherTypes."""
        return self.vsis.vf_filter

    @property
    def caps(self) -> Caps | None:
        """What the agent answered to GET_CAPS (None: not asked, or no answer yet)."""
        return self.control.caps

    @caps.setter
    def caps(self, caps: Caps | None) -> None:
        self.control.caps = caps

    @property
    def vfs(self) -> dict[int, VfInfo]:
        """What the PF knows of each VF it enabled, by VF id."""
        return self.vf_proxy.vfs

    # -- the agent's config channel -------------------------------------------------------

    def probe(self, now: float) -> None:
        """Ask the agent what it can do (GET_CAPS); completes with CapsDone. With
        `caps_interval`, GET_CAPS is asked again every that many seconds from now on, to find
        a restart of the agent by its BOOT_ID."""
        self.control.probe(now)
        self.resync.start(now)

    def _wait_for(self, done: Callable[[], bool], now: float) -> float:
        """The own states' waits go through `wait`, which the environment sets after
        construction."""
        return self.wait(done, now)

    def next_timer(self) -> float | None:
        """When `handle_timer` next has work (a config frame to resend or give up, a notice to
        a VF to resend, the periodic GET_CAPS), or None."""
        timers = (self.control.next_timer(), self.vf_proxy.next_timer(), self.resync.next_timer())
        return min((t for t in timers if t is not None), default=None)

    @property
    def waiting(self) -> bool:
        """A timer that something waits on is armed (a config frame's or a VF notice's
        resend or give-up); False when the next timer is the periodic GET_CAPS probe alone,
        which a simulator may leave pending when it runs until idle."""
        return self.control.next_timer() is not None or self.vf_proxy.next_timer() is not None

    def handle_timer(self, now: float) -> None:
        """Resend the config frames and notices that are due; time out those out of retries;
        probe the agent when due."""
        self.control.handle_timer(now)
        self.vf_proxy.handle_timer(now)
        self.resync.handle_timer(now)

    def _control_frame(self, desc: RxDescriptor, eth: EthernetHeader, now: float) -> bool:
        return self.control.receive(eth, desc.frame, now)

    def _send_config(self, frame: bytes) -> None:
        self._tx.append(TxDescriptor(frame))

    def _emit(self, event: DriverEvent) -> None:
        self._events.append(event)

    # -- the PF's own xdo_dev_* operations ----------------------------------------------

    def xdo_dev_state_add(self, state: OffloadState, extack: ExtAck, now: float) -> int:
        """Offload a state, waiting for the agent: 0 or a negative errno (`extack` says why)."""
        return self.own_states.xdo_dev_state_add(state, extack, now)

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Start removing an offloaded state from the agent; returns at once."""
        self.own_states.xdo_dev_state_delete(handle, now)

    def xdo_dev_state_free(self, handle: int, now: float) -> None:
        """Wait for the state's removal, then forget it (Linux frees driver memory here)."""
        self.own_states.xdo_dev_state_free(handle, now)

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> SaStats | None:
        """The agent's counters of an offloaded state, waited for (None: none to read)."""
        return self.own_states.xdo_dev_state_update_stats(handle, now)

    def xdo_dev_state_advance_esn(self, handle: int, esn: int, now: float) -> None:
        """An inbound ESN state's window moved into a new 2^32 subspace (`esn`: its highest
        number). The agent tracks the full ESN of its inbound SAs itself (spec 4), so nothing
        goes to it; counted in `sa_updates`, as a VF's UPDATE_SA is."""
        if handle in self.sa_index:
            self.pf_counters.sa_updates += 1

    # -- the hypervisor's side: VFs and their VSIs ---------------------------------------

    def enable_vf(
        self,
        vf_id: int,
        vsi_id: int,
        mac: bytes,
        vlans: tuple[VlanTag, ...] = (),
        *,
        trusted: bool = True,
        quota: int = 128,
        now: float = 0.0,
    ) -> None:
        """Bring a VF up (its VSI exists on the NIC); it starts in INIT."""
        self.vf_proxy.enable_vf(vf_id, vsi_id, mac, vlans, trusted=trusted, quota=quota, now=now)

    def set_vf_trust(self, vf_id: int, trusted: bool, now: float) -> None:
        """`ip link set ... vf N trust on|off`: untrusted VFs get the port tag; an ACTIVE VF
        is told that inline crypto is now on or off for it (EVENT_CRYPTO)."""
        self.vf_proxy.set_vf_trust(vf_id, trusted, now)

    def vf_flr(self, vf_id: int, now: float) -> None:
        """A function-level reset from the hypervisor: the VM was destroyed or reset."""
        self.vf_proxy.vf_flr(vf_id, now)

    def remove_vf(self, vf_id: int, now: float) -> None:
        """Remove a VF: its SAs are cleaned up, then it is DISABLED."""
        self.vf_proxy.remove_vf(vf_id, now)

    def register_own_address(self, now: float) -> None:
        """In VEPA mode, register the PF's own address for the hairpin."""
        self.vsis.register_local(self.mac, self.vlans, now)

    def admin_commands(self) -> list[AdminCommand]:
        """Take the admin queue commands queued for the NIC."""
        return self.vsis.admin_commands()

    # -- the mailbox ------------------------------------------------------------------------

    def mailbox_receive(self, vf_id: int, data: bytes, now: float) -> None:
        """A message from a VF's mailbox. Anything malformed gets an error reply."""
        self.vf_proxy.mailbox_receive(vf_id, data, now)

    def mailbox_messages(self) -> list[tuple[int, bytes]]:
        """Take the (VF id, message) pairs queued for the VFs' mailboxes."""
        return self.vf_proxy.mailbox_messages()

    # -- PF reset -----------------------------------------------------------------------------

    def reset(self, now: float) -> None:
        """The PF driver reloads (panic, rmmod/insmod): flush the port, re-add its own SAs,
        tell every VF. In-flight transactions are abandoned."""
        self.resync.pf_reset(now)

    # -- state dump -------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The driver's state as plain data (no key material)."""
        return {
            "mac": self.mac.hex(":"),
            "offloaded": dict(sorted(self.sa_index.items())),
            "pending": self.channel.pending,
            "control": asdict(self.channel.counters),
            "counters": asdict(self.counters),
            "pf": asdict(self.pf_counters),
            "agent_boot_id": self.resync.boot_id,
            "ownership": self.db.dump(),
            "vfs": self.vf_proxy.dump(),
        }


__all__ = [
    "CAPS_INTERVAL",
    "CLEANUP_RETRIES",
    "DEFAULT_AGENT_MAC",
    "UNTRUSTED_PORT_TAG",
    "VF_TRANSITIONS",
    "PfCounters",
    "PfDriver",
    "VfInfo",
    "VfInput",
    "VfState",
]
