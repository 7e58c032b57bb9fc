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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from ipsec_offload.driver.ring import CapsDone, DriverEvent
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import (
    Caps,
    ConfigMessage,
    ConfigStatus,
    Opcode,
    Tlv,
    build_config,
    decode_caps,
    decode_sa_index,
    parse_config,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet, check_ethertype


class Errno(IntEnum):
    """The Linux errno values the xdo_dev_* calls return (negated)."""

    EPERM = 1
    ENOENT = 2
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
        frame = build_ethernet(
            EthernetHeader(dst=self.agent_mac, src=self.mac, ethertype=self.config_ethertype)
        ) + build_config(message)
        self._pending[txn_id] = _Pending(opcode, frame, now + self.timeout)
        self.counters.requests += 1
        return txn_id, frame

    def on_reply(self, body: bytes | memoryview) -> Completion | None:
        """A config frame's body from the agent: the completion it finishes, if any."""
        try:
            reply = parse_config(body)
        except ParseError:
            self.counters.bad_replies += 1
            return None
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

    def request(self, opcode: Opcode, tlvs: tuple[Tlv, ...], now: float, then: Then) -> None:
        """Send a request to the agent; `then` runs once, with the reply or the time-out."""
        txn_id, frame = self.channel.submit(opcode, tlvs, now)
        self._then[txn_id] = then
        self._send(frame)

    def receive(self, eth: EthernetHeader, frame: bytes, now: float) -> bool:
        """Consume a config frame from the agent (True); any other frame is not ours (False)."""
        if eth.ethertype != self.channel.config_ethertype or eth.src != self.channel.agent_mac:
            return False
        done = self.channel.on_reply(memoryview(frame)[eth.header_len :])
        if done is not None:
            self._complete(done, now)
        return True

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
        self.channel.abandon()

    def probe(self, now: float) -> None:
        """Ask the agent what it can do (GET_CAPS); completes with CapsDone."""

        def then(rc: int, tlvs: tuple[Tlv, ...] | None, now: float) -> None:
            try:
                self.caps = decode_caps(tlvs) if tlvs is not None else self.caps
            except ParseError:
                rc = -Errno.EINVAL
            self._emit(CapsDone(rc, self.caps if rc == 0 else None))

        self.request(Opcode.GET_CAPS, (), now, then)

    def _complete(self, done: Completion, now: float) -> None:
        then = self._then.pop(done.txn_id, None)
        if then is not None:
            tlvs = done.reply.tlvs if done.reply is not None and done.rc == 0 else None
            then(done.rc, tlvs, now)


def reply_sa_index(tlvs: tuple[Tlv, ...] | None) -> int | None:
    """The SA_INDEX in an ADD_SA reply's TLVs (None: no reply, or no valid index in it)."""
    try:
        return None if tlvs is None else decode_sa_index(tlvs)
    except ParseError:
        return None
