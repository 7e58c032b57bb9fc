"""The testbed's faults (spec section 9): lost, duplicated and delayed frames on every link and
messages in both mailbox directions, an attacker on the wire, SAs that start mid-stream and
the keys of every SA.

What each shows is read from the captures, the mailbox log and the components' state."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ipsec_offload.agent.agent import IpsecAgent
from ipsec_offload.agent.counters import Path as AgentPath
from ipsec_offload.driver.vf import VfDriver
from ipsec_offload.errors import UsageError
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Offload
from ipsec_offload.sim.golden import replay
from ipsec_offload.sim.testbed import FAULT_TARGETS, SaBundle, SaKey, Testbed
from ipsec_offload.wire.config import Algorithm, Opcode, parse_config_header
from ipsec_offload.wire.ethernet import EtherType, parse_ethernet
from ipsec_offload.wire.mailbox import (
    MailboxMessage,
    MbxOpcode,
    build_mailbox,
    decode_handle_tlvs,
    parse_mailbox,
)
from ipsec_offload.wire.packet import find_esp

SEQ_MASK = 0xFFFF_FFFF


def two_hosts(**secure: object) -> tuple[Testbed, HostStack, HostStack, SaBundle]:
    """A PF host and a remote peer with one SA pair, offloaded on the host's side."""
    bed = Testbed()
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    return bed, host, peer, bed.secure(host, peer, **secure)  # type: ignore[arg-type]


def vm_and_peer() -> tuple[Testbed, HostStack, HostStack]:
    bed = Testbed()
    bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    vm = bed.add_vm("vm", 0, "02:00:00:00:03:00", ipv4="192.0.2.3")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    return bed, vm, peer


def config_opcode(frame: bytes) -> int | None:
    """The opcode of a config frame (request or reply), None for any other frame."""
    eth = parse_ethernet(frame)
    if eth.ethertype != EtherType.CONFIG:
        return None
    return parse_config_header(frame[eth.header_len :]).opcode


def is_add_sa(frame: bytes) -> bool:
    return config_opcode(frame) == Opcode.ADD_SA


def mailbox_is(opcode: MbxOpcode, reply: bool) -> Callable[[bytes], bool]:
    def match(data: bytes) -> bool:
        message = parse_mailbox(data)
        return message.base_opcode == opcode and message.is_reply == reply

    return match


def frames(bed: Testbed, link: str, match: Callable[[bytes], bool]) -> list[tuple[float, bytes]]:
    return [(r.time, r.frame) for r in bed.captures[link].records if match(r.frame)]


def payloads(bed: Testbed, host: HostStack) -> list[bytes]:
    return [d.payload for d in bed.delivered(host)]


def send(bed: Testbed, source: HostStack, to: HostStack, *data: bytes) -> None:
    for index, payload in enumerate(data):
        source.send_udp(to.addresses[4], 1000 + index, 53, payload, bed.now)
    bed.settle(source)


# -- faults on links ------------------------------------------------------------------------


def test_a_duplicated_config_request_gets_the_remembered_reply_twice() -> None:
    bed = Testbed()
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    bed.duplicate("nic-to-agent", 1, is_add_sa)
    bundle = bed.secure(host, peer)
    requests = frames(bed, "nic-to-agent", is_add_sa)
    replies = frames(bed, "agent-to-nic", lambda f: config_opcode(f) == Opcode.ADD_SA | 0x80)
    assert len(requests) == 3 and requests[0] == requests[1]  # back to back, same time
    assert len(replies) == 3 and replies[0] == replies[1]  # the same reply, from memory
    assert bed.link_duplicates["nic-to-agent"] == 1
    assert bed.agent.counters.paths[AgentPath.CONFIG_RETRANSMIT] == 1
    assert bed.pf is not None and bed.pf.channel.counters.stray_replies == 1
    assert len(bed.agent.sad) == 2  # added once
    assert bundle.a_out.offload == bundle.a_in.offload == Offload.DEVICE


def test_a_delayed_add_sa_is_overtaken_by_its_retry() -> None:
    bed = Testbed()
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    bed.delay("nic-to-agent", 1, 0.0015, is_add_sa)  # the driver retries after 1 ms
    bundle = bed.secure(host, peer)
    # recorded as they arrive: the retry (sent at 1 ms), the second state's ADD_SA (sent once
    # the first is answered: state adds run one at a time), and the late original
    (t_retry, retry), (t_other, other), (t_late, late) = frames(bed, "nic-to-agent", is_add_sa)
    assert retry == late != other
    assert t_retry < t_other < t_late == pytest.approx(t_retry - 0.001 + 0.0015)
    assert bed.link_delays["nic-to-agent"] == 1
    assert bed.pf is not None and bed.pf.channel.counters.resends == 1
    assert bed.pf.channel.counters.stray_replies == 1  # the late one's reply, from memory
    assert bed.agent.counters.paths[AgentPath.CONFIG_RETRANSMIT] == 1
    assert len(bed.agent.sad) == 2
    assert bundle.a_out.offload == Offload.DEVICE


def test_a_lost_frame_is_neither_recorded_nor_delivered() -> None:
    bed, host, peer, _ = two_hosts()
    bed.lose("wire-to-agent", 1)
    send(bed, peer, host, b"lost", b"kept")
    assert payloads(bed, host) == [b"kept"]
    assert bed.link_drops["wire-to-agent"] == 1
    assert len(bed.captures["wire-to-agent"]) == 1


def test_a_delayed_frame_is_overtaken_and_recorded_when_it_arrives() -> None:
    bed, host, peer, _ = two_hosts()
    bed.delay("wire-to-agent", 1, 1e-4)
    send(bed, peer, host, b"one", b"two", b"three")
    assert payloads(bed, host) == [b"two", b"three", b"one"]
    records = bed.captures["wire-to-agent"].records
    assert records[2].time == pytest.approx(records[0].time + 1e-4)
    assert [find_esp(r.frame).seq for r in records] == [2, 3, 1]  # type: ignore[union-attr]
    assert bed.link_delays["wire-to-agent"] == 1


def test_a_frame_duplicated_toward_the_peer_is_recorded_once_and_refused_once() -> None:
    """The agent's output links are recorded as the agent emitted them (before the faults)."""
    bed, host, peer, _ = two_hosts()
    bed.duplicate("agent-to-wire", 1)
    send(bed, host, peer, b"once")
    assert len(bed.captures["agent-to-wire"]) == 1
    assert payloads(bed, peer) == [b"once"]
    assert peer.counters.drops == {"in_replay": 1}
    assert bed.link_duplicates["agent-to-wire"] == 1


def test_the_golden_model_reproduces_a_run_with_duplicates_and_delays_on_every_link() -> None:
    bed = Testbed()
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    bed.delay("agent-to-nic", 1, 0.002)  # the ADD_SA reply, after the driver's retry
    bed.secure(host, peer)
    assert bed.pf is not None and bed.pf.channel.counters.stray_replies == 1
    bed.duplicate("nic-to-agent", 2, lambda f: config_opcode(f) is None)
    bed.delay("nic-to-agent", 1, 3e-6, lambda f: config_opcode(f) is None)
    bed.duplicate("wire-to-agent", 1)
    bed.delay("wire-to-agent", 2, 5e-6)
    bed.duplicate("agent-to-wire", 1)
    bed.delay("agent-to-wire", 1, 2e-6)
    for i in range(4):
        host.send_udp(peer.addresses[4], 1000 + i, 53, b"x" * i, bed.now)
        peer.send_udp(host.addresses[4], 53, 1000 + i, b"y" * i, bed.now)
        bed.settle(host, peer)
    assert not bed.faults
    assert bed.link_duplicates == dict.fromkeys(FAULT_TARGETS, 0) | {
        "nic-to-agent": 2,
        "wire-to-agent": 1,
        "agent-to-wire": 1,
    }
    assert bed.link_delays == dict.fromkeys(FAULT_TARGETS, 0) | {
        "agent-to-nic": 1,
        "nic-to-agent": 1,
        "wire-to-agent": 2,
        "agent-to-wire": 1,
    }
    caps = bed.captures
    result = replay(
        IpsecAgent(bed.agent.config), caps["nic-to-agent"].records, caps["wire-to-agent"].records
    )
    assert result.host_out == list(caps["agent-to-nic"].records)
    assert result.wire_out == list(caps["agent-to-wire"].records)


# -- faults on the mailbox ------------------------------------------------------------------


def added_handles(bed: Testbed) -> list[int]:
    """The xfrm handles of the ADD_SA messages the PF received, in order."""
    adds = [r for r in bed.mailbox_log if r.to_pf and mailbox_is(MbxOpcode.ADD_SA, False)(r.data)]
    return [decode_handle_tlvs(parse_mailbox(r.data).body)[0] for r in adds]


def test_a_lost_mailbox_add_sa_is_sent_again_and_offloaded() -> None:
    """The VF resends a request whose reply is late (10 ms; spec 9: a mailbox message may be
    lost): the lost ADD_SA arrives the second time and the state is offloaded after all."""
    bed, vm, peer = vm_and_peer()
    bed.lose("vf-to-pf", 1, mailbox_is(MbxOpcode.ADD_SA, False))
    bundle = bed.secure(vm, peer)
    assert added_handles(bed) == [bundle.a_out.handle, bundle.a_in.handle]
    assert bed.link_drops["vf-to-pf"] == 1
    driver = bed.endpoint(vm).driver
    assert isinstance(driver, VfDriver) and driver.vf_counters.mailbox_resent == 1
    assert {bundle.a_out.offload, bundle.a_in.offload} == {Offload.DEVICE}
    assert sorted(sa.spi for sa in bed.agent.sad) == sorted((bundle.a_in.spi, bundle.a_out.spi))
    send(bed, vm, peer, b"offloaded")
    assert vm.counters.tx_esp_software == 0 and vm.counters.tx_esp_offloaded == 1
    assert payloads(bed, peer) == [b"offloaded"]


def test_a_duplicated_mailbox_reply_is_logged_twice_and_counted_stray() -> None:
    bed, vm, peer = vm_and_peer()
    bed.duplicate("pf-to-vf", 1, mailbox_is(MbxOpcode.ADD_SA, True))
    bundle = bed.secure(vm, peer)
    replies = [r for r in bed.mailbox_log if mailbox_is(MbxOpcode.ADD_SA, True)(r.data)]
    assert len(replies) == 3 and replies[0] == replies[1]
    assert bed.link_duplicates["pf-to-vf"] == 1
    driver = bed.endpoint(vm).driver
    assert driver.vf_counters.mailbox_stray == 1  # type: ignore[union-attr]
    assert bundle.a_out.offload == bundle.a_in.offload == Offload.DEVICE


def test_a_delayed_mailbox_message_is_overtaken_and_logged_when_delivered() -> None:
    """An ADD_SA 15 ms late is overtaken by its resend (at 10 ms); the PF answers the late
    copy as the same request, and the state is in the agent once."""
    bed, vm, peer = vm_and_peer()
    bed.delay("vf-to-pf", 1, 0.015, mailbox_is(MbxOpcode.ADD_SA, False))
    bundle = bed.secure(vm, peer)
    adds = [r for r in bed.mailbox_log if mailbox_is(MbxOpcode.ADD_SA, False)(r.data)]
    assert added_handles(bed) == [bundle.a_out.handle, bundle.a_in.handle, bundle.a_out.handle]
    assert adds[2].time == pytest.approx(adds[0].time - 0.010 + 0.015)
    assert len(bed.agent.sad) == 2
    assert bed.link_delays["vf-to-pf"] == 1
    assert bundle.a_out.offload == bundle.a_in.offload == Offload.DEVICE


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda bed: bed.lose("wire", 1), "unknown link 'wire'"),
        (lambda bed: bed.duplicate("vf-to-pf", 0), "count is 0"),
        (lambda bed: bed.delay("pf-to-vf", 1, 0), "delay of 0 seconds"),
        (lambda bed: bed.delay("pf-to-vf", 1, float("nan")), "delay of nan seconds"),
    ],
)
def test_a_fault_must_name_a_link_a_count_and_a_delay(
    call: Callable[[Testbed], None], message: str
) -> None:
    bed = Testbed()
    with pytest.raises(UsageError, match=message):
        call(bed)
    assert not bed.faults


# -- an attacker on the wire ------------------------------------------------------------------


def test_an_attacker_replays_the_last_frame_toward_a_host() -> None:
    bed, host, peer, _ = two_hosts()
    send(bed, peer, host, b"first", b"second")
    send(bed, host, peer, b"answer")  # toward the peer: not toward the host
    toward = bed.wire_frames_to(host)
    assert toward == [r.frame for r in bed.captures["wire-to-agent"].records]
    assert bed.wire_frames_to("host", last=1) == toward[1:]
    assert bed.wire_frames_to(host, last=5) == toward and bed.wire_frames_to(host, last=0) == []
    bed.wire_inject(toward[1:])
    assert bed.wire_injections == toward[1:]
    assert bed.captures["wire-to-agent"].records[-1].frame == toward[1]
    assert payloads(bed, host) == [b"first", b"second"]  # the agent's window refused it
    assert bed.agent.counters.rx_status[3] == 1  # REPLAY
    bed.lose("wire-to-agent", 1)
    bed.wire_inject(toward[:1])  # subject to the link's faults, remembered all the same
    assert bed.wire_injections == toward[1:] + toward[:1]
    assert len(bed.captures["wire-to-agent"]) == 3


def test_wire_frames_to_a_destroyed_vm_and_bad_arguments() -> None:
    bed, vm, peer = vm_and_peer()
    bed.secure(vm, peer)
    send(bed, peer, vm, b"to the vm")
    bed.destroy_vm(vm)
    assert len(bed.wire_frames_to("vm")) == 1
    with pytest.raises(UsageError, match="no host named 'nobody'"):
        bed.wire_frames_to("nobody")
    with pytest.raises(UsageError, match="last=-1"):
        bed.wire_frames_to("vm", last=-1)
    with pytest.raises(UsageError, match="as bytes"):
        bed.wire_inject([bytearray(60)])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="capture=True"):
        Testbed(capture=False).wire_frames_to(vm)


# -- SAs that start mid-stream ---------------------------------------------------------------


def first_esp(bed: Testbed, link: str) -> tuple[int, int]:
    found = find_esp(bed.captures[link].records[0].frame)
    assert found is not None
    return found.seq, found.iv


def test_an_sa_starting_mid_stream_sends_seq_start_plus_one_first() -> None:
    bed, host, peer, bundle = two_hosts(seq_start=1000)
    assert bundle.a_out.oseq == bundle.b_out.oseq == 1000
    assert bundle.a_in.replay is not None and bundle.a_in.replay.highest == 1000
    send(bed, host, peer, b"out")
    send(bed, peer, host, b"back")
    assert first_esp(bed, "agent-to-wire") == first_esp(bed, "wire-to-agent") == (1001, 1001)
    assert payloads(bed, peer) == [b"out"] and payloads(bed, host) == [b"back"]


@pytest.mark.parametrize("offload_a", [True, False])
def test_an_esn_sa_crosses_2_to_the_32(offload_a: bool) -> None:
    start = 2**32 - 3
    bed, host, peer, _ = two_hosts(esn=True, seq_start=start, offload_a=offload_a)
    data = [b"packet %d" % i for i in range(6)]
    send(bed, host, peer, *data)
    found = [find_esp(r.frame) for r in bed.captures["agent-to-wire"].records]
    ivs = [f.iv for f in found if f is not None]
    assert ivs == list(range(start + 1, start + 7))
    assert [f.seq for f in found if f is not None] == [iv & SEQ_MASK for iv in ivs]
    assert payloads(bed, peer) == data
    if not offload_a:  # the host's inbound window crosses too (in software)
        send(bed, peer, host, *data)
        assert payloads(bed, host) == data


@pytest.mark.parametrize(
    ("esn", "seq_start"),
    [(False, 2**32 - 1), (False, -1), (True, 2**64 - 1)],
)
def test_seq_start_leaves_room_for_a_first_packet(esn: bool, seq_start: int) -> None:
    bed = Testbed()
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    with pytest.raises(UsageError, match=f"seq_start {seq_start}: with .* use 0 .. "):
        bed.secure(host, peer, esn=esn, seq_start=seq_start)
    assert not bed.sa_keys and not host.states


# -- the keys of every SA -----------------------------------------------------------------------


def test_sa_keys_holds_every_sa_also_once_its_host_is_gone() -> None:
    bed, vm, peer = vm_and_peer()
    first = bed.secure(vm, peer)
    second = bed.secure(vm, peer, family=4, algorithm=Algorithm.AES_GCM_256, esn=True)
    bed.destroy_vm(vm)
    expected = {
        (s.src, s.dst, s.spi): SaKey(s.key_material, s.algorithm, s.esn)
        for s in (first.a_out, first.b_out, second.a_out, second.b_out)
    }
    assert bed.sa_keys == expected
    assert bed.sa_keys[second.b_out.src, second.b_out.dst, second.b_out.spi].esn
    assert len(bed.esp_sa_entries()) == 4  # the peer's states, as before


def test_an_add_sa_delayed_past_its_give_up_is_removed_at_the_next_probe() -> None:
    """The first ADD_SA is 10 ms late and its resends are lost: the add fails (-ETIMEDOUT)
    at 4 ms and the listing then finds nothing; the late copy adds the SA at 10 ms, an
    orphan, which the listing at the next GET_CAPS probe (1 s) removes."""
    bed = Testbed()
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    bed.delay("nic-to-agent", 1, 0.010, is_add_sa)
    bed.lose("nic-to-agent", 3, is_add_sa)
    start = bed.now
    bundle = bed.secure(host, peer, offload_b=False)
    assert bundle.a_out.handle not in host.states  # the add failed
    bed.run(until=start + 0.5)
    # the inbound SA, offloaded, and the orphan
    assert sorted(sa.spi for sa in bed.agent.sad) == [bundle.a_out.spi, bundle.a_in.spi]
    bed.run(until=start + 1.1)
    assert [sa.spi for sa in bed.agent.sad] == [bundle.a_in.spi]
    assert bed.pf is not None and bed.pf.pf_counters.orphans_removed == 1


def test_mailbox_inject_returns_its_answer_and_delivers_the_rest() -> None:
    """A hostile VF's message gets its answer back; a notice the PF queued for another VF
    meanwhile goes over the mailbox at once, not on its resend 10 ms later."""
    bed, _vm, _peer = vm_and_peer()
    bed.add_vm("vm2", 1, "02:00:00:00:01:02", ipv4="192.0.2.12")
    assert bed.pf is not None
    start = bed.now
    bed.pf.set_vf_trust(0, False, bed.now)  # EVENT_CRYPTO for the VM's VF, queued
    hostile = build_mailbox(MailboxMessage(MbxOpcode.GET_CAPS, 77))
    replies = bed.mailbox_inject(1, hostile)
    assert [parse_mailbox(r).msg_id for r in replies] == [77]
    notices = [
        r
        for r in bed.mailbox_log
        if not r.to_pf and r.vf == 0 and mailbox_is(MbxOpcode.EVENT_CRYPTO, False)(r.data)
    ]
    assert notices and notices[0].time < start + 0.001
