"""The testbed's faults (spec section 9): lost, duplicated and delayed frames on every link and
messages in both mailbox directions.

What each shows is read from the captures, the mailbox log and the components' state."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ipsec_offload.agent.agent import IpsecAgent
from ipsec_offload.agent.counters import Path as AgentPath
from ipsec_offload.errors import UsageError
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Offload
from ipsec_offload.sim.golden import replay
from ipsec_offload.sim.testbed import FAULT_TARGETS, SaBundle, Testbed
from ipsec_offload.wire.config import Opcode, parse_config_header
from ipsec_offload.wire.ethernet import EtherType, parse_ethernet
from ipsec_offload.wire.mailbox import MbxOpcode, decode_handle_tlvs, parse_mailbox
from ipsec_offload.wire.packet import find_esp


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
    (t_in, other), (t_retry, retry), (t_late, late) = frames(bed, "nic-to-agent", is_add_sa)
    assert retry == late != other
    assert t_in < t_retry < t_late == pytest.approx(t_in + 0.0015)
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
    result = replay(IpsecAgent(), caps["nic-to-agent"].records, caps["wire-to-agent"].records)
    assert result.host_out == list(caps["agent-to-nic"].records)
    assert result.wire_out == list(caps["agent-to-wire"].records)


# -- faults on the mailbox ------------------------------------------------------------------


def added_handles(bed: Testbed) -> list[int]:
    """The xfrm handles of the ADD_SA messages the PF received, in order."""
    adds = [r for r in bed.mailbox_log if r.to_pf and mailbox_is(MbxOpcode.ADD_SA, False)(r.data)]
    return [decode_handle_tlvs(parse_mailbox(r.data).body)[0] for r in adds]


def test_a_lost_mailbox_add_sa_leaves_the_state_in_software() -> None:
    bed, vm, peer = vm_and_peer()
    bed.lose("vf-to-pf", 1, mailbox_is(MbxOpcode.ADD_SA, False))
    bundle = bed.secure(vm, peer)
    assert added_handles(bed) == [bundle.a_in.handle]  # the lost one was never delivered
    assert bed.link_drops["vf-to-pf"] == 1
    assert bundle.a_out.offload != Offload.DEVICE and bundle.a_in.offload == Offload.DEVICE
    assert [sa.spi for sa in bed.agent.sad] == [bundle.a_in.spi]
    send(bed, vm, peer, b"in software")
    assert vm.counters.tx_esp_software == 1 and vm.counters.tx_esp_offloaded == 0
    assert payloads(bed, peer) == [b"in software"]


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
    bed, vm, peer = vm_and_peer()
    bed.delay("vf-to-pf", 1, 2e-4, mailbox_is(MbxOpcode.ADD_SA, False))
    bundle = bed.secure(vm, peer)
    assert added_handles(bed) == [bundle.a_in.handle, bundle.a_out.handle]
    adds = [r for r in bed.mailbox_log if mailbox_is(MbxOpcode.ADD_SA, False)(r.data)]
    assert adds[1].time == pytest.approx(adds[0].time + 2e-4)
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
