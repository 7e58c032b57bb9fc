"""How a compiled fast path and its Python reference path share a burst.

Every compiled path (the agent's frames, the NIC's Tx descriptors, a plain driver's received
frames, the host stack's events) works the same way: it handles the items of a burst in order
while each is the common case, and returns the position of the first one it leaves; the Python
code, the reference path, handles that one item, and the compiled path goes on after it.
`reference_items` is that loop, once for all of them. It sits at the package's root, below
every layer (wire, crypto, agent, nic, driver, host, ...), and imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

Burst = Callable[[list[T], int], int]
"""A compiled path over a burst: (items, start) -> the position of the first item it left."""


def reference_items(items: Iterable[T], fast: Burst[T] | None) -> Iterator[T]:
    """The items of a burst the Python reference path must handle, in order: with a compiled
    path, it handles each run of common items (over the items as a list) and yields the
    others, one at a time (it is not called again once no item is left)."""
    if fast is None:
        yield from items
        return
    burst = items if type(items) is list else list(items)
    position = 0
    while position < len(burst):
        position = fast(burst, position)
        if position < len(burst):
            yield burst[position]
            position += 1


__all__ = ["Burst", "reference_items"]
