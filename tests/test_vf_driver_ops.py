"""The VF driver's inline IPsec messages (driver/vf.py, vf_states.py, vf_mailbox.py), through
the testbed: GET_CAPS before READY and the features it sets, EVENT_CRYPTO OFF and ON on a live
VM, an ADD_SA refused EACCES, READ_SA behind update_stats, UPDATE_SA behind advance_esn, and
DEL_SAS ALL before a reset's RESET.

Each test reads what went over the mailbox (`Testbed.mailbox_log`: what was delivered), the
return codes and extack texts the stack got, where each state's ESP work happens, the wire,
and the counters."""

from __future__ import annotations

import struct
from collections import Counter

from ipsec_offload.driver.control import Errno
from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.driver.ring import ESP_FEATURES, NetdevFeature
from ipsec_offload.driver.vf import CAPS_RETRIES, MAILBOX_RESENDS, VfDriver, VfDriverState
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Offload, XfrmState
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.config import Algorithm, Direction, SaStats
from ipsec_offload.wire.mailbox import (
    CryptoState,
    DelSasResult,
    MailboxMessage,
    MbxOpcode,
    MbxStatus,
    SaRead,
    SaUpdate,
    build_mailbox,
    decode_del_sas_result,
    decode_sa_read,
    encode_crypto_event,
    encode_handle,
    encode_sa_update,
    parse_mailbox,
)
from ipsec_offload.wire.packet import find_esp

PF_MAC, VM_MAC, PEER_MAC = "02:00:00:00:00:10", "02:00:00:00:01:01", "02:00:00:00:02:01"
OTHER_MAC = "02:00:00:00:01:02"
VM_IP, PEER_IP = "10.0.1.100", "10.0.1.1"
UNTRUSTED = "this VF may not offload IPsec (not trusted)"
DEL_SAS_ALL = bytes.fromhex("01000000")
"""DEL_SAS's body with ALL: flags 0x01, no handle."""


def port() -> tuple[Testbed, HostStack]:
    bed = Testbed()
    bed.add_pf_host("pf", PF_MAC, ipv4="10.0.0.1")
    return bed, bed.add_peer("peer", PEER_MAC, ipv4=PEER_IP)


def vm_with_sas(
    trusted: bool = True, *, esn: bool = False
) -> tuple[Testbed, HostStack, HostStack, SaBundle]:
    """A PF, a VM on VF 0 with one SA pair to a peer on the wire (offloaded on the VM's side
    where the VF may), and a bystander VM on VF 1 with its own offloaded pair."""
    bed, peer = port()
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP, trusted=trusted)
    sas = bed.secure(vm, peer, esn=esn)
    bystander = bed.add_vm("bystander", 1, OTHER_MAC, ipv4="10.0.2.100")
    bed.secure(bystander, bed.add_peer("peer2", "02:00:00:00:02:02", ipv4="10.0.2.1"))
    return bed, vm, peer, sas


def lone_state() -> XfrmState:
    """An outbound state of the VM with no policy (handle 99, SPI 0x4242)."""
    src, dst = bytes([10, 0, 1, 100]), bytes([10, 0, 1, 1])
    return XfrmState(99, Direction.OUTBOUND, 0x4242, src, dst, Algorithm.AES_GCM_128, bytes(20))


def pf_of(bed: Testbed) -> PfDriver:
    assert bed.pf is not None
    return bed.pf


def vf_of(bed: Testbed, vm: HostStack) -> VfDriver:
    driver = bed.endpoint(vm).driver
    assert isinstance(driver, VfDriver)
    return driver


def messages(bed: Testbed, start: int = 0, vf: int = 0) -> list[tuple[str, MailboxMessage]]:
    """The mailbox messages of VF `vf` delivered since the `start`-th record, as ("VF" or
    "PF": who sent it, the message)."""
    return [
        ("VF" if r.to_pf else "PF", parse_mailbox(r.data))
        for r in bed.mailbox_log[start:]
        if r.vf == vf
    ]


def requests(bed: Testbed, start: int = 0, vf: int = 0) -> list[MbxOpcode]:
    """The opcodes of the requests VF `vf` sent since the `start`-th record."""
    return [
        MbxOpcode(m.opcode) for who, m in messages(bed, start, vf) if who == "VF" and not m.is_reply
    ]


def replies_to(bed: Testbed, opcode: MbxOpcode, start: int = 0) -> list[MailboxMessage]:
    return [
        m
        for who, m in messages(bed, start)
        if who == "PF" and m.is_reply and m.base_opcode == opcode
    ]


def exchange(bed: Testbed, vm: HostStack, peer: HostStack, tag: bytes, count: int = 3) -> None:
    for n in range(count):
        vm.send_udp(PEER_IP, 5, 5, b"%s out %d" % (tag, n), bed.now)
        peer.send_udp(VM_IP, 5, 5, b"%s in %d" % (tag, n), bed.now)
        bed.settle(vm, peer)


def payloads(bed: Testbed, host: HostStack) -> list[bytes]:
    return [d.payload for d in bed.delivered(host)]


def esp_numbers(bed: Testbed, link: str, spi: int) -> list[int]:
    """The sequence numbers of the ESP frames of `spi` on `link`, in order."""
    meta = bed.agent.config.meta_ethertype
    found = []
    for record in bed.captures[link]:
        esp = find_esp(record.frame, meta)
        if esp is not None and esp.spi == spi:
            found.append(esp.seq)
    return found


def untrust(bed: Testbed) -> None:
    """`ip link set ... vf 0 trust off`, and the PF's messages (EVENT_CRYPTO) on their way."""
    pf_of(bed).set_vf_trust(0, False, bed.now)
    bed.settle(bed.endpoint("pf").stack)


# -- GET_CAPS and the features --------------------------------------------------------------


def test_a_trusted_vf_asks_get_caps_once_granted_and_offloads() -> None:
    bed, peer = port()
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP)
    vf = vf_of(bed, vm)
    assert requests(bed) == [MbxOpcode.REQUEST_RESOURCES, MbxOpcode.GET_CAPS]
    get_caps = next(r.data for r in bed.mailbox_log if r.to_pf and r.data[1] == 0x08)
    assert get_caps == bytes.fromhex("01 08 00 00 00 00 00 02 00 00 00 00")  # msg_id 2, no body
    assert vf.state == VfDriverState.READY and vf.caps is not None and vf.caps.crypto
    assert vf.features == ESP_FEATURES and vf.vf_counters.caps_asked == 1
    sas = bed.secure(vm, peer)
    assert requests(bed)[2:] == [MbxOpcode.ADD_SA, MbxOpcode.ADD_SA]
    assert {sas.a_out.offload, sas.a_in.offload} == {Offload.DEVICE}
    assert len(bed.agent.sad) == 2


def test_an_untrusted_vm_carries_its_states_in_software_without_asking() -> None:
    bed, peer = port()
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP, trusted=False)
    vf = vf_of(bed, vm)
    assert vf.caps is not None and not vf.caps.crypto
    assert vf.features == NetdevFeature(0) and vf.state == VfDriverState.READY
    sas = bed.secure(vm, peer)
    assert [(r.rc, r.offload, r.extack) for r in bed.results(vm)] == [
        (0, Offload.SOFTWARE, None)
    ] * 2
    assert vm.counters.offload_fallbacks == 0  # never asked, so never refused
    assert requests(bed) == [MbxOpcode.REQUEST_RESOURCES, MbxOpcode.GET_CAPS]  # no ADD_SA
    exchange(bed, vm, peer, b"untrusted")
    assert payloads(bed, peer) == [b"untrusted out %d" % n for n in range(3)]
    assert payloads(bed, vm) == [b"untrusted in %d" % n for n in range(3)]
    assert not any(d.offloaded for d in bed.delivered(vm))
    wire = [r.frame for r in bed.captures["agent-to-wire"]]
    assert len(wire) == 3 and not any(b"untrusted" in frame for frame in wire)
    assert esp_numbers(bed, "agent-to-wire", sas.a_out.spi) == [1, 2, 3]
    assert len(bed.agent.sad) == 0


def test_an_add_parked_before_the_caps_is_sent_once_they_say_crypto() -> None:
    """A reload (`reset`, not settled) leaves the VF STARTING: the stack's add is parked and
    goes out after REQUEST_RESOURCES and GET_CAPS."""
    bed, _peer = port()
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP)
    vf = vf_of(bed, vm)
    start = len(bed.mailbox_log)
    vf.reset(bed.now)
    assert vf.state == VfDriverState.STARTING and vf.features == ESP_FEATURES
    state = lone_state()
    vm.add_state(state, bed.now, offload=True)
    bed.settle(vm)
    assert requests(bed, start) == [
        MbxOpcode.DEL_SAS,
        MbxOpcode.RESET,
        MbxOpcode.REQUEST_RESOURCES,
        MbxOpcode.GET_CAPS,
        MbxOpcode.ADD_SA,
    ]
    ((rc, offload),) = [(r.rc, r.offload) for r in bed.results(vm)]
    assert (rc, offload) == (0, Offload.DEVICE) and vf.vf_counters.readds == 0
    assert [sa.spi for sa in bed.agent.sad] == [0x4242]


def test_an_add_parked_while_trust_went_off_falls_back_to_software() -> None:
    """Trust off, then a reload: the parked add learns from GET_CAPS that the VF may not
    offload and returns -EOPNOTSUPP with the reason (Linux's software fallback)."""
    bed, _peer = port()
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP)
    vf = vf_of(bed, vm)
    pf_of(bed).set_vf_trust(0, False, bed.now)  # EVENT_CRYPTO not on its way yet
    start = len(bed.mailbox_log)
    vf.reset(bed.now)
    state = lone_state()
    vm.add_state(state, bed.now, offload=True)
    bed.settle(vm)
    assert MbxOpcode.ADD_SA not in requests(bed, start)
    (result,) = bed.results(vm)
    assert (result.rc, result.offload, result.extack) == (-95, Offload.SOFTWARE, UNTRUSTED)
    assert vm.counters.offload_fallbacks == 1 and vm.states[99].offload == Offload.SOFTWARE
    assert vf.features == NetdevFeature(0) and vf.caps is not None and not vf.caps.crypto


def test_an_event_crypto_newer_than_the_get_caps_answer_wins() -> None:
    """The GET_CAPS answer (crypto on) is held up on the mailbox; trust goes off meanwhile
    and EVENT_CRYPTO OFF overtakes it: the VF comes up without crypto."""
    bed, peer = port()
    caps_reply = MbxOpcode.GET_CAPS | MbxOpcode.REPLY
    bed.delay("pf-to-vf", 1, 0.001, lambda data: data[1] == caps_reply)
    bed.at(bed.now + 0.0005, lambda: untrust(bed))
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP)
    vf = vf_of(bed, vm)
    order = [m.opcode for who, m in messages(bed) if who == "PF"]
    assert order == [
        MbxOpcode.REQUEST_RESOURCES | MbxOpcode.REPLY,
        MbxOpcode.EVENT_CRYPTO,
        caps_reply,
    ]
    assert vf.caps is not None and vf.caps.crypto  # what the PF answered, before the change
    assert vf.features == NetdevFeature(0) and vf.vf_counters.crypto_off == 1
    bed.secure(vm, peer)
    assert MbxOpcode.ADD_SA not in requests(bed)


def test_get_caps_not_ready_is_asked_again() -> None:
    """The PF does not know the agent's caps yet (NOT_READY): the VF asks again, 10 ms apart,
    and comes up with crypto once it is answered."""
    bed, peer = port()
    pf = pf_of(bed)
    caps, pf.caps = pf.caps, None
    bed.at(bed.now + 0.025, lambda: setattr(pf, "caps", caps))
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP)
    vf = vf_of(bed, vm)
    answers = [m.status for m in replies_to(bed, MbxOpcode.GET_CAPS)]
    assert answers == [MbxStatus.NOT_READY] * 3 + [MbxStatus.SUCCESS]
    assert vf.vf_counters.caps_asked == 4 and vf.features == ESP_FEATURES
    assert bed.secure(vm, peer).a_out.offload == Offload.DEVICE


def test_get_caps_that_never_succeeds_leaves_the_vf_without_crypto() -> None:
    bed, peer = port()
    pf_of(bed).caps = None
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP)
    vf = vf_of(bed, vm)
    assert [m.status for m in replies_to(bed, MbxOpcode.GET_CAPS)] == [16] * (CAPS_RETRIES + 1)
    assert vf.vf_counters.caps_failed == 1 and vf.caps is None
    assert vf.state == VfDriverState.READY and vf.features == NetdevFeature(0)
    assert bed.secure(vm, peer).a_out.offload == Offload.SOFTWARE


# -- EVENT_CRYPTO ---------------------------------------------------------------------------


def test_crypto_off_on_a_live_vm_moves_its_states_to_software_and_traffic_goes_on() -> None:
    bed, vm, peer, sas = vm_with_sas()
    vf = vf_of(bed, vm)
    exchange(bed, vm, peer, b"before")
    assert all(d.offloaded for d in bed.delivered(vm))
    bystander_sas = [sa.spi for sa in bed.agent.sad if sa.domain and sa.domain.mac != vm.mac]
    start = len(bed.mailbox_log)
    untrust(bed)
    log = messages(bed, start)
    (event,) = [m for who, m in log if who == "PF" and m.opcode == MbxOpcode.EVENT_CRYPTO]
    assert event.body == encode_crypto_event(CryptoState.OFF) == b"\x00"
    (ack,) = [m for who, m in log if who == "VF" and m.opcode == 0x8C]
    assert ack == MailboxMessage(0x8C, event.msg_id)  # the same msg_id, status 0, no body
    (del_sas,) = [m for who, m in log if who == "VF" and m.opcode == MbxOpcode.DEL_SAS]
    assert del_sas.body == DEL_SAS_ALL
    (answer,) = replies_to(bed, MbxOpcode.DEL_SAS, start)
    assert (answer.status, decode_del_sas_result(answer.body)) == (0, DelSasResult(2))
    assert requests(bed, start) == [MbxOpcode.DEL_SAS]  # one message for every SA
    # the driver: no features, nothing offloaded; the stack carries both states in software
    assert vf.features == NetdevFeature(0) and vf.sa_index == {}
    assert (vf.vf_counters.crypto_off, vf.vf_counters.offloads_lost) == (1, 2)
    lost = [(r.handle, r.operation, r.rc, r.offload) for r in bed.results(vm)[-2:]]
    assert lost == [
        (sas.a_out.handle, "lost", -Errno.EACCES, Offload.SOFTWARE),
        (sas.a_in.handle, "lost", -Errno.EACCES, Offload.SOFTWARE),
    ]
    assert vm.counters.offload_lost == 2
    assert {vm.states[s.handle].add_rc for s in (sas.a_out, sas.a_in)} == {-Errno.EACCES}
    # the agent holds none of the VM's SAs, the bystander's still
    assert [sa.spi for sa in bed.agent.sad] == bystander_sas
    assert pf_of(bed).db.owned_by(0) == []
    # traffic goes on in software, encrypted, its sequence numbers where they were
    sent_before = vm.counters.tx_esp_offloaded
    exchange(bed, vm, peer, b"after")
    assert payloads(bed, peer) == [
        b"%s out %d" % (t, n) for t in (b"before", b"after") for n in range(3)
    ]
    assert payloads(bed, vm) == [
        b"%s in %d" % (t, n) for t in (b"before", b"after") for n in range(3)
    ]
    assert not any(d.offloaded for d in bed.delivered(vm)[3:])
    assert (vm.counters.tx_esp_offloaded, vm.counters.tx_esp_software) == (sent_before, 3)
    assert not any(b"after" in r.frame for r in bed.captures["agent-to-wire"])
    assert esp_numbers(bed, "agent-to-wire", sas.a_out.spi) == [1, 2, 3, 4, 5, 6]
    assert esp_numbers(bed, "wire-to-agent", sas.a_in.spi) == [1, 2, 3, 4, 5, 6]
    # the inbound window came along: a frame from before the switch replayed is refused
    bed.wire_inject(bed.wire_frames_to(vm)[:1])
    assert vm.counters.drops == {"in_replay": 1} and len(payloads(bed, vm)) == 6


def test_no_nonce_is_used_twice_across_crypto_off() -> None:
    """(SPI, IV) of every frame the VM's outbound SA put on the wire, offloaded then sealed in
    software, never repeats (RFC 4106: the IV is the SA's counter)."""
    bed, vm, _peer, sas = vm_with_sas()
    vm.send_udp(PEER_IP, 1, 2, b"x" * 500, bed.now, mss=100)  # a TSO send: five numbers
    bed.settle(vm)
    untrust(bed)
    for n in range(4):
        vm.send_udp(PEER_IP, 1, 2, b"after %d" % n, bed.now)
        bed.settle(vm)
    meta = bed.agent.config.meta_ethertype
    ivs = []
    for record in bed.captures["agent-to-wire"]:
        esp = find_esp(record.frame, meta)
        if esp is not None and esp.spi == sas.a_out.spi:
            offset = record.frame.index(struct.pack("!II", esp.spi, esp.seq)) + 8
            ivs.append(int.from_bytes(record.frame[offset : offset + 8]))
    assert ivs == list(range(1, 10))
    assert max(Counter(ivs).values()) == 1 and vm.states[sas.a_out.handle].oseq == 9


def test_crypto_on_again_offloads_new_states_and_leaves_the_old_in_software() -> None:
    bed, vm, peer, old = vm_with_sas()
    vf = vf_of(bed, vm)
    untrust(bed)
    start = len(bed.mailbox_log)
    pf_of(bed).set_vf_trust(0, True, bed.now)
    bed.settle(bed.endpoint("pf").stack)
    ((_, event),) = [(w, m) for w, m in messages(bed, start) if m.opcode == MbxOpcode.EVENT_CRYPTO]
    assert event.body == b"\x01" and requests(bed, start) == []  # answered, nothing asked
    assert vf.features == ESP_FEATURES and vf.vf_counters.crypto_on == 1
    new = bed.secure(vm, peer)
    assert requests(bed, start) == [MbxOpcode.ADD_SA, MbxOpcode.ADD_SA]
    assert {new.a_out.offload, new.a_in.offload} == {Offload.DEVICE}
    assert {old.a_out.offload, old.a_in.offload} == {Offload.SOFTWARE}  # never moved back
    mine = sorted(sa.spi for sa in bed.agent.sad if sa.domain and sa.domain.mac == vm.mac)
    assert mine == sorted((new.a_out.spi, new.a_in.spi))
    vm.send_udp(PEER_IP, 5, 5, b"offloaded again", bed.now)
    bed.settle(vm)
    assert payloads(bed, peer)[-1:] == [b"offloaded again"] and vm.counters.tx_esp_offloaded == 1


def test_a_lost_event_crypto_is_resent_and_acted_on_once() -> None:
    """The first EVENT_CRYPTO is lost, and so is the VF's first answer: the PF sends it a
    second and a third time; the VF answers every copy and acts on the first it gets."""
    bed, vm, _peer, _sas = vm_with_sas()
    vf = vf_of(bed, vm)
    bed.lose("pf-to-vf", 1, lambda data: data[1] == MbxOpcode.EVENT_CRYPTO)
    bed.lose("vf-to-pf", 1, lambda data: data[1] == 0x8C)
    start = len(bed.mailbox_log)
    untrust(bed)
    log = messages(bed, start)
    events = [m for who, m in log if m.opcode == MbxOpcode.EVENT_CRYPTO]
    assert len(events) == 2 and events[0] == events[1]  # delivered: the 2nd and 3rd sends
    acks = [m for who, m in log if m.opcode == 0x8C]
    assert acks == [MailboxMessage(0x8C, events[0].msg_id)]  # the 2nd answer reached the PF
    assert bed.link_drops["pf-to-vf"] == 1 and bed.link_drops["vf-to-pf"] == 1
    assert requests(bed, start) == [MbxOpcode.DEL_SAS]
    counters = vf.vf_counters
    assert (counters.crypto_off, counters.notice_copies, counters.bulk_deletes) == (1, 1, 1)
    assert [r.operation for r in bed.results(vm)].count("lost") == 2
    pf = pf_of(bed)
    assert (pf.pf_counters.notices_resent, pf.pf_counters.notices_unanswered) == (2, 0)
    bed.run(until=bed.now + 0.1)
    assert [m for _, m in messages(bed, start) if m.opcode == MbxOpcode.EVENT_CRYPTO] == events


def test_an_event_crypto_overtaken_by_a_newer_one_is_answered_and_ignored() -> None:
    bed, vm, _peer, sas = vm_with_sas()
    vf = vf_of(bed, vm)
    for msg_id, state in ((900, CryptoState.ON), (899, CryptoState.OFF)):
        notice = MailboxMessage(MbxOpcode.EVENT_CRYPTO, msg_id, encode_crypto_event(state))
        vf.mailbox_receive(build_mailbox(notice), bed.now)
    assert vf.mailbox_messages() == [
        build_mailbox(MailboxMessage(0x8C, 900)),
        build_mailbox(MailboxMessage(0x8C, 899)),
    ]
    assert vf.vf_counters.crypto_stale == 1 and vf.features == ESP_FEATURES
    assert len(vf.sa_index) == 2 and sas.a_out.offload == Offload.DEVICE
    bad = MailboxMessage(MbxOpcode.EVENT_CRYPTO, 901, b"\x07")  # no such crypto state
    vf.mailbox_receive(build_mailbox(bad), bed.now)
    assert vf.vf_counters.mailbox_bad == 1 and vf.mailbox_messages() == []  # not answered


# -- EACCES ---------------------------------------------------------------------------------


def test_an_add_the_pf_refuses_for_lost_trust_fails_with_eacces() -> None:
    """Trust goes off after GET_CAPS and before the add reaches the PF: the PF refuses the
    ADD_SA NOT_PERMITTED (EACCES, as ixgbe), the add fails (Linux: only -EOPNOTSUPP falls
    back) and EVENT_CRYPTO OFF, which the PF sent first, takes the VF's features away: the
    second state of the pair is carried in software without asking."""
    bed, peer = port()
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP)
    pf_of(bed).set_vf_trust(0, False, bed.now)  # its EVENT_CRYPTO leaves with the next reply
    start = len(bed.mailbox_log)
    sas = bed.secure(vm, peer)
    (refusal,) = replies_to(bed, MbxOpcode.ADD_SA, start)
    assert refusal.status == MbxStatus.NOT_PERMITTED == 13
    assert build_mailbox(refusal)[:4] == bytes.fromhex("01 82 0d 00")
    assert [(r.rc, r.offload, r.extack) for r in bed.results(vm)] == [
        (-Errno.EACCES, None, UNTRUSTED),
        (0, Offload.SOFTWARE, None),
    ]
    assert (
        sas.a_out.handle not in vm.states and vm.states[sas.a_in.handle].offload == Offload.SOFTWARE
    )
    assert requests(bed, start) == [MbxOpcode.ADD_SA, MbxOpcode.DEL_SAS]
    assert len(bed.agent.sad) == 0


def test_an_add_answered_after_crypto_off_is_removed_again_and_falls_back() -> None:
    """The PF added the SA while the VF was trusted, but its answer is held up on the mailbox
    until after EVENT_CRYPTO OFF: the VF removes the SA again (DEL_SA) and the add falls back
    to software with the reason."""
    bed, peer = port()
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP)
    add_reply = MbxOpcode.ADD_SA | MbxOpcode.REPLY
    bed.delay("pf-to-vf", 1, 0.001, lambda data: data[1] == add_reply)
    bed.at(bed.now + 0.0005, lambda: untrust(bed))
    start = len(bed.mailbox_log)
    sas = bed.secure(vm, peer)
    assert [(r.rc, r.offload, r.extack) for r in bed.results(vm)] == [
        (-Errno.EOPNOTSUPP, Offload.SOFTWARE, UNTRUSTED),
        (0, Offload.SOFTWARE, None),
    ]
    assert requests(bed, start) == [MbxOpcode.ADD_SA, MbxOpcode.DEL_SAS, MbxOpcode.DEL_SA]
    (late,) = replies_to(bed, MbxOpcode.ADD_SA, start)
    assert late.status == 0  # the PF had added it, and DEL_SAS ALL took it away
    (del_sa,) = replies_to(bed, MbxOpcode.DEL_SA, start)
    assert del_sa.status == MbxStatus.NOT_FOUND
    assert len(bed.agent.sad) == 0 and vf_of(bed, vm).sa_index == {}
    vm.send_udp(PEER_IP, 1, 2, b"software", bed.now)
    bed.settle(vm)
    assert payloads(bed, peer) == [b"software"] and sas.a_out.offload == Offload.SOFTWARE


# -- READ_SA: update_stats --------------------------------------------------------------------


def test_update_stats_on_a_vf_merges_the_agents_replays_and_icv_failures() -> None:
    """xdo_dev_state_update_stats on a VF: READ_SA for the state's handle, waited for; the
    stack merges what the agent dropped (a replay, a bad ICV) into the state's stats once."""
    bed, vm, peer, sas = vm_with_sas()
    vf = vf_of(bed, vm)
    exchange(bed, vm, peer, b"stats")
    frame = bed.wire_frames_to(vm, last=1)[0]
    esp = find_esp(frame)
    assert esp is not None
    header = struct.pack("!II", esp.spi, esp.seq)
    bed.wire_inject([frame.replace(header, struct.pack("!II", esp.spi, esp.seq + 100), 1)])
    bed.wire_inject([frame])  # a replay
    state = vm.states[sas.a_in.handle]
    assert (state.stats.replay, state.stats.integrity_failed) == (0, 0)
    start = len(bed.mailbox_log)
    vm.update_stats(sas.a_in.handle, bed.now)
    assert (state.stats.replay, state.stats.integrity_failed) == (1, 1)
    (read,) = [m for who, m in messages(bed, start) if who == "VF"]
    assert (read.opcode, read.body) == (MbxOpcode.READ_SA, encode_handle(sas.a_in.handle))
    (answer,) = replies_to(bed, MbxOpcode.READ_SA, start)
    index = vf.sa_index[sas.a_in.handle]
    sa = bed.agent.sad.get(index)
    assert sa is not None
    errors = (0, 1, 1, 0, 0)  # per Rx status 1..5: AUTH_FAILED is 2, REPLAY 3
    assert decode_sa_read(answer.body) == SaRead(index, SaStats(3, sa.bytes, errors))
    vm.update_stats(sas.a_in.handle, bed.now)  # read again: nothing new
    assert (state.stats.replay, state.stats.integrity_failed) == (1, 1)
    assert (vf.vf_counters.sa_reads, vf.vf_counters.sa_read_failed) == (2, 0)


def test_update_stats_of_a_state_not_offloaded_asks_nothing() -> None:
    bed, vm, _peer, sas = vm_with_sas(trusted=False)
    vf = vf_of(bed, vm)
    start = len(bed.mailbox_log)
    assert vf.xdo_dev_state_update_stats(sas.a_in.handle, bed.now) is None
    bed.settle(vm)
    assert requests(bed, start) == [] and vf.vf_counters.sa_reads == 0


def test_update_stats_whose_answers_are_all_lost_times_out_with_nothing() -> None:
    bed, vm, _peer, sas = vm_with_sas()
    vf = vf_of(bed, vm)
    read_reply = MbxOpcode.READ_SA | MbxOpcode.REPLY
    bed.lose("pf-to-vf", MAILBOX_RESENDS + 1, lambda data: data[1] == read_reply)
    began = bed.now
    assert vf.xdo_dev_state_update_stats(sas.a_in.handle, bed.now) is None
    assert bed.now - began > MAILBOX_RESENDS * 0.01  # it waited for every resend
    assert (vf.vf_counters.mailbox_resent, vf.vf_counters.mailbox_timeouts) == (5, 1)
    assert vf.vf_counters.sa_read_failed == 1


def test_update_stats_whose_answer_does_not_decode_counts_a_bad_reply() -> None:
    """The PF's answer is lost and a crafted one, 3 bytes long, arrives in its place."""
    bed, vm, _peer, sas = vm_with_sas()
    vf = vf_of(bed, vm)
    read_reply = MbxOpcode.READ_SA | MbxOpcode.REPLY
    bed.lose("pf-to-vf", 1, lambda data: data[1] == read_reply)
    start = len(bed.mailbox_log)

    def crafted() -> None:
        (read,) = [m for who, m in messages(bed, start) if m.opcode == MbxOpcode.READ_SA]
        bad = MailboxMessage(read_reply, read.msg_id, b"\x00\x00\x01")
        vf.mailbox_receive(build_mailbox(bad), bed.now)

    bed.at(bed.now + 0.0001, crafted)
    assert vf.xdo_dev_state_update_stats(sas.a_in.handle, bed.now) is None
    assert (vf.vf_counters.mailbox_bad, vf.vf_counters.sa_read_failed) == (1, 1)


def test_update_stats_across_a_pf_reset_gives_nothing_and_the_states_come_back() -> None:
    """The READ_SA is held up on the mailbox while the PF reloads: EVENT_PF_RESET makes the
    VF abandon it (the read returns None at once) and re-add its states."""
    bed, vm, _peer, sas = vm_with_sas()
    vf = vf_of(bed, vm)
    bed.delay("vf-to-pf", 1, 0.001, lambda data: data[1] == MbxOpcode.READ_SA)

    def pf_reloads() -> None:
        pf_of(bed).reset(bed.now)
        bed.settle(bed.endpoint("pf").stack)

    bed.at(bed.now + 0.0002, pf_reloads)
    began = bed.now
    assert vf.xdo_dev_state_update_stats(sas.a_in.handle, bed.now) is None
    assert bed.now - began < 0.001  # before the held-up READ_SA even reached the PF
    assert vf.vf_counters.sa_read_failed == 1
    bed.settle(vm)
    assert len(vf.sa_index) == 2 and vf.vf_counters.readds == 2
    assert {sas.a_out.offload, sas.a_in.offload} == {Offload.DEVICE}


# -- UPDATE_SA: advance_esn -------------------------------------------------------------------


def test_advance_esn_sends_update_sa_and_does_not_wait() -> None:
    bed, vm, _peer, sas = vm_with_sas(esn=True)
    vf = vf_of(bed, vm)
    pf = pf_of(bed)
    start, now = len(bed.mailbox_log), bed.now
    esn = (1 << 32) + 5
    vf.xdo_dev_state_advance_esn(sas.a_in.handle, esn, bed.now)
    # returned at once: no time went by, nothing reached the PF yet
    assert bed.now == now and len(bed.mailbox_log) == start and pf.pf_counters.sa_updates == 0
    assert vf.vf_counters.esn_updates == 1
    bed.settle(vm)
    ((_, update),) = [(w, m) for w, m in messages(bed, start) if w == "VF"]
    assert update.opcode == MbxOpcode.UPDATE_SA
    assert update.body == encode_sa_update(SaUpdate(sas.a_in.handle, esn))
    assert update.body == struct.pack("!III", sas.a_in.handle, 1, 5)  # handle, esn_hi, esn_lo
    (answer,) = replies_to(bed, MbxOpcode.UPDATE_SA, start)
    assert (answer.status, answer.body) == (0, b"")
    assert pf.pf_counters.sa_updates == 1 and vf.vf_counters.esn_update_failed == 0


def test_advance_esn_of_a_state_not_offloaded_sends_nothing() -> None:
    bed, vm, _peer, sas = vm_with_sas(trusted=False, esn=True)
    vf = vf_of(bed, vm)
    start = len(bed.mailbox_log)
    vf.xdo_dev_state_advance_esn(sas.a_in.handle, 1 << 32, bed.now)
    bed.settle(vm)
    assert requests(bed, start) == [] and vf.vf_counters.esn_updates == 0


# -- DEL_SAS ALL on a reset -------------------------------------------------------------------


def test_reset_sends_del_sas_all_then_reset_and_re_adds() -> None:
    bed, vm, peer, sas = vm_with_sas()
    second = bed.secure(vm, peer)
    vf = vf_of(bed, vm)
    pf = pf_of(bed)
    start = len(bed.mailbox_log)
    bed.reset_vf(vm)
    assert requests(bed, start) == [
        MbxOpcode.DEL_SAS,
        MbxOpcode.RESET,
        MbxOpcode.REQUEST_RESOURCES,
        MbxOpcode.GET_CAPS,
        *[MbxOpcode.ADD_SA] * 4,
    ]
    log = bed.mailbox_log[start:]
    del_sas = next(r for r in log if r.to_pf and r.data[1] == MbxOpcode.DEL_SAS)
    assert del_sas.data[8:] == bytes.fromhex("00 04 00 00") + DEL_SAS_ALL  # length 4, ALL
    (answer,) = replies_to(bed, MbxOpcode.DEL_SAS, start)
    assert decode_del_sas_result(answer.body) == DelSasResult(4)
    answered = next(r.time for r in log if not r.to_pf and r.data[1] == 0x8A)
    reset = next(r.time for r in log if r.to_pf and r.data[1] == MbxOpcode.RESET)
    assert reset > answered  # RESET once the SAs are gone
    assert pf.pf_counters.cleanup_removed == 0  # nothing left for the PF's clean-up
    assert vf.vf_counters.bulk_deletes == 1 and vf.vf_counters.readds == 4
    bystander = sum(1 for sa in bed.agent.sad if sa.domain and sa.domain.mac != vm.mac)
    assert len(bed.agent.sad) == 4 + bystander
    states = (sas.a_out, sas.a_in, second.a_out, second.a_in)
    assert {s.offload for s in states} == {Offload.DEVICE}
    vm.send_udp(PEER_IP, 1, 1, b"after the reset", bed.now)
    bed.settle(vm)
    assert payloads(bed, peer) == [b"after the reset"]


def test_reset_of_an_untrusted_vf_sends_no_del_sas_and_its_states_are_lost() -> None:
    """A VF whose trust went off without its knowing (EVENT_CRYPTO still at the PF) resets:
    it still believes it holds SAs (DEL_SAS ALL), and GET_CAPS then says no crypto: its kept
    states are lost (-EACCES) and nothing is re-added. A second reset, crypto known off,
    sends no DEL_SAS."""
    bed, vm, peer, _sas = vm_with_sas()
    vf = vf_of(bed, vm)
    pf_of(bed).set_vf_trust(0, False, bed.now)
    start = len(bed.mailbox_log)
    bed.reset_vf(vm)
    assert requests(bed, start) == [
        MbxOpcode.DEL_SAS,
        MbxOpcode.RESET,
        MbxOpcode.REQUEST_RESOURCES,
        MbxOpcode.GET_CAPS,
    ]
    lost = [(r.operation, r.rc, r.offload) for r in bed.results(vm)][-2:]
    assert lost == [("lost", -Errno.EACCES, Offload.SOFTWARE)] * 2
    assert vf.vf_counters.offloads_lost == 2 and vf.features == NetdevFeature(0)
    start = len(bed.mailbox_log)
    bed.reset_vf(vm)
    assert requests(bed, start) == [
        MbxOpcode.RESET,
        MbxOpcode.REQUEST_RESOURCES,
        MbxOpcode.GET_CAPS,
    ]
    vm.send_udp(PEER_IP, 1, 1, b"software", bed.now)
    bed.settle(vm)
    assert payloads(bed, peer) == [b"software"]


def test_an_add_answered_across_a_reset_is_not_taken_for_offloaded() -> None:
    """The VF resets while the PF's answer to its ADD_SA is held up on the mailbox: that
    answer is stale (the PF's clean-up removes the SA) and the state is added again after the
    reset, so the VF never believes offloaded an SA the agent does not hold."""
    bed, _peer = port()
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4=VM_IP)
    vf = vf_of(bed, vm)
    add_reply = MbxOpcode.ADD_SA | MbxOpcode.REPLY
    bed.delay("pf-to-vf", 1, 0.0003, lambda data: data[1] == add_reply)

    def reset() -> None:
        vf.reset(bed.now)
        bed.settle(vm)  # inside the running loop: send what the reset queued

    bed.at(bed.now + 0.0001, reset)
    start = len(bed.mailbox_log)
    vm.add_state(lone_state(), bed.now, offload=True)
    bed.settle(vm)
    ((rc, offload),) = [(r.rc, r.offload) for r in bed.results(vm)]
    assert (rc, offload) == (0, Offload.DEVICE)
    assert requests(bed, start) == [
        MbxOpcode.ADD_SA,
        MbxOpcode.DEL_SAS,
        MbxOpcode.RESET,
        MbxOpcode.REQUEST_RESOURCES,
        MbxOpcode.GET_CAPS,
        MbxOpcode.ADD_SA,
    ]
    assert vf.vf_counters.stale_replies == 1 and vf.vf_counters.readds == 1
    (sa,) = bed.agent.sad
    assert vf.sa_index == {99: sa.index}
