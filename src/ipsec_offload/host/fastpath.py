"""The host stack's compiled receive path (`_rxpath.c`), where the package was built with it.

`RxPath` delivers the common packets of a burst of driver events for a `HostStack`; it is None
where no C compiler was found at install time, and the Python reference code then handles every
event (see docs/architecture.md). The loop that shares a burst between the two paths is
`ipsec_offload.burst.reference_items`.
"""

from __future__ import annotations

try:
    from ipsec_offload.host._rxpath import RxPath
except ImportError:  # built without a C compiler
    RxPath = None  # type: ignore[assignment,misc]

RX_PATH_BUILT = RxPath is not None
"""Whether the compiled receive path was built with the package."""

__all__ = ["RX_PATH_BUILT", "RxPath"]
