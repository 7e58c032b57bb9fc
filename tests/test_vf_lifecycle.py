"""The PF's VF lifecycle table: every state with every input, driven through the PF driver and
checked against a table of its own (what the VF hears, the state after, what the agent is
asked), written here by hand from the spec rather than read from VF_TRANSITIONS."""

from __future__ import annotations

import errno

import pytest

from ipsec_offload.driver.ownership import Ownership
from ipsec_offload.driver.pf import VF_TRANSITIONS, PfDriver, VfInput, VfState
from ipsec_offload.nic.descriptors import TxDescriptor
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    Caps,
    Direction,
    Opcode,
    encode_add_sa,
    parse_config_header,
)
from ipsec_offload.wire.ethernet import parse_ethernet
from ipsec_offload.wire.mailbox import (
    DelSas,
    MailboxMessage,
    MbxOpcode,
    SaUpdate,
    build_mailbox,
    encode_del_sas,
    encode_handle,
    encode_handle_tlvs,
    encode_sa_update,
    parse_mailbox,
)

VF_MAC = bytes.fromhex("020000000101")
OWNED_HANDLE = 41
ADD = AddSaRequest(
    Direction.OUTBOUND, 0x300, bytes([10, 0, 0, 2]), Algorithm.AES_GCM_128, key=bytes(20)
)
MESSAGES = {
    VfInput.REQUEST_RESOURCES: (MbxOpcode.REQUEST_RESOURCES, b""),
    VfInput.ADD_SA: (MbxOpcode.ADD_SA, encode_handle_tlvs(42, encode_add_sa(ADD))),
    VfInput.DEL_SA: (MbxOpcode.DEL_SA, encode_handle(OWNED_HANDLE)),
    VfInput.RESET: (MbxOpcode.RESET, b""),
    VfInput.GET_CAPS: (MbxOpcode.GET_CAPS, b""),
    VfInput.UPDATE_SA: (MbxOpcode.UPDATE_SA, encode_sa_update(SaUpdate(OWNED_HANDLE, 1 << 32))),
    VfInput.DEL_SAS: (MbxOpcode.DEL_SAS, encode_del_sas(DelSas((OWNED_HANDLE,)))),
    VfInput.READ_SA: (MbxOpcode.READ_SA, encode_handle(OWNED_HANDLE)),
}
MSG_ID = 7
DEFERRED_ID = 3


def pf_with_vf_in(state: VfState) -> PfDriver:
    """A PF whose VF 0 is in `state` (RESETTING and REMOVING with a removal under way)."""
    pf = PfDriver(bytes.fromhex("020000000010"))
    pf.caps = Caps((Algorithm.AES_GCM_128,), 4096, 4096, 1)
    pf.enable_vf(0, 1, VF_MAC)
    vf = pf.vfs[0]
    if state == VfState.DISABLED:
        pf.remove_vf(0, 0.0)
    elif state != VfState.INIT:
        pf.mailbox_receive(0, build_mailbox(MailboxMessage(MbxOpcode.REQUEST_RESOURCES, 1)), 0.0)
        pf.db.add(Ownership(5, 0, OWNED_HANDLE, VF_MAC, ()))
        if state == VfState.RESETTING:
            pf.vf_flr(0, 0.0)
        elif state == VfState.REMOVING:
            pf.remove_vf(0, 0.0)
    assert vf.state == state
    pf.mailbox_messages()
    pf.tx_descriptors()
    return pf


def apply(pf: PfDriver, what: VfInput) -> None:
    vf = pf.vfs[0]
    if what in MESSAGES:
        opcode, body = MESSAGES[what]
        pf.mailbox_receive(0, build_mailbox(MailboxMessage(opcode, MSG_ID, body)), 0.0)
    elif what == VfInput.FLR:
        pf.vf_flr(0, 0.0)
    elif what == VfInput.REMOVE:
        pf.remove_vf(0, 0.0)
    elif what == VfInput.PF_RESET:
        pf.reset(0.0)
    else:
        if what == VfInput.CLEANUP_DONE_REQUESTED:
            vf.deferred_request = DEFERRED_ID
        pf.vf_proxy.step(vf, what, None, 0.0)


def agent_requests(descriptors: list[TxDescriptor]) -> list[Opcode]:
    opcodes = []
    for desc in descriptors:
        eth = parse_ethernet(desc.frame)
        opcodes.append(Opcode(parse_config_header(desc.frame[eth.header_len :]).opcode))
    return opcodes


# -- the oracle -----------------------------------------------------------------------------

S, In = VfState, VfInput
OK, EPERM, EBUSY = 0, errno.EPERM, errno.EBUSY
SA_INPUTS = (In.ADD_SA, In.DEL_SA, In.DEL_SAS, In.READ_SA, In.UPDATE_SA, In.GET_CAPS)
Replies = tuple[tuple[int, int, int], ...]
"""(base opcode, msg_id, status) of each reply the VF gets at once."""
Outcome = tuple[Replies, VfState, tuple[Opcode, ...]]
"""What the VF hears at once, the state after, what the agent is asked."""


def answered(what: VfInput, status: int) -> Replies:
    return ((MESSAGES[what][0], MSG_ID, status),)


def refused(state: VfState, status: int) -> dict[tuple[VfState, VfInput], Outcome]:
    return {(state, what): (answered(what, status), state, ()) for what in SA_INPUTS}


FLUSH = (Opcode.REMOVE_ALL_SAS,)
REMOVAL = (Opcode.REMOVE_SA,)
EXPECTED: dict[tuple[VfState, VfInput], Outcome] = {
    # INIT: nothing granted yet; an SA message is refused EPERM (VF_DOWN)
    (S.INIT, In.REQUEST_RESOURCES): (answered(In.REQUEST_RESOURCES, OK), S.ACTIVE, ()),
    **refused(S.INIT, EPERM),
    (S.INIT, In.RESET): (answered(In.RESET, OK), S.INIT, ()),
    (S.INIT, In.FLR): ((), S.INIT, ()),
    (S.INIT, In.REMOVE): ((), S.DISABLED, ()),
    (S.INIT, In.PF_RESET): ((), S.INIT, FLUSH),
    # ACTIVE, holding handle 41 at SA index 5
    (S.ACTIVE, In.REQUEST_RESOURCES): (answered(In.REQUEST_RESOURCES, OK), S.ACTIVE, ()),
    (S.ACTIVE, In.ADD_SA): ((), S.ACTIVE, (Opcode.ADD_SA,)),
    (S.ACTIVE, In.DEL_SA): ((), S.ACTIVE, REMOVAL),
    (S.ACTIVE, In.DEL_SAS): ((), S.ACTIVE, REMOVAL),
    (S.ACTIVE, In.READ_SA): ((), S.ACTIVE, (Opcode.GET_SA_STATS,)),
    (S.ACTIVE, In.UPDATE_SA): (answered(In.UPDATE_SA, OK), S.ACTIVE, ()),  # no agent traffic
    (S.ACTIVE, In.GET_CAPS): (answered(In.GET_CAPS, OK), S.ACTIVE, ()),
    (S.ACTIVE, In.RESET): (answered(In.RESET, OK), S.RESETTING, REMOVAL),
    (S.ACTIVE, In.FLR): ((), S.RESETTING, REMOVAL),
    (S.ACTIVE, In.REMOVE): ((), S.REMOVING, REMOVAL),
    (S.ACTIVE, In.PF_RESET): ((), S.INIT, FLUSH),
    # RESETTING, its SA's removal under way: SA messages refused EBUSY (NOT_READY)
    (S.RESETTING, In.REQUEST_RESOURCES): ((), S.RESETTING, ()),  # answered once cleaned up
    **refused(S.RESETTING, EBUSY),
    (S.RESETTING, In.RESET): (answered(In.RESET, OK), S.RESETTING, ()),
    (S.RESETTING, In.FLR): ((), S.RESETTING, ()),
    (S.RESETTING, In.REMOVE): ((), S.REMOVING, ()),
    (S.RESETTING, In.CLEANUP_DONE): ((), S.INIT, ()),
    (S.RESETTING, In.CLEANUP_DONE_REQUESTED): (
        ((MbxOpcode.REQUEST_RESOURCES, DEFERRED_ID, OK),),
        S.ACTIVE,
        (),
    ),
    (S.RESETTING, In.PF_RESET): ((), S.INIT, FLUSH),
    # REMOVING: every message refused EBUSY until the VF is DISABLED
    (S.REMOVING, In.REQUEST_RESOURCES): (answered(In.REQUEST_RESOURCES, EBUSY), S.REMOVING, ()),
    **refused(S.REMOVING, EBUSY),
    (S.REMOVING, In.RESET): (answered(In.RESET, EBUSY), S.REMOVING, ()),
    (S.REMOVING, In.FLR): ((), S.REMOVING, ()),
    (S.REMOVING, In.REMOVE): ((), S.REMOVING, ()),
    (S.REMOVING, In.CLEANUP_DONE): ((), S.DISABLED, ()),
    (S.REMOVING, In.CLEANUP_DONE_REQUESTED): ((), S.DISABLED, ()),
    (S.REMOVING, In.PF_RESET): ((), S.DISABLED, FLUSH),
}
"""Every (state, input) the PF acts on; any other is ignored and counted. DISABLED acts on
nothing (the VF has no mailbox)."""


@pytest.mark.parametrize("state", list(VfState))
@pytest.mark.parametrize("what", list(VfInput))
def test_every_state_and_input(state: VfState, what: VfInput) -> None:
    pf = pf_with_vf_in(state)
    ignored = pf.pf_counters.mailbox_ignored
    apply(pf, what)
    vf = pf.vfs[0]
    replies = tuple(
        (m.base_opcode, m.msg_id, m.status)
        for m in (parse_mailbox(data) for target, data in pf.mailbox_messages() if target == 0)
    )
    requests = tuple(agent_requests(pf.tx_descriptors()))
    if (state, what) not in EXPECTED:
        assert (vf.state, replies, pf.pf_counters.mailbox_ignored) == (state, (), ignored + 1)
        assert what == VfInput.PF_RESET or requests == ()
        return
    assert (replies, vf.state, requests) == EXPECTED[(state, what)]
    assert pf.pf_counters.mailbox_ignored == ignored


def test_the_table_has_a_row_for_exactly_what_the_pf_acts_on() -> None:
    assert set(VF_TRANSITIONS) == set(EXPECTED)


def test_cleanup_answers_the_deferred_request_only_after_the_agent() -> None:
    pf = pf_with_vf_in(VfState.RESETTING)
    pf.mailbox_receive(0, build_mailbox(MailboxMessage(MbxOpcode.REQUEST_RESOURCES, 9)), 0.0)
    assert pf.mailbox_messages() == []  # deferred: the removal is not confirmed yet
    assert pf.vfs[0].deferred_request == 9
    assert pf.channel.pending == 1
