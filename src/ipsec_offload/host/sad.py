"""The stack's security association database (`ip xfrm state`): its states by handle, and the
inbound ones by (SPI, destination address), the key a received ESP packet is looked up by
(Linux's byspi hash). The compiled receive path (`_rxpath.c`) reads `inbound` directly.
"""

from __future__ import annotations

from ipsec_offload.errors import UsageError
from ipsec_offload.host.xfrm import XfrmState
from ipsec_offload.wire.addr import ip_to_str
from ipsec_offload.wire.config import Direction


class Sad:
    """One host's states."""

    __slots__ = ("inbound", "name", "states")

    def __init__(self, name: str) -> None:
        self.name = name
        """The host's name, for errors."""
        self.states: dict[int, XfrmState] = {}
        self.inbound: dict[tuple[int, bytes], XfrmState] = {}

    def add(self, state: XfrmState) -> None:
        """Add a state whose handle, and (SPI, destination) if inbound, no other state has."""
        if state.handle in self.states:
            raise UsageError(f"host {self.name}: state handle {state.handle} is in use")
        if state.direction == Direction.INBOUND:
            key = (state.spi, state.dst)
            if key in self.inbound:
                raise UsageError(
                    f"host {self.name}: an inbound state for SPI {state.spi:#x} "
                    f"to {ip_to_str(state.dst)} exists"
                )
            self.inbound[key] = state
        self.states[state.handle] = state

    def get(self, handle: int) -> XfrmState:
        """The state with `handle`; a UsageError if there is none."""
        try:
            return self.states[handle]
        except KeyError:
            raise UsageError(f"host {self.name}: no state with handle {handle}") from None

    def remove(self, state: XfrmState) -> None:
        self.states.pop(state.handle, None)
        if state.direction == Direction.INBOUND:
            self.inbound.pop((state.spi, state.dst), None)
