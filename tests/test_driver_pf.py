"""The PF driver's xdo_dev_state_add outcomes and its config channel (retries, txn ids).

The xdo_dev_* calls wait for the agent's answer (Linux's synchronous xfrmdev_ops): a Testbed's
`_wait` runs the port meanwhile; the driver alone is given the `Pump` of test_driver_resync.py,
which carries its frames to a scripted agent (or to a reply made by hand) and runs its timer.
"""

from __future__ import annotations

import pytest

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.agent.counters import Path
from ipsec_offload.driver.control import ConfigChannel, Errno
from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.driver.ring import ExtAck, OffloadState, TxOffload
from ipsec_offload.errors import SimulationError, UsageError
from ipsec_offload.host.stack import HostStack, StateResult
from ipsec_offload.host.xfrm import Offload, XfrmState
from ipsec_offload.nic.descriptors import RxDescriptor, TxDescriptor
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.config import (
    Algorithm,
    ConfigMessage,
    ConfigStatus,
    Direction,
    Opcode,
    SaStats,
    build_config,
    decode_sa_index,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet
from ipsec_offload.wire.ip import IpProto
from test_driver_resync import ESP_L3, Pump, loaded, outbound, waits

pytestmark = pytest.mark.usefixtures("nic_path")

KEY = bytes(range(20))
HOST = bytes.fromhex("c0000201")
PEER = bytes.fromhex("c0000202")


def is_config(frame: bytes) -> bool:
    """A config frame, bare (toward the agent) or behind an Rx metadata tag (from it)."""
    return frame[12:14] == b"\x88\xb6" or frame[12:14] + frame[18:20] == b"\x88\xb5\x88\xb6"


def bed_with(agent: AgentConfig | None = None, **host: object) -> tuple[Testbed, HostStack]:
    bed = Testbed(agent=agent)
    stack = bed.add_pf_host(
        "host",
        "02:00:00:00:01:00",
        ipv4="192.0.2.1",
        **host,  # type: ignore[arg-type]
    )
    bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    return bed, stack


def add_result(bed: Testbed, stack: HostStack, handle: int, spi: int) -> StateResult:
    """Offload one outbound state and return the StateResult of the add."""
    state = XfrmState(handle, Direction.OUTBOUND, spi, HOST, PEER, Algorithm.AES_GCM_128, KEY)
    stack.add_state(state, bed.now, offload=True)  # waits: the Testbed runs the port meanwhile
    bed.settle(stack)
    return [r for r in bed.results(stack) if r.handle == handle][-1]


def add(bed: Testbed, stack: HostStack, handle: int, spi: int) -> int:
    """Offload one outbound state and return the rc its StateResult reports."""
    return add_result(bed, stack, handle, spi).rc


def driver_of(bed: Testbed) -> PfDriver:
    driver = bed.endpoint("host").driver
    assert isinstance(driver, PfDriver)
    return driver


def test_add_ok() -> None:
    bed, stack = bed_with()
    assert add(bed, stack, 1, 0x100) == 0
    assert stack.states[1].offload == Offload.DEVICE
    assert driver_of(bed).sa_index == {1: 1}


def test_add_enospc_when_the_sad_is_full() -> None:
    bed, stack = bed_with(AgentConfig(sad_size=1))
    assert add(bed, stack, 1, 0x100) == 0
    result = add_result(bed, stack, 2, 0x101)
    assert result.rc == -Errno.ENOSPC
    assert result.extack == "no room for another SA (the agent's SAD or the VF's quota is full)"
    assert 2 not in stack.states  # the xfrm add failed: no software fallback
    assert len(bed.agent.sad) == 1


def test_add_eexist_for_the_same_key() -> None:
    bed, stack = bed_with()
    assert add(bed, stack, 1, 0x100) == 0
    result = add_result(bed, stack, 2, 0x100)
    assert result.rc == -Errno.EEXIST
    assert result.extack == "the agent holds an SA with this SPI and destination already"
    assert len(bed.agent.sad) == 1


def test_add_einval_for_a_bad_request() -> None:
    bed, stack = bed_with(port=3)  # the agent has one port: port 3 is a bad field
    result = add_result(bed, stack, 1, 0x100)
    assert result.rc == -Errno.EINVAL
    assert result.extack == "the agent refused the SA as invalid"
    assert len(bed.agent.sad) == 0


def test_add_eopnotsupp_from_the_agent_without_caps() -> None:
    bed, stack = bed_with()
    driver_of(bed).caps = None  # as if GET_CAPS was never asked: the agent refuses
    state = XfrmState(
        1, Direction.INBOUND, 0x100, PEER, HOST, Algorithm.AES_GCM_128, KEY, replay_window=8192
    )
    stack.add_state(state, bed.now, offload=True)
    bed.settle(stack)
    assert [(r.rc, r.extack) for r in bed.results(stack)] == [
        (-Errno.EOPNOTSUPP, "the device cannot offload this state")
    ]
    assert stack.states[1].offload == Offload.SOFTWARE
    assert bed.agent.counters.paths[Path.CONFIG_REQUEST] == 2  # GET_CAPS and ADD_SA


def test_add_etimedout_after_bounded_retries() -> None:
    bed, stack = bed_with()
    bed.lose("nic-to-agent", count=4, match=is_config)
    start = bed.now
    state = XfrmState(1, Direction.OUTBOUND, 0x100, HOST, PEER, Algorithm.AES_GCM_128, KEY)
    stack.add_state(state, start, offload=True)
    # the add returned when the driver gave up: 4 attempts, 1 ms apart (the StateResult is
    # stamped with the time of the call, so the wait shows in the Testbed's clock)
    assert bed.now - start == pytest.approx(0.004)
    bed.settle(stack)
    control = driver_of(bed).channel.counters
    assert (control.resends, control.timeouts) == (3, 1)
    assert bed.link_drops["nic-to-agent"] == 4
    assert 1 not in stack.states
    (result,) = bed.results(stack)
    assert (result.rc, result.extack) == (
        -Errno.ETIMEDOUT,
        "no answer from the agent (the config channel gave up after its retries)",
    )


def test_lost_request_is_recovered_by_the_retry() -> None:
    bed, stack = bed_with()
    bed.lose("nic-to-agent", count=1, match=is_config)
    assert add(bed, stack, 1, 0x100) == 0
    assert driver_of(bed).channel.counters.resends == 1
    assert len(bed.agent.sad) == 1


def test_lost_reply_retry_gets_the_same_reply_and_no_second_sa() -> None:
    bed, stack = bed_with()
    bed.lose("agent-to-nic", count=1, match=is_config)
    assert add(bed, stack, 1, 0x100) == 0
    replies = [r.frame for r in bed.captures["agent-to-nic"].records if is_config(r.frame)]
    assert replies[-1] == replies[-2]  # the remembered reply, byte for byte
    requests = [r.frame for r in bed.captures["nic-to-agent"].records if is_config(r.frame)]
    assert requests[-1] == requests[-2]  # the same txn_id resent
    assert bed.agent.counters.paths[Path.CONFIG_RETRANSMIT] == 1
    assert len(bed.agent.sad) == 1


def test_traffic_through_a_state_added_after_a_lost_frame() -> None:
    bed, stack = bed_with()
    peer = bed.endpoint("peer").stack
    bed.lose("nic-to-agent", count=2, match=is_config)
    sas = bed.secure(stack, peer)
    assert stack.states[sas.a_out.handle].offload == Offload.DEVICE
    stack.send_udp(PEER, 5, 6, b"after the retry", bed.now)
    bed.settle(stack)
    assert [d.payload for d in bed.delivered(peer)] == [b"after the retry"]


# -- the driver alone ----------------------------------------------------------------------


def make_driver() -> PfDriver:
    return PfDriver(bytes.fromhex("020000000100"), timeout=1.0, retries=1)


def reply_frame(driver: PfDriver, message: ConfigMessage) -> RxDescriptor:
    header = EthernetHeader(driver.mac, driver.agent_mac, EtherType.CONFIG)
    return RxDescriptor(build_ethernet(header) + build_config(message), None)


def test_driver_reply_completes_the_add_with_the_sa_index() -> None:
    driver = make_driver()
    sent: list[TxDescriptor] = []

    def agent(now: float) -> None:
        """Answer each ADD_SA with SA index 7, by the txn_id read from the frame's bytes."""
        for desc in driver.tx_descriptors():
            sent.append(desc)
            txn_id = int.from_bytes(desc.frame[14 + 6 : 14 + 10])
            reply = ConfigMessage(Opcode.ADD_SA | Opcode.REPLY, txn_id, encode_sa_index(7))
            driver.receive([reply_frame(driver, reply)], now)

    driver.wait = Pump(agent, [driver])
    state = OffloadState(9, Direction.OUTBOUND, 0x42, PEER, HOST, Algorithm.AES_GCM_128, KEY)
    extack = ExtAck()
    assert driver.xdo_dev_state_add(state, extack, 0.0) == 0
    assert extack.msg is None
    (desc,) = sent
    assert desc.l2tag is None and is_config(desc.frame)
    assert desc.frame[14:16] == bytes([1, Opcode.ADD_SA])  # version 1, ADD_SA
    assert waits(driver) == [(0.0, 0.0)] and driver.channel.counters.resends == 0
    assert driver.events() == []  # the call returned the answer: no event
    assert driver.sa_index == {9: 7}
    assert driver.xdo_dev_offload_ok(9, ESP_L3)
    driver.xmit(b"\x00" * 60, TxOffload(9, IpProto.UDP, 14, 20))
    (data,) = driver.tx_descriptors()
    assert data.l2tag == 0x80110E05  # OFFLOAD | next header 17 | L3 14 | ESP 20/4


def test_driver_ignores_stray_and_mismatched_replies() -> None:
    driver = make_driver()
    driver.probe(0.0)
    (desc,) = driver.tx_descriptors()
    txn_id = int.from_bytes(desc.frame[20:24])
    for message in (
        ConfigMessage(Opcode.GET_CAPS | Opcode.REPLY, 999, ()),  # nobody waits for 999
        ConfigMessage(Opcode.ADD_SA | Opcode.REPLY, txn_id, ()),  # wrong opcode
        ConfigMessage(Opcode.GET_CAPS, txn_id, ()),  # not a reply
    ):
        driver.receive([reply_frame(driver, message)], 0)
    assert driver.events() == []
    assert driver.channel.counters.stray_replies == 3
    assert driver.channel.pending == 1


def test_driver_misuse_raises_with_a_message() -> None:
    driver = make_driver()
    with pytest.raises(UsageError, match="not offloaded"):
        driver.xmit(b"\x00" * 60, TxOffload(1, 17, 14, 20))
    driver.sa_index[1] = 1
    with pytest.raises(UsageError, match="multiple of 4"):
        driver.xmit(b"\x00" * 60, TxOffload(1, 17, 14, 22))


def test_delete_free_and_stats_of_an_unknown_handle_send_nothing_and_do_not_wait() -> None:
    driver = make_driver()
    carried: list[float] = []
    driver.wait = Pump(carried.append, [driver])
    driver.xdo_dev_state_delete(5, 0.0)
    driver.xdo_dev_state_free(5, 0.0)
    assert driver.xdo_dev_state_update_stats(5, 0.0) is None
    assert waits(driver) == [] and carried == []
    assert driver.events() == []
    assert driver.tx_descriptors() == []


def test_an_add_without_a_waiter_says_what_to_give() -> None:
    driver = make_driver()
    state = OffloadState(9, Direction.OUTBOUND, 0x42, PEER, HOST, Algorithm.AES_GCM_128, KEY)
    with pytest.raises(SimulationError, match="give it a `wait` that runs the port"):
        driver.xdo_dev_state_add(state, ExtAck(), 0.0)


def test_update_stats_waits_for_the_agents_counters() -> None:
    pf, agent = loaded()
    assert pf.xdo_dev_state_add(outbound(5, 0x100), ExtAck(), 0.0) == 0
    agent.sad[1].stats = SaStats(3, 300, (0, 1, 0, 2, 0))
    assert pf.xdo_dev_state_update_stats(5, 0.1) == SaStats(3, 300, (0, 1, 0, 2, 0))
    request = agent.requests[-1]
    assert request.opcode == Opcode.GET_SA_STATS and decode_sa_index(request.tlvs) == 1
    assert waits(pf)[-1] == (0.1, 0.1)
    del agent.sad[1]  # the agent no longer holds it: NOT_FOUND, no counters
    assert pf.xdo_dev_state_update_stats(5, 0.2) is None
    assert agent.requests[-1].opcode == Opcode.GET_SA_STATS
    assert pf.events() == []


# -- the config channel's transaction table: every state and input --------------------------

REPLY_STATUS = ConfigStatus.NO_SPACE


def channel() -> ConfigChannel:
    return ConfigChannel(bytes(6), bytes.fromhex("020000000001"), timeout=1.0, retries=2)


def body(message: ConfigMessage) -> bytes:
    return build_config(message)


def test_channel_refuses_a_config_ethertype_beyond_16_bits() -> None:
    with pytest.raises(UsageError, match="ConfigChannel config_ethertype must be an EtherType"):
        ConfigChannel(bytes(6), bytes(6), config_ethertype=0x1_0000)


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        ("pending", "reply", ("done", -Errno.ENOSPC)),
        ("pending", "early-timer", ("pending", None)),
        ("pending", "deadline-with-retries-left", ("pending", "resent")),
        ("pending", "deadline-no-retries-left", ("done", -Errno.ETIMEDOUT)),
        ("done", "reply", ("done", "stray")),
        ("done", "deadline-with-retries-left", ("done", None)),
    ],
)
def test_transaction_table(state: str, event: str, expected: tuple[str, object]) -> None:
    ch = channel()
    txn_id, frame = ch.submit(Opcode.ADD_SA, (), 0.0)
    if event == "deadline-no-retries-left":
        ch.on_timer(1.0)
        ch.on_timer(2.0)
    if state == "done":
        assert (
            ch.on_reply(
                body(ConfigMessage(Opcode.ADD_SA | Opcode.REPLY, txn_id, (), status=REPLY_STATUS))
            )
            is not None
        )
    outcome: object = None
    if event == "reply":
        done = ch.on_reply(
            body(ConfigMessage(Opcode.ADD_SA | Opcode.REPLY, txn_id, (), status=REPLY_STATUS))
        )
        outcome = done.rc if done else ("stray" if ch.counters.stray_replies else None)
    elif event == "early-timer":
        resend, finished = ch.on_timer(0.5)
        outcome = None if not resend and not finished else (resend, finished)
    else:
        now = 1.0 if event == "deadline-with-retries-left" else 3.0
        resend, finished = ch.on_timer(now)
        if resend:
            assert resend == [frame]
            outcome = "resent"
        elif finished:
            assert finished[0].txn_id == txn_id and finished[0].reply is None
            outcome = finished[0].rc
    assert ("pending" if ch.pending else "done", outcome) == expected


def test_txn_ids_are_fresh_and_wrap_without_zero() -> None:
    ch = channel()
    ch.next_txn_id = 0xFFFFFFFF
    first, _ = ch.submit(Opcode.GET_CAPS, (), 0.0)
    second, _ = ch.submit(Opcode.GET_CAPS, (), 0.0)
    assert (first, second) == (0xFFFFFFFF, 1)
