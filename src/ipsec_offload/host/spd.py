"""The stack's security policy database (`ip xfrm policy`): selector policies in the order
they were added, the first that selects a packet in its direction deciding (Linux's
xfrm_policy_lookup, without priorities).

Outbound, the policy names the state that must protect the packet (`output_state`); none
sends it in clear. A policy and its state are added apart, as Linux's policy template and
state are: a policy can name a state whose add failed, or outlive its state, and the packets
it selects are then dropped (`out_no_state`, Linux's XfrmOutNoStates), never sent in clear.
Inbound, a packet a policy selects must have come through the state it names (`admits`); the
compiled receive path (`_rxpath.c`) asks `admits` too. A policy with the selector of one
already there replaces it (`ip xfrm policy update`). The list of policies is one object for
the stack's life (`HostStack.policies`), changed in place.
"""

from __future__ import annotations

from ipsec_offload.host.sad import Sad
from ipsec_offload.host.xfrm import SendRefused, XfrmPolicy, XfrmState
from ipsec_offload.wire.config import Direction

_INBOUND, _OUTBOUND = Direction.INBOUND, Direction.OUTBOUND


class Spd:
    """One host's policies, over its SAD."""

    __slots__ = ("_sad", "policies")

    def __init__(self, sad: Sad) -> None:
        self._sad = sad
        self.policies: list[XfrmPolicy] = []

    def add(self, policy: XfrmPolicy) -> None:
        """Add a policy after the others, or in place of the one with its direction and
        selector. The state it names need not be in the SAD: its add may have failed."""
        selector = policy.selector
        for i, old in enumerate(self.policies):
            if old.selector == selector:
                self.policies[i] = policy
                return
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
        """The state that must protect an outbound packet, None to send it in clear;
        SendRefused when a policy selects it but its state is gone."""
        policy = self.lookup(_OUTBOUND, src, dst, protocol)
        if policy is None:
            return None
        state = self._sad.states.get(policy.state)
        if state is None:
            raise SendRefused("out_no_state")
        return state

    def admits(self, src: bytes, dst: bytes, protocol: int, state: XfrmState | None) -> bool:
        """The inbound policy check: a packet an inbound policy selects must have come
        through the state the policy names, or one of its reqid (None: it came in clear)."""
        policy = self.lookup(_INBOUND, src, dst, protocol)
        if policy is None:
            return True
        if state is None:
            return False
        if policy.state == state.handle:
            return True
        named = self._sad.states.get(policy.state)
        return state.reqid != 0 and named is not None and named.reqid == state.reqid
