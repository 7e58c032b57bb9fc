"""The PF driver: the xdo_dev_* calls, the agent's config channel, and the VFs' proxy.

Theory of operation: the PF driver is the only party that talks to the agent. Every agent
transaction (`AgentControl.request`, control.py) carries a continuation that runs with the
reply's return code (0 or a negative errno; -ETIMEDOUT after the channel's bounded retries)
and TLVs.

- Its own host stack calls `xdo_dev_state_add` and friends; each becomes a config frame on the
  Tx ring and, when the reply arrives, an event with the call's return value.
- VFs ask through the mailbox. The PF validates every message, adds the VF's MAC and VLANs to
  the SA (its SAD domain), records SA index -> (domain, owner, handle) in the ownership
  database, and answers when the agent has.
- Clean-up: when a VF resets, its VM is destroyed (FLR) or the VF is removed, the PF removes
  every SA of that domain from the agent, waits for every reply, updates the database, and only
  then answers the VF's REQUEST_RESOURCES. After its own reset it flushes the port with
  REMOVE_ALL_SAS, re-adds its own SAs and tells the VFs, which re-add theirs.
- Untrusted VFs get a port tag (metadata with OFFLOAD=0 on every frame, set through the admin
  queue) and no offload. In VEPA mode the PF registers every local address for the hairpin.

Each design choice of the deck can be switched off to watch it fail: `extended_key`
(domain fields on SAs), `ownership_db` (clean-up), `port_tagging` (untrusted VFs), `hairpin`,
`vf_filter` (the NIC's Tx EtherType filter on trusted VFs' config and metadata frames).

The VF lifecycle as the PF sees it is the table `VF_TRANSITIONS`:

    state      input                    action                 next
    INIT       REQUEST_RESOURCES        grant                  ACTIVE
    INIT       ADD_SA, DEL_SA           refuse EPERM           INIT
    ACTIVE     ADD_SA / DEL_SA          proxy to the agent     ACTIVE
    ACTIVE     RESET                    ack, clean up          RESETTING
    ACTIVE     FLR                      clean up               RESETTING
    RESETTING  REQUEST_RESOURCES        defer                  RESETTING
    RESETTING  ADD_SA, DEL_SA           refuse EBUSY           RESETTING
    RESETTING  CLEANUP_DONE             -                      INIT
    RESETTING  CLEANUP_DONE_REQUESTED   grant the deferred     ACTIVE
    any        REMOVE                   clean up               REMOVING -> DISABLED
    any        PF_RESET                 forget, notify         INIT
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import IntEnum
from functools import partial
from typing import Any

from ipsec_offload.driver.cleanup import CLEANUP_RETRIES, DomainCleanup
from ipsec_offload.driver.control import AgentControl, ConfigChannel, Errno, reply_sa_index
from ipsec_offload.driver.own_states import OwnStates
from ipsec_offload.driver.ownership import Ownership, OwnershipDb, with_sa_key
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.driver.ring import (
    DriverEvent,
    OffloadState,
    RingDriver,
)
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.nic.admin import AdminCommand, SetPortTag, SetTxEtherTypeFilter
from ipsec_offload.nic.descriptors import RxDescriptor, TxDescriptor
from ipsec_offload.wire.config import (
    Caps,
    LocalAddr,
    Opcode,
    Tlv,
    decode_add_sa,
    encode_add_sa,
    encode_local_addr,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag, vlan_key
from ipsec_offload.wire.mailbox import (
    MailboxMessage,
    MbxOpcode,
    build_mailbox,
    decode_handle,
    decode_handle_tlvs,
    encode_handle,
    parse_mailbox,
    peek_msg_id,
)
from ipsec_offload.wire.metadata import TxMetadata, build_tx_metadata

DEFAULT_AGENT_MAC = bytes.fromhex("020000000001")
UNTRUSTED_PORT_TAG = build_tx_metadata(TxMetadata(offload=False))
"""The metadata word the NIC forces on an untrusted VF's frames: OFFLOAD=0, bypass."""


class VfState(IntEnum):
    DISABLED = 0
    INIT = 1
    ACTIVE = 2
    RESETTING = 3
    REMOVING = 4


class VfInput(IntEnum):
    REQUEST_RESOURCES = 1
    ADD_SA = 2
    DEL_SA = 3
    RESET = 4
    FLR = 5
    REMOVE = 6
    CLEANUP_DONE = 7
    CLEANUP_DONE_REQUESTED = 8
    PF_RESET = 9


_S, _I = VfState, VfInput
VF_TRANSITIONS: dict[tuple[VfState, VfInput], tuple[str, VfState]] = {
    (_S.INIT, _I.REQUEST_RESOURCES): ("grant", _S.ACTIVE),
    (_S.INIT, _I.ADD_SA): ("refuse_eperm", _S.INIT),
    (_S.INIT, _I.DEL_SA): ("refuse_eperm", _S.INIT),
    (_S.INIT, _I.RESET): ("ack", _S.INIT),
    (_S.INIT, _I.FLR): ("nothing", _S.INIT),
    (_S.INIT, _I.REMOVE): ("disable", _S.DISABLED),
    (_S.INIT, _I.PF_RESET): ("notify_pf_reset", _S.INIT),
    (_S.ACTIVE, _I.REQUEST_RESOURCES): ("grant", _S.ACTIVE),
    (_S.ACTIVE, _I.ADD_SA): ("proxy_add", _S.ACTIVE),
    (_S.ACTIVE, _I.DEL_SA): ("proxy_del", _S.ACTIVE),
    (_S.ACTIVE, _I.RESET): ("ack_and_clean_up", _S.RESETTING),
    (_S.ACTIVE, _I.FLR): ("clean_up", _S.RESETTING),
    (_S.ACTIVE, _I.REMOVE): ("clean_up", _S.REMOVING),
    (_S.ACTIVE, _I.PF_RESET): ("notify_pf_reset", _S.INIT),
    (_S.RESETTING, _I.REQUEST_RESOURCES): ("defer", _S.RESETTING),
    (_S.RESETTING, _I.ADD_SA): ("refuse_ebusy", _S.RESETTING),
    (_S.RESETTING, _I.DEL_SA): ("refuse_ebusy", _S.RESETTING),
    (_S.RESETTING, _I.RESET): ("ack", _S.RESETTING),
    (_S.RESETTING, _I.FLR): ("nothing", _S.RESETTING),
    (_S.RESETTING, _I.REMOVE): ("nothing", _S.REMOVING),
    (_S.RESETTING, _I.CLEANUP_DONE): ("nothing", _S.INIT),
    (_S.RESETTING, _I.CLEANUP_DONE_REQUESTED): ("grant_deferred", _S.ACTIVE),
    (_S.RESETTING, _I.PF_RESET): ("notify_pf_reset", _S.INIT),
    (_S.REMOVING, _I.REQUEST_RESOURCES): ("refuse_ebusy", _S.REMOVING),
    (_S.REMOVING, _I.ADD_SA): ("refuse_ebusy", _S.REMOVING),
    (_S.REMOVING, _I.DEL_SA): ("refuse_ebusy", _S.REMOVING),
    (_S.REMOVING, _I.RESET): ("refuse_ebusy", _S.REMOVING),
    (_S.REMOVING, _I.FLR): ("nothing", _S.REMOVING),
    (_S.REMOVING, _I.REMOVE): ("nothing", _S.REMOVING),
    (_S.REMOVING, _I.CLEANUP_DONE): ("disable", _S.DISABLED),
    (_S.REMOVING, _I.CLEANUP_DONE_REQUESTED): ("disable", _S.DISABLED),
    (_S.REMOVING, _I.PF_RESET): ("disable", _S.DISABLED),
}
"""(state, input) -> (action, next state). A pair not in the table is ignored and counted
(DISABLED answers nothing: the VF has no mailbox)."""

_MESSAGE_INPUT = {
    MbxOpcode.REQUEST_RESOURCES: VfInput.REQUEST_RESOURCES,
    MbxOpcode.ADD_SA: VfInput.ADD_SA,
    MbxOpcode.DEL_SA: VfInput.DEL_SA,
    MbxOpcode.RESET: VfInput.RESET,
}


@dataclass(slots=True)
class VfInfo:
    """What the PF knows of one VF."""

    vf_id: int
    vsi_id: int
    mac: bytes
    vlans: tuple[VlanTag, ...]
    trusted: bool = True
    quota: int = 128
    state: VfState = VfState.INIT
    inflight: int = 0
    """Agent transactions under way for this VF (adds and removes)."""
    deferred_request: int | None = None
    """msg_id of a REQUEST_RESOURCES waiting for the clean-up to finish."""
    pending_handles: set[int] = field(default_factory=set)


class PfDriver(RingDriver):
    """The PF driver of one port."""

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
        config_ethertype: int = EtherType.CONFIG,
        meta_ethertype: int = EtherType.META,
    ) -> None:
        super().__init__(mac, vlans)
        self.vsi_id = vsi_id
        self.agent_mac = agent_mac
        self.extended_key = extended_key
        self.ownership_db = ownership_db
        self.port_tagging = port_tagging
        self.hairpin = hairpin
        self.vf_filter = vf_filter
        self.channel = ConfigChannel(
            mac, agent_mac, port, timeout, retries, config_ethertype=config_ethertype
        )
        self.control = AgentControl(self.channel, self._send_config, self._emit)
        self.db = OwnershipDb()
        self.own_states = OwnStates(
            self.control,
            self.db,
            self.sa_index,
            self._emit,
            mac,
            vlans,
            extended_key=extended_key,
        )
        self.vfs: dict[int, VfInfo] = {}
        self.pf_counters = PfCounters()
        self.cleanup = DomainCleanup(
            self.control, self.db, self.pf_counters, ownership_db=ownership_db
        )
        self._mailbox_out: list[tuple[int, bytes]] = []
        self._admin: list[AdminCommand] = []
        self._agent_ethertypes = frozenset((config_ethertype, meta_ethertype))
        self._local: set[tuple[bytes, tuple[VlanTag, ...]]] = set()

    # -- the agent's config channel -------------------------------------------------------

    @property
    def caps(self) -> Caps | None:
        """What the agent answered to GET_CAPS (None: not asked, or no answer yet)."""
        return self.control.caps

    @caps.setter
    def caps(self, caps: Caps | None) -> None:
        self.control.caps = caps

    def probe(self, now: float) -> None:
        """Ask the agent what it can do (GET_CAPS); completes with CapsDone."""
        self.control.probe(now)

    def next_timer(self) -> float | None:
        """When `handle_timer` next has work (a config frame to resend or give up), or None."""
        return self.control.next_timer()

    def handle_timer(self, now: float) -> None:
        """Resend the config frames that are due; time out those out of retries."""
        self.control.handle_timer(now)

    def _control_frame(self, desc: RxDescriptor, eth: EthernetHeader, now: float) -> bool:
        return self.control.receive(eth, desc.frame, now)

    def _send_config(self, frame: bytes) -> None:
        self._tx.append(TxDescriptor(frame))

    def _emit(self, event: DriverEvent) -> None:
        self._events.append(event)

    # -- the PF's own xdo_dev_* operations ----------------------------------------------

    def xdo_dev_state_add(self, state: OffloadState, now: float) -> None:
        """Offload a state; completes with StateAddDone (rc 0 or a negative errno)."""
        self.own_states.xdo_dev_state_add(state, now)

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Remove an offloaded state from the agent; completes with StateDeleteDone."""
        self.own_states.xdo_dev_state_delete(handle, now)

    def xdo_dev_state_free(self, handle: int) -> None:
        """Forget a state after its delete completed (Linux frees driver memory here)."""
        self.own_states.xdo_dev_state_free(handle)

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> None:
        """Fetch the agent's counters of a state; completes with StatsDone."""
        self.own_states.xdo_dev_state_update_stats(handle, now)

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
        old = self.vfs.get(vf_id)
        if old is not None and old.state != VfState.DISABLED:
            raise UsageError(f"VF {vf_id} is already enabled; remove it first")
        self.vfs[vf_id] = VfInfo(vf_id, vsi_id, mac, vlans, trusted, quota)
        self._apply_trust(self.vfs[vf_id])
        self._register_local(mac, vlans, now, add=True)

    def set_vf_trust(self, vf_id: int, trusted: bool) -> None:
        """`ip link set ... vf N trust on|off`: untrusted VFs get the port tag."""
        vf = self._vf(vf_id)
        vf.trusted = trusted
        self._apply_trust(vf)

    def _apply_trust(self, vf: VfInfo) -> None:
        """Untrusted: the port tag (its frames are data to the agent). Trusted: the Tx
        EtherType filter, so that only the PF talks to the agent (spec 9, invariant 3)."""
        word = None if vf.trusted or not self.port_tagging else UNTRUSTED_PORT_TAG
        self._admin.append(SetPortTag(vf.vsi_id, word))
        filtered = vf.trusted and self.vf_filter
        ethertypes = self._agent_ethertypes if filtered else frozenset[int]()
        self._admin.append(SetTxEtherTypeFilter(vf.vsi_id, ethertypes))

    def vf_flr(self, vf_id: int, now: float) -> None:
        """A function-level reset from the hypervisor: the VM was destroyed or reset."""
        self._input(self._vf(vf_id), VfInput.FLR, None, now)

    def remove_vf(self, vf_id: int, now: float) -> None:
        """Remove a VF: its SAs are cleaned up, then it is DISABLED."""
        self._input(self._vf(vf_id), VfInput.REMOVE, None, now)

    def register_own_address(self, now: float) -> None:
        """In VEPA mode, register the PF's own address for the hairpin."""
        self._register_local(self.mac, self.vlans, now, add=True)

    def _register_local(
        self, mac: bytes, vlans: tuple[VlanTag, ...], now: float, *, add: bool
    ) -> None:
        if not self.hairpin:
            return
        key = (mac, vlans)
        if add == (key in self._local):
            return
        if add:
            self._local.add(key)
        else:
            self._local.discard(key)
        opcode = Opcode.ADD_LOCAL_ADDR if add else Opcode.REMOVE_LOCAL_ADDR
        self.control.request(opcode, encode_local_addr(LocalAddr(mac, vlans)), now, _ignore)

    def _vf(self, vf_id: int) -> VfInfo:
        vf = self.vfs.get(vf_id)
        if vf is None:
            raise UsageError(f"VF {vf_id} was never enabled on this PF")
        return vf

    # -- the mailbox ------------------------------------------------------------------------

    def mailbox_receive(self, vf_id: int, data: bytes, now: float) -> None:
        """A message from a VF's mailbox. Anything malformed gets an error reply."""
        vf = self.vfs.get(vf_id)
        self.pf_counters.mailbox_in += 1
        if vf is None or vf.state == VfState.DISABLED:
            self.pf_counters.mailbox_ignored += 1
            return
        try:
            message = parse_mailbox(data)
        except ParseError:
            errno = Errno.EMSGSIZE if len(data) > 512 else Errno.EINVAL
            self._reply_raw(vf, MbxOpcode.ERROR, peek_msg_id(data), errno)
            return
        opcode = message.opcode
        if message.is_reply or opcode not in _MESSAGE_INPUT:
            self._reply_raw(vf, MbxOpcode.ERROR, message.msg_id, Errno.EINVAL)
            return
        self._input(vf, _MESSAGE_INPUT[MbxOpcode(opcode)], message, now)

    def mailbox_messages(self) -> list[tuple[int, bytes]]:
        """Take the (VF id, message) pairs queued for the VFs' mailboxes."""
        out, self._mailbox_out = self._mailbox_out, []
        return out

    def admin_commands(self) -> list[AdminCommand]:
        """Take the admin queue commands queued for the NIC."""
        out, self._admin = self._admin, []
        return out

    def _reply(self, vf: VfInfo, message: MailboxMessage, errno: int, body: bytes = b"") -> None:
        self._reply_raw(vf, MbxOpcode(message.opcode), message.msg_id, errno, body)

    def _reply_raw(
        self, vf: VfInfo, opcode: MbxOpcode, msg_id: int, errno: int, body: bytes = b""
    ) -> None:
        if errno:
            self.pf_counters.mailbox_errors += 1
        reply = MailboxMessage(opcode | MbxOpcode.REPLY, msg_id, body, abs(errno))
        self._mailbox_out.append((vf.vf_id, build_mailbox(reply)))

    # -- the VF state machine ---------------------------------------------------------------

    def _input(self, vf: VfInfo, what: VfInput, message: MailboxMessage | None, now: float) -> None:
        step = VF_TRANSITIONS.get((vf.state, what))
        if step is None:
            self.pf_counters.mailbox_ignored += 1
            return
        action, next_state = step
        vf.state = next_state
        getattr(self, "_vf_" + action)(vf, message, now)

    def _vf_nothing(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        pass

    def _vf_grant(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        self._reply(vf, message, 0, encode_handle(vf.quota))

    def _vf_grant_deferred(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert vf.deferred_request is not None
        self._reply_raw(
            vf, MbxOpcode.REQUEST_RESOURCES, vf.deferred_request, 0, encode_handle(vf.quota)
        )
        vf.deferred_request = None

    def _vf_defer(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        vf.deferred_request = message.msg_id

    def _vf_ack(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        self._reply(vf, message, 0)

    def _vf_refuse_eperm(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        self._reply(vf, message, Errno.EPERM)

    def _vf_refuse_ebusy(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        self._reply(vf, message, Errno.EBUSY)

    def _vf_ack_and_clean_up(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        self._vf_ack(vf, message, now)
        self._vf_clean_up(vf, message, now)

    def _vf_disable(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        self._register_local(vf.mac, vf.vlans, now, add=False)
        self._admin.append(SetPortTag(vf.vsi_id, None))
        self._admin.append(SetTxEtherTypeFilter(vf.vsi_id, frozenset()))

    def _vf_notify_pf_reset(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        vf.deferred_request = None
        vf.pending_handles.clear()
        vf.inflight = 0
        event = MailboxMessage(MbxOpcode.EVENT_PF_RESET, 0)
        self._mailbox_out.append((vf.vf_id, build_mailbox(event)))

    def _vf_proxy_add(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        try:
            handle, tlvs = decode_handle_tlvs(message.body)
            request = decode_add_sa(tlvs)
        except ParseError:
            self._reply(vf, message, Errno.EINVAL)
            return
        if request.local_mac is not None or request.vlans:
            self._reply(vf, message, Errno.EINVAL)  # a VF does not choose its domain
            return
        if not vf.trusted:
            self._reply(vf, message, Errno.EOPNOTSUPP)
            return
        if handle in vf.pending_handles or self._handle_index(vf.vf_id, handle) is not None:
            self._reply(vf, message, Errno.EEXIST)
            return
        if len(self.db.owned_by(vf.vf_id)) + len(vf.pending_handles) >= vf.quota:
            self._reply(vf, message, Errno.ENOSPC)
            return
        request = with_sa_key(request, vf.mac, vf.vlans, extended_key=self.extended_key)
        request_message = message
        vf.pending_handles.add(handle)
        vf.inflight += 1

        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            vf.inflight -= 1
            vf.pending_handles.discard(handle)
            index = reply_sa_index(tlvs) if rc == 0 else None
            entry = None
            if index is not None:
                entry = Ownership(index, vf.vf_id, handle, vf.mac, vlan_key(vf.vlans))
                self.db.add(entry)
            if vf.state == VfState.ACTIVE:
                errno = 0 if index is not None else -(rc or -Errno.EINVAL)
                body = encode_handle(index) if index is not None else b""
                self._reply(vf, request_message, errno, body)
            elif entry is not None:  # added after the clean-up of its domain began
                self._clean_up(vf, [entry], now)
            self._cleanup_progress(vf, now)

        self.control.request(Opcode.ADD_SA, encode_add_sa(request), now, then)

    def _vf_proxy_del(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        try:
            handle = decode_handle(message.body)
        except ParseError:
            self._reply(vf, message, Errno.EINVAL)
            return
        index = self._handle_index(vf.vf_id, handle)
        if index is None:
            self._reply(vf, message, Errno.ENOENT)  # not this VF's: foreign or stale
            return
        request_message = message
        vf.inflight += 1

        def then(rc: int, _tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            vf.inflight -= 1
            if rc in (0, -Errno.ENOENT):
                self.db.remove(index)
                rc = 0
            if vf.state == VfState.ACTIVE:
                self._reply(vf, request_message, -rc)
            self._cleanup_progress(vf, now)

        self.control.request(Opcode.REMOVE_SA, encode_sa_index(index), now, then)

    def _handle_index(self, owner: int, handle: int) -> int | None:
        entry = self.db.lookup(owner, handle)
        return None if entry is None else entry.sa_index

    # -- clean-up of a domain ---------------------------------------------------------------

    def _vf_clean_up(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        self._clean_up(vf, self.db.owned_by(vf.vf_id), now)
        self._cleanup_progress(vf, now)

    def _clean_up(self, vf: VfInfo, entries: list[Ownership], now: float) -> None:
        vf.inflight += self.cleanup.clean_up(entries, now, partial(self._removed, vf))

    def _removed(self, vf: VfInfo, now: float) -> None:
        vf.inflight -= 1
        self._cleanup_progress(vf, now)

    def _cleanup_progress(self, vf: VfInfo, now: float) -> None:
        """Finish a clean-up once the agent confirmed every removal of the domain."""
        if vf.state not in (VfState.RESETTING, VfState.REMOVING) or vf.inflight:
            return
        done = (
            VfInput.CLEANUP_DONE if vf.deferred_request is None else VfInput.CLEANUP_DONE_REQUESTED
        )
        self._input(vf, done, None, now)

    # -- PF reset -----------------------------------------------------------------------------

    def reset(self, now: float) -> None:
        """The PF driver reloads (panic, rmmod/insmod): flush the port, re-add its own SAs,
        tell every VF. In-flight transactions are abandoned."""
        self.pf_counters.pf_resets += 1
        self.control.abandon()
        self.db.clear()
        own = self.own_states.lose_all()

        def then(rc: int, _tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            for state in own:
                self.own_states.reinstall(state, now)

        self.control.request(Opcode.REMOVE_ALL_SAS, (), now, then)
        for vf in self.vfs.values():
            self._input(vf, VfInput.PF_RESET, None, now)

    # -- state dump -------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "mac": self.mac.hex(":"),
            "offloaded": dict(sorted(self.sa_index.items())),
            "pending": self.channel.pending,
            "control": asdict(self.channel.counters),
            "counters": asdict(self.counters),
            "pf": asdict(self.pf_counters),
            "ownership": self.db.dump(),
            "vfs": {
                vf.vf_id: {"state": vf.state.name, "trusted": vf.trusted, "quota": vf.quota}
                for vf in self.vfs.values()
            },
        }


def _ignore(_rc: int, _tlvs: tuple[Tlv, ...] | None, _now: float) -> None:
    """Continuation of a transaction whose outcome changes nothing (hairpin table entries:
    EXISTS or NOT_FOUND mean the agent already holds what the PF wants)."""


__all__ = [
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
