"""SR-IOV: each challenge of the deck, first with the naive design (the failure the deck
predicts), then with the deck's design (the failure gone)."""

from __future__ import annotations

import pickle

import pytest

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.agent.counters import Path
from ipsec_offload.driver.pf import PfDriver, VfState
from ipsec_offload.driver.ring import no_waiter
from ipsec_offload.driver.vf import Kek, VfDriver, VfDriverState
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Offload
from ipsec_offload.nic.nic import SwitchMode
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.config import ConfigMessage, Opcode, build_config
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag, build_ethernet
from ipsec_offload.wire.mailbox import (
    DelSas,
    MailboxMessage,
    MbxOpcode,
    SaUpdate,
    build_mailbox,
    encode_del_sas,
    encode_sa_update,
    parse_mailbox,
)
from ipsec_offload.wire.metadata import RxStatus
from test_testbed_faults import mailbox_is

pytestmark = pytest.mark.usefixtures("agent_path", "nic_path")

KEK = bytes(range(100, 116))
AGENT_MAC = bytes.fromhex("020000000001")
V10 = (VlanTag(0x8100, 10),)
V20 = (VlanTag(0x8100, 20),)
QINQ_10 = (VlanTag(0x88A8, 100), VlanTag(0x8100, 10))
QINQ_20 = (VlanTag(0x88A8, 100), VlanTag(0x8100, 20))


def sriov_bed(mode: SwitchMode = SwitchMode.VEB, **pf: object) -> Testbed:
    bed = Testbed(mode=mode, agent=AgentConfig(keks={7: KEK}))
    bed.add_pf_host("pf", "02:00:00:00:00:10", ipv4="10.0.0.1", **pf)  # type: ignore[arg-type]
    return bed


def pf_of(bed: Testbed) -> PfDriver:
    assert bed.pf is not None
    return bed.pf


def udp_payloads(bed: Testbed, delivered_to: HostStack) -> list[bytes]:
    return [d.payload for d in bed.delivered(delivered_to)]


# -- 1. false match across SAD domains ------------------------------------------------------


def false_match(extended_key: bool, vlans1: tuple[VlanTag, ...], vlans2: tuple[VlanTag, ...]):  # type: ignore[no-untyped-def]
    """Two VMs with the same address on different VLANs, the same inbound SPI; VM1's SA is
    offloaded, VM2's is in software. Each remote peer sends five datagrams to its VM."""
    bed = sriov_bed(extended_key=extended_key)
    vm1 = bed.add_vm("vm1", 0, "02:00:00:00:01:01", ipv4="192.168.1.100", vlans=vlans1)
    vm2 = bed.add_vm("vm2", 1, "02:00:00:00:01:02", ipv4="192.168.1.100", vlans=vlans2)
    peer1 = bed.add_peer("peer1", "02:00:00:00:02:01", ipv4="192.168.1.1", vlans=vlans1)
    peer2 = bed.add_peer("peer2", "02:00:00:00:02:02", ipv4="192.168.1.1", vlans=vlans2)
    bed.secure(vm1, peer1, spis=(0x101, 0x1), offload_a=True)
    bed.secure(vm2, peer2, spis=(0x102, 0x1), offload_a=False)
    sent = [f"datagram {i}".encode() for i in range(5)]
    for payload in sent:
        # VM2's datagram first: its sequence number is then still fresh in VM1's window, so a
        # false match shows as AUTH_FAILED (after VM1's, it would be refused as a REPLAY).
        peer2.send_udp("192.168.1.100", 7, 7, payload, bed.now)
        bed.settle(peer2)
        peer1.send_udp("192.168.1.100", 7, 7, payload, bed.now)
        bed.settle(peer1)
    return bed, vm1, vm2, sent


@pytest.mark.parametrize(("vlans1", "vlans2"), [(V10, V20), (QINQ_10, QINQ_20)])
def test_false_match_naive_key_decrypts_with_the_wrong_sa(
    vlans1: tuple[VlanTag, ...], vlans2: tuple[VlanTag, ...]
) -> None:
    bed, vm1, vm2, sent = false_match(False, vlans1, vlans2)
    assert udp_payloads(bed, vm1) == sent
    assert udp_payloads(bed, vm2) == []  # every datagram for VM2 is lost
    assert bed.agent.counters.rx_status[RxStatus.AUTH_FAILED] == 5
    vf2 = bed.endpoint(vm2).driver
    assert isinstance(vf2, VfDriver)
    assert vf2.counters.rx_dropped["AUTH_FAILED"] == 5
    (vm1_sa,) = [sa for sa in bed.agent.sad if sa.spi == 1]
    assert vm1_sa.domain is None and vm1_sa.errors[RxStatus.AUTH_FAILED - 1] == 5


@pytest.mark.parametrize(("vlans1", "vlans2"), [(V10, V20), (QINQ_10, QINQ_20)])
def test_false_match_extended_key_gives_no_sa_and_software_decrypts(
    vlans1: tuple[VlanTag, ...], vlans2: tuple[VlanTag, ...]
) -> None:
    bed, vm1, vm2, sent = false_match(True, vlans1, vlans2)
    assert udp_payloads(bed, vm1) == sent
    assert udp_payloads(bed, vm2) == sent
    assert all(d.offloaded for d in bed.delivered(vm1))
    assert not any(d.offloaded for d in bed.delivered(vm2))
    assert bed.agent.counters.rx_status[RxStatus.NO_SA] == 5
    assert bed.agent.counters.rx_status[RxStatus.AUTH_FAILED] == 0
    assert vm2.counters.rx_esp_software == 5


# -- 2. abandoned SAs -------------------------------------------------------------------------


def vm_with_sas(bed: Testbed, name: str, vf: int, pairs: int) -> HostStack:
    index = vf + 1
    vm = bed.add_vm(name, vf, f"02:00:00:00:01:{index:02x}", ipv4=f"10.0.{index}.100")
    peer = bed.add_peer(f"{name}-peer", f"02:00:00:00:02:{index:02x}", ipv4=f"10.0.{index}.1")
    for _ in range(pairs):
        bed.secure(vm, peer)
    return vm


def live_sa_count(bed: Testbed) -> int:
    return sum(
        1
        for ep in bed.endpoints.values()
        for state in ep.stack.states.values()
        if state.offload == Offload.DEVICE
    )


def test_abandoned_sas_stay_as_orphans_without_the_ownership_db() -> None:
    bed = sriov_bed(ownership_db=False)
    vm_with_sas(bed, "vm1", 0, pairs=2)
    assert len(bed.agent.sad) == 4
    bed.destroy_vm("vm1")
    bed.add_vm("vm1-new", 0, "02:00:00:00:01:01", ipv4="10.0.1.100")
    assert len(bed.agent.sad) == 4  # nobody owns these any more
    assert live_sa_count(bed) == 0
    assert pf_of(bed).pf_counters.orphans_left == 4


def test_abandoned_sas_removed_before_resources_are_granted() -> None:
    bed = sriov_bed()
    vm_with_sas(bed, "vm1", 0, pairs=2)
    bystander = vm_with_sas(bed, "vm2", 1, pairs=1)
    assert len(bed.agent.sad) == 6
    # One removal is lost once on the link, so the clean-up takes a retry (1 ms) and the new
    # VM's REQUEST_RESOURCES arrives while it is still under way.
    bed.lose("nic-to-agent", count=1, match=lambda f: f[12:14] == b"\x88\xb6" and f[15] == 2)
    ep = bed.endpoint("vm1")
    bed._remove(ep)
    pf_of(bed).vf_flr(0, bed.now)
    new_vm = bed.add_vm("vm1-new", 0, "02:00:00:00:01:01", ipv4="10.0.1.100")
    assert pf_of(bed).vfs[0].state == VfState.ACTIVE
    new_driver = bed.endpoint(new_vm).driver
    assert isinstance(new_driver, VfDriver) and new_driver.state == VfDriverState.READY
    # The REQUEST_RESOURCES reply left the PF only after the agent confirmed the last removal.
    removals = [
        r.time
        for r in bed.captures["agent-to-nic"].records
        if r.frame[18:20] == b"\x88\xb6" and r.frame[21] == 0x82
    ]
    grant = [
        r.time
        for r in bed.mailbox_log
        if not r.to_pf
        and r.vf == 0
        and parse_mailbox(r.data).opcode == MbxOpcode.REQUEST_RESOURCES | MbxOpcode.REPLY
    ][-1]
    assert len(removals) == 4 and grant > max(removals)
    assert bed.link_drops["nic-to-agent"] == 1
    # The SAD holds exactly the live SAs: the bystander's.
    assert len(bed.agent.sad) == 2 == live_sa_count(bed)
    assert {sa.domain.mac for sa in bed.agent.sad if sa.domain} == {bystander.mac}
    assert pf_of(bed).pf_counters.cleanup_removed == 4


def test_vf_reset_readds_its_sas() -> None:
    bed = sriov_bed()
    vm = vm_with_sas(bed, "vm1", 0, pairs=1)
    before = {(sa.spi, sa.direction) for sa in bed.agent.sad}
    bed.reset_vf(vm)
    assert {(sa.spi, sa.direction) for sa in bed.agent.sad} == before
    vf = bed.endpoint(vm).driver
    assert isinstance(vf, VfDriver) and vf.vf_counters.readds == 2
    # the VF removed its SAs itself, in one DEL_SAS (ALL) before its RESET: nothing was left
    # for the PF's clean-up
    assert vf.vf_counters.bulk_deletes == 1
    assert pf_of(bed).pf_counters.cleanup_removed == 0
    vm.send_udp("10.0.1.1", 1, 1, b"after the reset", bed.now)
    bed.settle(vm)
    assert udp_payloads(bed, bed.endpoint("vm1-peer").stack) == [b"after the reset"]


def test_pf_reset_flushes_and_everyone_readds() -> None:
    bed = sriov_bed()
    peer = bed.add_peer("wire0", "02:00:00:00:00:20", ipv4="10.0.0.2")
    bed.secure(bed.endpoint("pf").stack, peer)
    vm_with_sas(bed, "vm1", 0, pairs=1)
    vm_with_sas(bed, "vm2", 1, pairs=2)
    assert len(bed.agent.sad) == 8
    bed.reset_pf()
    assert bed.agent.counters.paths[Path.CONFIG_REQUEST] > 0
    assert len(bed.agent.sad) == 8 == live_sa_count(bed)
    assert len(pf_of(bed).db) == 8
    assert sorted(pf_of(bed).db.indexes()) == sorted(sa.index for sa in bed.agent.sad)


def test_vf_removal_cleans_up_and_disables() -> None:
    bed = sriov_bed()
    vm_with_sas(bed, "vm1", 0, pairs=1)
    vsis_before = len(bed.nic.vsis)
    bed.remove_vf(0)
    assert len(bed.agent.sad) == 0
    assert pf_of(bed).vfs[0].state == VfState.DISABLED
    assert len(bed.nic.vsis) == vsis_before - 1


# -- 3. malicious VF ------------------------------------------------------------------------------


def remove_all_frame(src_mac: bytes) -> bytes:
    header = EthernetHeader(AGENT_MAC, src_mac, EtherType.CONFIG)
    return build_ethernet(header) + build_config(ConfigMessage(Opcode.REMOVE_ALL_SAS, 77, ()))


@pytest.mark.parametrize("port_tagging", [False, True])
def test_malicious_vf_config_frame(port_tagging: bool) -> None:
    bed = sriov_bed(port_tagging=port_tagging)
    vm_with_sas(bed, "victim", 0, pairs=2)
    attacker = bed.add_vm("attacker", 1, "02:00:00:00:01:02", ipv4="10.0.2.100", trusted=False)
    crafted = remove_all_frame(attacker.mac)
    bed.inject(attacker, crafted)
    vsi = bed.nic.vsi(bed.endpoint(attacker).vsi or 0)
    if not port_tagging:
        assert len(bed.agent.sad) == 0  # the victim's SAs vanished
        assert bed.agent.counters.paths[Path.CONFIG_REQUEST] >= 1
        assert crafted not in [r.frame for r in bed.captures["agent-to-wire"].records]
    else:
        assert len(bed.agent.sad) == 4  # unchanged
        assert vsi.counters.tx_port_tagged == 1
        assert bed.agent.counters.paths[Path.TX_BYPASS] == 1
        assert bed.captures["agent-to-wire"].records[-1].frame == crafted  # carried as data


def test_untrusted_vf_gets_no_offload_through_the_mailbox() -> None:
    bed = sriov_bed()
    vm = bed.add_vm("vm", 0, "02:00:00:00:01:01", ipv4="10.0.1.100", trusted=False)
    peer = bed.add_peer("peer", "02:00:00:00:02:01", ipv4="10.0.1.1")
    sas = bed.secure(vm, peer)
    assert vm.states[sas.a_out.handle].offload == Offload.SOFTWARE
    # GET_CAPS said no crypto: the VF has no NETIF_F_HW_ESP and the stack never asks it
    assert [(r.rc, r.offload) for r in bed.results(vm)] == [(0, Offload.SOFTWARE)] * 2
    opcodes = [parse_mailbox(r.data).opcode for r in bed.mailbox_log if r.to_pf and r.vf == 0]
    assert MbxOpcode.ADD_SA not in opcodes
    vm.send_udp("10.0.1.1", 1, 2, b"still flows", bed.now)
    bed.settle(vm)
    assert udp_payloads(bed, peer) == [b"still flows"]


# -- 4. key protection ----------------------------------------------------------------------------


def test_key_protection_keeps_keys_from_the_pf() -> None:
    bed = sriov_bed()
    vm = bed.add_vm("vm", 0, "02:00:00:00:01:01", ipv4="10.0.1.100", kek=Kek(7, KEK))
    peer = bed.add_peer("peer", "02:00:00:00:02:01", ipv4="10.0.1.1")
    sas = bed.secure(vm, peer)
    assert vm.states[sas.a_out.handle].offload == Offload.DEVICE
    keys = [sas.a_out.key_material, sas.a_in.key_material]
    pf = pf_of(bed)
    pf.wait = no_waiter  # the testbed's waiter holds the whole port, the agent's keys too
    held = pickle.dumps(pf) + repr(pf.dump()).encode()
    seen = held + b"".join(r.data for r in bed.mailbox_log)
    seen += b"".join(r.frame for r in bed.captures["nic-to-agent"].records)
    for key in keys:
        for part in (key, key[:16], key[4:20]):
            assert part not in seen
    vm.send_udp("10.0.1.1", 1, 2, b"wrapped", bed.now)
    bed.settle(vm)
    assert udp_payloads(bed, peer) == [b"wrapped"]


def test_wrong_kek_is_key_unwrap_failed_and_einval() -> None:
    bed = sriov_bed()
    vm = bed.add_vm("vm", 0, "02:00:00:00:01:01", ipv4="10.0.1.100", kek=Kek(7, bytes(16)))
    peer = bed.add_peer("peer", "02:00:00:00:02:01", ipv4="10.0.1.1")
    sas = bed.secure(vm, peer)
    assert sorted(r.rc for r in bed.results(vm)) == [-22, -22]
    assert sas.a_out.handle not in vm.states  # the xfrm add failed
    assert len(bed.agent.sad) == 0
    # its policies stay, as Linux's do: what they select is dropped, never sent in clear
    assert [p.state for p in vm.policies] == [sas.a_out.handle, sas.a_in.handle]
    vm.send_udp("10.0.1.1", 1, 2, b"never in clear", bed.now)
    bed.settle(vm)
    assert vm.counters.drops == {"out_no_state": 1} and udp_payloads(bed, peer) == []


# -- 5. hostile mailbox ---------------------------------------------------------------------------


def test_hostile_mailbox_messages_get_errors_and_change_nothing() -> None:
    bed = sriov_bed()
    vm_with_sas(bed, "victim", 0, pairs=1)
    bed.add_vm("evil", 1, "02:00:00:00:01:02", ipv4="10.0.2.100")
    sad_before = bed.agent.dump()["sas"]
    db_before = pf_of(bed).db.dump()
    victim_handle = pf_of(bed).db.owned_by(0)[0].handle

    def ask(data: bytes) -> tuple[int, int]:
        (reply,) = bed.mailbox_inject(1, data)
        message = parse_mailbox(reply)
        return message.opcode, message.status

    garbage = bytes(range(40))
    assert ask(garbage) == (MbxOpcode.ERROR | MbxOpcode.REPLY, 22)
    assert ask(b"\x01\x02" + bytes(600)) == (MbxOpcode.ERROR | MbxOpcode.REPLY, 90)
    foreign = build_mailbox(MailboxMessage(MbxOpcode.DEL_SA, 5, victim_handle.to_bytes(4)))
    assert ask(foreign) == (MbxOpcode.DEL_SA | MbxOpcode.REPLY, 2)  # ENOENT: not its handle
    bad_body = build_mailbox(MailboxMessage(MbxOpcode.ADD_SA, 6, b"\x00\x00\x00\x01\xff"))
    assert ask(bad_body) == (MbxOpcode.ADD_SA | MbxOpcode.REPLY, 22)
    a_reply = build_mailbox(MailboxMessage(MbxOpcode.ADD_SA | MbxOpcode.REPLY, 7))
    assert ask(a_reply) == (MbxOpcode.ERROR | MbxOpcode.REPLY, 22)
    # virtchnl's inline IPsec messages: the victim's handle is no handle of this VF's
    for msg_id, opcode, body in (
        (8, MbxOpcode.READ_SA, victim_handle.to_bytes(4)),
        (9, MbxOpcode.UPDATE_SA, encode_sa_update(SaUpdate(victim_handle, 1))),
        (10, MbxOpcode.DEL_SAS, encode_del_sas(DelSas((victim_handle,)))),
    ):
        assert ask(build_mailbox(MailboxMessage(opcode, msg_id, body))) == (opcode | 0x80, 2)
    every = encode_del_sas(DelSas(all_sas=True))  # all of its own: none
    assert ask(build_mailbox(MailboxMessage(MbxOpcode.DEL_SAS, 11, every))) == (0x8A, 0)
    truncated = encode_del_sas(DelSas((1, 2)))[:-1]
    assert ask(build_mailbox(MailboxMessage(MbxOpcode.DEL_SAS, 12, truncated))) == (0x8A, 22)
    event = build_mailbox(MailboxMessage(MbxOpcode.EVENT_CRYPTO, 13, b"\x01"))
    assert ask(event) == (MbxOpcode.ERROR | MbxOpcode.REPLY, 22)  # the PF's message, not a VF's
    assert bed.agent.dump()["sas"] == sad_before
    assert pf_of(bed).db.dump() == db_before


def test_out_of_order_add_before_resources_is_eperm() -> None:
    bed = sriov_bed()
    bed.nic.add_vsi(1, bytes.fromhex("020000000105"))  # a VF whose driver never said hello
    pf_of(bed).enable_vf(4, bed.nic.vsis[-1].vsi_id, bytes.fromhex("020000000105"))
    (reply,) = bed.mailbox_inject(4, build_mailbox(MailboxMessage(MbxOpcode.DEL_SA, 1, bytes(4))))
    assert parse_mailbox(reply).status == 1  # EPERM
    assert pf_of(bed).vfs[4].state == VfState.INIT


# -- 6. east-west ---------------------------------------------------------------------------------


def east_west(mode: SwitchMode) -> tuple[Testbed, HostStack, HostStack]:
    bed = sriov_bed(mode=mode)
    vm1 = bed.add_vm("vm1", 0, "02:00:00:00:01:01", ipv4="10.0.9.1")
    vm2 = bed.add_vm("vm2", 1, "02:00:00:00:01:02", ipv4="10.0.9.2")
    bed.secure(vm1, vm2, offload_a=True, offload_b=True)
    for i in range(3):
        vm1.send_udp("10.0.9.2", 5, 5, f"east-west {i}".encode(), bed.now)
        bed.settle(vm1)
    return bed, vm1, vm2


def test_east_west_in_veb_never_reaches_the_agent() -> None:
    bed, vm1, vm2 = east_west(SwitchMode.VEB)
    assert udp_payloads(bed, vm2) == []
    assert vm2.counters.drops == {"in_auth_failed": 3}  # plaintext ESP cannot be processed
    assert bed.agent.counters.paths[Path.TX_ENCRYPTED] == 0
    vsi = bed.nic.vsi(bed.endpoint(vm1).vsi or 0)
    assert vsi.counters.tx_switched == 3


def test_east_west_in_vepa_goes_through_the_hairpin() -> None:
    bed, _vm1, vm2 = east_west(SwitchMode.VEPA)
    delivered = bed.delivered(vm2)
    assert [d.payload for d in delivered] == [f"east-west {i}".encode() for i in range(3)]
    assert all(d.offloaded for d in delivered)
    assert bed.agent.counters.paths[Path.HAIRPIN] == 3
    assert bed.agent.counters.paths[Path.TX_ENCRYPTED] == 3
    assert len(bed.captures["agent-to-wire"]) == 0
    hairpinned = bed.captures["agent-hairpin"].records
    assert len(hairpinned) == 3
    assert all(b"east-west" not in r.frame for r in hairpinned)  # encrypted on the way


def test_broadcast_reaches_every_vsi_once_in_both_modes() -> None:
    for mode in (SwitchMode.VEB, SwitchMode.VEPA):
        bed = sriov_bed(mode=mode)
        vm1 = bed.add_vm("vm1", 0, "02:00:00:00:01:01", ipv4="10.0.9.1")
        bed.add_vm("vm2", 1, "02:00:00:00:01:02", ipv4="10.0.9.2")
        bed.add_vm("vm3", 2, "02:00:00:00:01:03", ipv4="10.0.9.3")
        before = {v.vsi_id: v.counters.rx_packets for v in bed.nic.vsis}
        frame = build_ethernet(EthernetHeader(b"\xff" * 6, vm1.mac, 0x88B7)) + bytes(46)
        bed.inject(vm1, frame)
        after = {v.vsi_id: v.counters.rx_packets - before[v.vsi_id] for v in bed.nic.vsis}
        sender = bed.endpoint(vm1).vsi
        assert after == {vsi: 0 if vsi == sender else 1 for vsi in after}, mode
        assert [r.frame for r in bed.captures["agent-to-wire"].records] == [frame], mode


# -- 7. scale -------------------------------------------------------------------------------------


def test_scale_64_vfs_with_64_sas_each() -> None:
    bed = Testbed(agent=AgentConfig(sad_size=4096))
    bed.add_pf_host("pf", "02:00:00:00:00:10", ipv4="10.0.0.1")
    vms = []
    for vf in range(64):
        vm = bed.add_vm(f"vm{vf}", vf, f"02:00:00:01:00:{vf:02x}", ipv4=f"10.1.{vf}.100")
        peer = bed.add_peer(f"peer{vf}", f"02:00:00:02:00:{vf:02x}", ipv4=f"10.1.{vf}.1")
        for _ in range(32):
            bed.secure(vm, peer, protocol=17)
        vms.append((vm, peer))
    assert len(bed.agent.sad) == 4096 == len(pf_of(bed).db)
    for vm, peer in vms:
        vm.send_udp(peer.addresses[4], 9, 9, vm.name.encode(), bed.now)
    bed.settle(*[vm for vm, _ in vms])
    assert all(udp_payloads(bed, peer) == [vm.name.encode()] for vm, peer in vms)
    for vf in range(64):
        bed.destroy_vm(f"vm{vf}")
    assert len(bed.agent.sad) == 0 == len(pf_of(bed).db)


def test_offload_lost_after_a_reset_falls_back_to_software() -> None:
    bed = sriov_bed()
    vm = vm_with_sas(bed, "vm1", 0, pairs=1)
    pf_of(bed).set_vf_trust(0, False, bed.now)  # re-adding will be refused
    bed.reset_vf(vm)
    assert [s.offload for s in vm.states.values()] == [Offload.SOFTWARE, Offload.SOFTWARE]
    assert vm.counters.offload_lost == 2
    assert [r.operation for r in bed.results(vm)][-2:] == ["lost", "lost"]
    assert len(bed.agent.sad) == 0
    vm.send_udp("10.0.1.1", 1, 1, b"software now", bed.now)
    bed.settle(vm)
    assert udp_payloads(bed, bed.endpoint("vm1-peer").stack) == [b"software now"]


def forged_offload_frame(
    attacker: HostStack, victim_spi: int, src: bytes, dst: bytes, dst_mac: bytes
) -> bytes:
    """ESP from the victim's address to `dst` behind a Tx metadata tag with OFFLOAD=1 that
    the VF wrote itself (anti-spoof checks MAC and VLANs, not IP addresses)."""
    from ipsec_offload.wire.ip import IpProto, IPv4Header, build_ipv4
    from ipsec_offload.wire.metadata import TxMetadata, build_tx_metadata

    esp = victim_spi.to_bytes(4) + (1).to_bytes(4) + (1).to_bytes(8) + b"forged payload"
    ip = build_ipv4(IPv4Header(src, dst, IpProto.ESP, 20 + len(esp)))
    word = build_tx_metadata(TxMetadata(True, IpProto.UDP, 14, 5))
    header = EthernetHeader(dst_mac, attacker.mac, EtherType.IPV4, metadata=word)
    return build_ethernet(header) + ip + esp


@pytest.mark.parametrize("port_tagging", [False, True])
def test_malicious_vf_forged_offload_tag(port_tagging: bool) -> None:
    bed = sriov_bed(port_tagging=port_tagging, extended_key=False)
    host = bed.endpoint("pf").stack
    peer = bed.add_peer("wire0", "02:00:00:00:00:20", ipv4="10.0.0.2")
    sas = bed.secure(host, peer)
    attacker = bed.add_vm("attacker", 1, "02:00:00:00:01:02", ipv4="10.0.0.66", trusted=False)
    frame = forged_offload_frame(attacker, sas.a_out.spi, sas.a_out.src, sas.a_out.dst, peer.mac)
    (victim,) = [sa for sa in bed.agent.sad if sa.spi == sas.a_out.spi]
    bed.inject(attacker, frame)
    (on_wire,) = [r.frame for r in bed.captures["agent-to-wire"].records]
    if not port_tagging:
        # The agent obeys the forged tag: the frame leaves encrypted under the host's SA.
        assert victim.packets == 1 and victim.ivdb == 2
        assert b"forged payload" not in on_wire
        assert bed.agent.counters.paths[Path.TX_ENCRYPTED] == 1
    else:
        assert victim.packets == 0 and victim.ivdb == 1
        assert on_wire == frame  # carried as plain data, the forged tag inside
        assert bed.agent.counters.paths[Path.TX_BYPASS] == 1
        assert bed.nic.vsi(bed.endpoint(attacker).vsi or 0).counters.tx_port_tagged == 1


def test_a_vf_that_lost_its_trust_but_still_offloads_sends_nothing_in_clear() -> None:
    """The port tag takes effect when the PF's commands run; the VF learns of it only from
    EVENT_CRYPTO (here every copy is lost). Meanwhile its offload requests are dropped by the
    NIC: the port tag would replace them, and the frame would leave unencrypted."""
    bed = sriov_bed()
    vm = bed.add_vm("vm", 0, "02:00:00:00:01:01", ipv4="10.0.1.100")
    peer = bed.add_peer("peer", "02:00:00:00:02:01", ipv4="10.0.1.1")
    sas = bed.secure(vm, peer)
    bed.lose("pf-to-vf", 100, mailbox_is(MbxOpcode.EVENT_CRYPTO, reply=False))
    pf_of(bed).set_vf_trust(0, False, bed.now)
    bed.settle(bed.endpoint("pf").stack)
    assert sas.a_out.offload == Offload.DEVICE  # the VF does not know
    vm.send_udp("10.0.1.1", 1, 2, b"SECRET-PAYLOAD", bed.now)
    bed.settle(vm, peer)
    vsi = bed.nic.vsi(bed.endpoint(vm).vsi or 0)
    assert vsi.counters.tx_offload_refused == 1 and vsi.counters.tx_packets == 0
    assert not any(b"SECRET" in r.frame for r in bed.captures["agent-to-wire"].records)
    assert udp_payloads(bed, peer) == []
