"""The compiled fast paths against hostile Python: objects made without __init__, classes whose
"slots" are another class's, and Python code that runs in the middle of a call and changes
what the call is walking. Each case raises a Python exception or gives the right answer; none
may crash the interpreter. A case that crashed before its fix runs in a child interpreter, so
that a crash fails the test instead of the test run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ipsec_offload.agent import fastpath as agent_fastpath
from ipsec_offload.driver.ring import PacketReceived
from ipsec_offload.host import fastpath as host_fastpath
from ipsec_offload.nic import fastpath as nic_fastpath
from tools import require_built

TESTS = Path(__file__).parent


def _child(code: str) -> str:
    """Run `code` in a fresh interpreter (the tests' directory importable); its stdout. The
    test fails, saying how, if the child does not exit normally (a segfault is -11)."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS,
        check=False,
    )
    assert run.returncode == 0, f"child exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    return run.stdout


def _agent_built() -> None:
    require_built(agent_fastpath.FAST_PATH_BUILT, "the agent's compiled fast path")


def _host_built() -> None:
    require_built(host_fastpath.RX_PATH_BUILT, "the host stack's compiled receive path")


def _nic_built() -> None:
    require_built(nic_fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")


# -- objects made by __new__ alone ---------------------------------------------------------


@pytest.mark.parametrize("method", ["tx_burst", "rx_burst"])
def test_a_datapath_never_initialised_raises(method: str) -> None:
    """Datapath.__new__ without __init__ holds no SAD table nor counters: each call says so
    (it used to dereference the missing table)."""
    _agent_built()
    out = _child(
        f"""
        from agent_frames import KEY128, esp_packet, offload_frame, wire_frame
        from ipsec_offload.agent._datapath import Datapath
        datapath = Datapath.__new__(Datapath)
        # frames of the common case, which the fast path looks up in its SAD table
        tx, rx = offload_frame(0x100, 1, b"tx"), wire_frame(esp_packet(KEY128, 0x100, 1, b"rx"))
        try:
            datapath.{method}([{method[:2]}] * 4, 0, [])
        except ValueError as error:
            print("ValueError:", error)
        """
    )
    assert out.strip() == "ValueError: the Datapath is not initialised"


def test_an_rx_path_never_initialised_raises() -> None:
    _host_built()
    out = _child(
        """
        from ipsec_offload.host._rxpath import RxPath
        from ipsec_offload.driver.ring import PacketReceived
        path = RxPath.__new__(RxPath)
        try:
            path.burst(0.0, [], [PacketReceived(bytes(80), None)], 0)
        except ValueError as error:
            print("ValueError:", error)
        """
    )
    assert out.strip() == "ValueError: RxPath is not initialised"


# -- slots that are another class's ----------------------------------------------------------

_BORROWED = {
    "plain_receive": """
        from ipsec_offload.nic._nicpath import plain_receive
        from ipsec_offload.driver.ring import PacketReceived

        class Borrowed:  # 16 bytes: PacketReceived's slots lie past its end
            __slots__ = ()
            frame = PacketReceived.__dict__["frame"]
            rx = PacketReceived.__dict__["rx"]

        events = []
        frames = [b"\\xff" * 6 + bytes(60)] * 50
        call = lambda: plain_receive(bytes(6), events, Borrowed, frames, 0)
        """,
    "TxPath": """
        from ipsec_offload.nic._nicpath import TxPath
        from ipsec_offload.nic.descriptors import TxDescriptor

        class Borrowed:
            __slots__ = ()
            frame = TxDescriptor.__dict__["frame"]
            l2tag = TxDescriptor.__dict__["l2tag"]
            mss = TxDescriptor.__dict__["mss"]

        call = lambda: TxPath(Borrowed).descriptors([bytes(64)] * 50, None)
        """,
    "Datapath": """
        from cryptography.exceptions import InvalidTag
        from ipsec_offload.agent._datapath import Datapath, SadTable
        from ipsec_offload.agent.replay import ReplayWindow
        from ipsec_offload.agent.sad import SecurityAssociation
        from ipsec_offload.crypto.gcm import EspAead

        class Borrowed:
            __slots__ = ()
        for name in SecurityAssociation.__slots__:
            setattr(Borrowed, name, SecurityAssociation.__dict__[name])

        call = lambda: Datapath(
            sad_table=SadTable(4), local_addrs=set(), invalid_tag=InvalidTag, paths={},
            rx_status={}, tx_encrypted=2, rx_esp=5, rx_ok=0, meta_ethertype=0x88B5,
            config_ethertype=0x88B6, ivdb=True, sa_type=Borrowed, replay_type=ReplayWindow,
            aead_type=EspAead,
        )
        """,
    "RxPath": """
        from cryptography.exceptions import InvalidTag
        from ipsec_offload.agent.replay import ReplayWindow
        from ipsec_offload.crypto.gcm import EspAead
        from ipsec_offload.driver.ring import PacketReceived
        from ipsec_offload.host._rxpath import RxPath
        from ipsec_offload.host.stack import Delivered, StackCounters
        from ipsec_offload.host.xfrm import Mode, XfrmState
        from ipsec_offload.wire.metadata import RxMetadata, RxStatus

        class Borrowed:
            __slots__ = ()
        for name in XfrmState.__slots__:
            setattr(Borrowed, name, XfrmState.__dict__[name])

        call = lambda: RxPath(
            inbound={}, addresses={}, counters=StackCounters(), admits=print,
            transport=Mode.TRANSPORT, rx_ok=RxStatus.OK, invalid_tag=InvalidTag,
            packet_type=PacketReceived, rx_type=RxMetadata, state_type=Borrowed,
            replay_type=ReplayWindow, aead_type=EspAead, delivered_type=Delivered,
        )
        """,
}


@pytest.mark.parametrize("code", _BORROWED.values(), ids=_BORROWED.keys())
def test_slots_borrowed_from_another_class_are_refused(code: str) -> None:
    """A member descriptor names an offset in its own class's objects: taken into a smaller
    class, it would have the compiled path read and write past the end of that class's
    objects. It is refused with a TypeError, before any object is touched."""
    _agent_built()
    _host_built()
    _nic_built()
    out = _child(
        textwrap.dedent(code)
        + textwrap.dedent(
            """
            try:
                call()
            except TypeError as error:
                print("TypeError:", error)
            else:
                print("accepted")
            """
        )
    )
    assert out.startswith("TypeError: ") and "must be a __slots__ entry of" in out, out


def test_slots_inherited_from_a_base_class_are_taken() -> None:
    """A subclass's objects have its bases' slots where the bases have them."""
    _nic_built()

    class Received(PacketReceived):
        pass

    events: list[object] = []
    frame = b"\xff" * 6 + bytes(60)
    assert nic_fastpath.plain_receive is not None
    assert nic_fastpath.plain_receive(bytes(6), events, Received, [frame], 0) == 1
    assert [(type(e), e.frame, e.rx) for e in events] == [(Received, frame, None)]  # type: ignore[attr-defined]


# -- Python code that runs in the middle of a call -----------------------------------------


def test_lookup_burst_holds_its_keys_while_python_code_runs() -> None:
    """Packing a key reads a VLAN's TPID and VID with __index__, which may run any Python code:
    here it empties the list of keys, whose tuples were then freed under the lookup (it
    crashed). The lookup answers for the keys it was given."""
    _agent_built()
    out = _child(
        """
        from ipsec_offload.agent._datapath import SadTable

        table = SadTable(8)
        dst, mac = bytes((192, 0, 2, 1)), bytes.fromhex("020000000001")
        table.insert((0, 7, dst, mac, ((0x8100, 100),)), "the SA", 3)
        keys = []

        class Vid:
            def __index__(self):
                keys.clear()
                return 100

        keys.append((0, 7, dst, mac, ((0x8100, Vid()),)))
        keys.extend([(0, 7, dst, mac, ((0x8100, 100),))] * 40)
        print(table.lookup_burst(keys), len(keys))
        """
    )
    assert out.strip() == f"{[3] * 41} 0"


def test_an_rx_burst_whose_policy_check_empties_the_burst() -> None:
    """The host's policy check is Python code the compiled receive path calls mid-burst: one
    that empties the list of events and drops every state leaves the call with the event it
    was on handled and nothing read past the list's end (it read the list's old length) nor
    from a freed state (its memo of the last state found now holds a reference)."""
    _host_built()
    out = _child(
        """
        import pytest
        from test_host_fast_path import SA, esp_frame, make_stack
        from ipsec_offload.driver.ring import PacketReceived
        from ipsec_offload.host.spd import Spd

        admits, armed, burst = Spd.admits, [], []

        def hostile(spd, *args):
            if armed:
                burst.clear()
                spd._sad.inbound.clear()
                spd._sad.states.clear()
            return admits(spd, *args)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Spd, "admits", hostile)
            stack = make_stack(True, patch)
        stack.device.receive([esp_frame(SA[1], 1, b"warm")], 0.0)
        stack.poll(0.0)  # the Python path makes the state's cipher
        assert len(stack.events()) == 1
        burst.extend(PacketReceived(esp_frame(SA[1], seq, b"p"), None) for seq in range(2, 40))
        armed.append(True)
        delivered = []
        print(stack._rx_fast.burst(0.0, delivered, burst, 0), len(delivered), len(burst))
        """
    )
    assert out.strip() == "1 1 0"
