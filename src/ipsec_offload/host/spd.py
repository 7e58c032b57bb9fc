"""The stack's security policy database (`ip xfrm policy`): selector policies in the order
they were added, the first that selects a packet in its direction deciding (Linux's
xfrm_policy_lookup, without priorities).

Outbound, the policy names the state that must protect the packet (`output_state`); none
sends it in clear. Inbound, a packet a policy selects must have come through the state it
names (`admits`); the compiled receive path (`_rxpath.c`) asks `admits` too. The list of
policies is one object for the stack's life (`HostStack.policies`), changed in place.
"""

from __future__ import annotations

from ipsec_offload.errors import UsageError
from ipsec_offload.host.sad import Sad
from ipsec_offload.host.xfrm import XfrmPolicy, XfrmState
from ipsec_offload.wire.config import Direction

_INBOUND, _OUTBOUND = Direction.INBOUND, Direction.OUTBOUND


class Spd:
    """One host's policies, over its SAD."""

    __slots__ = ("_sad", "policies")

    def __init__(self, sad: Sad) -> None:
        self._sad = sad
        self.policies: list[XfrmPolicy] = []

    def add(self, policy: XfrmPolicy) -> None:
        """Add a policy after the others; it must name a state of the SAD."""
        if policy.state not in self._sad.states:
            raise UsageError(f"host {self._sad.name}: policy names unknown state {policy.state}")
        self.policies.append(policy)

    def remove_state(self, handle: int) -> None:
        """Remove the policies that name the state `handle`."""
        self.policies[:] = [p for p in self.policies if p.state != handle]

    def lookup(
        self, direction: Direction, src: bytes, dst: bytes, protocol: int
    ) -> XfrmPolicy | None:
        """The first policy of `direction` that selects the packet, None if none does."""
        for policy in self.policies:
            if policy.direction == direction and policy.selects(src, dst, protocol):
                return policy
        return None

    def output_state(self, src: bytes, dst: bytes, protocol: int) -> XfrmState | None:
        """The state that must protect an outbound packet, None to send it in clear."""
        policy = self.lookup(_OUTBOUND, src, dst, protocol)
        return None if policy is None else self._sad.states[policy.state]

    def admits(self, src: bytes, dst: bytes, protocol: int, state: XfrmState | None) -> bool:
        """The inbound policy check: a packet an inbound policy selects must have come
        through the state the policy names (None: it came in clear)."""
        policy = self.lookup(_INBOUND, src, dst, protocol)
        return policy is None or (state is not None and policy.state == state.handle)
