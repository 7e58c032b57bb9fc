"""The host's compiled receive path (`_rxpath.c`), where the package was built with it.

`RxPath` delivers the common packets of a burst of driver events for a `HostStack`, `receive`
keeps a `PlainDriver`'s frames; both are None where no C compiler was found at install time,
and the Python reference code then handles every event and frame (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

try:
    from ipsec_offload.host._rxpath import RxPath, receive
except ImportError:  # built without a C compiler
    RxPath = None  # type: ignore[assignment,misc]
    receive = None  # type: ignore[assignment]

RX_PATH_BUILT = RxPath is not None
"""Whether the compiled receive path was built with the package."""

T = TypeVar("T")

Burst = Callable[[list[T], int], int]
"""A compiled path over a burst: (items, start) -> the position of the first item it left."""


def reference_items(items: list[T], fast: Burst[T] | None) -> Iterator[T]:
    """The items of a burst the Python reference path must handle, in order: with a compiled
    path, it handles each run of common items and yields the others, one at a time."""
    if fast is None:
        yield from items
        return
    position = 0
    while (position := fast(items, position)) < len(items):
        yield items[position]
        position += 1


__all__ = ["RX_PATH_BUILT", "Burst", "RxPath", "receive", "reference_items"]
