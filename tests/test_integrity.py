"""Spec section 9, invariants 1 to 3: the three defects of spec 1.0's model, each first as
the naive hand-over or the open config plane shows it, then gone.

1. No nonce twice: a TSO send, then a reset (PF or VF, ESN or not, or a reset whose re-adds
   are lost so the state falls back to software), then more traffic on the same SA.
2. No replay accepted: a frame captured on the wire before a VF reset and sent again after.
3. Only the PF configures the agent: a trusted VF's crafted REMOVE_ALL_SAS.

Every check reads the wire (the link captures) or what applications received.
"""

from __future__ import annotations

import struct
from collections import Counter
from functools import partial

import pytest

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.agent.counters import DropReason
from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Offload
from ipsec_offload.sim.report import SadDiff, build_report, sad_diff
from ipsec_offload.sim.runner import prepare
from ipsec_offload.sim.scenario import Scenario, builtin_scenario
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.config import (
    ConfigMessage,
    Direction,
    Opcode,
    build_config,
    decode_add_sa,
    parse_config,
    parse_config_header,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet, parse_ethernet
from ipsec_offload.wire.mailbox import MbxOpcode, parse_mailbox
from ipsec_offload.wire.metadata import RxStatus, TxMetadata, build_tx_metadata
from ipsec_offload.wire.packet import find_esp

pytestmark = pytest.mark.usefixtures("agent_path", "nic_path")

PF_MAC, VM_MAC, PEER_MAC = "02:00:00:00:00:10", "02:00:00:00:01:01", "02:00:00:00:02:00"
_ESP_IV = struct.Struct(">IIQ")


def bed_with(*, own_sequence: bool = True, vf_filter: bool = True, pf_mac: bool = True) -> Testbed:
    agent = AgentConfig(pf_mac=bytes.fromhex(PF_MAC.replace(":", "")) if pf_mac else None)
    bed = Testbed(agent=agent, own_sequence=own_sequence)
    bed.add_pf_host("pf", PF_MAC, ipv4="10.0.0.1", vf_filter=vf_filter)
    return bed


def esp_on_wire(bed: Testbed) -> list[tuple[int, int]]:
    """(SPI, explicit IV) of every ESP frame the agent sent to the wire: the IV is the
    SA's 64-bit counter, the nonce's variable part (RFC 4106)."""
    found = []
    for record in bed.captures["agent-to-wire"]:
        eth = parse_ethernet(record.frame)
        if eth.ethertype == EtherType.IPV4 and record.frame[eth.header_len + 9] == 50:
            spi, _, iv = _ESP_IV.unpack_from(record.frame, eth.header_len + 20)
            found.append((spi, iv))
    return found


def reused(bed: Testbed) -> int:
    return sum(n - 1 for n in Counter(esp_on_wire(bed)).values())


def tso_then(bed: Testbed, host: HostStack, peer: HostStack, fault: str) -> list[bytes]:
    """A TSO send of five segments, the fault, then five datagrams on the same SA; returns
    the datagrams."""
    host.send_udp(peer.addresses[4], 40000, 5000, b"t" * 500, bed.now, mss=100)
    bed.settle(host)
    if fault == "reset_pf":
        bed.reset_pf()
    elif fault == "reset_vf":
        bed.reset_vf(host)
    else:  # the PF resets and every re-add of its SAs is lost: they fall back to software
        bed.lose("nic-to-agent", 100, lambda f: f[12:14] == b"\x88\xb6")
        bed.reset_pf()
        bed.run(until=bed.now + 0.1)
    after = [b"after the fault %d" % i for i in range(5)]
    for payload in after:
        host.send_udp(peer.addresses[4], 40001, 5001, payload, bed.now)
        bed.settle(host)
    return after


def setup(bed: Testbed, on_vf: bool, esn: bool) -> tuple[HostStack, HostStack, SaBundle]:
    host = bed.add_vm("vm", 0, VM_MAC, ipv4="10.0.0.2") if on_vf else bed.endpoint("pf").stack
    peer = bed.add_peer("peer", PEER_MAC, ipv4="10.0.0.9")
    return host, peer, bed.secure(host, peer, esn=esn)


FAULTS = [("reset_pf", False), ("reset_vf", True), ("lost re-adds", False)]


@pytest.mark.parametrize("esn", [False, True], ids=["32-bit", "esn"])
@pytest.mark.parametrize(("fault", "on_vf"), FAULTS, ids=[f for f, _ in FAULTS])
def test_naive_hand_over_reuses_nonces_after_a_tso_send_and_a_fault(
    fault: str, on_vf: bool, esn: bool
) -> None:
    bed = bed_with(own_sequence=False)
    host, peer, _ = setup(bed, on_vf, esn)
    after = tso_then(bed, host, peer, fault)
    assert reused(bed) == 4  # the agent or software starts again at the stack's 2
    got = [d.payload for d in bed.delivered(peer) if d.dst_port == 5001]
    assert got == after[4:]  # the peer drops the four reused numbers as replays
    assert peer.counters.drops == {"in_replay": 4}


@pytest.mark.parametrize("esn", [False, True], ids=["32-bit", "esn"])
@pytest.mark.parametrize(("fault", "on_vf"), FAULTS, ids=[f for f, _ in FAULTS])
def test_stack_owned_numbers_leave_once_through_every_fault(
    fault: str, on_vf: bool, esn: bool
) -> None:
    bed = bed_with()
    host, peer, sas = setup(bed, on_vf, esn)
    after = tso_then(bed, host, peer, fault)
    state = host.states[sas.a_out.handle]
    assert reused(bed) == 0
    assert [d.payload for d in bed.delivered(peer) if d.dst_port == 5001] == after
    numbers = [iv for _, iv in esp_on_wire(bed) if _ == state.spi]
    assert numbers == list(range(1, 11)) and state.oseq == 10
    assert state.offload == (Offload.SOFTWARE if fault == "lost re-adds" else Offload.DEVICE)
    assert peer.counters.drops == {}


def test_every_re_install_carries_the_stacks_numbers() -> None:
    """After a PF reset the re-adds carry SEQ: outbound the stack's next number, inbound the
    highest it accepted (spec 4's SEQ TLV)."""
    bed = bed_with()
    host, peer, sas = setup(bed, False, False)
    host.send_udp(peer.addresses[4], 1, 2, b"x" * 300, bed.now, mss=100)
    for n in range(4):
        peer.send_udp(host.addresses[4], 3, 4, b"in %d" % n, bed.now)
    bed.settle(host, peer)
    bed.captures["nic-to-agent"].clear()
    bed.reset_pf()
    adds = {}
    for record in bed.captures["nic-to-agent"]:
        eth = parse_ethernet(record.frame)
        message = parse_config(memoryview(record.frame)[eth.header_len :])
        if message.opcode == Opcode.ADD_SA:
            request = decode_add_sa(message.tlvs)
            adds[request.direction] = request.seq
    assert adds == {Direction.OUTBOUND: 4, Direction.INBOUND: 4}
    assert host.states[sas.a_out.handle].oseq == 3


# -- 2. no replay accepted ------------------------------------------------------------------


def replay_after_vf_reset(bed: Testbed) -> tuple[HostStack, list[bytes]]:
    vm, peer, _ = setup(bed, True, False)
    sent = [b"once only %d" % i for i in range(3)]
    for payload in sent:
        peer.send_udp(vm.addresses[4], 7, 7, payload, bed.now)
        bed.settle(peer)
    captured = bed.wire_frames_to(vm)
    bed.reset_vf(vm)
    bed.wire_inject(captured)  # an attacker on the wire
    return vm, sent


def test_naive_hand_over_delivers_a_replay_after_a_vf_reset() -> None:
    bed = bed_with(own_sequence=False)
    vm, sent = replay_after_vf_reset(bed)
    assert [d.payload for d in bed.delivered(vm)] == sent + sent
    assert bed.agent.counters.rx_status[RxStatus.REPLAY] == 0


def test_a_replay_after_a_vf_reset_is_refused_by_the_re_installed_window() -> None:
    bed = bed_with()
    vm, sent = replay_after_vf_reset(bed)
    assert [d.payload for d in bed.delivered(vm)] == sent
    assert bed.agent.counters.rx_status[RxStatus.REPLAY] == 3
    assert bed.endpoint(vm).driver.counters.rx_dropped["REPLAY"] == 3


def test_the_stack_checks_packets_the_agent_decrypted() -> None:
    """Should the agent's window forget (here: replaced by a fresh one), the stack's own
    window, checked for Rx status OK packets too, refuses the replay."""
    bed = bed_with()
    vm, peer, sas = setup(bed, True, False)
    for n in range(3):
        peer.send_udp(vm.addresses[4], 7, 7, b"datagram %d" % n, bed.now)
        bed.settle(peer)
    captured = bed.wire_frames_to(vm)
    inbound = next(sa for sa in bed.agent.sad if sa.direction == Direction.INBOUND)
    inbound.replay = ReplayWindow(64, False)
    bed.wire_inject(captured)
    assert [d.payload for d in bed.delivered(vm)] == [b"datagram %d" % n for n in range(3)]
    assert bed.agent.counters.rx_status[RxStatus.OK] == 6
    assert vm.counters.drops == {"in_replay": 3}
    assert vm.states[sas.a_in.handle].replay is not None


# -- 3. only the PF configures the agent ----------------------------------------------------


def crafted_remove_all(bed: Testbed, vm: HostStack) -> None:
    header = EthernetHeader(bed.agent.config.mac, vm.mac, EtherType.CONFIG)
    bed.inject(
        vm, build_ethernet(header) + build_config(ConfigMessage(Opcode.REMOVE_ALL_SAS, 7, ()))
    )


def trusted_vm_and_sas(bed: Testbed) -> HostStack:
    vm, peer, _ = setup(bed, True, False)
    bed.secure(bed.endpoint("pf").stack, peer)
    assert len(bed.agent.sad) == 4
    return vm


def test_open_config_plane_lets_a_trusted_vf_empty_the_sad() -> None:
    bed = bed_with(vf_filter=False, pf_mac=False)
    vm = trusted_vm_and_sas(bed)
    crafted_remove_all(bed, vm)
    assert len(bed.agent.sad) == 0
    replies = [r.frame for r in bed.captures["agent-to-nic"] if r.frame[:6] == vm.mac]
    assert len(replies) == 1


def test_the_nic_drops_a_trusted_vfs_config_frame_before_its_switch() -> None:
    bed = bed_with(pf_mac=False)
    vm = trusted_vm_and_sas(bed)
    crafted_remove_all(bed, vm)
    assert len(bed.agent.sad) == 4
    vsi = bed.nic.vsi(bed.endpoint(vm).vsi or 0)
    assert vsi.counters.tx_ethertype_filtered == 1
    assert not [r for r in bed.captures["nic-to-agent"] if r.frame[6:12] == vm.mac]


def test_the_nic_drops_a_trusted_vfs_in_band_metadata_tag() -> None:
    bed = bed_with()
    vm = trusted_vm_and_sas(bed)
    word = build_tx_metadata(TxMetadata(True, 17, 14, 5))
    header = EthernetHeader(bytes(6), vm.mac, EtherType.IPV4, metadata=word)
    bed.inject(vm, build_ethernet(header) + bytes(40))
    vsi = bed.nic.vsi(bed.endpoint(vm).vsi or 0)
    assert vsi.counters.tx_ethertype_filtered == 1


def test_the_agent_ignores_config_not_from_the_pf() -> None:
    """Without the NIC's filter, the agent given the PF's MAC ignores and counts the frame."""
    bed = bed_with(vf_filter=False)
    vm = trusted_vm_and_sas(bed)
    crafted_remove_all(bed, vm)
    assert len(bed.agent.sad) == 4
    assert bed.agent.counters.drops[DropReason.CONFIG_NOT_FROM_PF] == 1
    assert not [r for r in bed.captures["agent-to-nic"] if r.frame[:6] == vm.mac]


# -- a PF reset whose flush is lost once -----------------------------------------------------


def test_vfs_re_add_only_after_the_flush_so_a_resent_flush_takes_nothing_away() -> None:
    """The PF tells its VFs of its reset once REMOVE_ALL_SAS is answered. Were they told at
    once, a VF's re-add could reach the agent before the resend of a lost flush and be taken
    away by it, while the VM believes its SAs offloaded."""
    bed = bed_with()
    vm, peer, sas = setup(bed, True, False)
    bed.lose("nic-to-agent", 1, partial(is_config, Opcode.REMOVE_ALL_SAS, False))
    bed.reset_pf()
    bed.run(until=bed.now + 0.01)
    to_vfs = [r for r in bed.mailbox_log if not r.to_pf]
    told = [r.time for r in to_vfs if parse_mailbox(r.data).opcode == MbxOpcode.EVENT_PF_RESET]
    answered = [
        r.time
        for r in bed.captures["agent-to-nic"]
        if is_config(Opcode.REMOVE_ALL_SAS, True, r.frame)
    ]
    assert len(told) == 1 and len(answered) == 1 and told[0] > answered[0]
    states = (vm.states[sas.a_out.handle], vm.states[sas.a_in.handle])
    assert {s.offload for s in states} == {Offload.DEVICE}
    assert sad_diff(bed) == SadDiff(2, [], [])
    vm.send_udp(peer.addresses[4], 1, 2, b"after the reset", bed.now)
    bed.settle(vm)
    assert [d.payload for d in bed.delivered(peer)] == [b"after the reset"]


def is_config(opcode: Opcode, reply: bool, frame: bytes) -> bool:
    """Is `frame` a config request of `opcode` (or, with `reply`, a reply to one)?"""
    eth = parse_ethernet(frame)
    if eth.ethertype != EtherType.CONFIG:
        return False
    header = parse_config_header(memoryview(frame)[eth.header_len :])
    return header.is_reply == reply and header.base_opcode == opcode


# -- a duplicated mailbox message ------------------------------------------------------------


def test_a_duplicated_add_sa_mailbox_message_is_answered_once() -> None:
    """The PF takes a copy of a VF's ADD_SA (the same msg_id) as the message it has: while
    the original is with the agent the copy is dropped (the one reply answers both), never
    answered with EEXIST: the VF's state stays offloaded and its traffic protected."""
    bed = bed_with()
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4="10.0.0.2")
    peer = bed.add_peer("peer", PEER_MAC, ipv4="10.0.0.9")
    bed.duplicate("vf-to-pf", 2, lambda m: parse_mailbox(m).opcode == MbxOpcode.ADD_SA)
    sas = bed.secure(vm, peer)
    assert {vm.states[sas.a_out.handle].offload, vm.states[sas.a_in.handle].offload} == {
        Offload.DEVICE
    }
    assert bed.pf is not None and bed.pf.pf_counters.mailbox_duplicates == 2
    replies = [parse_mailbox(r.data) for r in bed.mailbox_log if not r.to_pf]
    adds = [m for m in replies if m.base_opcode == MbxOpcode.ADD_SA]
    assert [m.status for m in adds] == [0, 0]
    assert len(bed.agent.sad) == 2
    vm.send_udp(peer.addresses[4], 1, 2, b"protected", bed.now)
    bed.settle(vm)
    assert [d.payload for d in bed.delivered(peer)] == [b"protected"]
    # a copy that arrives after the reply gets the same reply again
    log = [(r, parse_mailbox(r.data)) for r in bed.mailbox_log]
    add = [(r, m) for r, m in log if r.to_pf and m.opcode == MbxOpcode.ADD_SA][-1]
    reply = next(r for r, m in log if not r.to_pf and m.is_reply and m.msg_id == add[1].msg_id)
    bed.pf.mailbox_receive(0, add[0].data, bed.now)
    assert bed.pf.mailbox_messages() == [(0, reply.data)]
    assert len(bed.agent.sad) == 2 and bed.pf.pf_counters.mailbox_duplicates == 3


# -- a first add that fails -------------------------------------------------------------------


def test_a_first_add_that_times_out_sends_nothing_in_clear() -> None:
    """The policies of a state whose add failed stay, as Linux's do: what they select is
    dropped (`out_no_state`), never sent in clear; a new pair of states replaces them."""
    bed = bed_with()
    host = bed.endpoint("pf").stack
    peer = bed.add_peer("peer", PEER_MAC, ipv4="10.0.0.9")
    bed.lose("nic-to-agent", 8, partial(is_config, Opcode.ADD_SA, False))
    bed.secure(host, peer)
    bed.run(until=bed.now + 0.01)
    assert sorted(r.rc for r in bed.results(host)) == [-110, -110] and not host.states
    host.send_udp(peer.addresses[4], 1, 2, b"never in clear", bed.now)
    host.send_udp(peer.addresses[4], 1, 2, b"nor this" * 200, bed.now, mss=500)
    bed.settle(host)
    assert host.counters.drops == {"out_no_state": 5}
    assert [r for r in bed.captures["agent-to-wire"] if find_esp(r.frame) is None] == []
    assert bed.delivered(peer) == []
    sas = bed.secure(host, peer)
    assert [p.state for p in host.policies] == [sas.a_out.handle, sas.a_in.handle]
    host.send_udp(peer.addresses[4], 1, 2, b"protected", bed.now)
    bed.settle(host)
    assert [d.payload for d in bed.delivered(peer)] == [b"protected"]


# -- the scenario events of spec 9.4 -----------------------------------------------------------


def test_lose_replies_loses_the_agents_replies_only() -> None:
    """A scenario's `lose_replies` event: the agent's next replies are lost on their way to
    the PF (its requests and the agent's events are not), and the PF's resend gets the
    agent's remembered reply."""
    text = builtin_scenario("basic")[0].model_dump(by_alias=True, exclude_none=True)
    text["event"] = [{"at": 0.0, "action": "lose_replies", "opcode": "add_sa", "count": 1}]
    run = prepare(Scenario.model_validate(text), "test")
    run.run()
    bed = run.bed
    assert bed.link_drops["agent-to-nic"] == 1 and bed.link_drops["nic-to-agent"] == 0
    assert bed.pf is not None and bed.pf.channel.counters.resends == 1
    host = run.hosts["host"]
    assert sum(s.offload == Offload.DEVICE for s in host.states.values()) == 3


@pytest.mark.parametrize("naive", [frozenset(), frozenset({"resync"})], ids=["fixed", "naive"])
def test_a_restart_whose_event_is_lost_is_found_by_the_pfs_get_caps(
    naive: frozenset[str],
) -> None:
    """A scenario's `lose_events` then `restart_agent`: no AGENT_STARTED reaches the PF; its
    GET_CAPS, every second, finds the new BOOT_ID and it re-installs its SAs, within the
    second the run goes on past its last event. `--naive resync` never finds it."""
    text = builtin_scenario("basic")[0].model_dump(by_alias=True, exclude_none=True)
    text["event"] = [
        {"at": 0.005, "action": "lose_events", "count": 6},
        {"at": 0.005, "action": "restart_agent"},
    ]
    run = prepare(Scenario.model_validate(text), "test", naive)
    run.run()
    bed = run.bed
    assert bed.link_drops["agent-to-nic"] == 6 and bed.pf is not None
    view = next(
        c for c in build_report(run)["invariants"] if c["challenge"] == "One view of the SAD"
    )
    if naive:
        assert view["outcome"] == "FAILED" and len(bed.agent.sad) == 0
        assert bed.pf.pf_counters.agent_restarts == 0
    else:
        assert view["outcome"] == "held" and len(bed.agent.sad) > 0
        assert bed.pf.pf_counters.restarts_by_caps == bed.pf.pf_counters.agent_restarts == 1
    assert any("EVENT frame(s) are lost" in e.what for e in run.events)
