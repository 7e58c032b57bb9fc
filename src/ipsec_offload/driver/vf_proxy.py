"""The PF's side of its VFs: their lifecycle, their mailbox, their notices and their VSIs.

Theory of operation: a VF asks through the mailbox. The PF validates every message (a VF may be
hostile; anything malformed gets an error reply) and what it does with it, or with an FLR or a
removal, depends on the VF's state: the table `VF_TRANSITIONS`, one action per (state, input).
An ACTIVE VF's inline IPsec messages (ADD_SA, DEL_SA, DEL_SAS, READ_SA, UPDATE_SA, GET_CAPS)
go to `VfSaOps` (vf_sas.py), which adds the VF's MAC and VLANs (its SAD domain) to each SA it
asks for, proxies it to the agent within its quota and records SA index -> (domain, owner,
handle) in the ownership database. A RESET, an FLR (the VM was destroyed) or a removal cleans
up the VF's domain (`cleanup.py`). The clean-up is done once every transaction under way for
the VF has finished (`VfInfo.inflight`: its adds and removes, and the clean-up's removals; an
SA the agent adds meanwhile is removed too), and only then does the PF answer a
REQUEST_RESOURCES that came in meanwhile. Refusals carry a `MbxStatus`.

    state      input                          action                 next
    INIT       REQUEST_RESOURCES              grant                  ACTIVE
    INIT       an SA message, GET_CAPS        refuse VF_DOWN         INIT
    ACTIVE     an SA message, GET_CAPS        VfSaOps                ACTIVE
    ACTIVE     RESET                          ack, clean up          RESETTING
    ACTIVE     FLR                            clean up               RESETTING
    RESETTING  REQUEST_RESOURCES              defer                  RESETTING
    RESETTING  an SA message, GET_CAPS        refuse NOT_READY       RESETTING
    RESETTING  CLEANUP_DONE                   -                      INIT
    RESETTING  CLEANUP_DONE_REQUESTED         grant the deferred     ACTIVE
    REMOVING   any message                    refuse NOT_READY       REMOVING
    any        REMOVE                         clean up               REMOVING -> DISABLED
    any        PF_RESET                       forget                 INIT

(an SA message: ADD_SA, DEL_SA, DEL_SAS, READ_SA, UPDATE_SA.)

What the PF tells a VF on its own (EVENT_PF_RESET: start again and re-add your SAs;
EVENT_SA_EXPIRE: the agent reported an expiry of one of your SAs; EVENT_CRYPTO: inline crypto
is now on, or off, for you) is a notice: the mailbox may lose it (spec 9), so the PF resends it
every NOTICE_INTERVAL seconds, NOTICE_RESENDS times at most, until the VF acknowledges it. The
VF's REQUEST_RESOURCES acknowledges an EVENT_PF_RESET (what the VF does when told), its reply
(0x87 or 0x8C, same msg_id) an EVENT_SA_EXPIRE or EVENT_CRYPTO; the VF acts on a copy only
once. A new EVENT_CRYPTO replaces one the VF has not acknowledged yet.

An untrusted VF gets no offload (`vf_sas.py`). When a VF is enabled, its trust changes or it
is removed, the proxy has its VSI set up accordingly (`vsi_setup.py`: the port tag or the Tx
EtherType filter, and its address in the agent's hairpin table), and an ACTIVE VF whose trust
changed gets EVENT_CRYPTO.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import partial
from typing import Any

from ipsec_offload.driver.cleanup import DomainCleanup
from ipsec_offload.driver.control import AgentControl
from ipsec_offload.driver.ownership import Ownership, OwnershipDb
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.driver.vf_info import VfInfo, VfState
from ipsec_offload.driver.vf_sas import VfSaOps
from ipsec_offload.driver.vsi_setup import VsiSetup
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.mailbox import (
    MAILBOX_MAX,
    CryptoState,
    ExpireKind,
    MailboxMessage,
    MbxOpcode,
    MbxStatus,
    SaExpire,
    build_mailbox,
    encode_crypto_event,
    encode_handle,
    encode_sa_expire,
    parse_mailbox,
    peek_msg_id,
)

__all__ = [
    "ANSWERS_KEPT",
    "NOTICE_INTERVAL",
    "NOTICE_RESENDS",
    "VF_TRANSITIONS",
    "VfInfo",
    "VfInput",
    "VfProxy",
    "VfState",
]


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
    GET_CAPS = 10
    UPDATE_SA = 11
    DEL_SAS = 12
    READ_SA = 13


_S, _I = VfState, VfInput
_SA_ACTIONS = {
    _I.ADD_SA: "proxy_add",
    _I.DEL_SA: "proxy_del",
    _I.DEL_SAS: "proxy_del_sas",
    _I.READ_SA: "proxy_read",
    _I.UPDATE_SA: "update",
    _I.GET_CAPS: "caps",
}
"""An ACTIVE VF's inline IPsec messages: each its action of VfSaOps."""

VF_TRANSITIONS: dict[tuple[VfState, VfInput], tuple[str, VfState]] = {
    (_S.INIT, _I.REQUEST_RESOURCES): ("grant", _S.ACTIVE),
    **{(_S.INIT, what): ("refuse_vf_down", _S.INIT) for what in _SA_ACTIONS},
    (_S.INIT, _I.RESET): ("ack", _S.INIT),
    (_S.INIT, _I.FLR): ("nothing", _S.INIT),
    (_S.INIT, _I.REMOVE): ("disable", _S.DISABLED),
    (_S.INIT, _I.PF_RESET): ("forget", _S.INIT),
    (_S.ACTIVE, _I.REQUEST_RESOURCES): ("grant", _S.ACTIVE),
    **{(_S.ACTIVE, what): (action, _S.ACTIVE) for what, action in _SA_ACTIONS.items()},
    (_S.ACTIVE, _I.RESET): ("ack_and_clean_up", _S.RESETTING),
    (_S.ACTIVE, _I.FLR): ("clean_up", _S.RESETTING),
    (_S.ACTIVE, _I.REMOVE): ("clean_up", _S.REMOVING),
    (_S.ACTIVE, _I.PF_RESET): ("forget", _S.INIT),
    (_S.RESETTING, _I.REQUEST_RESOURCES): ("defer", _S.RESETTING),
    **{(_S.RESETTING, what): ("refuse_not_ready", _S.RESETTING) for what in _SA_ACTIONS},
    (_S.RESETTING, _I.RESET): ("ack", _S.RESETTING),
    (_S.RESETTING, _I.FLR): ("nothing", _S.RESETTING),
    (_S.RESETTING, _I.REMOVE): ("nothing", _S.REMOVING),
    (_S.RESETTING, _I.CLEANUP_DONE): ("nothing", _S.INIT),
    (_S.RESETTING, _I.CLEANUP_DONE_REQUESTED): ("grant_deferred", _S.ACTIVE),
    (_S.RESETTING, _I.PF_RESET): ("forget", _S.INIT),
    (_S.REMOVING, _I.REQUEST_RESOURCES): ("refuse_not_ready", _S.REMOVING),
    **{(_S.REMOVING, what): ("refuse_not_ready", _S.REMOVING) for what in _SA_ACTIONS},
    (_S.REMOVING, _I.RESET): ("refuse_not_ready", _S.REMOVING),
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
    MbxOpcode.GET_CAPS: VfInput.GET_CAPS,
    MbxOpcode.UPDATE_SA: VfInput.UPDATE_SA,
    MbxOpcode.DEL_SAS: VfInput.DEL_SAS,
    MbxOpcode.READ_SA: VfInput.READ_SA,
}
_ACKED_BY_REPLY = frozenset((MbxOpcode.EVENT_SA_EXPIRE, MbxOpcode.EVENT_CRYPTO))
"""The notices a VF acknowledges with its reply (same msg_id)."""


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
        self._sas = VfSaOps(
            control, db, counters, self._reply, self._settled, extended_key=extended_key
        )
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

    def set_vf_trust(self, vf_id: int, trusted: bool, now: float) -> None:
        """`ip link set ... vf N trust on|off`: untrusted VFs get the port tag; an ACTIVE VF
        whose trust changed is told that inline crypto is now on or off for it (EVENT_CRYPTO,
        resent until it answers, replacing one it has not answered)."""
        vf = self._vf(vf_id)
        changed = vf.trusted != trusted
        vf.trusted = trusted
        self._vsis.set_trust(vf.vsi_id, trusted)
        if changed and vf.state == VfState.ACTIVE:
            self._drop_notices(vf_id, MbxOpcode.EVENT_CRYPTO)
            body = encode_crypto_event(CryptoState.ON if trusted else CryptoState.OFF)
            self._notice(vf_id, MbxOpcode.EVENT_CRYPTO, body, now)

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

    def _drop_notices(self, vf_id: int, opcode: MbxOpcode, msg_id: int | None = None) -> None:
        """Stop resending the VF's notices of this kind (with `msg_id`: that one alone): the
        VF acknowledged them, or a newer one replaces them."""
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
            status = MbxStatus.TOO_BIG if len(data) > MAILBOX_MAX else MbxStatus.INVALID_PARAMS
            self._reply_raw(vf, MbxOpcode.ERROR, peek_msg_id(data), status)
            return
        opcode = message.opcode
        if message.is_reply and message.base_opcode in _ACKED_BY_REPLY:
            self._drop_notices(vf_id, MbxOpcode(message.base_opcode), message.msg_id)
            return
        if opcode == MbxOpcode.REQUEST_RESOURCES:
            self._drop_notices(vf_id, MbxOpcode.EVENT_PF_RESET)
        if message.is_reply or opcode not in _MESSAGE_INPUT:
            self._reply_raw(vf, MbxOpcode.ERROR, message.msg_id, MbxStatus.INVALID_PARAMS)
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

    def _reply(
        self, vf: VfInfo, message: MailboxMessage, status: MbxStatus, body: bytes = b""
    ) -> None:
        self._reply_raw(vf, MbxOpcode(message.opcode), message.msg_id, status, body)

    def _reply_raw(
        self, vf: VfInfo, opcode: MbxOpcode, msg_id: int, status: MbxStatus, body: bytes = b""
    ) -> None:
        if status:
            self._counters.mailbox_errors += 1
        reply = build_mailbox(MailboxMessage(opcode | MbxOpcode.REPLY, msg_id, body, status))
        if msg_id in vf.answered:
            vf.answered[msg_id] = reply
        self._mailbox_out.append((vf.vf_id, reply))

    # -- the VF state machine ---------------------------------------------------------------

    def step(self, vf: VfInfo, what: VfInput, message: MailboxMessage | None, now: float) -> None:
        """Take one step of VF_TRANSITIONS: the next state, then the action (`_vf_<action>`,
        or VfSaOps' for an ACTIVE VF's inline IPsec message)."""
        row = VF_TRANSITIONS.get((vf.state, what))
        if row is None:
            self._counters.mailbox_ignored += 1
            return
        action, next_state = row
        vf.state = next_state
        sa_action = self._sas.actions.get(action)
        if sa_action is None:
            getattr(self, "_vf_" + action)(vf, message, now)
        else:
            assert message is not None
            sa_action(vf, message, now)

    def _vf_nothing(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        pass

    def _vf_grant(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        self._reply(vf, message, MbxStatus.SUCCESS, encode_handle(vf.quota))

    def _vf_grant_deferred(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert vf.deferred_request is not None
        self._reply_raw(
            vf,
            MbxOpcode.REQUEST_RESOURCES,
            vf.deferred_request,
            MbxStatus.SUCCESS,
            encode_handle(vf.quota),
        )
        vf.deferred_request = None

    def _vf_defer(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        vf.deferred_request = message.msg_id

    def _vf_ack(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        self._reply(vf, message, MbxStatus.SUCCESS)

    def _vf_refuse_vf_down(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        self._reply(vf, message, MbxStatus.VF_DOWN)

    def _vf_refuse_not_ready(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        assert message is not None
        self._reply(vf, message, MbxStatus.NOT_READY)

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
        vf.requests = 0

    # -- clean-up of a domain ---------------------------------------------------------------

    def _vf_clean_up(self, vf: VfInfo, message: MailboxMessage | None, now: float) -> None:
        self._clean_up(vf, self._db.owned_by(vf.vf_id), now)
        self._cleanup_progress(vf, now)

    def _clean_up(self, vf: VfInfo, entries: list[Ownership], now: float) -> None:
        vf.inflight += self._cleanup.clean_up(entries, now, partial(self._removed, vf))

    def _settled(self, vf: VfInfo, late: list[Ownership], now: float) -> None:
        """An agent transaction of the VF's SA messages finished; `late`: SAs it added after
        the clean-up of the VF's domain began, removed now."""
        if late:
            self._clean_up(vf, late, now)
        self._cleanup_progress(vf, now)

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
