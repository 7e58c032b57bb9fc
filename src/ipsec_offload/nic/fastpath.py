"""The NIC's compiled fast paths (`_nicpath.c`), where the package was built with them.

`TxPath` sends the common descriptors of a burst toward the agent and builds the descriptors
of a driver's burst; `plain_receive` is the MAC filter of a plain NIC's receive side (the
frames a `PlainDriver` keeps: for its MAC, broadcast or multicast). Both are None where no C
compiler was found at install time, and the Python reference path then handles every
descriptor and frame (see docs/architecture.md). The loop that shares a burst between the two
paths is `ipsec_offload.burst.reference_items`.
"""

from __future__ import annotations

try:
    from ipsec_offload.nic._nicpath import TxPath, plain_receive
except ImportError:  # built without a C compiler
    TxPath = None  # type: ignore[assignment,misc]
    plain_receive = None  # type: ignore[assignment]

NIC_PATH_BUILT = TxPath is not None
"""Whether the NIC's compiled fast paths were built with the package."""

__all__ = ["NIC_PATH_BUILT", "TxPath", "plain_receive"]
