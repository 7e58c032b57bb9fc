"""Random sequences of VM create/destroy, VF reset, SA add/delete, PF reset and traffic: after
every step the agent SAD holds exactly the SAs of live owners, and no frame of one domain is
decrypted with another domain's SA (every VM has the same address and reuses the same SPIs)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Offload
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.metadata import RxStatus

VFS = 3
ADDRESS = "192.168.1.100"
vfs = st.integers(0, VFS - 1)


class SriovMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.bed = Testbed()
        self.pf = self.bed.add_pf_host("pf", "02:00:00:00:00:10", ipv4="10.0.0.1")
        self.peers = [
            self.bed.add_peer(
                f"peer{vf}", f"02:00:00:00:02:{vf:02x}", ipv4="192.168.1.1", vlans=self._vlans(vf)
            )
            for vf in range(VFS)
        ]
        self.vms: dict[int, HostStack] = {}
        self.pairs: dict[int, list[SaBundle]] = {}
        self.sent: dict[int, list[bytes]] = {}
        self.inbound: dict[int, set[int | None]] = {}
        self.generation = 0

    @staticmethod
    def _vlans(vf: int) -> tuple[VlanTag, ...]:
        return (VlanTag(0x8100, 10 + vf),)

    @rule(vf=vfs)
    def create_vm(self, vf: int) -> None:
        if vf in self.vms:
            return
        self.generation += 1
        vm = self.bed.add_vm(
            f"vm{vf}-{self.generation}",
            vf,
            f"02:00:00:00:01:{vf:02x}",
            ipv4=ADDRESS,
            vlans=self._vlans(vf),
        )
        self.vms[vf] = vm
        self.pairs[vf] = []
        self.sent[vf] = []
        self.inbound[vf] = set()

    @precondition(lambda self: self.vms)
    @rule(data=st.data())
    def destroy_vm(self, data: st.DataObject) -> None:
        vf = data.draw(st.sampled_from(sorted(self.vms)))
        self.bed.destroy_vm(self.vms.pop(vf))
        peer = self.peers[vf]
        for handle in list(peer.states):
            peer.delete_state(handle, self.bed.now)
        del self.pairs[vf]

    @precondition(lambda self: self.vms)
    @rule(data=st.data())
    def reset_vf(self, data: st.DataObject) -> None:
        vf = data.draw(st.sampled_from(sorted(self.vms)))
        self.bed.reset_vf(self.vms[vf])

    @precondition(lambda self: self.vms)
    @rule(data=st.data())
    def add_sa(self, data: st.DataObject) -> None:
        vf = data.draw(st.sampled_from(sorted(self.vms)))
        if self.pairs[vf]:
            return  # one pair per VM: a second would need a second selector
        k = len(self.pairs[vf])
        # The same SPIs in every domain: only the extended key tells them apart.
        bundle = self.bed.secure(self.vms[vf], self.peers[vf], spis=(0x100 + k, 0x200 + k))
        self.pairs[vf].append(bundle)
        self.inbound[vf].add(bundle.a_in.handle)

    @precondition(lambda self: any(self.pairs.values()))
    @rule(data=st.data())
    def delete_sa(self, data: st.DataObject) -> None:
        vf = data.draw(st.sampled_from(sorted(vf for vf, p in self.pairs.items() if p)))
        bundle = self.pairs[vf].pop()
        vm, peer = self.vms[vf], self.peers[vf]
        for stack, handles in (
            (vm, (bundle.a_out, bundle.a_in)),
            (peer, (bundle.b_out, bundle.b_in)),
        ):
            for state in handles:
                if state.handle in stack.states:
                    stack.delete_state(state.handle, self.bed.now)
        self.bed.settle(vm, peer)

    @rule()
    def reset_pf(self) -> None:
        self.bed.reset_pf()

    @precondition(lambda self: any(self.pairs.values()))
    @rule(data=st.data())
    def traffic(self, data: st.DataObject) -> None:
        for vf, pairs in self.pairs.items():
            if not pairs:
                continue
            payload = f"to vf {vf} #{len(self.sent[vf])}".encode()
            self.sent[vf].append(payload)
            self.peers[vf].send_udp(ADDRESS, 9, 9, payload, self.bed.now)
            self.bed.settle(self.peers[vf])

    @invariant()
    def sad_holds_exactly_the_live_sas(self) -> None:
        live = {
            (state.spi, state.direction, stack.mac)
            for stack in (self.pf, *self.vms.values())
            for state in stack.states.values()
            if state.offload == Offload.DEVICE
        }
        agent = {
            (sa.spi, sa.direction, sa.domain.mac if sa.domain else b"") for sa in self.bed.agent.sad
        }
        assert agent == live

    @invariant()
    def no_cross_domain_decryption(self) -> None:
        counters = self.bed.agent.counters.rx_status
        assert counters[RxStatus.AUTH_FAILED] == 0
        assert counters[RxStatus.REPLAY] == 0
        for vf, vm in self.vms.items():
            got = [d.payload for d in self.bed.delivered(vm)]
            assert got == self.sent[vf]
            # Each datagram came through one of this VM's own inbound states.
            assert {d.state for d in self.bed.delivered(vm)} <= self.inbound[vf]


class TestSriov(SriovMachine.TestCase):
    """A few short runs in every test run."""

    settings = settings(max_examples=5, stateful_step_count=10, deadline=None)


@pytest.mark.slow
class TestSriovLong(SriovMachine.TestCase):
    """The long runs: `pytest -m slow tests/test_sriov_stateful.py`."""

    settings = settings(max_examples=15, stateful_step_count=15, deadline=None)
