"""The PF's answers to a VF's inline IPsec messages (driver/vf_sas.py): bulk destroy, SA read
after traffic, ESN update, capabilities, the per-VF limit of requests in flight, EVENT_CRYPTO,
and a hostile VF sending any of them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_offload.driver.control import STATUS_TO_ERRNO, Errno
from ipsec_offload.driver.ownership import Ownership
from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.driver.vf_proxy import NOTICE_INTERVAL, NOTICE_RESENDS
from ipsec_offload.driver.vf_sas import REQUESTS_IN_FLIGHT
from ipsec_offload.host.stack import HostStack
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    Caps,
    Direction,
    Opcode,
    SaStats,
    decode_add_sa,
    decode_sa_index,
    encode_add_sa,
    parse_config,
)
from ipsec_offload.wire.ethernet import parse_ethernet
from ipsec_offload.wire.mailbox import (
    CryptoState,
    DelSas,
    DelSasResult,
    MailboxMessage,
    MbxOpcode,
    MbxStatus,
    SaRead,
    SaUpdate,
    VfCaps,
    build_mailbox,
    decode_crypto_event,
    decode_del_sas_result,
    decode_sa_read,
    decode_vf_caps,
    encode_del_sas,
    encode_handle,
    encode_handle_tlvs,
    encode_sa_update,
    parse_mailbox,
)
from ipsec_offload.wire.metadata import RxStatus

OWN_ID = 0xF000
"""msg_ids of the messages a test sends in a VF's name, far from those its driver uses."""
VM_MAC = "02:00:00:00:01:01"
OTHER_MAC = "02:00:00:00:01:02"


def bed_with_vms(pairs: int = 2) -> tuple[Testbed, HostStack, list[SaBundle], HostStack]:
    """A PF, a VM on VF 0 with `pairs` offloaded SA pairs to its peer, a victim VM on VF 1
    with one pair."""
    bed = Testbed()
    bed.add_pf_host("pf", "02:00:00:00:00:10", ipv4="10.0.0.1")
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4="10.0.1.100")
    peer = bed.add_peer("peer", "02:00:00:00:02:01", ipv4="10.0.1.1")
    bundles = [bed.secure(vm, peer, protocol=17) for _ in range(pairs)]
    victim = bed.add_vm("victim", 1, OTHER_MAC, ipv4="10.0.2.100")
    bed.secure(victim, bed.add_peer("peer2", "02:00:00:00:02:02", ipv4="10.0.2.1"))
    return bed, vm, bundles, victim


def ask(
    bed: Testbed, vf: int, opcode: MbxOpcode, body: bytes, msg_id: int = OWN_ID
) -> MailboxMessage:
    """Send a message in VF `vf`'s name; the PF's reply, at once or once the agent answered."""
    data = build_mailbox(MailboxMessage(opcode, msg_id, body))
    before = len(bed.mailbox_log)
    replies = [parse_mailbox(r) for r in bed.mailbox_inject(vf, data)]
    replies += [parse_mailbox(r.data) for r in bed.mailbox_log[before:] if not r.to_pf]
    (reply,) = [m for m in replies if m.is_reply and m.msg_id == msg_id]
    assert reply.base_opcode == opcode
    return reply


def pf_of(bed: Testbed) -> PfDriver:
    assert bed.pf is not None
    return bed.pf


def handles(*bundles: SaBundle) -> list[int]:
    return [state.handle for b in bundles for state in (b.a_out, b.a_in)]


def sad_macs(bed: Testbed) -> list[str]:
    return sorted(sa.domain.mac.hex(":") for sa in bed.agent.sad if sa.domain is not None)


# -- DEL_SAS ----------------------------------------------------------------------------------


def test_del_sas_removes_the_listed_sas_and_says_which_were_not_the_vfs() -> None:
    bed, _vm, bundles, _victim = bed_with_vms()
    victim_handle = pf_of(bed).db.owned_by(1)[0].handle
    mine = handles(bundles[0])
    listed = (*mine, 999, victim_handle)
    reply = ask(bed, 0, MbxOpcode.DEL_SAS, encode_del_sas(DelSas(listed)))
    assert reply.status == MbxStatus.NOT_FOUND  # the first handle that failed says why
    ok, gone = MbxStatus.SUCCESS, MbxStatus.NOT_FOUND
    assert decode_del_sas_result(reply.body) == DelSasResult(2, (ok, ok, gone, gone))
    assert sorted(e.handle for e in pf_of(bed).db.owned_by(0)) == handles(bundles[1])
    assert sad_macs(bed) == [VM_MAC] * 2 + [OTHER_MAC] * 2
    assert len(pf_of(bed).db.owned_by(1)) == 2  # the victim's, untouched
    assert pf_of(bed).vfs[0].requests == 0 and pf_of(bed).vfs[0].inflight == 0


def test_del_sas_all_removes_every_sa_of_the_vf_alone() -> None:
    bed, _vm, _bundles, _victim = bed_with_vms(pairs=3)
    reply = ask(bed, 0, MbxOpcode.DEL_SAS, encode_del_sas(DelSas(all_sas=True)))
    assert (reply.status, decode_del_sas_result(reply.body)) == (0, DelSasResult(6))
    assert pf_of(bed).db.owned_by(0) == []
    assert sad_macs(bed) == [OTHER_MAC] * 2
    again = ask(bed, 0, MbxOpcode.DEL_SAS, encode_del_sas(DelSas(all_sas=True)), OWN_ID + 1)
    assert (again.status, decode_del_sas_result(again.body)) == (0, DelSasResult(0))


def test_del_sas_under_way_holds_the_clean_up_of_a_reset() -> None:
    """A VM destroyed while its DEL_SAS is with the agent: the removals finish, no reply goes
    to the gone VF, and its domain ends empty and in INIT."""
    bed, vm, _bundles, _victim = bed_with_vms()
    pf = pf_of(bed)
    pf.mailbox_receive(
        0,
        build_mailbox(
            MailboxMessage(MbxOpcode.DEL_SAS, OWN_ID, encode_del_sas(DelSas(all_sas=True)))
        ),
        bed.now,
    )
    assert pf.vfs[0].inflight == 4
    bed.destroy_vm(vm)
    assert pf.db.owned_by(0) == [] and sad_macs(bed) == [OTHER_MAC] * 2
    assert pf.vfs[0].state.name == "INIT" and pf.vfs[0].requests == 0
    replies = [parse_mailbox(r.data) for r in bed.mailbox_log if not r.to_pf and r.vf == 0]
    assert not [m for m in replies if m.msg_id == OWN_ID]


# -- READ_SA ----------------------------------------------------------------------------------


def test_read_sa_returns_the_agents_counters_after_traffic() -> None:
    bed, vm, (bundle,), _victim = bed_with_vms(pairs=1)
    peer = bed.endpoint("peer").stack
    for n in range(3):
        vm.send_udp("10.0.1.1", 5, 5, b"out %d" % n, bed.now)
        peer.send_udp("10.0.1.100", 5, 5, b"in %d" % n, bed.now)
        bed.settle(vm, peer)
    bed.wire_inject(bed.wire_frames_to(vm, last=2))  # two replays on the inbound SA
    index = {e.handle: e.sa_index for e in pf_of(bed).db.owned_by(0)}
    replays = (0, 0, 2, 0, 0)  # per Rx status 1..5: REPLAY is 3
    for state, errors in ((bundle.a_out, (0, 0, 0, 0, 0)), (bundle.a_in, replays)):
        reply = ask(bed, 0, MbxOpcode.READ_SA, encode_handle(state.handle), OWN_ID + state.handle)
        assert reply.status == MbxStatus.SUCCESS
        read = decode_sa_read(reply.body)
        sa = bed.agent.sad.get(index[state.handle])
        assert sa is not None
        assert read == SaRead(index[state.handle], SaStats(3, sa.bytes, errors))
        assert sa.packets == 3 and sa.bytes > 3 * 4
    assert bed.agent.counters.rx_status[RxStatus.REPLAY] == 2
    assert pf_of(bed).vfs[0].requests == 0


def test_read_sa_of_an_sa_the_agent_lost_is_not_found() -> None:
    bed, _vm, (bundle, _), _victim = bed_with_vms()
    entry = pf_of(bed).db.lookup(0, bundle.a_out.handle)
    assert entry is not None
    bed.agent.sad.remove(entry.sa_index)
    reply = ask(bed, 0, MbxOpcode.READ_SA, encode_handle(bundle.a_out.handle))
    assert (reply.status, reply.body) == (MbxStatus.NOT_FOUND, b"")


# -- UPDATE_SA and GET_CAPS --------------------------------------------------------------------


def test_update_sa_is_checked_and_answered_without_the_agent() -> None:
    bed, _vm, (bundle, _), _victim = bed_with_vms()
    pf = pf_of(bed)
    requests = pf.channel.counters.requests
    mine = encode_sa_update(SaUpdate(bundle.a_in.handle, (1 << 32) + 7))
    assert ask(bed, 0, MbxOpcode.UPDATE_SA, mine).status == MbxStatus.SUCCESS
    foreign = encode_sa_update(SaUpdate(pf.db.owned_by(1)[0].handle, 1))
    assert ask(bed, 0, MbxOpcode.UPDATE_SA, foreign, OWN_ID + 1).status == MbxStatus.NOT_FOUND
    assert ask(bed, 0, MbxOpcode.UPDATE_SA, b"\x00", OWN_ID + 2).status == MbxStatus.INVALID_PARAMS
    assert pf.channel.counters.requests == requests  # no config frame for any of them
    pf.vf_proxy.set_vf_trust(0, False, bed.now)
    bed.settle(bed.endpoint("pf").stack)  # told crypto is OFF, the VF removes its SAs
    requests = pf.channel.counters.requests
    assert ask(bed, 0, MbxOpcode.UPDATE_SA, mine, OWN_ID + 3).status == MbxStatus.NOT_PERMITTED
    assert pf.pf_counters.sa_updates == 1
    assert pf.channel.counters.requests == requests


def test_get_caps_tells_trust_quota_and_the_agents_caps() -> None:
    bed, _vm, _bundles, _victim = bed_with_vms()
    reply = ask(bed, 0, MbxOpcode.GET_CAPS, b"")
    agent = bed.agent.config
    expected = VfCaps(True, True, 128, 4, agent.sad_size, agent.max_replay_window, tuple(Algorithm))
    assert (reply.status, decode_vf_caps(reply.body)) == (0, expected)
    pf_of(bed).vf_proxy.set_vf_trust(1, False, bed.now)
    untrusted = decode_vf_caps(ask(bed, 1, MbxOpcode.GET_CAPS, b"").body)
    assert (untrusted.crypto, untrusted.held) == (False, 2)
    assert ask(bed, 0, MbxOpcode.GET_CAPS, b"\x00", OWN_ID + 1).status == MbxStatus.INVALID_PARAMS


def active_pf(vfs: int = 1) -> PfDriver:
    """A bare PF (no agent answers) whose VFs 0.. are ACTIVE, VF 0 holding handle 41 at
    SA index 5."""
    pf = PfDriver(bytes.fromhex("020000000010"))
    for vf in range(vfs):
        pf.enable_vf(vf, vf + 1, bytes.fromhex(f"0200000001{vf:02x}"))
        pf.mailbox_receive(vf, build_mailbox(MailboxMessage(MbxOpcode.REQUEST_RESOURCES, 1)), 0.0)
    pf.db.add(Ownership(5, 0, 41, bytes.fromhex("020000000100"), ()))
    pf.mailbox_messages()
    pf.tx_descriptors()
    return pf


def send(
    pf: PfDriver, vf: int, opcode: MbxOpcode, body: bytes, msg_id: int
) -> list[MailboxMessage]:
    pf.mailbox_receive(vf, build_mailbox(MailboxMessage(opcode, msg_id, body)), 0.0)
    return [parse_mailbox(data) for target, data in pf.mailbox_messages() if target == vf]


def test_get_caps_before_the_agent_answered_is_not_ready() -> None:
    pf = active_pf()
    (reply,) = send(pf, 0, MbxOpcode.GET_CAPS, b"", 2)
    assert reply.status == MbxStatus.NOT_READY
    pf.caps = Caps((Algorithm.AES_GCM_256,), 64, 512, 9)
    (reply,) = send(pf, 0, MbxOpcode.GET_CAPS, b"", 3)
    assert decode_vf_caps(reply.body) == VfCaps(
        True, True, 128, 1, 64, 512, (Algorithm.AES_GCM_256,)
    )


def test_every_outcome_of_an_agent_transaction_is_a_mailbox_status() -> None:
    for rc in (*STATUS_TO_ERRNO.values(), -Errno.ETIMEDOUT):
        assert MbxStatus(-rc) == -rc


# -- FIFO_FULL ----------------------------------------------------------------------------------


def test_requests_beyond_the_limit_in_flight_are_fifo_full() -> None:
    pf = active_pf()
    for msg_id in range(2, 2 + REQUESTS_IN_FLIGHT):
        assert send(pf, 0, MbxOpcode.READ_SA, encode_handle(41), msg_id) == []  # with the agent
    assert len(pf.tx_descriptors()) == REQUESTS_IN_FLIGHT
    (refused,) = send(pf, 0, MbxOpcode.DEL_SA, encode_handle(41), 1000)
    assert (refused.base_opcode, refused.status) == (MbxOpcode.DEL_SA, MbxStatus.FIFO_FULL)
    assert pf.tx_descriptors() == [] and pf.pf_counters.fifo_full == 1
    # answered at once, without the agent: not limited
    (caps,) = send(pf, 0, MbxOpcode.UPDATE_SA, encode_sa_update(SaUpdate(41, 1)), 1001)
    assert caps.status == MbxStatus.SUCCESS
    pf.reset(0.0)  # the requests under way are abandoned with the PF's transactions
    assert pf.vfs[0].requests == 0


# -- EVENT_CRYPTO ------------------------------------------------------------------------------


def crypto_notices(pf: PfDriver) -> list[tuple[int, CryptoState]]:
    return [
        (m.msg_id, decode_crypto_event(m.body))
        for m in (parse_mailbox(data) for _vf, data in pf.mailbox_messages())
        if m.opcode == MbxOpcode.EVENT_CRYPTO
    ]


def test_a_trust_change_is_told_with_event_crypto_until_acknowledged() -> None:
    pf = active_pf()
    pf.vf_proxy.set_vf_trust(0, True, 0.0)  # no change: nothing to tell
    assert crypto_notices(pf) == []
    pf.vf_proxy.set_vf_trust(0, False, 0.0)
    ((msg_id, state),) = crypto_notices(pf)
    assert state == CryptoState.OFF
    pf.handle_timer(NOTICE_INTERVAL)
    assert crypto_notices(pf) == [(msg_id, CryptoState.OFF)]  # unanswered: resent
    ack = MailboxMessage(MbxOpcode.EVENT_CRYPTO | MbxOpcode.REPLY, msg_id)
    pf.mailbox_receive(0, build_mailbox(ack), 0.015)
    pf.handle_timer(2 * NOTICE_INTERVAL)
    assert crypto_notices(pf) == [] and pf.mailbox_messages() == []


def test_a_newer_event_crypto_replaces_an_unanswered_one() -> None:
    pf = active_pf()
    pf.vf_proxy.set_vf_trust(0, False, 0.0)
    pf.vf_proxy.set_vf_trust(0, True, 0.001)
    (_, (latest, state)) = crypto_notices(pf)
    assert state == CryptoState.ON
    for n in range(1, NOTICE_RESENDS + 2):
        pf.handle_timer(0.001 + n * 1.5 * NOTICE_INTERVAL)
        assert crypto_notices(pf) == ([(latest, CryptoState.ON)] if n <= NOTICE_RESENDS else [])
    assert pf.pf_counters.notices_unanswered == 1


def test_no_event_crypto_to_a_vf_not_active() -> None:
    pf = PfDriver(bytes.fromhex("020000000010"))
    pf.enable_vf(0, 1, bytes.fromhex("020000000100"))
    pf.vf_proxy.set_vf_trust(0, False, 0.0)
    assert crypto_notices(pf) == []  # it learns with GET_CAPS once granted its resources


# -- a hostile VF -------------------------------------------------------------------------------

EVIL_MAC = bytes.fromhex("020000000101")
VICTIM = [Ownership(5 + i, 0, 40 + i, bytes.fromhex("020000000100"), ()) for i in range(3)]
EVIL = Ownership(9, 1, 7, EVIL_MAC, ())
ADD = AddSaRequest(
    Direction.INBOUND, 0x300, bytes([10, 0, 0, 2]), Algorithm.AES_GCM_128, key=bytes(20)
)
some_handle = st.sampled_from([e.handle for e in (*VICTIM, EVIL)] + [0, 0xFFFFFFFF])
M = MbxOpcode
well_formed = st.one_of(
    st.builds(lambda h: (M.ADD_SA, encode_handle_tlvs(h, encode_add_sa(ADD))), some_handle),
    st.builds(
        lambda op, h: (op, encode_handle(h)), st.sampled_from([M.DEL_SA, M.READ_SA]), some_handle
    ),
    st.builds(
        lambda h, e: (M.UPDATE_SA, encode_sa_update(SaUpdate(h, e))),
        some_handle,
        st.integers(0, (1 << 64) - 1),
    ),
    st.lists(some_handle, min_size=1, max_size=5, unique=True).map(
        lambda h: (M.DEL_SAS, encode_del_sas(DelSas(tuple(h))))
    ),
    st.sampled_from(
        [(M.DEL_SAS, encode_del_sas(DelSas(all_sas=True))), (M.GET_CAPS, b""), (M.RESET, b"")]
    ),
)
"""Requests of every kind a VF sends, naming its own SAs, the victim's or none."""
anything = st.tuples(
    st.sampled_from(
        [*(op for op in M if op != M.REPLY), *(op | M.REPLY for op in M if op != M.REPLY)]
    ),
    st.binary(max_size=40),
)
"""Any opcode, request or reply, with any body."""
messages = st.builds(
    lambda op_body, msg_id, status: MailboxMessage(op_body[0], msg_id, op_body[1], status),
    st.one_of(well_formed, anything),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 255),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=8))
def test_a_hostile_vf_gets_answers_and_touches_nothing_of_another(
    sent: list[MailboxMessage],
) -> None:
    """Whatever VF 1 sends (any opcode, request or reply, well-formed or not), the PF answers
    with replies it can build, raises nothing, leaves VF 0's SAs alone and asks the agent
    only about VF 1's own SAs, in VF 1's domain."""
    pf = active_pf(vfs=2)
    pf.caps = Caps(tuple(Algorithm), 4096, 4096, 1)
    pf.db.remove(5)
    for entry in (*VICTIM, EVIL):
        pf.db.add(entry)
    for message in sent:
        pf.mailbox_receive(1, build_mailbox(message), 0.0)
    for target, data in pf.mailbox_messages():
        reply = parse_mailbox(data)
        assert target == 1 and reply.is_reply and reply.status in set(MbxStatus)
    assert pf.db.owned_by(0) == VICTIM
    for desc in pf.tx_descriptors():
        request = parse_config(desc.frame[parse_ethernet(desc.frame).header_len :])
        if request.opcode == Opcode.ADD_SA:
            assert decode_add_sa(request.tlvs).local_mac == EVIL_MAC
        else:
            assert request.opcode in (Opcode.REMOVE_SA, Opcode.GET_SA_STATS)
            assert decode_sa_index(request.tlvs) == EVIL.sa_index
