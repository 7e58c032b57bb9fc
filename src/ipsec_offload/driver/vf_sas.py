"""The PF's answers to an ACTIVE VF's inline IPsec messages (spec section 6): the SA messages
it proxies to the agent and the questions it answers itself (virtchnl's inline IPsec ops).

Theory of operation: the VF lifecycle table (`vf_proxy.py`) hands each message of an ACTIVE
VF here. A VF may be hostile: whatever does not decode is answered INVALID_PARAMS, a handle
that is not one of the VF's own SAs NOT_FOUND, and nothing reaches the agent for it. Then:

    message    agent traffic                    answer
    ADD_SA     ADD_SA with the VF's domain      u32 SA index, recorded in the ownership DB
    DEL_SA     REMOVE_SA of its index           -
    DEL_SAS    REMOVE_SA per SA, all at once    once every one finished: removed, statuses
    READ_SA    GET_SA_STATS of its index        SA index and the agent's counters
    UPDATE_SA  none                             at once (counted: `sa_updates`)
    GET_CAPS   none                             at once: trust, quota, the agent's GET_CAPS

UPDATE_SA sends the agent nothing: the agent has no update opcode, and needs none, since it
tracks the full 64-bit ESN of its inbound SAs itself and an outbound SA's numbers are the
stack's (re-installed with SEQ, spec 9). The PF checks that the SA is the VF's and answers.

A VF has at most REQUESTS_IN_FLIGHT requests waiting for the agent: one more is answered
FIFO_FULL. An add or removal counts in the VF's `inflight` (its clean-up waits for them); an
answer goes out only while the VF is still ACTIVE, and after each agent transaction `settled`
tells the proxy, with any SA the agent added once the VF's clean-up had begun (the clean-up's
to remove).

An untrusted VF's ADD_SA and UPDATE_SA are refused NOT_PERMITTED (EACCES, as ixgbe answers).
Its driver learns of its trust from GET_CAPS (crypto) and EVENT_CRYPTO and carries its states
in software without asking, so an ADD_SA meets the refusal only when the trust went off after
the driver last heard (the add fails with -EACCES; EVENT_CRYPTO OFF follows). Its DEL_SA,
DEL_SAS and READ_SA are served: its own SAs only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import TypeVar

from ipsec_offload.driver.control import AgentControl, Errno, reply_sa_index, reply_sa_stats
from ipsec_offload.driver.ownership import Ownership, OwnershipDb, with_sa_key
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.driver.vf_info import VfInfo, VfState
from ipsec_offload.errors import ParseError
from ipsec_offload.wire.config import (
    AddSaRequest,
    Opcode,
    Tlv,
    decode_add_sa,
    encode_add_sa,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import vlan_key
from ipsec_offload.wire.mailbox import (
    DelSasResult,
    MailboxMessage,
    MbxStatus,
    SaRead,
    VfCaps,
    decode_del_sas,
    decode_handle,
    decode_handle_tlvs,
    decode_sa_update,
    encode_del_sas_result,
    encode_handle,
    encode_sa_read,
    encode_vf_caps,
)

REQUESTS_IN_FLIGHT = 256
"""A VF's requests waiting for the agent, at most: twice the default quota, so that a VF that
re-adds every SA after a reset while deleting as many is never refused."""

Reply = Callable[[VfInfo, MailboxMessage, MbxStatus, bytes], None]
"""The proxy's reply to a VF's message: (VF, message, status, body)."""
Settled = Callable[[VfInfo, list[Ownership], float], None]
"""Called after each agent transaction of a VF: (VF, SAs added after its clean-up began, now)."""
Action = Callable[[VfInfo, MailboxMessage, float], None]
"""One action of the lifecycle table: (VF, its message, now)."""
_Removed = Callable[[MbxStatus, float], None]
_Body = TypeVar("_Body")


def _decode_add(body: bytes) -> tuple[int, AddSaRequest]:
    """ADD_SA's body: the VF's handle and the agent's ADD_SA request it carries."""
    handle, tlvs = decode_handle_tlvs(body)
    return handle, decode_add_sa(tlvs)


def _status(rc: int) -> MbxStatus:
    """A failed agent transaction's return code as a reply status (EINVAL for a success whose
    reply did not decode)."""
    return MbxStatus(-rc) if rc else MbxStatus.INVALID_PARAMS


class VfSaOps:
    """What the PF does with an ACTIVE VF's inline IPsec messages; `actions` maps the
    lifecycle table's action names to them."""

    def __init__(
        self,
        control: AgentControl,
        db: OwnershipDb,
        counters: PfCounters,
        reply: Reply,
        settled: Settled,
        *,
        extended_key: bool,
    ) -> None:
        self._extended_key = extended_key
        self._control = control
        self._db = db
        self._counters = counters
        self._reply = reply
        self._settled = settled
        self.actions: dict[str, Action] = {
            "proxy_add": self._add,
            "proxy_del": self._delete,
            "proxy_del_sas": self._delete_many,
            "proxy_read": self._read,
            "update": self._update,
            "caps": self._caps,
        }

    # -- bookkeeping ------------------------------------------------------------------------

    def _admit(self, vf: VfInfo, message: MailboxMessage) -> bool:
        """Take one more request of the VF to the agent, or refuse it FIFO_FULL."""
        if vf.requests >= REQUESTS_IN_FLIGHT:
            self._counters.fifo_full += 1
            self._reply(vf, message, MbxStatus.FIFO_FULL, b"")
            return False
        vf.requests += 1
        return True

    def _answer(
        self,
        vf: VfInfo,
        message: MailboxMessage,
        status: MbxStatus,
        body: bytes,
        now: float,
        late: Iterable[Ownership] = (),
    ) -> None:
        """The agent finished a request: answer it if the VF is still ACTIVE."""
        vf.requests -= 1
        if vf.state == VfState.ACTIVE:
            self._reply(vf, message, status, body)
        self._settled(vf, list(late), now)

    def _body(
        self, vf: VfInfo, message: MailboxMessage, decode: Callable[[bytes], _Body]
    ) -> _Body | None:
        """The message's body decoded, or None, answered INVALID_PARAMS."""
        try:
            return decode(message.body)
        except ParseError:
            self._reply(vf, message, MbxStatus.INVALID_PARAMS, b"")
            return None

    def _owned(self, vf: VfInfo, message: MailboxMessage, handle: int) -> Ownership | None:
        """The VF's SA with this handle, or None, answered NOT_FOUND: foreign or stale."""
        entry = self._db.lookup(vf.vf_id, handle)
        if entry is None:
            self._reply(vf, message, MbxStatus.NOT_FOUND, b"")
        return entry

    def _admitted_sa(self, vf: VfInfo, message: MailboxMessage) -> Ownership | None:
        """The VF's SA that a u32 handle body names, once its request is admitted to the
        agent; None once refused (INVALID_PARAMS, NOT_FOUND or FIFO_FULL)."""
        handle = self._body(vf, message, decode_handle)
        entry = None if handle is None else self._owned(vf, message, handle)
        return entry if entry is not None and self._admit(vf, message) else None

    def _held(self, vf: VfInfo) -> int:
        """The VF's SAs and its adds under way: what counts against its quota."""
        return len(self._db.owned_by(vf.vf_id)) + len(vf.pending_handles)

    # -- ADD_SA -----------------------------------------------------------------------------

    def _add(self, vf: VfInfo, message: MailboxMessage, now: float) -> None:
        decoded = self._body(vf, message, _decode_add)
        if decoded is None:
            return
        handle, request = decoded
        refusal = None
        if request.local_mac is not None or request.vlans:
            refusal = MbxStatus.INVALID_PARAMS  # a VF does not choose its domain
        elif not vf.trusted:
            refusal = MbxStatus.NOT_PERMITTED
        elif handle in vf.pending_handles or self._db.lookup(vf.vf_id, handle) is not None:
            refusal = MbxStatus.EXISTS
        elif self._held(vf) >= vf.quota:
            refusal = MbxStatus.NO_MEM
        if refusal is not None:
            self._reply(vf, message, refusal, b"")
            return
        if not self._admit(vf, message):
            return
        request = with_sa_key(request, vf.mac, vf.vlans, extended_key=self._extended_key)
        vf.pending_handles.add(handle)
        vf.inflight += 1

        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            vf.inflight -= 1
            vf.pending_handles.discard(handle)
            index = reply_sa_index(tlvs) if rc == 0 else None
            if index is None:
                self._answer(vf, message, _status(rc), b"", now)
                return
            entry = Ownership(index, vf.vf_id, handle, vf.mac, vlan_key(vf.vlans))
            self._db.add(entry)
            late = [entry] if vf.state != VfState.ACTIVE else []
            self._answer(vf, message, MbxStatus.SUCCESS, encode_handle(index), now, late)

        self._control.request(Opcode.ADD_SA, encode_add_sa(request), now, then)

    # -- DEL_SA and DEL_SAS -----------------------------------------------------------------

    def _remove(self, vf: VfInfo, entry: Ownership, now: float, then: _Removed) -> None:
        """REMOVE_SA of one of the VF's SAs; `then(status, now)` once the agent answered. Its
        ownership entry goes unless the agent refused: NOT_FOUND counts as removed, and after
        a time-out the VF's stack frees the state all the same (the SA, if the agent still has
        it, is an orphan for the reconciliation, resync.py)."""
        vf.inflight += 1

        def removed(rc: int, _tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            vf.inflight -= 1
            gone = rc in (0, -Errno.ENOENT)
            if (gone or rc == -Errno.ETIMEDOUT) and self._db.by_index(entry.sa_index) is entry:
                self._db.remove(entry.sa_index)
            then(MbxStatus.SUCCESS if gone else _status(rc), now)

        self._control.request(Opcode.REMOVE_SA, encode_sa_index(entry.sa_index), now, removed)

    def _delete(self, vf: VfInfo, message: MailboxMessage, now: float) -> None:
        entry = self._admitted_sa(vf, message)
        if entry is None:
            return

        def removed(status: MbxStatus, now: float) -> None:
            self._answer(vf, message, status, b"", now)

        self._remove(vf, entry, now, removed)

    def _delete_many(self, vf: VfInfo, message: MailboxMessage, now: float) -> None:
        """DEL_SAS: every listed SA of the VF (or all it holds) removed at once; answered
        when the last removal finished, a handle that is not the VF's NOT_FOUND."""
        request = self._body(vf, message, decode_del_sas)
        if request is None:
            return
        entries: list[Ownership | None] = (
            list(self._db.owned_by(vf.vf_id))
            if request.all_sas
            else [self._db.lookup(vf.vf_id, handle) for handle in request.handles]
        )
        statuses = [MbxStatus.NOT_FOUND for _ in entries]
        waiting = {i: entry for i, entry in enumerate(entries) if entry is not None}

        def result() -> tuple[MbxStatus, bytes]:
            failed = [s for s in statuses if s != MbxStatus.SUCCESS]
            listed = () if request.all_sas else tuple(statuses)
            body = encode_del_sas_result(DelSasResult(len(statuses) - len(failed), listed))
            return (failed[0] if failed else MbxStatus.SUCCESS), body

        def removed(i: int, status: MbxStatus, now: float) -> None:
            statuses[i] = status
            self._counters.vf_bulk_removed += status == MbxStatus.SUCCESS
            del waiting[i]
            if not waiting:
                self._answer(vf, message, *result(), now)

        if not waiting:
            self._reply(vf, message, *result())
        elif self._admit(vf, message):
            for i, entry in list(waiting.items()):
                self._remove(vf, entry, now, partial(removed, i))

    # -- READ_SA, UPDATE_SA, GET_CAPS -------------------------------------------------------

    def _read(self, vf: VfInfo, message: MailboxMessage, now: float) -> None:
        entry = self._admitted_sa(vf, message)
        if entry is None:
            return

        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            rc, stats = reply_sa_stats(rc, tlvs)
            if stats is None:
                self._answer(vf, message, _status(rc), b"", now)
                return
            body = encode_sa_read(SaRead(entry.sa_index, stats))
            self._answer(vf, message, MbxStatus.SUCCESS, body, now)

        self._control.request(Opcode.GET_SA_STATS, encode_sa_index(entry.sa_index), now, then)

    def _update(self, vf: VfInfo, message: MailboxMessage, now: float) -> None:
        update = self._body(vf, message, decode_sa_update)
        if update is None:
            return
        if not vf.trusted:
            self._reply(vf, message, MbxStatus.NOT_PERMITTED, b"")
        elif self._owned(vf, message, update.handle) is not None:
            self._counters.sa_updates += 1
            self._reply(vf, message, MbxStatus.SUCCESS, b"")

    def _caps(self, vf: VfInfo, message: MailboxMessage, now: float) -> None:
        """The VF's capabilities: crypto as its trust says, its quota and what it holds, the
        agent's algorithms, SAD size and replay window; every agent of the spec takes ESN.
        NOT_READY while the agent has not answered the PF's GET_CAPS."""
        agent = self._control.caps
        if message.body:
            self._reply(vf, message, MbxStatus.INVALID_PARAMS, b"")
        elif agent is None:
            self._reply(vf, message, MbxStatus.NOT_READY, b"")
        else:
            caps = VfCaps(
                crypto=vf.trusted,
                esn=True,
                quota=vf.quota,
                held=self._held(vf),
                max_sas=agent.sad_size,
                max_replay_window=agent.max_replay_window,
                algorithms=agent.algorithms,
            )
            self._reply(vf, message, MbxStatus.SUCCESS, encode_vf_caps(caps))
