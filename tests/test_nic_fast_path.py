"""The NIC's compiled fast paths (nic/_nicpath.c) against the Python reference path: two NICs
with the same VSIs get the same bursts of descriptors, and must give the same frames toward the
agent, the same Rx descriptors, in the same order, and the same counters, whatever the
descriptors are: common, spoofed, switched, flooded, TSO or broken. And `RingDriver.xmit_burst`
against a loop of `xmit`, and a `PlainDriver`'s receive filter against its Python one."""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_offload.crypto.esp import explicit_iv
from ipsec_offload.driver.plain import PlainDriver
from ipsec_offload.driver.ring import PacketReceived, RingDriver, TxOffload
from ipsec_offload.errors import UsageError
from ipsec_offload.nic import fastpath
from ipsec_offload.nic.descriptors import TxDescriptor
from ipsec_offload.nic.nic import Nic, NicOutput, SwitchMode, VsiKind
from ipsec_offload.wire.esp import EspHeader, build_esp
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag, build_ethernet
from ipsec_offload.wire.ip import IpProto, IPv4Header, build_ipv4
from ipsec_offload.wire.metadata import TxMetadata, build_tx_metadata
from ipsec_offload.wire.transport import UdpHeader, build_udp
from tools import require_built

PF_MAC = bytes.fromhex("020000000010")
VF_MAC = bytes.fromhex("020000000101")
QINQ_MAC = bytes.fromhex("020000000102")
OPEN_MAC = bytes.fromhex("020000000103")
TAGGED_MAC = bytes.fromhex("020000000104")
PEER_MAC = bytes.fromhex("020000000200")
BROADCAST = b"\xff" * 6
MULTICAST = bytes.fromhex("01005e000001")
V10 = (VlanTag(0x8100, 10),)
V20 = (VlanTag(0x8100, 20),)
QINQ = (VlanTag(0x88A8, 100), VlanTag(0x8100, 10))
PORT_TAG = 0x8000_0ABC
WORD = build_tx_metadata(TxMetadata(True, IpProto.UDP, 14, 5))


@dataclass(frozen=True)
class Station:
    """A VSI both NICs have: its address, and whether it is checked or port-tagged."""

    mac: bytes
    vlans: tuple[VlanTag, ...] = ()
    anti_spoof: bool = True
    port_tag: int | None = None


STATIONS = [
    Station(PF_MAC),
    Station(VF_MAC, V10),
    Station(QINQ_MAC, QINQ),
    Station(OPEN_MAC, anti_spoof=False),
    Station(TAGGED_MAC, V20, port_tag=PORT_TAG),
    Station(VF_MAC, V20),  # the same MAC as VSI 1, on another VLAN
]


@contextmanager
def _reference_only() -> Iterator[None]:
    """Objects made inside are made as a package built without the fast path makes them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastpath, "TxPath", None)
        yield


def _nic(mode: SwitchMode = SwitchMode.VEB) -> Nic:
    nic = Nic(mode=mode)
    for i, s in enumerate(STATIONS):
        nic.add_vsi(VsiKind.PF if i == 0 else VsiKind.VF, s.mac, s.vlans, anti_spoof=s.anti_spoof)
        nic.set_port_tag(i, s.port_tag)
    return nic


def _frame(dst: bytes, src: bytes, vlans: tuple[VlanTag, ...], payload: bytes) -> bytes:
    return build_ethernet(EthernetHeader(dst, src, EtherType.IPV4, vlans)) + payload


def _large_send(dst: bytes, src: bytes, vlans: tuple[VlanTag, ...], size: int) -> TxDescriptor:
    """A TSO descriptor: a UDP large send over ESP (IPv4) and its metadata word."""
    a, b = bytes((192, 0, 2, 1)), bytes((192, 0, 2, 2))
    body = build_esp(EspHeader(0x1234, 5)) + explicit_iv(5)
    body += build_udp(UdpHeader(4000, 53), bytes(range(256)) * (size // 256 + 1), a, b)
    ip = build_ipv4(IPv4Header(a, b, IpProto.ESP, 20 + len(body)))
    l2 = 14 + 4 * len(vlans)
    word = build_tx_metadata(TxMetadata(True, IpProto.UDP, l2, len(ip) // 4))
    return TxDescriptor(_frame(dst, src, vlans, ip + body), word, 500)


def _common(vsi: int = 0, word: int | None = WORD, size: int = 100) -> TxDescriptor:
    s = STATIONS[vsi]
    return TxDescriptor(_frame(PEER_MAC, s.mac, s.vlans, bytes(size)), word)


def _outputs(out: NicOutput) -> tuple[Any, ...]:
    return [(type(f), bytes(f)) for f in out.to_agent], out.rx


# -- the differential test --------------------------------------------------------------------


@st.composite
def _descriptor(draw: st.DrawFn, vsi: int) -> TxDescriptor:
    me = STATIONS[vsi]
    src, vlans = me.mac, me.vlans
    how = draw(
        st.sampled_from(["common"] * 6 + ["spoof MAC", "spoof VLAN", "cut", "3 tags", "mutate"])
    )
    if how == "spoof MAC":
        src = PEER_MAC
    elif how == "spoof VLAN":
        vlans = draw(st.sampled_from([(), V10, V20, QINQ]))
    to = draw(st.sampled_from(["peer"] * 4 + ["station", "me"]))
    if to == "station":
        dst = draw(st.sampled_from([s.mac for s in STATIONS]))
    elif to == "me":
        dst = me.mac
    else:
        dst = draw(st.sampled_from([PEER_MAC, BROADCAST, MULTICAST]))
    if draw(st.integers(0, 9)) == 0:
        return _large_send(dst, src, vlans, draw(st.integers(0, 1500)))
    frame = _frame(dst, src, vlans, draw(st.binary(max_size=64)))
    if how == "cut":
        frame = frame[: draw(st.integers(0, len(frame)))]
    elif how == "3 tags":
        frame = frame[:12] + struct.pack("!HH", 0x8100, 30) * 3 + frame[12 + 4 * len(vlans) :]
    elif how == "mutate":  # a few bytes of the header changed (to a TPID's bytes, often), then cut
        mutated = bytearray(frame)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, min(len(mutated), 26) - 1))
            mutated[at] = draw(st.sampled_from([0x81, 0x88, 0xA8, 0x00, 0x08, 0x86, 0xDD, 0xFF]))
        frame = bytes(mutated[: draw(st.integers(0, len(mutated)))])
    word = draw(st.sampled_from([WORD, WORD, None, 0, 0xFFFF_FFFF, 1 << 32, -1]))
    kind = draw(st.sampled_from([bytes] * 9 + [bytearray]))
    mss = draw(st.sampled_from([0] * 9 + [False, 1 << 70]))
    return TxDescriptor(kind(frame), word, mss)


@st.composite
def _step(draw: st.DrawFn) -> tuple[str, int, Any]:
    """A burst from one VSI, or a change of the NIC between two bursts."""
    vsi = draw(st.integers(0, len(STATIONS) - 1))
    what = draw(st.sampled_from(["burst"] * 8 + ["port tag", "anti-spoof", "mode"]))
    if what == "port tag":
        return what, vsi, draw(st.sampled_from([None, 0, PORT_TAG]))
    if what == "anti-spoof":
        return what, vsi, draw(st.booleans())
    if what == "mode":
        return what, vsi, draw(st.sampled_from(SwitchMode))
    return what, vsi, draw(st.lists(_descriptor(vsi), max_size=12))


def _apply(nic: Nic, step: tuple[str, int, Any]) -> tuple[Any, ...]:
    what, vsi, arg = step
    if what == "port tag":
        nic.set_port_tag(vsi, arg)
    elif what == "anti-spoof":
        nic.vsi(vsi).anti_spoof = arg
    elif what == "mode":
        nic.mode = arg
    else:
        try:
            return _outputs(nic.transmit(vsi, arg))
        except struct.error as e:  # a descriptor's L2TAG that is not a 32-bit word
            return ("error", str(e))
    return ()


@given(mode=st.sampled_from(SwitchMode), steps=st.lists(_step(), max_size=8))
@settings(
    max_examples=int(os.environ.get("FAST_PATH_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
def test_fast_path_equals_reference(mode: SwitchMode, steps: list[tuple[str, int, Any]]) -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    fast = _nic(mode)
    with _reference_only():
        reference = _nic(mode)
    assert fast._fast is not None and reference._fast is None
    for step in steps:
        assert _apply(fast, step) == _apply(reference, step)
        assert fast.dump() == reference.dump()


def test_a_generator_of_descriptors_is_sent_in_order(nic_path: str) -> None:
    nic = _nic()
    descs = [_common(size=n) for n in range(5)] + [_common(1, None)]
    out = nic.transmit(0, iter(descs))
    assert [len(f) for f in out.to_agent] == [20 + n for n in range(5)]
    assert nic.vsi(0).counters.tx_spoofed == 1


def _tagged(frame: bytes, word: int) -> bytes:
    return frame[:12] + struct.pack("!HI", EtherType.META, word) + frame[12:]


def test_tag_and_counters_of_the_common_frame(nic_path: str) -> None:
    nic = _nic()
    plain, tagged, port = _common(word=None), _common(), _common(4, word=None)
    out = nic.transmit(0, [plain, tagged])
    assert out.to_agent[0] is plain.frame
    assert out.to_agent[1] == _tagged(tagged.frame, WORD)
    out = nic.transmit(4, [port])
    assert out.to_agent == [_tagged(port.frame, PORT_TAG)]
    c = nic.vsi(0).counters
    assert (c.tx_packets, c.tx_bytes, c.tx_port_tagged) == (2, 2 * 114, 0)
    c = nic.vsi(4).counters
    assert (c.tx_packets, c.tx_bytes, c.tx_port_tagged) == (1, 118, 1)


# -- which path a descriptor takes ------------------------------------------------------------


def _reference_calls(nic: Nic, monkeypatch: pytest.MonkeyPatch) -> list[TxDescriptor]:
    """The descriptors the Python reference path gets from now on."""
    calls: list[TxDescriptor] = []
    python = nic._transmit_one

    def spy(vsi: Any, desc: TxDescriptor, out: NicOutput) -> None:
        calls.append(desc)
        python(vsi, desc, out)

    monkeypatch.setattr(nic, "_transmit_one", spy)
    return calls


@pytest.mark.parametrize("mode", list(SwitchMode))
def test_common_descriptors_take_the_fast_path(
    mode: SwitchMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    nic = _nic(mode)
    calls = _reference_calls(nic, monkeypatch)
    to_me = TxDescriptor(_frame(PF_MAC, PF_MAC, (), b"x"))  # its own address: to the agent
    no_vsi = TxDescriptor(_frame(VF_MAC, PF_MAC, (), b"x"))  # VF_MAC is on VLANs 10 and 20
    out = nic.transmit(0, [_common(), _common(word=None), to_me, no_vsi, _common(size=1400)])
    nic.transmit(2, [_common(2), _common(2, 0)])
    nic.transmit(3, [TxDescriptor(_frame(PEER_MAC, PEER_MAC, V10, b"open"), WORD)])
    nic.transmit(4, [_common(4, None), _common(4, None)])
    assert calls == []
    assert len(out.to_agent) == 5
    # a port-tagged VSI's descriptor with a word of its own goes to the reference path, which
    # drops an offload request (the tag would replace it: its payload would leave in clear)
    own = _common(4)
    assert nic.transmit(4, [own]).to_agent == []
    assert calls == [own] and nic.vsi(4).counters.tx_offload_refused == 1


_OPEN = 3
"""The VSI without anti-spoof: its malformed frames are not also spoofed."""
TAGS_3 = PEER_MAC + OPEN_MAC + struct.pack("!HH", 0x8100, 30) * 3 + b"\x08\x00xyz"


@pytest.mark.parametrize(
    ("desc", "mode"),
    [
        (_large_send(PEER_MAC, OPEN_MAC, (), 1000), SwitchMode.VEB),
        (_large_send(PEER_MAC, OPEN_MAC, (), 1000), SwitchMode.VEPA),
        (TxDescriptor(_frame(BROADCAST, OPEN_MAC, (), b"x")), SwitchMode.VEB),
        (TxDescriptor(_frame(MULTICAST, OPEN_MAC, (), b"x"), WORD), SwitchMode.VEB),
        (TxDescriptor(_frame(PF_MAC, OPEN_MAC, (), b"x"), WORD), SwitchMode.VEB),
        (TxDescriptor(_frame(VF_MAC, OPEN_MAC, V10, b"x"), WORD), SwitchMode.VEB),
        (TxDescriptor(_frame(PEER_MAC, OPEN_MAC, (), b"")[:13]), SwitchMode.VEPA),
        (TxDescriptor(PEER_MAC + OPEN_MAC + b"\x81\x00\x00\x01\x08"), SwitchMode.VEPA),
        (TxDescriptor(TAGS_3), SwitchMode.VEPA),
        (TxDescriptor(TAGS_3), SwitchMode.VEB),
        (TxDescriptor(bytearray(_frame(PEER_MAC, OPEN_MAC, (), b"x"))), SwitchMode.VEPA),
        (TxDescriptor(_frame(PEER_MAC, OPEN_MAC, (), b"x"), 1 << 32), SwitchMode.VEPA),
        (TxDescriptor(_frame(PEER_MAC, OPEN_MAC, (), b"x"), None, True), SwitchMode.VEPA),
    ],
    ids=[
        "TSO",
        "TSO VEPA",
        "broadcast",
        "multicast",
        "another VSI",
        "another VSI on a VLAN",
        "short",
        "truncated VLAN",
        "three VLANs VEPA",
        "three VLANs",
        "not bytes",
        "bad word",
        "odd mss",
    ],
)
def test_unusual_descriptors_take_the_reference_path(
    desc: TxDescriptor, mode: SwitchMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    nic = _nic(mode)
    common = TxDescriptor(_frame(PEER_MAC, OPEN_MAC, (), b"common"), WORD)
    calls = _reference_calls(nic, monkeypatch)
    # a descriptor's L2TAG that is not a 32-bit word: the reference path raises
    with contextlib.suppress(struct.error):
        nic.transmit(_OPEN, [common, desc, common])
    assert calls == [desc]


def _cut_at_a_tag() -> dict[str, bytes]:
    tags = struct.pack("!HHHH", 0x88A8, 100, 0x8100, 10)
    start = PEER_MAC + OPEN_MAC
    return {
        "tpid only": start + tags[:2],
        "one tag": start + tags[:4],
        "one tag, half an ethertype": start + tags[:5],
        "two tags": start + tags,
        "two tags, half an ethertype": start + tags + b"\x08",
        "two tags and an ethertype": start + tags + b"\x08\x00",
    }


@pytest.mark.parametrize("frame", _cut_at_a_tag().values(), ids=_cut_at_a_tag().keys())
def test_a_frame_cut_at_a_vlan_tag_both_ways(frame: bytes) -> None:
    """Frames cut at the end of a VLAN tag or inside the EtherType after it: the compiled
    parser reads each EtherType only where the frame holds it (a bound off by two there reads
    past the frame, which `make sanitize` runs to see), and both paths count the same."""
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    fast = _nic(SwitchMode.VEPA)
    with _reference_only():
        reference = _nic(SwitchMode.VEPA)
    burst = [_common(_OPEN), TxDescriptor(frame, WORD), _common(_OPEN)]
    assert _outputs(fast.transmit(_OPEN, burst)) == _outputs(reference.transmit(_OPEN, burst))
    assert fast.dump() == reference.dump()


@pytest.mark.parametrize(
    "desc",
    [
        TxDescriptor(_frame(PEER_MAC, PEER_MAC, (), b"x")),
        TxDescriptor(_frame(PEER_MAC, PF_MAC, V10, b"x")),
        TxDescriptor(_frame(PEER_MAC, PF_MAC, QINQ, b"x")),
    ],
    ids=["MAC", "VLAN", "Q-in-Q"],
)
def test_spoofed_descriptors_take_the_reference_path(
    desc: TxDescriptor, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    nic = _nic()
    calls = _reference_calls(nic, monkeypatch)
    nic.transmit(0, [_common(), desc, _common()])
    assert calls == [desc]
    assert nic.vsi(0).counters.tx_spoofed == 1


def test_each_destination_of_a_burst_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same MAC on other VLANs is another address: VF_MAC untagged is no VSI's, on VLAN
    10 or 20 it is a VSI's, and the switch keeps those frames inside the NIC."""
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    nic = _nic()
    descs = [TxDescriptor(_frame(VF_MAC, OPEN_MAC, v, b"x")) for v in ((), V10, (), V20, ())]
    calls = _reference_calls(nic, monkeypatch)
    out = nic.transmit(_OPEN, descs)
    assert calls == [descs[1], descs[3]]
    assert [vsi for vsi, _ in out.rx] == [1, 5]
    assert len(out.to_agent) == 3


def test_a_vsi_the_fast_path_cannot_read_sends_everything_to_the_reference_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    nic = _nic()
    nic.vsi(0).mac = bytearray(PF_MAC)  # type: ignore[assignment]
    calls = _reference_calls(nic, monkeypatch)
    assert len(nic.transmit(0, [_common(), _common()]).to_agent) == 2
    assert len(calls) == 2


def test_a_metadata_ethertype_beyond_16_bits_is_refused() -> None:
    with pytest.raises(UsageError, match="Nic meta_ethertype must be an EtherType"):
        Nic(meta_ethertype=0x1_0000)


# -- the descriptors of a burst -----------------------------------------------------------------


def test_descriptors_built_in_c_are_tx_descriptors() -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    frames = [b"a" * 20, b"b" * 30]
    descs = fastpath.TxPath(TxDescriptor).descriptors(frames, WORD)
    assert descs == [TxDescriptor(f, WORD, 0) for f in frames]
    assert all(type(d) is TxDescriptor and d.frame is f for d, f in zip(descs, frames, strict=True))
    assert hash(descs[0]) == hash(TxDescriptor(frames[0], WORD))
    with pytest.raises(FrozenInstanceError):
        descs[0].mss = 5  # type: ignore[misc]
    assert fastpath.TxPath(TxDescriptor).descriptors((), None) == []


def test_tx_path_refuses_types_it_cannot_build() -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")

    @dataclass(frozen=True)
    class NoSlots:
        frame: bytes
        l2tag: int | None = None
        mss: int = 0

    @dataclass(frozen=True, slots=True)
    class Checked:
        frame: bytes
        l2tag: int | None = None
        mss: int = 0

        def __post_init__(self) -> None:
            pass

    for cls in (NoSlots, Checked):
        with pytest.raises(TypeError):
            fastpath.TxPath(cls)  # type: ignore[arg-type]


def _driver() -> RingDriver:
    driver = RingDriver(PF_MAC)
    driver.sa_index[1] = 5
    return driver


OFFLOADS = [None, TxOffload(1, IpProto.UDP, 14, 20), TxOffload(1, IpProto.TCP, 18, 40)]


@pytest.mark.parametrize("offload", OFFLOADS)
@pytest.mark.parametrize("n", [0, 1, 5])
def test_xmit_burst_equals_a_loop_of_xmit(nic_path: str, offload: TxOffload | None, n: int) -> None:
    frames = [_common(size=i).frame for i in range(n)]
    burst, loop = _driver(), _driver()
    burst.xmit(b"before")
    loop.xmit(b"before")
    burst.xmit_burst(frames, offload)
    for frame in frames:
        loop.xmit(frame, offload)
    assert burst.tx_descriptors() == loop.tx_descriptors()
    assert burst.counters == loop.counters
    assert burst.tx_descriptors() == []


@pytest.mark.parametrize(
    ("offload", "message"),
    [
        (TxOffload(2, IpProto.UDP, 14, 20), "not offloaded"),
        (TxOffload(1, IpProto.UDP, 14, 22), "multiple of 4"),
    ],
)
def test_xmit_burst_errors_are_those_of_xmit(
    nic_path: str, offload: TxOffload, message: str
) -> None:
    driver = _driver()
    with pytest.raises(UsageError, match=message):
        driver.xmit(b"frame", offload)
    with pytest.raises(UsageError, match=message):
        driver.xmit_burst([b"frame", b"frame"], offload)
    driver.xmit_burst([], offload)  # no frame, no check: as a loop of xmit
    assert driver.tx_descriptors() == []
    assert driver.counters.tx_offloaded == driver.counters.tx_plain == 0


def test_xmit_burst_descriptors_go_through_the_nic(nic_path: str) -> None:
    driver, nic = _driver(), _nic()
    frames = [_common(size=n).frame for n in (60, 1400)]
    driver.xmit_burst(frames, OFFLOADS[1])
    driver.xmit_burst(frames)
    out = nic.transmit(0, driver.tx_descriptors())
    assert [len(f) for f in out.to_agent] == [80, 1420, 74, 1414]
    assert nic.vsi(0).counters.tx_packets == 4


def test_tx_path_pickles_and_checks_it_was_initialised() -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    path = pickle.loads(pickle.dumps(fastpath.TxPath(TxDescriptor)))
    assert path.descriptors([b"x"], None) == [TxDescriptor(b"x")]
    bare = fastpath.TxPath.__new__(fastpath.TxPath)
    with pytest.raises(ValueError, match="not initialised"):
        bare.descriptors([b"x"], None)
    with pytest.raises(ValueError, match="not initialised"):
        bare.transmit([], 0, _nic().vsi(0), {}, True, EtherType.META, [])


def test_a_nic_and_a_driver_pickle(nic_path: str) -> None:
    nic, driver = _nic(), _driver()
    driver.xmit_burst([_common().frame], OFFLOADS[1])
    nic2, driver2 = pickle.loads(pickle.dumps((nic, driver)))
    assert _outputs(nic2.transmit(0, driver2.tx_descriptors())) == _outputs(
        nic.transmit(0, driver.tx_descriptors())
    )
    assert nic2.dump() == nic.dump()


# -- a plain NIC's receive filter (PlainDriver) ---------------------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        [b"\x01" * 20, PF_MAC + b"rest", b"\x02" * 30, b"\x01", bytearray(PF_MAC + b"x")],
        [PF_MAC[:3], PF_MAC, b"\xff" * 6, b"\x00" * 6 + b"tail"],
        [b"", PF_MAC + PEER_MAC + b"\x08", b"", PF_MAC + PEER_MAC + b"\x08\x00", bytearray()],
    ],
)
def test_plain_driver_keeps_the_same_frames_both_ways(
    frames: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    fast = PlainDriver(PF_MAC)
    monkeypatch.setattr(fastpath, "plain_receive", None)
    reference = PlainDriver(PF_MAC)
    fast.receive(iter(frames), 0.0)
    reference.receive(frames, 0.0)
    assert fast.events() == reference.events()
    assert fast.counters == reference.counters
    assert fast.counters.rx_runt == sum(len(f) < 14 for f in frames)


@st.composite
def _received(draw: st.DrawFn) -> bytes | bytearray:
    """A frame from the wire: for the driver, another station, broadcast or multicast, of any
    length from empty (a runt below 14 bytes) up, sometimes a bytearray."""
    dst = draw(st.sampled_from([PF_MAC, VF_MAC, BROADCAST, MULTICAST, PF_MAC[:5] + b"\x11"]))
    frame = (dst + draw(st.binary(max_size=40)))[: draw(st.integers(0, 60))]
    return bytearray(frame) if draw(st.integers(0, 9)) == 0 else frame


@given(bursts=st.lists(st.lists(_received(), max_size=10), max_size=4))
@settings(max_examples=int(os.environ.get("FAST_PATH_EXAMPLES", "300")))
def test_plain_driver_fuzz_both_ways(bursts: list[list[bytes]]) -> None:
    """The compiled receive filter against the Python one on random bursts: the same events
    and the same counted runts."""
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    fast = PlainDriver(PF_MAC)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastpath, "plain_receive", None)
        reference = PlainDriver(PF_MAC)
    for burst in bursts:
        fast.receive(burst, 0.0)
        reference.receive(list(burst), 0.0)
        assert fast.events() == reference.events()
        assert fast.counters == reference.counters
    assert fast.counters.rx_runt == sum(len(f) < 14 for burst in bursts for f in burst)


def test_plain_driver_events_are_the_dataclasses_the_python_path_makes() -> None:
    require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    frame = PF_MAC + PEER_MAC + b"\x08\x00payload"
    driver = PlainDriver(PF_MAC)
    driver.receive([frame, PEER_MAC + PF_MAC + b"not for us"], 0.0)
    events = driver.events()
    assert events == [PacketReceived(frame, None)]
    assert type(events[0]) is PacketReceived
    assert hash(events[0]) == hash(PacketReceived(frame, None))
