"""The PF and VF drivers' side of spec 9, invariant 4 ("the agent and its hosts agree"),
against a scripted agent: the agent's events answered and routed, an agent restart found by
AGENT_STARTED or by a new BOOT_ID, every SA re-installed with its SEQ or demoted to software,
LIST_SAS reconciliation of orphans, and the PF's notices to its VFs resent until acknowledged.

The drivers' xdo_dev_* calls wait for the agent (Linux's synchronous xfrmdev_ops): the hand-made
harnesses give them a `Pump` as their `wait`, which carries the config frames and the mailbox
and runs the drivers' timers until the call's answer is in. `Pump`, `ScriptedAgent`, `loaded`
and `outbound` are shared with test_driver_pf.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from ipsec_offload.driver.control import Errno
from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.driver.ring import (
    ExtAck,
    OffloadLost,
    OffloadState,
    StateAddDone,
    StateExpired,
)
from ipsec_offload.driver.vf import VfDriver
from ipsec_offload.driver.vf_proxy import NOTICE_INTERVAL, NOTICE_RESENDS
from ipsec_offload.errors import ParseError, SimulationError, UsageError
from ipsec_offload.host.stack import HostStack
from ipsec_offload.nic.descriptors import RxDescriptor
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    Caps,
    ConfigMessage,
    ConfigStatus,
    Direction,
    Event,
    EventType,
    Opcode,
    SaEntry,
    SaStats,
    Tlv,
    build_config,
    decode_add_sa,
    decode_list_sas_request,
    decode_sa_index,
    encode_caps,
    encode_event,
    encode_list_sas_reply,
    encode_sa_index,
    encode_sa_stats,
    pack_list_sas_reply,
    parse_config,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet
from ipsec_offload.wire.ip import IpProto, IPv4Header, build_ipv4
from ipsec_offload.wire.mailbox import (
    ExpireKind,
    MailboxMessage,
    MbxOpcode,
    SaExpire,
    build_mailbox,
    decode_sa_expire,
    encode_sa_expire,
    parse_mailbox,
)

PF_MAC = bytes.fromhex("020000000010")
VF_MAC = bytes.fromhex("020000000101")
HOST, PEER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
KEY = bytes(range(20))
ESP_L3 = build_ipv4(IPv4Header(HOST, PEER, IpProto.ESP, 20))
"""The IP header of an ESP packet from HOST, as `xdo_dev_offload_ok` sees it."""
ETIMEDOUT_TEXT = "no answer from the agent (the config channel gave up after its retries)"
"""The extack of an add whose every attempt went unanswered (PF or VF alike)."""


@dataclass
class Pump:
    """The `Waiter` of drivers driven by hand, as the Testbed's is of its drivers: `carry(now)`
    carries what is queued (config frames, mailbox messages) until nothing moves; while `done()`
    does not hold, time goes on to the drivers' next timer, which each of them handles, and
    carrying starts again. SimulationError when no timer is left that anything waits on (the
    PF's periodic GET_CAPS probe alone cannot answer a call)."""

    carry: Callable[[float], object]
    drivers: Sequence[PfDriver | VfDriver]
    waits: list[tuple[float, float]] = field(default_factory=list)
    """Every wait's (start, end) time, in the order they ended."""

    def __call__(self, done: Callable[[], bool], now: float) -> float:
        start = now
        while not done():
            self.carry(now)
            if done():
                break
            now = self._next_timer(now)
        self.waits.append((start, now))
        return now

    def _next_timer(self, now: float) -> float:
        if not any(
            d.waiting if isinstance(d, PfDriver) else d.next_timer() is not None
            for d in self.drivers
        ):
            raise SimulationError("a driver waits for an answer nothing left can give")
        now = max(now, min(t for d in self.drivers if (t := d.next_timer()) is not None))
        for driver in self.drivers:
            driver.handle_timer(now)
        return now


def waits(driver: PfDriver | VfDriver) -> list[tuple[float, float]]:
    """The (start, end) of every wait of a driver the harness gave a `Pump`."""
    assert isinstance(driver.wait, Pump)
    return driver.wait.waits


def never_lost(_message: ConfigMessage, _now: float) -> bool:
    return False


NO_TRAFFIC = SaStats(0, 0, (0, 0, 0, 0, 0))


@dataclass
class Sa:
    request: AddSaRequest
    stats: SaStats = NO_TRAFFIC


@dataclass
class ScriptedAgent:
    """A spec 1.1 agent in a few lines: it answers the PF's config frames, keeps a SAD,
    restarts, sends events, and loses the requests and replies it is told to lose."""

    pf: PfDriver
    boot_id: int = 1
    sad: dict[int, Sa] = field(default_factory=dict)
    page_bytes: int = 1400
    lose_replies: int = 0
    lost: Callable[[ConfigMessage, float], bool] = never_lost
    """Sees each request first: True, the request is lost on its way (never acted on). The
    hook may act meanwhile (`restart_on`)."""
    refuse_adds: ConfigStatus | None = None
    requests: list[ConfigMessage] = field(default_factory=list)
    """The requests that reached the agent, in order."""
    answers: list[ConfigMessage] = field(default_factory=list)
    """The PF's answers to events."""
    next_txn: int = 0x40

    def send(self, message: ConfigMessage, now: float) -> None:
        header = EthernetHeader(self.pf.mac, self.pf.agent_mac, EtherType.CONFIG)
        self.pf.receive([RxDescriptor(build_ethernet(header) + build_config(message), None)], now)

    def serve(self, now: float) -> None:
        """Answer everything the PF sent, until it sends nothing more."""
        while True:
            frames = [d.frame for d in self.pf.tx_descriptors()]
            if not frames:
                return
            for frame in frames:
                message = parse_config(frame[14:])
                if message.is_reply:
                    self.answers.append(message)
                    continue
                if self.lost(message, now):
                    continue
                self.requests.append(message)
                status, tlvs = self.act(message)
                if self.lose_replies:
                    self.lose_replies -= 1
                    continue
                reply = ConfigMessage(message.opcode | Opcode.REPLY, message.txn_id, tlvs, status)
                self.send(reply, now)

    def act(self, message: ConfigMessage) -> tuple[ConfigStatus, tuple[Tlv, ...]]:
        ok = ConfigStatus.OK
        if message.opcode == Opcode.GET_CAPS:
            caps = Caps((Algorithm.AES_GCM_128,), 64, 4096, self.boot_id)
            return ok, encode_caps(caps)
        if message.opcode == Opcode.ADD_SA:
            if self.refuse_adds is not None:
                return self.refuse_adds, ()
            # a resend of a request whose reply was lost is answered alike (by txn_id)
            for index, sa in self.sad.items():
                if sa.request == decode_add_sa(message.tlvs):
                    return ok, encode_sa_index(index)
            index = min(set(range(1, 65)) - set(self.sad))
            self.sad[index] = Sa(decode_add_sa(message.tlvs))
            return ok, encode_sa_index(index)
        if message.opcode == Opcode.REMOVE_SA:
            gone = self.sad.pop(decode_sa_index(message.tlvs), None)
            return (ok if gone else ConfigStatus.NOT_FOUND), ()
        if message.opcode == Opcode.REMOVE_ALL_SAS:
            self.sad.clear()
            return ok, ()
        if message.opcode == Opcode.GET_SA_STATS:
            held = self.sad.get(decode_sa_index(message.tlvs))
            return (ok, encode_sa_stats(held.stats)) if held else (ConfigStatus.NOT_FOUND, ())
        if message.opcode == Opcode.LIST_SAS:
            cursor = decode_list_sas_request(message.tlvs).cursor or 0
            entries = (
                SaEntry(i, sa.request.direction, sa.request.spi, sa.request.dst, 1)
                for i, sa in sorted(self.sad.items())
                if i >= cursor
            )
            return ok, encode_list_sas_reply(pack_list_sas_reply(entries, self.page_bytes))
        return ConfigStatus.UNSUPPORTED, ()

    def restart(self) -> None:
        self.sad.clear()
        self.boot_id += 1

    def event(self, kind: EventType, now: float, sa_index: int | None = None) -> int:
        """Send an event (and return its txn_id); `resend` sends the same one again."""
        self.next_txn += 1
        self.resend(self.next_txn, Event(kind, self.boot_id, sa_index), now)
        return self.next_txn

    def resend(self, txn_id: int, event: Event, now: float) -> None:
        self.send(ConfigMessage(Opcode.EVENT, txn_id, encode_event(event)), now)


def lose_next(*opcodes: Opcode) -> Callable[[ConfigMessage, float], bool]:
    """A `ScriptedAgent.lost`: the next request of each opcode given is lost (each once)."""
    left = list(opcodes)

    def lost(message: ConfigMessage, _now: float) -> bool:
        if message.opcode in left:
            left.remove(Opcode(message.opcode))
            return True
        return False

    return lost


def restart_on(agent: ScriptedAgent, opcode: Opcode) -> Callable[[ConfigMessage, float], bool]:
    """A `ScriptedAgent.lost`: the agent restarts as the next request of `opcode` reaches it
    (the request is lost with the old agent), and the new agent sends AGENT_STARTED."""

    def lost(message: ConfigMessage, now: float) -> bool:
        if message.opcode != opcode:
            return False
        agent.lost = never_lost
        agent.restart()
        agent.event(EventType.AGENT_STARTED, now)
        return True

    return lost


def outbound(handle: int, spi: int, seq: Callable[[], int | None] | None = None) -> OffloadState:
    return OffloadState(
        handle, Direction.OUTBOUND, spi, PEER, HOST, Algorithm.AES_GCM_128, KEY, handover_seq=seq
    )


def loaded(**kw: object) -> tuple[PfDriver, ScriptedAgent]:
    """A PF that probed its scripted agent; its waits are the agent's serving."""
    pf = PfDriver(PF_MAC, **kw)  # type: ignore[arg-type]
    agent = ScriptedAgent(pf)
    pf.wait = Pump(agent.serve, [pf])
    pf.probe(0.0)
    agent.serve(0.0)
    pf.events()
    return pf, agent


def offload(driver: PfDriver | VfDriver, state: OffloadState, now: float) -> None:
    """An add that must succeed (the setup of a test): rc 0, no extack."""
    extack = ExtAck()
    assert driver.xdo_dev_state_add(state, extack, now) == 0
    assert extack.msg is None


@dataclass
class Port:
    """A PF, its scripted agent and one VF driver, the mailbox carried by hand."""

    pf: PfDriver
    agent: ScriptedAgent
    vf: VfDriver
    lose_to_vf: Callable[[bytes], bool] = lambda _data: False

    def run(self, now: float) -> None:
        """Carry config frames and mailbox messages until nothing moves."""
        while True:
            self.agent.serve(now)
            to_pf = self.vf.mailbox_messages()
            to_vf = [d for _vf, d in self.pf.mailbox_messages()]
            if not to_pf and not to_vf:
                return
            for data in to_pf:
                self.pf.mailbox_receive(0, data, now)
            for data in to_vf:
                if not self.lose_to_vf(data):
                    self.vf.mailbox_receive(data, now)


def port(**kw: object) -> Port:
    """A PF with one VF granted its resources; both wait by running the whole port."""
    pf, agent = loaded(**kw)
    pf.enable_vf(0, 1, VF_MAC)
    pf.tx_descriptors()
    vf = VfDriver(0, VF_MAC)
    p = Port(pf, agent, vf)
    pf.wait = vf.wait = Pump(p.run, [pf, vf])
    vf.start(0.0)
    p.run(0.0)
    return p


def mailbox_opcodes(messages: list[bytes]) -> list[int]:
    return [parse_mailbox(m).opcode for m in messages]


# -- events: answered every time, acted on once ---------------------------------------------


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (EventType.SOFT_EXPIRE, ExpireKind.SOFT),
        (EventType.HARD_EXPIRE, ExpireKind.HARD),
        (EventType.SEQ_SOFT_LIMIT, ExpireKind.SEQ_SOFT_LIMIT),
    ],
)
def test_an_expiry_of_the_pfs_own_sa_reaches_its_stack_once(
    event: EventType, kind: ExpireKind
) -> None:
    pf, agent = loaded()
    offload(pf, outbound(5, 0x100), 0.0)
    assert pf.sa_index == {5: 1}
    assert pf.events() == []  # the add returned its answer: no event for it
    txn = agent.event(event, 0.1, sa_index=1)
    agent.resend(txn, Event(event, agent.boot_id, 1), 0.11)  # its answer was lost
    agent.serve(0.11)
    assert [(a.opcode, a.txn_id, a.status, a.tlvs) for a in agent.answers] == [
        (0x89, txn, ConfigStatus.OK, ()),
        (0x89, txn, ConfigStatus.OK, ()),
    ]
    assert pf.events() == [StateExpired(5, kind)]
    assert StateExpired(5, kind).hard == (kind == ExpireKind.HARD)
    assert pf.channel.counters.event_copies == 1


def test_the_answer_to_an_event_is_byte_for_byte_the_spec_example() -> None:
    pf, agent = loaded()
    agent.send(
        ConfigMessage(Opcode.EVENT, 0x40, encode_event(Event(EventType.SOFT_EXPIRE, 1, 7))), 0.0
    )
    (answer,) = pf.tx_descriptors()
    assert answer.frame[14:] == bytes.fromhex("01 89 00 00 00 00 00 00 00 40 00 00")


def test_a_malformed_event_is_refused_and_an_unknown_sa_ignored() -> None:
    pf, agent = loaded()
    agent.send(ConfigMessage(Opcode.EVENT, 0x50, ()), 0.0)  # no EVENT_TYPE, no BOOT_ID
    agent.event(EventType.HARD_EXPIRE, 0.0, sa_index=33)  # nobody's SA
    agent.serve(0.0)
    assert [(a.txn_id, a.status) for a in agent.answers] == [
        (0x50, ConfigStatus.BAD_REQUEST),
        (agent.next_txn, ConfigStatus.OK),
    ]
    assert pf.events() == []
    assert pf.channel.counters.bad_events == 1
    assert pf.pf_counters.events_ignored == 1


def test_an_expiry_of_a_vfs_sa_reaches_the_vfs_stack_through_the_mailbox() -> None:
    p = port()
    offload(p.vf, outbound(7, 0x200), 0.0)
    assert p.vf.sa_index == {7: 1}
    assert p.vf.events() == []
    lost: list[bytes] = []

    def lose_first_expiry(data: bytes) -> bool:
        if parse_mailbox(data).opcode == MbxOpcode.EVENT_SA_EXPIRE and not lost:
            lost.append(data)
            return True
        return False

    p.lose_to_vf = lose_first_expiry
    p.agent.event(EventType.HARD_EXPIRE, 0.1, sa_index=1)
    p.run(0.1)
    assert lost and p.vf.events() == []
    assert p.pf.next_timer() == pytest.approx(0.1 + NOTICE_INTERVAL)
    p.pf.handle_timer(0.1 + NOTICE_INTERVAL)  # resent
    p.run(0.1 + NOTICE_INTERVAL)
    assert p.vf.events() == [StateExpired(7, ExpireKind.HARD)]
    assert not p.pf.waiting  # the VF's answer stopped the resends
    # a copy (say, a resend that crossed the answer) is answered again, not acted on
    p.vf.mailbox_receive(lost[0], 0.2)
    (answer,) = p.vf.mailbox_messages()
    assert parse_mailbox(answer).opcode == MbxOpcode.EVENT_SA_EXPIRE | MbxOpcode.REPLY
    assert p.vf.events() == []
    assert p.vf.vf_counters.notice_copies == 1


def test_the_stack_ignores_an_expiry_it_does_not_handle_yet() -> None:
    pf, _agent = loaded()
    stack = HostStack("pf", pf, PF_MAC, ipv4="10.0.0.1")
    pf._emit(StateExpired(1, ExpireKind.SOFT))
    stack.poll(0.0)
    assert stack.events() == []


# -- the mailbox message, byte for byte -----------------------------------------------------


def test_event_sa_expire_by_hand() -> None:
    body = encode_sa_expire(SaExpire(7, ExpireKind.HARD))
    data = build_mailbox(MailboxMessage(MbxOpcode.EVENT_SA_EXPIRE, 3, body))
    assert data == bytes.fromhex("01 07 00 00 00 00 00 03 00 05 00 00  00 00 00 07 03")
    message = parse_mailbox(data)
    assert decode_sa_expire(message.body) == SaExpire(7, ExpireKind.HARD)
    reply = build_mailbox(MailboxMessage(MbxOpcode.EVENT_SA_EXPIRE | MbxOpcode.REPLY, 3))
    assert reply == bytes.fromhex("01 87 00 00 00 00 00 03 00 00 00 00")
    soft = bytes.fromhex("00 01 02 03 02")
    assert decode_sa_expire(soft) == SaExpire(0x00010203, ExpireKind.SOFT)
    assert decode_sa_expire(bytes.fromhex("00 00 00 01 04")).kind == ExpireKind.SEQ_SOFT_LIMIT


@pytest.mark.parametrize(
    ("body", "offset"),
    [("00 00 00 07", 12), ("00 00 00 07 03 00", 12), ("00 00 00 07 01", 16)],
)
def test_event_sa_expire_refuses_a_bad_body(body: str, offset: int) -> None:
    with pytest.raises(ParseError) as error:
        decode_sa_expire(bytes.fromhex(body))
    assert error.value.offset == offset
    with pytest.raises(UsageError):
        encode_sa_expire(SaExpire(1 << 32, ExpireKind.SOFT))


# -- an agent restart --------------------------------------------------------------------------


@dataclass
class LiveSeq:
    value: int

    def __call__(self) -> int:
        return self.value


def test_agent_started_reinstalls_the_pfs_and_the_vfs_sas_with_their_live_seq() -> None:
    p = port()
    pf_seq, vf_seq = LiveSeq(1000), LiveSeq(2000)
    offload(p.pf, outbound(5, 0x100, pf_seq), 0.0)
    offload(p.vf, outbound(7, 0x200, vf_seq), 0.0)
    assert p.pf.sa_index == {5: 1} and p.vf.sa_index == {7: 2}
    p.agent.restart()
    pf_seq.value, vf_seq.value = 1500, 2500  # the stacks sent on (in software) meanwhile
    p.agent.event(EventType.AGENT_STARTED, 0.1)
    assert not p.pf.xdo_dev_offload_ok(5, ESP_L3)  # software until the re-add is answered
    p.run(0.1)
    assert p.pf.pf_counters.agent_restarts == 1
    seqs = {sa.request.spi: sa.request.seq for sa in p.agent.sad.values()}
    assert seqs == {0x100: 1500, 0x200: 2500}
    assert {sa.request.local_mac for sa in p.agent.sad.values()} == {PF_MAC, VF_MAC}
    assert p.pf.xdo_dev_offload_ok(5, ESP_L3) and p.vf.xdo_dev_offload_ok(7, ESP_L3)
    # nobody waited for the re-installs: each is told as an event
    assert p.pf.events() == [StateAddDone(5, 0, p.pf.sa_index[5])]
    assert p.vf.events() == [StateAddDone(7, 0, p.vf.sa_index[7])]
    owners = {e["owner"]: e["sa_index"] for e in p.pf.db.dump()}
    assert owners == {"PF": p.pf.sa_index[5], "VF0": p.vf.sa_index[7]}
    assert set(owners.values()) == set(p.agent.sad)
    # the restart was handled once: AGENT_STARTED again (a resend) changes nothing
    adds = sum(r.opcode == Opcode.ADD_SA for r in p.agent.requests)
    p.agent.event(EventType.AGENT_STARTED, 0.2)
    p.run(0.2)
    assert sum(r.opcode == Opcode.ADD_SA for r in p.agent.requests) == adds


def test_a_new_boot_id_in_get_caps_is_a_restart_when_agent_started_was_lost() -> None:
    pf, agent = loaded(caps_interval=1.0)
    seq = LiveSeq(77)
    offload(pf, outbound(5, 0x100, seq), 0.0)
    assert pf.resync.boot_id == 1 and pf.next_timer() == 1.0
    agent.restart()  # its AGENT_STARTED is lost
    pf.handle_timer(0.5)
    agent.serve(0.5)
    assert agent.sad == {}  # not due yet
    pf.handle_timer(1.0)
    agent.serve(1.0)
    assert pf.resync.boot_id == 2
    assert pf.pf_counters.agent_restarts == 1
    (sa,) = agent.sad.values()
    assert sa.request.seq == 77
    assert pf.next_timer() == 2.0
    assert pf.events() == [StateAddDone(5, 0, 1)]  # the re-install, and nothing else


def test_an_sa_that_cannot_be_reinstalled_is_demoted_to_software() -> None:
    p = port()
    offload(p.pf, outbound(5, 0x100), 0.0)
    offload(p.vf, outbound(7, 0x200), 0.0)
    p.agent.restart()
    p.agent.refuse_adds = ConfigStatus.NO_SPACE
    p.agent.event(EventType.AGENT_STARTED, 0.1)
    p.run(0.1)
    assert p.pf.events() == [OffloadLost(5, -Errno.ENOSPC)]
    assert p.vf.events() == [OffloadLost(7, -Errno.ENOSPC)]
    assert p.pf.sa_index == {} and p.vf.sa_index == {} and len(p.pf.db) == 0


def test_naive_resync_ignores_a_restart() -> None:
    pf, agent = loaded(resync=False, caps_interval=1.0)
    offload(pf, outbound(5, 0x100), 0.0)
    agent.restart()
    agent.event(EventType.AGENT_STARTED, 0.1)
    agent.serve(0.1)
    assert [a.status for a in agent.answers] == [ConfigStatus.OK]  # answered all the same
    assert agent.sad == {} and pf.sa_index == {5: 1}  # the stack believes it offloaded
    assert pf.next_timer() is None  # no probing either


# -- reconciliation ----------------------------------------------------------------------------


def test_after_a_lost_add_reply_list_sas_pages_through_the_sad_and_removes_the_orphan() -> None:
    pf, agent = loaded(timeout=0.001, retries=1)
    for handle in range(1, 6):
        offload(pf, outbound(handle, 0x100 + handle), 0.0)
    agent.page_bytes = 2 * 26 + 8  # two entries a page: three pages for six SAs
    agent.lose_replies = 2  # the ADD_SA and its one resend: the SA is added, no reply comes
    extack = ExtAck()
    assert pf.xdo_dev_state_add(outbound(9, 0x999), extack, 0.0) == -Errno.ETIMEDOUT
    assert extack.msg == ETIMEDOUT_TEXT
    assert waits(pf)[-1] == pytest.approx((0.0, 0.002))  # resent at 1 ms, given up at 2 ms
    counters = pf.channel.counters
    assert (counters.resends, counters.timeouts) == (1, 1)
    assert 9 not in pf.sa_index and pf.events() == []
    agent.serve(0.002)  # the listing the time-out started
    lists = [r for r in agent.requests if r.opcode == Opcode.LIST_SAS]
    assert [decode_list_sas_request(r.tlvs).cursor for r in lists] == [None, 3, 5]
    removed = [decode_sa_index(r.tlvs) for r in agent.requests if r.opcode == Opcode.REMOVE_SA]
    assert removed == [6]
    assert sorted(agent.sad) == sorted(pf.sa_index.values()) == [1, 2, 3, 4, 5]
    assert pf.pf_counters.orphans_removed == 1


def test_the_listing_spares_an_sa_whose_add_is_still_under_way() -> None:
    """The stack's adds are serialized: the first one's time-out starts the listing, and the
    second add waits while that listing is out. The LIST_SAS is lost and resent; the second
    ADD_SA reaches the agent in between and its reply is lost, so the listing shows both SAs
    while the second add is still under way: only the first one is an orphan, and the second
    add's resend is answered after the listing."""
    pf, agent = loaded(timeout=0.001, retries=1)
    agent.lose_replies = 3  # the first ADD_SA's two attempts, the second's first
    extack = ExtAck()
    assert pf.xdo_dev_state_add(outbound(1, 0x101), extack, 0.0) == -Errno.ETIMEDOUT
    assert extack.msg == ETIMEDOUT_TEXT
    assert waits(pf)[-1] == pytest.approx((0.0, 0.002))  # the listing is now on the ring
    agent.lost = lose_next(Opcode.LIST_SAS)
    extack = ExtAck()
    assert pf.xdo_dev_state_add(outbound(2, 0x102), extack, 0.0025) == 0
    assert extack.msg is None
    assert waits(pf)[-1] == pytest.approx((0.0025, 0.0035))  # answered on its resend
    opcodes = [r.opcode for r in agent.requests]
    assert opcodes == [
        Opcode.GET_CAPS,
        Opcode.ADD_SA,  # SA 1, reply lost
        Opcode.ADD_SA,  # its resend, reply lost: -ETIMEDOUT, the listing starts (lost)
        Opcode.ADD_SA,  # SA 2, reply lost
        Opcode.LIST_SAS,  # the resent listing shows SAs 1 and 2
        Opcode.REMOVE_SA,
        Opcode.ADD_SA,  # SA 2's resend, answered
    ]
    removed = [decode_sa_index(r.tlvs) for r in agent.requests if r.opcode == Opcode.REMOVE_SA]
    assert removed == [1]
    assert pf.pf_counters.orphans_removed == 1
    assert list(agent.sad) == [2] and pf.sa_index == {2: 2}
    assert [e["sa_index"] for e in pf.db.dump()] == [2]


def test_a_spec_1_0_agent_is_never_asked_to_list() -> None:
    pf, agent = loaded(timeout=0.001, retries=0)
    pf.caps = Caps((Algorithm.AES_GCM_128,), 64, 4096, None)
    agent.lose_replies = 1
    extack = ExtAck()
    assert pf.xdo_dev_state_add(outbound(1, 0x101), extack, 0.0) == -Errno.ETIMEDOUT
    assert extack.msg == ETIMEDOUT_TEXT
    agent.serve(0.001)
    assert len(agent.sad) == 1  # the orphan stays: a spec 1.0 agent cannot list
    assert not any(r.opcode == Opcode.LIST_SAS for r in agent.requests)


# -- the PF reset's notice to the VFs ------------------------------------------------------


def test_a_lost_event_pf_reset_is_resent_until_the_vf_asks_for_resources() -> None:
    p = port()
    offload(p.vf, outbound(7, 0x200), 0.0)
    p.lose_to_vf = lambda data: parse_mailbox(data).opcode == MbxOpcode.EVENT_PF_RESET
    p.pf.reset(0.1)
    p.run(0.1)
    assert p.agent.sad == {}
    for n in range(1, NOTICE_RESENDS + 1):
        p.pf.handle_timer(0.1 + n * NOTICE_INTERVAL)
        p.run(0.1 + n * NOTICE_INTERVAL)
    assert p.pf.pf_counters.notices_resent == NOTICE_RESENDS
    p.pf.handle_timer(0.5)
    assert p.pf.pf_counters.notices_unanswered == 1 and not p.pf.waiting
    # once one gets through, the VF re-adds; its REQUEST_RESOURCES ends the resends
    p.lose_to_vf = lambda _data: False
    p.pf.reset(1.0)
    p.run(1.0)
    assert p.vf.sa_index == {7: 1} and len(p.agent.sad) == 1
    assert not p.pf.waiting
    # a late copy of the event: the VF, READY, does not start again
    p.vf.mailbox_receive(build_mailbox(MailboxMessage(MbxOpcode.EVENT_PF_RESET, 2)), 1.1)
    assert mailbox_opcodes(p.vf.mailbox_messages()) == []


def test_the_first_agent_started_with_nothing_offloaded_is_only_recorded() -> None:
    pf = PfDriver(PF_MAC)
    agent = ScriptedAgent(pf, boot_id=9)
    agent.event(EventType.AGENT_STARTED, 0.0)
    agent.serve(0.0)
    assert pf.resync.boot_id == 9
    assert pf.pf_counters.agent_restarts == 0
    assert [r.opcode for r in agent.requests] == []


def test_a_delete_under_way_at_a_restart_completes_and_is_not_reinstalled() -> None:
    """xdo_dev_state_free waits for the REMOVE_SA, which never reaches the agent: it restarts.
    The restart ends the wait at once (the SA went with the old agent), without a time-out,
    and only the other state is re-installed."""
    pf, agent = loaded()
    offload(pf, outbound(5, 0x100), 0.0)
    offload(pf, outbound(6, 0x101), 0.0)
    pf.xdo_dev_state_delete(5, 0.1)
    agent.lost = restart_on(agent, Opcode.REMOVE_SA)
    pf.xdo_dev_state_free(5, 0.1)
    assert waits(pf)[-1] == (0.1, 0.1)
    assert pf.pf_counters.agent_restarts == 1
    assert (pf.channel.counters.resends, pf.channel.counters.timeouts) == (0, 0)
    assert [sa.request.spi for sa in agent.sad.values()] == [0x101]
    (index,) = agent.sad
    assert pf.sa_index == {6: index}
    assert pf.events() == [StateAddDone(6, 0, index)]  # no OffloadLost, no re-install of 5
    assert [(e["owner"], e["sa_index"]) for e in pf.db.dump()] == [("PF", index)]


def test_a_stats_read_under_way_at_a_restart_returns_none() -> None:
    """The GET_SA_STATS is lost with the restarting agent: the read gets no answer, and the
    restart ends its wait at once; the state is re-installed."""
    pf, agent = loaded()
    offload(pf, outbound(5, 0x100), 0.0)
    agent.lost = restart_on(agent, Opcode.GET_SA_STATS)
    assert pf.xdo_dev_state_update_stats(5, 0.1) is None
    assert waits(pf)[-1] == (0.1, 0.1)
    assert pf.channel.counters.timeouts == 0
    assert pf.pf_counters.agent_restarts == 1
    assert pf.sa_index == {5: 1} and list(agent.sad) == [1]
    assert pf.events() == [StateAddDone(5, 0, 1)]


def test_a_delete_whose_replies_are_lost_leaves_no_orphan() -> None:
    pf, agent = loaded(timeout=0.001, retries=0)
    offload(pf, outbound(5, 0x100), 0.0)
    pf.xdo_dev_state_delete(5, 0.1)
    agent.lost = lose_next(Opcode.REMOVE_SA)  # the SA stays in the agent
    pf.xdo_dev_state_free(5, 0.1)  # the stack frees the state whatever the answer
    assert waits(pf)[-1] == pytest.approx((0.1, 0.101))  # until the REMOVE_SA timed out
    assert pf.channel.counters.timeouts == 1
    assert pf.sa_index == {} and len(pf.db) == 0 and list(agent.sad) == [1]
    agent.serve(0.101)  # the listing the time-out started
    assert agent.sad == {}
    removed = [decode_sa_index(r.tlvs) for r in agent.requests if r.opcode == Opcode.REMOVE_SA]
    assert removed == [1]  # the orphan's REMOVE_SA (the stack's was lost)
    assert pf.pf_counters.orphans_removed == 1


def test_a_vfs_add_whose_replies_are_lost_leaves_no_orphan() -> None:
    p = port(timeout=0.001, retries=0)
    p.agent.lose_replies = 1
    extack = ExtAck()
    assert p.vf.xdo_dev_state_add(outbound(7, 0x200), extack, 0.0) == -Errno.ETIMEDOUT
    assert extack.msg == ETIMEDOUT_TEXT
    assert waits(p.vf)[-1] == pytest.approx((0.0, 0.001))
    assert p.vf.sa_index == {} and p.vf.events() == []
    # the SA was added (its reply lost), then listed and removed as an orphan
    assert [r.opcode for r in p.agent.requests] == [
        Opcode.GET_CAPS,
        Opcode.ADD_SA,
        Opcode.LIST_SAS,
        Opcode.REMOVE_SA,
    ]
    assert decode_sa_index(p.agent.requests[-1].tlvs) == 1
    assert p.agent.sad == {} and len(p.pf.db) == 0


def test_an_own_sa_missing_from_the_listing_is_reinstalled_with_its_live_seq() -> None:
    p = port()
    seq = LiveSeq(300)
    offload(p.pf, outbound(5, 0x100, seq), 0.0)
    offload(p.pf, outbound(6, 0x101), 0.0)
    offload(p.vf, outbound(7, 0x200), 0.0)
    del p.agent.sad[p.pf.sa_index[5]]  # gone from the agent behind the PF's back
    seq.value = 350
    p.pf.resync.reconcile(0.1)
    p.run(0.1)
    assert p.pf.pf_counters.sas_lost == 1
    assert p.pf.events() == [StateAddDone(5, 0, p.pf.sa_index[5])]
    assert p.agent.sad[p.pf.sa_index[5]].request.seq == 350
    assert sorted(p.agent.sad) == sorted(e["sa_index"] for e in p.pf.db.dump())
    assert len(p.agent.sad) == 3
