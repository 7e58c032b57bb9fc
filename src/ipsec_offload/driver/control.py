"""The PF driver's side of the agent's config channel (spec section 4).

Theory of operation: each request gets a fresh txn_id and waits in a table of pending
transactions with a deadline. A reply with a pending txn_id completes it; a reply nobody waits
for (a late duplicate) is counted and ignored. When a deadline passes the same frame is sent
again with the same txn_id (the agent answers a repeat with its remembered reply, so a retry
never acts twice); after `retries` resends the transaction completes with -ETIMEDOUT.

    state     input            next      action
    (none)    submit           PENDING   send frame, deadline = now + timeout
    PENDING   reply(txn_id)    DONE      complete with the reply's status
    PENDING   deadline, n<max  PENDING   resend the same frame, n += 1
    PENDING   deadline, n=max  DONE      complete with -ETIMEDOUT
    DONE      reply(txn_id)    DONE      count a stray reply
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import (
    ConfigMessage,
    ConfigStatus,
    Opcode,
    Tlv,
    build_config,
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
