"""The VF driver's end of the mailbox: its requests with their resends, and the PF's notices.

Theory of operation: every request (`request`) gets the next msg_id and waits for its reply;
when the reply is MAILBOX_TIMEOUT late the same bytes are sent again, MAILBOX_RESENDS times at
most, and then the request completes with -ETIMEDOUT (spec 9: the mailbox may lose a message;
the PF takes a copy of a message it has once). A reply runs its request's continuation once,
with the reply's status as a negative errno and its body; a reply that no request waits for
(a copy, or one after the time-out) is counted stray. A request made `until_reset` is
ignored once answered (or timed out) if the VF reset meanwhile (`reset`): an ADD_SA's or a
GET_CAPS' answer from before a reset says nothing of the VF after it. `abandon` forgets every
request under way (the PF forgot them: its reset); one made with `complete_on_abandon`
completes with -EBUSY instead, for a caller that waits for it.

`now` is the time of the driver's latest call that gave one (a continuation has none of its
own): the deadlines count from it.

The PF's own messages (EVENT_PF_RESET, EVENT_SA_EXPIRE, EVENT_CRYPTO) are notices the PF
resends until the VF acknowledges them: `notice_copy` tells whether the VF acted on a msg_id
already (the latest NOTICES_KEPT are remembered), `acknowledge` answers one with its empty
reply (opcode | REPLY, the same msg_id, status 0).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ipsec_offload.driver.control import Errno
from ipsec_offload.wire.mailbox import MailboxMessage, MbxOpcode, build_mailbox

Then = Callable[[int, bytes], None]
"""A mailbox request's continuation: (return code, reply body)."""

MAILBOX_TIMEOUT = 0.01
"""Seconds a request waits for its reply before it is sent again (spec 9: the mailbox may
lose a message; the PF takes a copy of a message it has once)."""
MAILBOX_RESENDS = 5
"""Resends of a request before it completes with -ETIMEDOUT."""
NOTICES_KEPT = 64
"""How many of the PF's latest notice msg_ids the VF remembers, to act on each once."""


@dataclass(slots=True)
class VfCounters:
    """What the VF driver counts beyond its rings."""

    mailbox_sent: int = 0
    """Requests sent (their resends apart), and REQUEST_RESOURCES sent again on a copy of
    EVENT_PF_RESET."""
    mailbox_bad: int = 0
    """PF messages, and reply bodies, that did not decode."""
    mailbox_stray: int = 0
    """Replies no request waited for."""
    readds: int = 0
    """States re-added after a reset (the VF's own or the PF's)."""
    stale_replies: int = 0
    """Answers to an ADD_SA, GET_CAPS or REQUEST_RESOURCES sent before a reset, ignored."""
    notice_copies: int = 0
    """Copies of a PF notice already acted on (the PF resent it)."""
    mailbox_resent: int = 0
    mailbox_timeouts: int = 0
    caps_asked: int = 0
    """GET_CAPS requests (one per start, and one per retry after NOT_READY)."""
    caps_failed: int = 0
    """GET_CAPS given up (an error, a time-out, a reply that did not decode): the VF comes up
    without inline crypto."""
    crypto_on: int = 0
    crypto_off: int = 0
    """EVENT_CRYPTO notices acted on, by what they said."""
    crypto_stale: int = 0
    """EVENT_CRYPTO notices older than one acted on (overtaken), answered and ignored."""
    offloads_lost: int = 0
    """States reported OffloadLost because inline crypto is off for the VF."""
    bulk_deletes: int = 0
    """DEL_SAS (ALL) requests: crypto switched off, or a reset."""
    bulk_delete_failed: int = 0
    sa_reads: int = 0
    """READ_SA requests (xdo_dev_state_update_stats of an offloaded state)."""
    sa_read_failed: int = 0
    """Of those, the ones that gave no counters (refused, timed out, abandoned, undecodable)."""
    esn_updates: int = 0
    """UPDATE_SA requests (xdo_dev_state_advance_esn of an offloaded state)."""
    esn_update_failed: int = 0


@dataclass(slots=True)
class _Request:
    """A request waiting for its reply."""

    then: Then
    data: bytes
    deadline: float
    generation: int | None
    """The VF's reset count when it was sent (None: its answer counts after a reset too)."""
    complete_on_abandon: bool
    resends: int = 0


class VfMailbox:
    """The VF's requests to the PF and its record of the PF's notices."""

    def __init__(self, counters: VfCounters) -> None:
        self._counters = counters
        self._pending: dict[int, _Request] = {}
        self._next_msg_id = 1
        self._out: list[bytes] = []
        self._notices_seen: OrderedDict[int, None] = OrderedDict()
        self._generation = 0
        self.now = 0.0
        """The time of the driver's latest call that gave one."""

    def request(
        self,
        opcode: MbxOpcode,
        body: bytes,
        then: Then,
        *,
        until_reset: bool = False,
        complete_on_abandon: bool = False,
    ) -> bytes:
        """Send a request; `then(rc, body)` once it is answered or given up (with
        `until_reset`, not if the VF reset meanwhile). Returns its bytes (to send again as
        they are)."""
        msg_id = self._next_msg_id
        self._next_msg_id = msg_id % 0xFFFFFFFF + 1
        data = build_mailbox(MailboxMessage(opcode, msg_id, body))
        generation = self._generation if until_reset else None
        deadline = self.now + MAILBOX_TIMEOUT
        self._pending[msg_id] = _Request(then, data, deadline, generation, complete_on_abandon)
        self._counters.mailbox_sent += 1
        self._out.append(data)
        return data

    def send_again(self, data: bytes) -> None:
        """Send a request's bytes once more, outside its resends."""
        self._counters.mailbox_sent += 1
        self._out.append(data)

    def complete(self, message: MailboxMessage) -> None:
        """A reply from the PF: its request's continuation runs (a stray one is counted)."""
        request = self._pending.pop(message.msg_id, None) if message.is_reply else None
        if request is None:
            self._counters.mailbox_stray += 1
            return
        self._done(request, -message.status, message.body)

    def _done(self, request: _Request, rc: int, body: bytes) -> None:
        if request.generation not in (None, self._generation):
            self._counters.stale_replies += 1
            return
        request.then(rc, body)

    def reset(self) -> None:
        """The VF reset: the answers of the `until_reset` requests under way are stale."""
        self._generation += 1

    def abandon(self) -> None:
        """Forget the requests under way; those made `complete_on_abandon` get -EBUSY."""
        pending, self._pending = self._pending, {}
        for request in pending.values():
            if request.complete_on_abandon:
                request.then(-Errno.EBUSY, b"")

    def next_timer(self) -> float | None:
        """When `handle_timer` next has work: the earliest request's deadline."""
        return min((r.deadline for r in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> None:
        """Send again each request whose reply is late (the same msg_id); one that used its
        resends completes with -ETIMEDOUT."""
        self.now = now
        for msg_id, request in list(self._pending.items()):
            if request.deadline > now or self._pending.get(msg_id) is not request:
                continue
            if request.resends < MAILBOX_RESENDS:
                request.resends += 1
                request.deadline = now + MAILBOX_TIMEOUT
                self._counters.mailbox_resent += 1
                self._out.append(request.data)
                continue
            del self._pending[msg_id]
            self._counters.mailbox_timeouts += 1
            self._done(request, -Errno.ETIMEDOUT, b"")

    def messages(self) -> list[bytes]:
        """Take the messages queued for the PF."""
        out, self._out = self._out, []
        return out

    # -- the PF's notices -------------------------------------------------------------------

    def notice_copy(self, msg_id: int) -> bool:
        """Whether the PF's notice `msg_id` was acted on already (else it is from now on)."""
        if msg_id in self._notices_seen:
            self._counters.notice_copies += 1
            return True
        self._notices_seen[msg_id] = None
        if len(self._notices_seen) > NOTICES_KEPT:
            self._notices_seen.popitem(last=False)
        return False

    def acknowledge(self, notice: MailboxMessage) -> None:
        """Answer a notice: its empty reply, the same msg_id, status 0."""
        reply = MailboxMessage(notice.opcode | MbxOpcode.REPLY, notice.msg_id)
        self._out.append(build_mailbox(reply))
