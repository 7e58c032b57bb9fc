"""The agent's compiled fast path (`_datapath.c`), where the package was built with it.

`Datapath` runs the common frames of a burst, `SadTable` is the SAD's hash table it looks SAs
up in; both are None where no C compiler was found at install time, and the agent's Python
reference path then handles every frame (see docs/architecture.md).
"""

from __future__ import annotations

try:
    from ipsec_offload.agent._datapath import Datapath, SadTable
except ImportError:  # built without a C compiler
    Datapath = None  # type: ignore[assignment,misc]
    SadTable = None  # type: ignore[assignment,misc]

FAST_PATH_BUILT = Datapath is not None
"""Whether the compiled fast path was built with the package (see `AgentConfig.fast_path`)."""

__all__ = ["FAST_PATH_BUILT", "Datapath", "SadTable"]
