"""The PF's VF lifecycle table: every state with every input, driven through the PF driver."""

from __future__ import annotations

import pytest

from ipsec_offload.driver.ownership import Ownership
from ipsec_offload.driver.pf import VF_TRANSITIONS, PfDriver, VfInput, VfState
from ipsec_offload.wire.config import AddSaRequest, Algorithm, Direction, encode_add_sa
from ipsec_offload.wire.mailbox import (
    MailboxMessage,
    MbxOpcode,
    build_mailbox,
    encode_handle,
    encode_handle_tlvs,
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
}


def pf_with_vf_in(state: VfState) -> PfDriver:
    """A PF whose VF 0 is in `state` (RESETTING and REMOVING with a removal under way)."""
    pf = PfDriver(bytes.fromhex("020000000010"))
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
        pf.mailbox_receive(0, build_mailbox(MailboxMessage(opcode, 7, body)), 0.0)
    elif what == VfInput.FLR:
        pf.vf_flr(0, 0.0)
    elif what == VfInput.REMOVE:
        pf.remove_vf(0, 0.0)
    elif what == VfInput.PF_RESET:
        pf.reset(0.0)
    else:
        if what == VfInput.CLEANUP_DONE_REQUESTED:
            vf.deferred_request = 3
        pf.vf_proxy.step(vf, what, None, 0.0)


@pytest.mark.parametrize("state", list(VfState))
@pytest.mark.parametrize("what", list(VfInput))
def test_every_state_and_input(state: VfState, what: VfInput) -> None:
    pf = pf_with_vf_in(state)
    ignored = pf.pf_counters.mailbox_ignored
    apply(pf, what)
    step = VF_TRANSITIONS.get((state, what))
    vf = pf.vfs[0]
    if step is None:
        assert vf.state == state
        assert pf.pf_counters.mailbox_ignored == ignored + 1
        assert pf.mailbox_messages() == []
        return
    action, next_state = step
    expected = next_state
    if action in ("clean_up", "ack_and_clean_up") and not pf.db.owned_by(0):
        # Nothing owned: the clean-up finishes at once.
        expected = VfState.INIT if next_state == VfState.RESETTING else VfState.DISABLED
    assert vf.state == expected
    replies = [parse_mailbox(data) for target, data in pf.mailbox_messages() if target == 0]
    statuses = {m.base_opcode: m.status for m in replies if m.is_reply}
    if action == "grant":
        assert statuses == {MbxOpcode.REQUEST_RESOURCES: 0}
    elif action == "grant_deferred":
        assert [(m.msg_id, m.status) for m in replies] == [(3, 0)]
    elif action == "refuse_eperm":
        assert set(statuses.values()) == {1}
    elif action == "refuse_ebusy":
        assert set(statuses.values()) == {16}
    elif action in ("ack", "ack_and_clean_up"):
        assert statuses == {MbxOpcode.RESET: 0}
    elif action in ("proxy_add", "proxy_del", "defer", "clean_up", "nothing", "disable", "forget"):
        assert statuses == {}  # answered later (proxy), or nothing to answer
    else:
        pytest.fail(f"untested action {action}")


def test_the_table_covers_every_live_state() -> None:
    live = [s for s in VfState if s != VfState.DISABLED]
    for state in live:
        for what in (VfInput.REQUEST_RESOURCES, VfInput.ADD_SA, VfInput.FLR, VfInput.PF_RESET):
            assert (state, what) in VF_TRANSITIONS


def test_cleanup_answers_the_deferred_request_only_after_the_agent() -> None:
    pf = pf_with_vf_in(VfState.RESETTING)
    pf.mailbox_receive(0, build_mailbox(MailboxMessage(MbxOpcode.REQUEST_RESOURCES, 9)), 0.0)
    assert pf.mailbox_messages() == []  # deferred: the removal is not confirmed yet
    assert pf.vfs[0].deferred_request == 9
    assert pf.channel.pending == 1
