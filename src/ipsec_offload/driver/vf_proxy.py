"""The PF's side of its VFs: their lifecycle, their mailbox, their SAs and their VSIs.

Theory of operation: a VF asks through the mailbox. The PF validates every message (a VF may be
hostile; anything malformed gets an error reply), adds the VF's MAC and VLANs (its SAD domain)
to each SA the VF asks for, forwards it to the agent, records SA index -> (domain, owner,
handle) in the ownership database, and answers when the agent has. A VF holds at most `quota`
SAs.

What the PF does with a message, an FLR or a removal depends on the VF's state: the table
`VF_TRANSITIONS`, one action per (state, input). A RESET, an FLR (the VM was destroyed) or a
removal cleans up the VF's domain (`cleanup.py`). The clean-up is done once every transaction
under way for the VF has finished (`VfInfo.inflight`: its adds and deletes, and the clean-up's
removals; an SA the agent adds meanwhile is removed too), and only then does the PF answer a
REQUEST_RESOURCES that came in meanwhile.

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
    any        PF_RESET                 forget                 INIT

What the PF tells a VF on its own (EVENT_PF_RESET: start again and re-add your SAs;
EVENT_SA_EXPIRE: the agent reported an expiry of one of your SAs) is a notice: the mailbox may
lose it (spec 9), so the PF resends it every NOTICE_INTERVAL seconds, NOTICE_RESENDS times at
most, until the VF acknowledges it. The VF's REQUEST_RESOURCES acknowledges an EVENT_PF_RESET
(what the VF does when told), its reply (0x87, same msg_id) an EVENT_SA_EXPIRE; the VF acts on
a copy only once.

An untrusted VF gets no offload (-EOPNOTSUPP). When a VF is enabled, its trust changes or it
is removed, the proxy has its VSI set up accordingly (`vsi_setup.py`: the port tag or the Tx
EtherType filter, and its address in the agent's hairpin table).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from typing import Any

from ipsec_offload.driver.cleanup import DomainCleanup
from ipsec_offload.driver.control import AgentControl, Errno, reply_sa_index
from ipsec_offload.driver.ownership import Ownership, OwnershipDb, with_sa_key
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.driver.vsi_setup import VsiSetup
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import (
    Opcode,
    Tlv,
    decode_add_sa,
    encode_add_sa,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import VlanTag, vlan_key
from ipsec_offload.wire.mailbox import (
    MAILBOX_MAX,
    ExpireKind,
    MailboxMessage,
    MbxOpcode,
    SaExpire,
    build_mailbox,
    decode_handle,
    decode_handle_tlvs,
    encode_handle,
    encode_sa_expire,
    parse_mailbox,
    peek_msg_id,
)


class VfState(IntEnum):
    """A VF's state as the PF sees it (the rows of VF_TRANSITIONS)."""

    DISABLED = 0
    INIT = 1
    ACTIVE = 2
    RESETTING = 3
    REMOVING = 4


class VfInput(IntEnum):
    """What happens to a VF: a mailbox message, an FLR or removal by the hypervisor, the end
    of its clean-up (with or without a REQUEST_RESOURCES waiting), a PF reset."""

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
    (_S.INIT, _I.PF_RESET): ("forget", _S.INIT),
    (_S.ACTIVE, _I.REQUEST_RESOURCES): ("grant", _S.ACTIVE),
    (_S.ACTIVE, _I.ADD_SA): ("proxy_add", _S.ACTIVE),
    (_S.ACTIVE, _I.DEL_SA): ("proxy_del", _S.ACTIVE),
    (_S.ACTIVE, _I.RESET): ("ack_and_clean_up", _S.RESETTING),
    (_S.ACTIVE, _I.FLR): ("clean_up", _S.RESETTING),
    (_S.ACTIVE, _I.REMOVE): ("clean_up", _S.REMOVING),
    (_S.ACTIVE, _I.PF_RESET): ("forget", _S.INIT),
    (_S.RESETTING, _I.REQUEST_RESOURCES): ("defer", _S.RESETTING),
    (_S.RESETTING, _I.ADD_SA): ("refuse_ebusy", _S.RESETTING),
    (_S.RESETTING, _I.DEL_SA): ("refuse_ebusy", _S.RESETTING),
    (_S.RESETTING, _I.RESET): ("ack", _S.RESETTING),
    (_S.RESETTING, _I.FLR): ("nothing", _S.RESETTING),
    (_S.RESETTING, _I.REMOVE): ("nothing", _S.REMOVING),
    (_S.RESETTING, _I.CLEANUP_DONE): ("nothing", _S.INIT),
    (_S.RESETTING, _I.CLEANUP_DONE_REQUESTED): ("grant_deferred", _S.ACTIVE),
    (_S.RESETTING, _I.PF_RESET): ("forget", _S.INIT),
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

ANSWERS_KEPT = 64
"""How many of a VF's latest msg_ids the PF remembers with their replies."""

NOTICE_INTERVAL = 0.01
"""Seconds between resends of an unacknowledged notice to a VF (as the agent's events)."""
NOTICE_RESENDS = 5
"""Resends of a notice before the PF gives up on it."""

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
    answered: OrderedDict[int, bytes | None] = field(default_factory=OrderedDict)
    """The VF's recent msg_ids -> the reply sent (None: not yet), so that a duplicated
    message is answered once (spec 9: a mailbox message may arrive twice)."""


@dataclass(slots=True)
class _Notice:
    """A message the PF sent a VF on its own, resent until the VF acknowledges it."""

    vf_id: int
    opcode: MbxOpcode
    data: bytes
    deadline: float
    resends: int = 0


class VfProxy:
    """The PF's side of its VFs: the VF lifecycle table, driven by the mailbox and the
    hypervisor, and the SAs it proxies to the agent for them."""

    def __init__(
        self,
        control: AgentControl,
        db: OwnershipDb,
        cleanup: DomainCleanup,
        vsis: VsiSetup,
        counters: PfCounters,
        *,
        extended_key: bool,
    ) -> None:
        self.vfs: dict[int, VfInfo] = {}
        self.extended_key = extended_key
        self._control = control
        self._db = db
        self._cleanup = cleanup
        self._vsis = vsis
        self._counters = counters
        self._mailbox_out: list[tuple[int, bytes]] = []
        self._notices: dict[tuple[int, int], _Notice] = {}
        """Notices waiting for the VF's acknowledgment, by (VF id, msg_id)."""
        self._next_notice_id = 1

    # -- the hypervisor's side ---------------------------------------------------------------

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
        self._vsis.set_trust(vsi_id, trusted)
        self._vsis.register_local(mac, vlans, now)

    def set_vf_trust(self, vf_id: int, trusted: bool) -> None:
        """`ip link set ... vf N trust on|off`: untrusted VFs get the port tag."""
        vf = self._vf(vf_id)
        vf.trusted = trusted
        self._vsis.set_trust(vf.vsi_id, trusted)

    def vf_flr(self, vf_id: int, now: float) -> None:
        """A function-level reset from the hypervisor: the VM was destroyed or reset (a new
        VF driver numbers its messages from 1 again)."""
        vf = self._vf(vf_id)
        vf.answered.clear()
        self.step(vf, VfInput.FLR, None, now)

    def remove_vf(self, vf_id: int, now: float) -> None:
        """Remove a VF: its SAs are cleaned up, then it is DISABLED."""
        self.step(self._vf(vf_id), VfInput.REMOVE, None, now)

    def pf_reset(self, now: float) -> None:
        """The PF reset (or the agent restarted): every VF forgets what was under way and is
        back in INIT, refusing SAs, until `announce_pf_reset` tells it to start again."""
        self._notices.clear()
        for vf in self.vfs.values():
            vf.answered.clear()
            self.step(vf, VfInput.PF_RESET, None, now)

    def announce_pf_reset(self, now: float) -> None:
        """Tell every VF of the PF reset (EVENT_PF_RESET), once the port is flushed: a VF
        re-adds its SAs only then, so that no flush still under way takes them away. Resent
        until the VF asks for resources again."""
        for vf in self.vfs.values():
            if vf.state != VfState.DISABLED:
                self._notice(vf.vf_id, MbxOpcode.EVENT_PF_RESET, b"", now)

    def sa_expired(self, vf_id: int, handle: int, kind: ExpireKind, now: float) -> None:
        """Tell a VF that the agent reported an expiry of one of its SAs (EVENT_SA_EXPIRE),
        resent until the VF answers."""
        vf = self.vfs.get(vf_id)
        if vf is not None and vf.state == VfState.ACTIVE:
            body = encode_sa_expire(SaExpire(handle, kind))
            self._notice(vf_id, MbxOpcode.EVENT_SA_EXPIRE, body, now)

    def _notice(self, vf_id: int, opcode: MbxOpcode, body: bytes, now: float) -> None:
        msg_id = self._next_notice_id
        self._next_notice_id = msg_id % 0xFFFFFFFF + 1
        data = build_mailbox(MailboxMessage(opcode, msg_id, body))
        self._notices[(vf_id, msg_id)] = _Notice(vf_id, opcode, data, now + NOTICE_INTERVAL)
        self._mailbox_out.append((vf_id, data))

    def _acknowledged(self, vf_id: int, opcode: MbxOpcode, msg_id: int | None = None) -> None:
        """The VF acknowledged its notices of this kind (with `msg_id`: that one alone)."""
        for key, notice in list(self._notices.items()):
            if notice.vf_id == vf_id and notice.opcode == opcode and msg_id in (None, key[1]):
                del self._notices[key]

    def next_timer(self) -> float | None:
        """When a notice is next due for a resend (None: none waits)."""
        return min((n.deadline for n in self._notices.values()), default=None)

    def handle_timer(self, now: float) -> None:
        """Resend the notices that are due; give up on those out of resends."""
        for key, notice in list(self._notices.items()):
            if notice.deadline > now:
                continue
            vf = self.vfs.get(notice.vf_id)
            if vf is None or vf.state == VfState.DISABLED or notice.resends >= NOTICE_RESENDS:
                del self._notices[key]
                self._counters.notices_unanswered += 1
                continue
            notice.resends += 1
            notice.deadline = now + NOTICE_INTERVAL
            self._counters.notices_resent += 1
            self._mailbox_out.append((notice.vf_id, notice.data))

    def _vf(self, vf_id: int) -> VfInfo:
        vf = self.vfs.get(vf_id)
        if vf is None:
            raise UsageError(f"VF {vf_id} was never enabled on this PF")
        return vf

    # -- the mailbox ------------------------------------------------------------------------

    def mailbox_receive(self, vf_id: int, data: bytes, now: float) -> None:
        """A message from a VF's mailbox. Anything malformed gets an error reply."""
        vf = self.vfs.get(vf_id)
        self._counters.mailbox_in += 1
        if vf is None or vf.state == VfState.DISABLED:
            self._counters.mailbox_ignored += 1
            return
        try:
            message = parse_mailbox(data)
        except ParseError:
            errno = Errno.EMSGSIZE if len(data) > MAILBOX_MAX else Errno.EINVAL
            self._reply_raw(vf, MbxOpcode.ERROR, peek_msg_id(data), errno)
            return
        opcode = message.opcode
        if opcode == MbxOpcode.EVENT_SA_EXPIRE | MbxOpcode.REPLY:
            self._acknowledged(vf_id, MbxOpcode.EVENT_SA_EXPIRE, message.msg_id)
            return
        if opcode == MbxOpcode.REQUEST_RESOURCES:
            self._acknowledged(vf_id, MbxOpcode.EVENT_PF_RESET)
        if message.is_reply or opcode not in _MESSAGE_INPUT:
            self._reply_raw(vf, MbxOpcode.ERROR, message.msg_id, Errno.EINVAL)
            return
        if message.msg_id in vf.answered:
            # a copy: its reply again once there is one, never a second action
            self._counters.mailbox_duplicates += 1
            reply = vf.answered[message.msg_id]
            if reply is not None:
                self._mailbox_out.append((vf.vf_id, reply))
            return
        vf.answered[message.msg_id] = None
        if len(vf.answered) > ANSWERS_KEPT:
            vf.answered.popitem(last=False)
        self.step(vf, _MESSAGE_INPUT[MbxOpcode(opcode)], message, now)

    def mailbox_messages(self) -> list[tuple[int, bytes]]:
        """Take the (VF id, message) pairs queued for the VFs' mailboxes."""
        out, self._mailbox_out = self._mailbox_out, []
        return out

    def _reply(self, vf: VfInfo, message: MailboxMessage, errno: int, body: bytes = b"") -> None:
        self._reply_raw(vf, MbxOpcode(message.opcode), message.msg_id, errno, body)

    def _reply_raw(
        self, vf: VfInfo, opcode: MbxOpcode, msg_id: int, errno: int, body: bytes = b""
    ) -> None:
        if errno:
            self._counters.mailbox_errors += 1
        reply = build_mailbox(MailboxMessage(opcode | MbxOpcode.REPLY, msg_id, body, abs(errno)))
        if msg_id in vf.answered:
            vf.answered[msg_id] = reply
        self._mailbox_out.append((vf.vf_id, reply))

    # -- the VF state machine ---------------------------------------------------------------

    def step(self, vf: VfInfo, what: VfInput, message: MailboxMessage | None, now: float) -> None:
        """Take one step of VF_TRANSITIONS: the next state, then the action (`_vf_<action>`)."""
        row = VF_TRANSITIONS.get((vf.state, what))
        if row is None:
            self._counters.mailbox_ignored += 1
            return
        action, next_state = row
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
        self._vsis.register_local(vf.mac, vf.vlans, now, add=False)
        self._vsis.release(vf.vsi_id)

    def _vf_forget(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        vf.deferred_request = None
        vf.pending_handles.clear()
        vf.inflight = 0

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
        if len(self._db.owned_by(vf.vf_id)) + len(vf.pending_handles) >= vf.quota:
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
                self._db.add(entry)
            if vf.state == VfState.ACTIVE:
                errno = 0 if index is not None else -(rc or -Errno.EINVAL)
                body = encode_handle(index) if index is not None else b""
                self._reply(vf, request_message, errno, body)
            elif entry is not None:  # added after the clean-up of its domain began
                self._clean_up(vf, [entry], now)
            self._cleanup_progress(vf, now)

        self._control.request(Opcode.ADD_SA, encode_add_sa(request), now, then)

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
            if rc == -Errno.ETIMEDOUT:
                # the VF's stack frees the state all the same: the SA, if the agent still has
                # it, is an orphan for the reconciliation (resync.py)
                self._db.remove(index)
            if rc in (0, -Errno.ENOENT):
                self._db.remove(index)
                rc = 0
            if vf.state == VfState.ACTIVE:
                self._reply(vf, request_message, -rc)
            self._cleanup_progress(vf, now)

        self._control.request(Opcode.REMOVE_SA, encode_sa_index(index), now, then)

    def _handle_index(self, owner: int, handle: int) -> int | None:
        entry = self._db.lookup(owner, handle)
        return None if entry is None else entry.sa_index

    # -- clean-up of a domain ---------------------------------------------------------------

    def _vf_clean_up(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        self._clean_up(vf, self._db.owned_by(vf.vf_id), now)
        self._cleanup_progress(vf, now)

    def _clean_up(self, vf: VfInfo, entries: list[Ownership], now: float) -> None:
        vf.inflight += self._cleanup.clean_up(entries, now, partial(self._removed, vf))

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
        self.step(vf, done, None, now)

    # -- state dump -------------------------------------------------------------------------

    def dump(self) -> dict[int, dict[str, Any]]:
        """Each VF's state, trust and quota, as plain data."""
        return {
            vf.vf_id: {"state": vf.state.name, "trusted": vf.trusted, "quota": vf.quota}
            for vf in self.vfs.values()
        }
