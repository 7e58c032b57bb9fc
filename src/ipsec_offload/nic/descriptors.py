"""Tx and Rx descriptors as the FVL model's drivers see them.

On the FVL the 32-bit metadata travels in the descriptors' L2TAG fields (L2TAG1 holds the high
16 bits, L2TAG2 the low 16 bits); the model keeps them as one 32-bit `l2tag` word.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TxDescriptor:
    """One send: the frame as the driver built it (no metadata tag) and its offload fields.

    `l2tag` set makes the NIC insert the metadata tag with that word; `mss` non-zero asks for
    TSO: the NIC cuts the payload into segments of `mss` bytes (spec section 7).
    """

    frame: bytes
    l2tag: int | None = None
    mss: int = 0


@dataclass(frozen=True, slots=True)
class RxDescriptor:
    """One received frame with the metadata the NIC extracted from its outermost tag."""

    frame: bytes
    l2tag: int | None = None
