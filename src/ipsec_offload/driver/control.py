"""The PF driver's side of the agent's config channel (spec section 4).

Theory of operation: `ConfigChannel` moves the frames. Each request gets a fresh txn_id and
waits in a table of pending transactions with a deadline. A reply with a pending txn_id
completes it; a reply nobody waits for (a late duplicate) is counted and ignored. When a
deadline passes the same frame is sent again with the same txn_id (the agent answers a repeat
with its remembered reply, so a retry never acts twice); after `retries` resends the
transaction completes with -ETIMEDOUT.

    state     input            next      action
    (none)    submit           PENDING   send frame, deadline = now + timeout
    PENDING   reply(txn_id)    DONE      complete with the reply's status
    PENDING   deadline, n<max  PENDING   resend the same frame, n += 1
    PENDING   deadline, n=max  DONE      complete with -ETIMEDOUT
    DONE      reply(txn_id)    DONE      count a stray reply

`AgentControl` is what the rest of the PF driver talks to the agent through: every request
carries a continuation (`Then`), kept by txn_id beside the channel's table, that runs once with
the return code (0 or a negative errno) and the reply's TLVs. It consumes the config frames the
agent sends, runs the channel's timer, and holds what GET_CAPS told of the agent.

Not every config frame from the agent is a reply (spec 9): the agent sends EVENT requests of
its own (opcode 0x09), unsolicited, and resends one every 10 ms until the PF answers it with
opcode 0x89 and the same txn_id. `AgentControl` answers every copy it receives (status OK; a
malformed one BAD_REQUEST, so that the agent stops resending what the PF cannot read) and hands
each event to `on_event` once, by (BOOT_ID, txn_id): a resend whose answer was lost gets the
answer again and is not acted on twice.

    input                               action
    EVENT, (boot, txn) new              answer 0x89 OK, on_event(event)
    EVENT, (boot, txn) seen             answer 0x89 OK again
    EVENT that does not decode          answer 0x89 BAD_REQUEST, count it
    reply                               the transaction table above
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from enum import IntEnum

from ipsec_offload.driver.ring import CapsDone, DriverEvent
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import (
    AddSaRequest,
    Caps,
    ConfigMessage,
    ConfigStatus,
    Direction,
    Event,
    Opcode,
    SaStats,
    Tlv,
    build_config,
    decode_add_sa,
    decode_caps,
    decode_event,
    decode_sa_index,
    decode_sa_stats,
    parse_config,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet, check_ethertype


class Errno(IntEnum):
    """The Linux errno values the xdo_dev_* calls return (negated)."""

    EPERM = 1
    ENOENT = 2
    EACCES = 13
    EBUSY = 16
    EEXIST = 17
    EINVAL = 22
    ENOSPC = 28
    EMSGSIZE = 90
    EOPNOTSUPP = 95
    ETIMEDOUT = 110


STATUS_TO_ERRNO: dict[int, int] = {
    ConfigStatus.OK: 0,
    ConfigStatus.BAD_REQUEST: -Errno.EINVAL,
    ConfigStatus.UNSUPPORTED: -Errno.EOPNOTSUPP,
    ConfigStatus.NO_SPACE: -Errno.ENOSPC,
    ConfigStatus.EXISTS: -Errno.EEXIST,
    ConfigStatus.NOT_FOUND: -Errno.ENOENT,
    ConfigStatus.KEY_UNWRAP_FAILED: -Errno.EINVAL,
    ConfigStatus.BAD_VERSION: -Errno.EINVAL,
}
"""How the driver turns an agent reply status into the return value of an xdo_dev_* call."""


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished transaction: its return code and the reply (None after a timeout)."""

    txn_id: int
    opcode: Opcode
    rc: int
    reply: ConfigMessage | None


@dataclass(slots=True)
class _Pending:
    opcode: Opcode
    frame: bytes
    deadline: float
    resends: int = 0


@dataclass(slots=True)
class ControlCounters:
    requests: int = 0
    resends: int = 0
    timeouts: int = 0
    replies: int = 0
    stray_replies: int = 0
    bad_replies: int = 0
    events: int = 0
    """EVENT frames from the agent, each copy counted (every one is answered)."""
    event_copies: int = 0
    """Copies of an event already acted on (same BOOT_ID and txn_id): answered, not acted on."""
    bad_events: int = 0
    """EVENT frames that did not decode: answered with BAD_REQUEST."""


@dataclass(slots=True)
class ConfigChannel:
    """Transactions toward the agent: build requests, match replies, retry on a timer."""

    mac: bytes
    agent_mac: bytes
    port: int = 0
    timeout: float = 0.001
    retries: int = 3
    config_ethertype: int = EtherType.CONFIG
    next_txn_id: int = 1
    counters: ControlCounters = field(default_factory=ControlCounters)
    _pending: dict[int, _Pending] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_ethertype(self.config_ethertype, "ConfigChannel config_ethertype")

    def submit(self, opcode: Opcode, tlvs: tuple[Tlv, ...], now: float) -> tuple[int, bytes]:
        """Start a transaction; returns its txn_id and the config frame to send."""
        if self.timeout <= 0 or self.retries < 0:
            raise UsageError("ConfigChannel needs timeout > 0 and retries >= 0")
        txn_id = self.next_txn_id
        self.next_txn_id = (txn_id % 0xFFFFFFFF) + 1
        message = ConfigMessage(opcode=opcode, txn_id=txn_id, tlvs=tlvs, port=self.port)
        frame = self.frame(message)
        self._pending[txn_id] = _Pending(opcode, frame, now + self.timeout)
        self.counters.requests += 1
        return txn_id, frame

    def frame(self, message: ConfigMessage) -> bytes:
        """A config frame from the PF to the agent carrying `message`."""
        return build_ethernet(
            EthernetHeader(dst=self.agent_mac, src=self.mac, ethertype=self.config_ethertype)
        ) + build_config(message)

    def on_reply(self, body: bytes | memoryview) -> Completion | None:
        """A config frame's body from the agent: the completion it finishes, if any."""
        try:
            reply = parse_config(body)
        except ParseError:
            self.counters.bad_replies += 1
            return None
        return self.complete(reply)

    def complete(self, reply: ConfigMessage) -> Completion | None:
        """A parsed config message from the agent: the completion it finishes, if any."""
        pending = self._pending.get(reply.txn_id) if reply.is_reply else None
        if pending is None or reply.base_opcode != pending.opcode:
            self.counters.stray_replies += 1
            return None
        del self._pending[reply.txn_id]
        self.counters.replies += 1
        rc = STATUS_TO_ERRNO.get(reply.status, -Errno.EINVAL)
        return Completion(reply.txn_id, pending.opcode, rc, reply)

    def next_deadline(self) -> float | None:
        """When `on_timer` next has work, or None with nothing pending."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def on_timer(self, now: float) -> tuple[list[bytes], list[Completion]]:
        """Resend what is due; give up on what has used its retries."""
        resend: list[bytes] = []
        done: list[Completion] = []
        for txn_id, pending in list(self._pending.items()):
            if pending.deadline > now:
                continue
            if pending.resends < self.retries:
                pending.resends += 1
                pending.deadline = now + self.timeout
                self.counters.resends += 1
                resend.append(pending.frame)
            else:
                del self._pending[txn_id]
                self.counters.timeouts += 1
                done.append(Completion(txn_id, pending.opcode, -Errno.ETIMEDOUT, None))
        return resend, done

    def abandon(self) -> None:
        """Forget every pending transaction (a driver reload); txn ids keep counting, so a
        new request never collides with a reply the agent still remembers."""
        self._pending.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)


Then = Callable[[int, tuple[Tlv, ...] | None, float], None]
"""A transaction's continuation: (return code, reply TLVs or None, time of completion)."""

EVENTS_KEPT = 256
"""How many (BOOT_ID, txn_id) pairs of the agent's latest events the PF remembers."""

AddKey = tuple[Direction, int, bytes]
"""An SA as a LIST_SAS entry names it: (direction, SPI, destination)."""


class AgentControl:
    """The PF driver's transactions with the agent, each with its continuation."""

    def __init__(
        self,
        channel: ConfigChannel,
        send: Callable[[bytes], None],
        emit: Callable[[DriverEvent], None],
    ) -> None:
        self.channel = channel
        self.caps: Caps | None = None
        """What the agent answered to GET_CAPS (None: not asked, or no answer yet)."""
        self._send = send
        self._emit = emit
        self._then: dict[int, Then] = {}
        self._adds: dict[int, AddKey] = {}
        """The ADD_SA requests under way, by txn_id: the SA each would add."""
        self._events_seen: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.on_event: Callable[[Event, float], None] | None = None
        """Called once per event the agent sends (spec 9), after the PF answered it."""
        self.on_caps: Callable[[Caps, float], None] | None = None
        """Called with every GET_CAPS answer (the BOOT_ID in it tells of a restart)."""
        self.on_timeout: Callable[[float], None] | None = None
        """Called after an ADD_SA or a REMOVE_SA completed with -ETIMEDOUT: the SA may sit in
        the agent, known to no ownership entry."""

    def request(self, opcode: Opcode, tlvs: tuple[Tlv, ...], now: float, then: Then) -> None:
        """Send a request to the agent; `then` runs once, with the reply or the time-out."""
        txn_id, frame = self.channel.submit(opcode, tlvs, now)
        self._then[txn_id] = then
        if opcode == Opcode.ADD_SA:
            with suppress(ParseError):
                request: AddSaRequest = decode_add_sa(tlvs)
                self._adds[txn_id] = (request.direction, request.spi, request.dst)
        self._send(frame)

    def adds_under_way(self) -> set[AddKey]:
        """The SAs that ADD_SA requests under way would add: a listing may show them before
        their reply arrives, and they are nobody's orphans."""
        return set(self._adds.values())

    def receive(self, eth: EthernetHeader, frame: bytes, now: float) -> bool:
        """Consume a config frame from the agent (True); any other frame is not ours (False)."""
        if eth.ethertype != self.channel.config_ethertype or eth.src != self.channel.agent_mac:
            return False
        try:
            message = parse_config(memoryview(frame)[eth.header_len :])
        except ParseError:
            self.channel.counters.bad_replies += 1
            return True
        if not message.is_reply and message.opcode == Opcode.EVENT:
            self._agent_event(message, now)
            return True
        done = self.channel.complete(message)
        if done is not None:
            self._complete(done, now)
        return True

    def _agent_event(self, message: ConfigMessage, now: float) -> None:
        """Answer an EVENT (every copy), then act on it once."""
        counters = self.channel.counters
        counters.events += 1
        answer = ConfigMessage(Opcode.EVENT | Opcode.REPLY, message.txn_id, (), port=message.port)
        try:
            event = decode_event(message.tlvs) if message.version == 1 else None
        except ParseError:
            event = None
        if event is None:
            counters.bad_events += 1
            self._send(self.channel.frame(replace(answer, status=ConfigStatus.BAD_REQUEST)))
            return
        self._send(self.channel.frame(answer))
        key = (event.boot_id, message.txn_id)
        if key in self._events_seen:
            counters.event_copies += 1
            return
        self._events_seen[key] = None
        if len(self._events_seen) > EVENTS_KEPT:
            self._events_seen.popitem(last=False)
        if self.on_event is not None:
            self.on_event(event, now)

    def next_timer(self) -> float | None:
        """When `handle_timer` next has work, or None."""
        return self.channel.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Resend what is due and complete what has timed out."""
        resend, done = self.channel.on_timer(now)
        for frame in resend:
            self._send(frame)
        for completion in done:
            self._complete(completion, now)

    def abandon(self) -> None:
        """Forget every transaction under way, and its continuation (a driver reload)."""
        self._then.clear()
        self._adds.clear()
        self.channel.abandon()

    def probe(self, now: float, *, report: bool = True) -> None:
        """Ask the agent what it can do (GET_CAPS); completes with CapsDone (`report`; the
        PF's periodic probe for a restart reports nothing)."""

        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            caps = None
            try:
                caps = decode_caps(tlvs) if tlvs is not None else None
            except ParseError:
                rc = -Errno.EINVAL
            if caps is not None:
                self.caps = caps
            if report:
                self._emit(CapsDone(rc, self.caps if rc == 0 else None))
            if caps is not None and self.on_caps is not None:
                self.on_caps(caps, now)

        self.request(Opcode.GET_CAPS, (), now, then)

    def _complete(self, done: Completion, now: float) -> None:
        self._adds.pop(done.txn_id, None)
        then = self._then.pop(done.txn_id, None)
        if then is not None:
            tlvs = done.reply.tlvs if done.reply is not None and done.rc == 0 else None
            then(done.rc, tlvs, now)
        lost = done.opcode in (Opcode.ADD_SA, Opcode.REMOVE_SA) and done.rc == -Errno.ETIMEDOUT
        if lost and self.on_timeout is not None:
            self.on_timeout(now)


def reply_sa_stats(rc: int, tlvs: tuple[Tlv, ...] | None) -> tuple[int, SaStats | None]:
    """A GET_SA_STATS outcome as (return code, counters): a reply whose STATS do not decode
    is -EINVAL, and there are no counters but in a decoded reply."""
    if tlvs is None:
        return rc, None
    try:
        return rc, decode_sa_stats(tlvs)
    except ParseError:
        return -Errno.EINVAL, None


def reply_sa_index(tlvs: tuple[Tlv, ...] | None) -> int | None:
    """The SA_INDEX in an ADD_SA reply's TLVs (None: no reply, or no valid index in it)."""
    try:
        return None if tlvs is None else decode_sa_index(tlvs)
    except ParseError:
        return None
