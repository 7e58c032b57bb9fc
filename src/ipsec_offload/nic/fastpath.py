"""The NIC's compiled Tx fast path (`_txpath.c`), where the package was built with it.

`TxPath` sends the common descriptors of a burst toward the agent and builds the descriptors
of a driver's burst; it is None where no C compiler was found at install time, and the NIC's
Python reference path then handles every descriptor (see docs/architecture.md).
"""

from __future__ import annotations

try:
    from ipsec_offload.nic._txpath import TxPath
except ImportError:  # built without a C compiler
    TxPath = None  # type: ignore[assignment,misc]

TX_PATH_BUILT = TxPath is not None
"""Whether the NIC's compiled fast path was built with the package."""

__all__ = ["TX_PATH_BUILT", "TxPath"]
