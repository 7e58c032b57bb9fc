"""The inbound anti-replay window (RFC 4303 section 3.4.3, Appendix A for ESN).

Theory of operation: the window remembers T, the highest sequence number whose ICV has
verified, and a bitmap of the W numbers T, T-1, ..., T-W+1: bit i is set when T-i has been
received and authenticated. It is a Python int: testing a bit is one shift, and sliding the
window one shift and mask over W/64 machine words (64 of them at W = 4096).

Receiving a packet is two steps, split around decryption:

1. :meth:`ReplayWindow.check` takes the 32-bit sequence number from the ESP header and returns
   the full sequence number, or None when the packet is a replay. Without ESN the full number
   is the header field. With ESN the high 32 bits are not sent; they are inferred from the
   window's position as RFC 4303 Appendix A2.2 specifies: with Tl/Th the low/high halves of T
   and Bl = Tl - W + 1, when the window lies inside one 2^32 subspace (case A, Tl >= W - 1) a
   Seql >= Bl is in the window's subspace (Th) and anything below Bl is ahead of it (Th + 1);
   when the window straddles a 2^32 boundary (case B, Tl < W - 1) a Seql >= Bl mod 2^32 is in
   the window's lower part (Th - 1) and anything below is in T's subspace (Th). A number above
   T passes; a number inside the window passes when its bit is clear; anything below the
   window is too old. The window does not move.
2. :meth:`ReplayWindow.accept` runs only after the ICV verified with that full number (which
   the AAD carries with ESN, so a wrong guess of the high bits fails the ICV): it sets the bit,
   or slides the window up when the number is above T (Appendix A2.1). A forged packet
   therefore never moves the window.

A window starts with every bit set: T and everything below it count as received. For a new SA
(T = 0) that rejects sequence number 0, which is never valid (the sender's first packet carries
1). For an SA re-installed mid-stream with the highest number already received (the SEQ TLV),
the numbers just below T may have been received before the hand-over and nothing records which,
so none of them is accepted again: late packets from before the hand-over are dropped rather
than risk a replay.

Window size 0 turns the replay check off (RFC 4303 3.4.3: then no inbound checks are made on
the sequence number), but T is still tracked so that ESN high bits can be inferred, by the same
Appendix A formulas with W = 0: a Seql above Tl is in T's subspace, any other is in the next.
"""

from __future__ import annotations

from typing import Final

from ipsec_offload.errors import UsageError

__all__ = ["MAX_WINDOW_SIZE", "ReplayWindow"]

MAX_WINDOW_SIZE: Final = 1 << 31
"""The largest window: RFC 4303 Appendix A2 assumes a window of at most 2^31 packets."""

_MASK32: Final = 0xFFFF_FFFF
_MASK64: Final = 0xFFFF_FFFF_FFFF_FFFF


class ReplayWindow:
    """An RFC 4303 anti-replay window of ``size`` packets for one inbound SA.

    ``esn`` selects 64-bit extended sequence numbers (Appendix A); ``highest`` is the highest
    sequence number already received (0 for a new SA): it and the window below it count as
    received.
    """

    __slots__ = ("_bitmap", "_esn", "_highest", "_mask", "_size")

    def __init__(self, size: int, esn: bool, highest: int = 0) -> None:
        if not 0 <= size <= MAX_WINDOW_SIZE:
            raise UsageError(
                f"replay window size must be 0 (no replay check) to {MAX_WINDOW_SIZE}, got {size}"
            )
        limit = _MASK64 if esn else _MASK32
        if not 0 <= highest <= limit:
            raise UsageError(
                f"highest sequence number must be 0 to {limit:#x}"
                f" ({'64' if esn else '32'}-bit sequence numbers), got {highest}"
            )
        self._size = size
        self._esn = bool(esn)
        self._highest = highest
        self._mask = (1 << size) - 1
        self._bitmap = self._mask

    @property
    def size(self) -> int:
        """Window size W in packets; 0 means the replay check is off."""
        return self._size

    @property
    def esn(self) -> bool:
        """Whether the SA uses 64-bit extended sequence numbers."""
        return self._esn

    @property
    def highest(self) -> int:
        """T: the highest sequence number authenticated so far (full 64-bit with ESN)."""
        return self._highest

    @property
    def bitmap(self) -> int:
        """The window bits: bit i set when ``highest - i`` has been received (0 if size 0)."""
        return self._bitmap

    def __repr__(self) -> str:
        return (
            f"ReplayWindow(size={self._size}, esn={self._esn}, highest={self._highest:#x},"
            f" bitmap={self._bitmap:#x})"
        )

    def check(self, seq_lo: int) -> int | None:
        """The full sequence number for a packet whose ESP header carries ``seq_lo``, or None.

        Call before decrypting. None means the packet must be dropped as a replay: its number
        was already received, is below the window or is 0. With ESN, None also when the
        inferred number falls outside 1..2^64-1 (before the first packet, or past the last),
        even with the check off. With size 0 the packet otherwise always passes. The window is
        not changed; call :meth:`accept` once the ICV verifies.
        """
        if not 0 <= seq_lo <= _MASK32:
            raise UsageError(f"seq_lo must be an unsigned 32-bit int, got {seq_lo!r}")
        size = self._size
        top = self._highest
        if self._esn:
            high = top >> 32
            low = top & _MASK32
            if low >= size - 1:
                # Case A: the window lies within one 2^32 subspace.
                if seq_lo < low - size + 1:
                    high += 1
            elif seq_lo >= (low - size + 1) & _MASK32:
                # Case B, Seql in the part of the window below the 2^32 boundary.
                high -= 1
            seq = (high << 32) | seq_lo
            if not 0 < seq <= _MASK64:
                return None
        else:
            seq = seq_lo
        if seq > top or not size:
            return seq
        offset = top - seq
        if offset >= size or (self._bitmap >> offset) & 1 or not seq:
            return None
        return seq

    def accept(self, seq: int) -> None:
        """Record full sequence number ``seq`` (from :meth:`check`) after its ICV verified.

        Slides the window up when ``seq`` is above :attr:`highest`; otherwise sets its bit.
        A number that has meanwhile fallen below the window changes nothing.
        """
        limit = _MASK64 if self._esn else _MASK32
        if not 0 <= seq <= limit:
            raise UsageError(
                f"sequence number must be 0 to {limit:#x} for this window, got {seq!r}"
            )
        top = self._highest
        if seq > top:
            shift = seq - top
            if shift < self._size:
                self._bitmap = ((self._bitmap << shift) | 1) & self._mask
            else:
                self._bitmap = 1 & self._mask
            self._highest = seq
        else:
            offset = top - seq
            if offset < self._size:
                self._bitmap |= 1 << offset
