"""The anti-replay window: RFC 4303 3.4.3 rules, Appendix A ESN inference, a reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_offload.agent.replay import MAX_WINDOW_SIZE, ReplayWindow
from ipsec_offload.errors import UsageError

MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def receive(window: ReplayWindow, seq_lo: int, authentic: bool = True) -> int | None:
    """The agent's sequence: check before decryption, accept only after the ICV verified."""
    full = window.check(seq_lo)
    if full is not None and authentic:
        window.accept(full)
    return full


# --- 32-bit sequence numbers ---------------------------------------------------------------


def test_fresh_window_rejects_zero_and_takes_one() -> None:
    window = ReplayWindow(64, esn=False)
    assert window.highest == 0
    assert window.check(0) is None
    assert window.check(1) == 1


def test_duplicate_is_replay() -> None:
    window = ReplayWindow(64, esn=False)
    assert receive(window, 1) == 1
    assert window.check(1) is None
    assert receive(window, 5) == 5
    assert window.check(5) is None
    assert window.check(1) is None


def test_reorder_inside_window_passes_once() -> None:
    window = ReplayWindow(64, esn=False)
    for seq in (10, 12, 11, 3, 9):
        assert receive(window, seq) == seq
    assert window.highest == 12
    for seq in (10, 12, 11, 3, 9):
        assert window.check(seq) is None
    assert window.check(4) == 4


def test_too_old_is_replay() -> None:
    window = ReplayWindow(64, esn=False)
    receive(window, 100)
    assert window.check(36) is None  # 100 - 36 = 64: just below the window
    assert window.check(37) == 37  # the bottom edge of the window
    assert window.check(1) is None


def test_check_alone_does_not_move_the_window() -> None:
    """A forged packet passes the check but fails the ICV: the window must stay put."""
    window = ReplayWindow(64, esn=False)
    receive(window, 10)
    before = (window.highest, window.bitmap)
    assert receive(window, 1_000_000, authentic=False) == 1_000_000
    assert (window.highest, window.bitmap) == before
    assert window.check(9) == 9
    assert receive(window, 10, authentic=False) is None
    assert (window.highest, window.bitmap) == before


def test_bitmap_tracks_received_numbers() -> None:
    window = ReplayWindow(8, esn=False)
    assert window.bitmap == 0xFF  # a new window counts 0 (and below) as received
    for seq in (2, 4):
        receive(window, seq)
    assert window.highest == 4
    # Bit i stands for 4 - i: 4, 2 and 0 received, 3 and 1 not (bits 5-7: below 0).
    assert window.bitmap == 0b1111_0101
    assert (window.check(3), window.check(1)) == (3, 1)
    receive(window, 20)
    assert window.bitmap == 1


def test_accept_below_window_changes_nothing() -> None:
    window = ReplayWindow(64, esn=False)
    receive(window, 200)
    before = (window.highest, window.bitmap)
    window.accept(100)
    assert (window.highest, window.bitmap) == before


def test_size_one_tracks_only_the_highest() -> None:
    window = ReplayWindow(1, esn=False)
    assert receive(window, 5) == 5
    assert window.check(5) is None
    assert window.check(4) is None
    assert receive(window, 7) == 7
    assert window.check(6) is None
    assert window.check(8) == 8


def test_size_4096() -> None:
    window = ReplayWindow(4096, esn=False)
    top = 10_000
    assert receive(window, top) == top
    assert window.check(top - 4096) is None
    assert window.check(top - 4095) == top - 4095
    for seq in range(top - 4095, top, 2):
        assert receive(window, seq) == seq
    for seq in range(top - 4095, top, 2):
        assert window.check(seq) is None
    for seq in range(top - 4094, top, 2):
        assert window.check(seq) == seq
    # Sliding by less than the window keeps the bits that are still inside it.
    assert receive(window, top + 100) == top + 100
    assert window.check(top - 3994) == top - 3994
    assert window.check(top - 3995) is None  # received, still inside the window
    assert window.check(top - 3996) is None  # now below the window


def test_large_jump_clears_the_window() -> None:
    window = ReplayWindow(4096, esn=False)
    for seq in range(1, 50):
        receive(window, seq)
    receive(window, 1_000_000)
    assert window.bitmap == 1
    assert window.check(1_000_000 - 4095) == 1_000_000 - 4095


def test_last_32_bit_sequence_number() -> None:
    window = ReplayWindow(64, esn=False)
    assert receive(window, MASK32) == MASK32
    assert window.check(MASK32) is None
    assert window.check(MASK32 - 63) == MASK32 - 63


def test_size_zero_disables_the_check() -> None:
    window = ReplayWindow(0, esn=False)
    for seq in (5, 5, 3, 0, 1_000, 1):
        assert receive(window, seq) == seq
    assert window.highest == 1_000
    assert window.bitmap == 0


def test_initial_highest_and_window_below_count_as_received() -> None:
    """Re-installed mid-stream: nothing says which numbers below T arrived, so none passes."""
    window = ReplayWindow(64, esn=False, highest=500)
    assert window.bitmap == 2**64 - 1
    for seq in (500, 499, 437, 436, 1):
        assert window.check(seq) is None
    assert receive(window, 510) == 510
    assert window.check(505) == 505
    assert window.check(500) is None
    assert window.check(447) is None
    # 0 inside the window of a window built at T = 5: still never a valid number.
    assert ReplayWindow(64, esn=False, highest=5).check(0) is None


# --- Extended sequence numbers (RFC 4303 Appendix A) -----------------------------------------


def test_esn_across_the_2_32_boundary() -> None:
    window = ReplayWindow(64, esn=True, highest=2**32 - 3)
    assert receive(window, 0xFFFF_FFFE) == 0xFFFF_FFFE  # case A, same subspace
    assert receive(window, 1) == 2**32 + 1  # case A, Seql < Bl: next subspace
    assert window.highest == 2**32 + 1
    assert receive(window, 2) == 2**32 + 2  # case B (Tl < W - 1), Seql < Bl: Th
    # Case B, Seql >= Bl: the part of the window below the boundary, high half Th - 1.
    assert window.check(0xFFFF_FFFE) is None
    assert window.check(0xFFFF_FFFF) == 0xFFFF_FFFF  # not received yet
    assert window.check(0xFFFF_FFFD) is None  # the initial highest
    assert window.check(2**32 - 61) is None  # T - W + 1, below the initial highest
    assert window.check(2**32 - 62) == 2**33 - 62  # below Bl: taken as ahead, Seqh = Th
    assert window.check(0) == 2**32  # 0 is a valid low half once the high half is 1
    assert receive(window, 0) == 2**32
    assert window.check(0) is None


def test_esn_case_a_ahead_and_behind() -> None:
    high = 7 << 32
    window = ReplayWindow(64, esn=True, highest=high | 900)
    assert receive(window, 1_000) == high | 1_000
    assert window.check(1_000 - 63) == high | (1_000 - 63)  # Bl: same subspace, in window
    assert window.check(1_001) == high | 1_001
    assert window.check(MASK32) == high | MASK32
    # Below Bl the number is taken as ahead, in the next subspace (never as too old).
    assert window.check(1_000 - 64) == (8 << 32) | (1_000 - 64)
    assert window.check(0) == 8 << 32


def test_esn_inferred_high_bits_move_with_the_window() -> None:
    window = ReplayWindow(64, esn=True)
    seq = 0
    for step in (5, 2**31, 2**31, 2**31 - 70, 100, 2**31, 2**31):
        seq += step
        assert receive(window, seq & MASK32) == seq
    assert window.highest == seq
    assert seq >> 32 == 2


def test_esn_fresh_window_rejects_numbers_before_the_first() -> None:
    """At T = 0 the window reaches below 0 (case B); inferred Seqh would be -1."""
    window = ReplayWindow(64, esn=True)
    assert window.check(0) is None
    assert window.check(MASK32) is None
    assert window.check(MASK32 - 62) is None  # = -63 + 2^32: the bottom of the window
    assert window.check(MASK32 - 63) == MASK32 - 63  # below Bl: taken as ahead, Seqh = 0
    assert window.check(1) == 1


def test_esn_end_of_sequence_space() -> None:
    window = ReplayWindow(64, esn=True, highest=MASK64 - 1)
    assert window.check(MASK32) == MASK64
    assert window.check(0) is None  # would be 2^64
    assert receive(window, MASK32) == MASK64
    assert window.check(MASK32) is None


def test_esn_size_zero_still_infers_high_bits() -> None:
    """Check off: T is still tracked, and Appendix A with W = 0 gives the high half."""
    window = ReplayWindow(0, esn=True, highest=2**32 - 3)
    assert receive(window, 0xFFFF_FFFE) == 0xFFFF_FFFE
    assert receive(window, 1) == 2**32 + 1
    assert window.highest == 2**32 + 1
    assert receive(window, 1) == 2**33 + 1  # Seql <= Tl: taken as the next subspace
    assert window.bitmap == 0


def test_esn_size_one() -> None:
    window = ReplayWindow(1, esn=True, highest=(1 << 32) | 5)
    assert window.check(5) is None
    assert window.check(6) == (1 << 32) | 6
    assert window.check(4) == (2 << 32) | 4


def test_esn_4096_spanning_boundary() -> None:
    window = ReplayWindow(4096, esn=True, highest=(1 << 32) - 5_000)
    assert receive(window, 100) == (1 << 32) | 100
    for back in range(3, 4096, 3):
        full = ((1 << 32) | 100) - back
        assert receive(window, full & MASK32) == full
    for back in range(4096):
        full = ((1 << 32) | 100) - back
        assert window.check(full & MASK32) == (None if back % 3 == 0 else full)


# --- Misuse ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [-1, MAX_WINDOW_SIZE + 1])
def test_bad_size(size: int) -> None:
    with pytest.raises(UsageError, match="window size"):
        ReplayWindow(size, esn=False)


def test_max_size_accepted() -> None:
    assert ReplayWindow(MAX_WINDOW_SIZE, esn=True).size == MAX_WINDOW_SIZE


@pytest.mark.parametrize(("esn", "highest"), [(False, -1), (False, 2**32), (True, 2**64)])
def test_bad_highest(esn: bool, highest: int) -> None:
    with pytest.raises(UsageError, match="highest"):
        ReplayWindow(64, esn=esn, highest=highest)


@pytest.mark.parametrize("seq_lo", [-1, 2**32])
def test_bad_seq_lo(seq_lo: int) -> None:
    with pytest.raises(UsageError, match="32-bit"):
        ReplayWindow(64, esn=True).check(seq_lo)


@pytest.mark.parametrize(("esn", "seq"), [(False, -1), (False, 2**32), (True, 2**64)])
def test_bad_accept(esn: bool, seq: int) -> None:
    with pytest.raises(UsageError):
        ReplayWindow(64, esn=esn).accept(seq)


def test_properties_and_repr() -> None:
    window = ReplayWindow(64, esn=True, highest=0x1_0000_0002)
    assert (window.size, window.esn, window.highest) == (64, True, 0x1_0000_0002)
    assert "0x100000002" in repr(window)


# --- Reference models --------------------------------------------------------------------------


class ModelWindow:
    """RFC 4303 3.4.3 stated directly: the set of every authenticated number, and T."""

    def __init__(self, size: int, highest: int = 0) -> None:
        self.size = size
        self.highest = highest
        self.installed = highest  # it and everything below count as received
        self.received: set[int] = set()

    def check(self, seq: int) -> int | None:
        if self.size == 0:
            return seq
        if seq == 0 or seq > MASK64:
            return None
        if seq > self.highest:
            return seq
        if self.highest - seq >= self.size or seq <= self.installed or seq in self.received:
            return None
        return seq

    def accept(self, seq: int) -> None:
        self.received.add(seq)
        self.highest = max(self.highest, seq)


WINDOW_SIZES = st.sampled_from([0, 1, 2, 3, 32, 64, 100, 4096])


@settings(max_examples=300)
@given(
    size=WINDOW_SIZES,
    ops=st.lists(
        st.tuples(
            st.one_of(
                st.integers(-2, 2).map(lambda d: ("edge", d)),
                st.integers(-130, 130).map(lambda d: ("rel", d)),
                st.integers(-5000, 5000).map(lambda d: ("rel", d)),
                st.integers(0, MASK32).map(lambda s: ("abs", s)),
            ),
            st.booleans(),
        ),
        max_size=200,
    ),
)
def test_matches_reference_model_without_esn(
    size: int, ops: list[tuple[tuple[str, int], bool]]
) -> None:
    window = ReplayWindow(size, esn=False)
    model = ModelWindow(size)
    for (kind, value), authentic in ops:
        if kind == "abs":
            seq = value
        else:
            # "edge": around the bottom of the window, T - W + 1.
            base = model.highest - size + 1 if kind == "edge" else model.highest
            seq = min(max(base + value, 0), MASK32)
        expected = model.check(seq)
        assert window.check(seq) == expected
        if expected is not None and authentic:
            window.accept(seq)
            model.accept(seq)
        assert window.highest == model.highest


@settings(max_examples=300)
@given(
    size=WINDOW_SIZES,
    start=st.one_of(
        st.integers(0, 300),
        st.integers(0, MASK64),
        st.integers(-300, 300).map(lambda d: max(0, (1 << 32) + d)),
        st.integers(0, 300).map(lambda d: MASK64 - d),
    ),
    ops=st.lists(
        st.tuples(
            st.one_of(st.integers(-4096, 300), st.integers(-4096, 2**32), st.just(2**32)),
            st.booleans(),
        ),
        max_size=100,
    ),
)
def test_esn_inference_matches_sender(size: int, start: int, ops: list[tuple[int, bool]]) -> None:
    """For a sender number S within [T - W + 1, T - W + 2^32] (where Appendix A infers the
    high half right) check(S mod 2^32) gives S, or None exactly when the model says replay."""
    window = ReplayWindow(size, esn=True, highest=start)
    model = ModelWindow(size, highest=start)
    for offset, authentic in ops:
        top = model.highest
        low_edge, high_edge = top - size + 1, top - size + 2**32
        sent = min(max(top + offset, low_edge), high_edge)
        got = window.check(sent & MASK32)
        if sent <= 0 or sent > MASK64:
            assert got is None
            continue
        expected = model.check(sent)
        assert got == expected
        if expected is not None and authentic:
            window.accept(sent)
            model.accept(sent)
        assert window.highest == model.highest
