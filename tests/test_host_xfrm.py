"""`SequenceOwnership` and `XfrmState.handover_seq`: what a send takes from its state, whether a
received packet goes through the replay window, and the SEQ an install carries (spec 9)."""

from __future__ import annotations

import pytest

from ipsec_offload.host.xfrm import SendRefused, SequenceOwnership, XfrmState
from ipsec_offload.wire.config import Algorithm, Direction

SRC, DST = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])


def state(direction: Direction = Direction.OUTBOUND, **fields: int | bool) -> XfrmState:
    return XfrmState(1, direction, 0x100, SRC, DST, Algorithm.AES_GCM_128, bytes(20), **fields)


def refusal(rules: SequenceOwnership, sa: XfrmState, sends: int, segments: int) -> str:
    """The reason `reserve` gives, after checking it took nothing."""
    before = (sa.oseq, sa.packets, sa.bytes)
    with pytest.raises(SendRefused) as refused:
        rules.reserve(sa, sends, segments, 1)
    assert (sa.oseq, sa.packets, sa.bytes) == before
    return refused.value.reason


@pytest.mark.parametrize("owned", [True, False])
def test_a_send_takes_its_numbers_and_counts_its_segments(owned: bool) -> None:
    """Owned: one number per segment of a TSO send (xfrm_replay_overflow_offload); naive: one
    per send. Either way every segment counts against the packet lifetime."""
    sa, rules = state(), SequenceOwnership(owned)
    assert rules.reserve(sa, 1, 1, 100) == 1
    assert rules.reserve(sa, 1, 4, 400) == 2
    assert rules.reserve(sa, 3, 3, 30) == (6 if owned else 3)
    assert (sa.oseq, sa.packets, sa.bytes) == ((8, 8, 530) if owned else (5, 8, 530))
    assert sa.next_seq == sa.oseq + 1


def test_the_packet_lifetime_refuses_the_send_that_would_pass_it() -> None:
    sa, rules = state(lifetime_packets=5), SequenceOwnership(True)
    assert refusal(rules, sa, 6, 6) == "out_state_expired"
    rules.reserve(sa, 1, 4, 0)  # a TSO send of four segments: one packet of lifetime left
    rules.reserve(sa, 1, 9, 0)  # a send goes while a packet is left
    assert refusal(rules, sa, 1, 1) == "out_state_expired"
    assert sa.packets == 13


@pytest.mark.parametrize("esn", [False, True])
def test_the_last_number_is_used_and_never_passed(esn: bool) -> None:
    limit = (1 << (64 if esn else 32)) - 1
    sa, rules = state(esn=esn), SequenceOwnership(True)
    sa.oseq = limit - 3
    assert refusal(rules, sa, 1, 4) == "out_seq_exhausted"
    assert rules.reserve(sa, 1, 3, 0) == limit - 2
    assert refusal(rules, sa, 1, 1) == "out_seq_exhausted"
    naive = state(esn=esn)
    naive.oseq = limit - 1
    assert SequenceOwnership(False).reserve(naive, 1, 4, 0) == limit  # the send takes one


def test_the_expired_lifetime_is_the_reason_given_first() -> None:
    sa, rules = state(lifetime_packets=1), SequenceOwnership(True)
    sa.packets, sa.oseq = 1, (1 << 32) - 1
    assert refusal(rules, sa, 1, 1) == "out_state_expired"


def test_only_the_owner_checks_packets_the_agent_decrypted() -> None:
    assert SequenceOwnership(True).checks(True) and SequenceOwnership(True).checks(False)
    assert not SequenceOwnership(False).checks(True) and SequenceOwnership(False).checks(False)


def test_an_install_carries_the_states_position_when_the_stack_owns_it() -> None:
    out, inbound = state(), state(Direction.INBOUND)
    assert inbound.replay is not None
    handover = SequenceOwnership(True).handover(out)
    assert handover is not None and handover() is None  # nothing sent: the agent's default 1
    out.oseq = 41
    assert handover() == 42  # read at the moment of the install
    assert inbound.handover_seq() is None
    inbound.replay.accept(7)
    assert inbound.handover_seq() == 7
    assert SequenceOwnership(False).handover(out) is None
