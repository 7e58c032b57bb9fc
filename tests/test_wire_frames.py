"""The frames of a UDP burst: `build_udp_frames`, compiled (`_frames.c`) and reference."""

from __future__ import annotations

import ipaddress
import re
import struct
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from ipsec_offload.crypto.esp import explicit_iv
from ipsec_offload.driver.ring import NetdevFeature, TxOffload
from ipsec_offload.errors import UsageError
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Offload, XfrmPolicy, XfrmState
from ipsec_offload.wire import frames
from ipsec_offload.wire.config import Algorithm, Direction
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag, build_ethernet
from ipsec_offload.wire.frames import Payload, reference_build_udp_frames
from ipsec_offload.wire.transport import UdpHeader, build_udp
from tools import require_built

BuildFrames = Callable[
    [bytes, bytes, bytes, int, tuple[int, int] | None, int, int, Sequence[Payload]],
    list[bytes],
]

A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
TAGS = {0: (), 1: (VlanTag(0x8100, 10),), 2: (VlanTag(0x88A8, 100), VlanTag(0x8100, 20))}
ETHERTYPE = {4: EtherType.IPV4, 16: EtherType.IPV6}
ROOM = {(4, False): 65507, (4, True): 65491, (16, False): 65527, (16, True): 65511}
"""The largest payload: 65535 less UDP header, IPv4 header (IPv6's is outside its length)
and ESP header and IV."""


def l2_for(addr_len: int, vlans: int = 0) -> bytes:
    return build_ethernet(EthernetHeader(MAC_B, MAC_A, ETHERTYPE[addr_len], TAGS[vlans]))


@pytest.fixture(scope="module", params=["compiled", "reference"])
def build(request: pytest.FixtureRequest) -> BuildFrames:
    """Each implementation of build_udp_frames: `_frames.c` and the Python one."""
    if request.param == "reference":
        return reference_build_udp_frames
    require_built(frames.build_udp_frames is not reference_build_udp_frames, "wire/_frames.c")
    return frames.build_udp_frames


# -- the frames HostStack.send_udp transmits ------------------------------------------------


class _Device:
    """A device that keeps what the stack transmits and offloads every state."""

    features = NetdevFeature.HW_ESP
    ifname = "eth0"

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, TxOffload | None]] = []

    def xmit(self, frame: bytes, offload: TxOffload | None = None, mss: int = 0) -> None:
        self.sent.append((frame, offload))

    def events(self) -> list[Any]:
        return []

    def xdo_dev_state_add(self, state: Any, extack: Any, now: float) -> int:
        return 0

    def xdo_dev_state_delete(self, handle: int, now: float) -> None: ...
    def xdo_dev_state_free(self, handle: int, now: float) -> None: ...
    def xdo_dev_offload_ok(self, handle: int, l3: bytes) -> bool:
        return True

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> None: ...
    def xdo_dev_state_advance_esn(self, handle: int, esn: int, now: float) -> None: ...


def _stack_frames(
    addr_len: int, vlans: int, esp: bool, oseq: int, payloads: list[bytes]
) -> list[bytes]:
    """What a fresh HostStack's send_udp hands its device for each payload."""
    src, dst = (A4, B4) if addr_len == 4 else (A6, B6)
    device = _Device()
    stack = HostStack(
        "a",
        device,
        MAC_A,
        ipv4="10.0.0.1",
        ipv6="2001:db8::1",
        vlans=TAGS[vlans],
    )
    stack.neighbors[dst] = MAC_B
    if esp:
        state = XfrmState(
            1, Direction.OUTBOUND, 0xC0FFEE, src, dst, Algorithm.AES_GCM_128, bytes(20), esn=True
        )
        state.offload = Offload.DEVICE
        state.oseq = oseq
        stack.add_state(state, 0.0)
        nets = [ipaddress.ip_network(ipaddress.ip_address(addr)) for addr in (src, dst)]
        stack.add_policy(XfrmPolicy(Direction.OUTBOUND, *nets, 1))
    for payload in payloads:
        stack.send_udp(dst, 5000, 6000, payload, 0.0)
    assert len(device.sent) == len(payloads)
    assert all((offload is not None) == esp for _, offload in device.sent)
    return [frame for frame, _ in device.sent]


@pytest.mark.parametrize("addr_len", [4, 16])
@pytest.mark.parametrize("esp", [False, True])
@pytest.mark.parametrize("vlans", [0, 1, 2])
def test_same_frames_as_send_udp(build: BuildFrames, addr_len: int, esp: bool, vlans: int) -> None:
    payloads = [b"", b"x", b"hello" * 281, bytes(range(256)) * 4]
    oseq = (1 << 32) - 3  # the burst crosses 2**32 (ESN)
    expected = _stack_frames(addr_len, vlans, esp, oseq, payloads)
    src, dst = (A4, B4) if addr_len == 4 else (A6, B6)
    # a fresh stack's first IPv4 identification is 1
    got = build(
        l2_for(addr_len, vlans),
        src,
        dst,
        1,
        (0xC0FFEE, oseq + 1) if esp else None,
        5000,
        6000,
        payloads,
    )
    assert got == expected


# -- compiled against reference -------------------------------------------------------------

_SEQ_MAX = (1 << 64) - 1


def _as_type(data: bytes, kind: str) -> Payload:
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(b"." + data + b".")[1:-1]  # a slice: not the start of its buffer
    if kind == "memoryview-u16" and len(data) % 2 == 0:
        return memoryview(data).cast("H")  # raw bytes, nbytes long
    return data


@st.composite
def bursts(draw: st.DrawFn) -> tuple[Any, ...]:
    addr_len = draw(st.sampled_from([4, 16]))
    src = draw(st.binary(min_size=addr_len, max_size=addr_len))
    dst = draw(st.binary(min_size=addr_len, max_size=addr_len))
    kinds = st.sampled_from(["bytes", "bytearray", "memoryview", "memoryview-u16"])
    payloads = draw(
        st.lists(
            st.builds(_as_type, st.binary(max_size=600), kinds),
            max_size=12,
        )
    )
    esp = None
    if draw(st.booleans()):
        near = st.sampled_from([0, 1, (1 << 32) - 6, (1 << 32) - 1, 1 << 32, _SEQ_MAX - 12])
        first = draw(near | st.integers(0, _SEQ_MAX - 12))
        esp = (draw(st.integers(0, 0xFFFF_FFFF)), first)
    ip_id = draw(st.sampled_from([0, 0xFFFF, 0xFFFA]) | st.integers(0, 0xFFFF))
    ports = draw(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)))
    l2 = l2_for(addr_len, draw(st.integers(0, 2)))
    return (l2, src, dst, ip_id, esp, *ports, payloads)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(bursts())
def test_compiled_equals_reference(burst: tuple[Any, ...]) -> None:
    require_built(frames.build_udp_frames is not reference_build_udp_frames, "wire/_frames.c")
    got = frames.build_udp_frames(*burst)
    assert got == reference_build_udp_frames(*burst)
    assert len(got) == len(burst[-1])
    assert all(type(frame) is bytes for frame in got)


def test_largest_payloads(build: BuildFrames) -> None:
    for (addr_len, esp), room in ROOM.items():
        src, dst = (A4, B4) if addr_len == 4 else (A6, B6)
        spi_seq = (1, 1) if esp else None
        payload = bytes(range(256)) * (room // 256) + bytes(room % 256)
        (frame,) = build(l2_for(addr_len), src, dst, 0, spi_seq, 1, 2, [payload])
        assert [frame] == reference_build_udp_frames(
            l2_for(addr_len), src, dst, 0, spi_seq, 1, 2, [payload]
        )
        assert len(frame) == 14 + (40 if addr_len == 16 else 0) + 0xFFFF
        with pytest.raises(UsageError, match=f"payload 0 has {room + 1} bytes; at most {room}"):
            build(l2_for(addr_len), src, dst, 0, spi_seq, 1, 2, [payload + b"!"])


# -- known answers, by scapy ----------------------------------------------------------------


def _scapy_udp_checksum(ip_layer: Any, segment: bytes) -> int:
    """The UDP checksum scapy computes for `segment` (its checksum field zeroed)."""
    zeroed = segment[:6] + b"\0\0" + segment[8:]
    if isinstance(ip_layer, IP):
        value = in4_chksum(17, ip_layer, zeroed)
    else:
        value = in6_chksum(17, ip_layer, zeroed)
    return int(value) or 0xFFFF  # RFC 768: a computed zero is sent as all ones


@pytest.mark.interop
@pytest.mark.parametrize("addr_len", [4, 16])
@pytest.mark.parametrize("esp", [False, True])
@pytest.mark.parametrize("vlans", [0, 1, 2])
def test_scapy_reads_the_frames(build: BuildFrames, addr_len: int, esp: bool, vlans: int) -> None:
    src, dst = (A4, B4) if addr_len == 4 else (A6, B6)
    payloads = [b"", b"odd", b"even", bytes(range(200)) * 7]
    first = (1 << 32) - 2
    got = build(
        l2_for(addr_len, vlans),
        src,
        dst,
        0xFFFE,
        (0xDEADBEEF, first) if esp else None,
        4500,
        53,
        payloads,
    )
    for i, (frame, payload) in enumerate(zip(got, payloads, strict=True)):
        pkt = Ether(frame)
        assert (pkt.dst, pkt.src) == ("02:00:00:00:00:02", "02:00:00:00:00:01")
        if vlans == 1:
            assert pkt[Dot1Q].vlan == 10
        if vlans == 2:
            assert (pkt[Dot1AD].vlan, pkt[Dot1Q].vlan) == (100, 20)
        body_len = 8 + len(payload) + (16 if esp else 0)
        if addr_len == 4:
            ip = pkt[IP]
            assert (ip.src, ip.dst, ip.ttl, ip.flags, ip.id) == (
                "10.0.0.1",
                "10.0.0.2",
                64,
                "DF",
                (0xFFFE + i) & 0xFFFF,
            )
            assert ip.len == 20 + body_len
            stored = ip.chksum
            del ip.chksum
            assert IP(bytes(ip)).chksum == stored  # scapy recomputes the header checksum
            assert ip.proto == (50 if esp else 17)
        else:
            ip = pkt[IPv6]
            assert (ip.src, ip.dst, ip.hlim, ip.tc, ip.fl) == (
                "2001:db8::1",
                "2001:db8::2",
                64,
                0,
                0,
            )
            assert ip.plen == body_len
            assert ip.nh == (50 if esp else 17)
        if esp:
            seq = first + i
            assert (pkt[ESP].spi, pkt[ESP].seq) == (0xDEADBEEF, seq & 0xFFFF_FFFF)
            iv, segment = pkt[ESP].data[:8], pkt[ESP].data[8:]
            assert iv == explicit_iv(seq) == seq.to_bytes(8, "big")
            udp = UDP(segment)
        else:
            udp = pkt[UDP]
            segment = bytes(udp)
        assert (udp.sport, udp.dport, udp.len) == (4500, 53, 8 + len(payload))
        assert bytes(udp.payload) == payload
        assert udp.chksum == _scapy_udp_checksum(
            IP(src=ip.src, dst=ip.dst) if addr_len == 4 else IPv6(src=ip.src, dst=ip.dst), segment
        )


@pytest.mark.parametrize("addr_len", [4, 16])
def test_computed_zero_checksum_is_sent_as_ffff(build: BuildFrames, addr_len: int) -> None:
    src, dst = (A4, B4) if addr_len == 4 else (A6, B6)
    # with two more payload bytes equal to the checksum over two zero bytes, the sum is all ones
    (checksum,) = struct.unpack_from("!H", build_udp(UdpHeader(7, 9), b"\0\0", src, dst), 6)
    payload = checksum.to_bytes(2, "big")
    (frame,) = build(l2_for(addr_len), src, dst, 0, None, 7, 9, [payload])
    assert frame[-4:] == b"\xff\xff" + payload
    zeroed = frame[-10:-4] + b"\0\0" + payload
    texts = {"src": str(ipaddress.ip_address(src)), "dst": str(ipaddress.ip_address(dst))}
    if addr_len == 4:
        assert in4_chksum(17, IP(**texts), zeroed) == 0  # scapy too computes 0 here
    else:
        assert in6_chksum(17, IPv6(**texts), zeroed) == 0


# -- errors ---------------------------------------------------------------------------------

_GOOD: dict[str, Any] = {
    "l2": l2_for(4),
    "src": A4,
    "dst": B4,
    "ip_id": 0,
    "esp": None,
    "src_port": 1,
    "dst_port": 2,
    "payloads": [b"a"],
}


def _call(build: BuildFrames, **changes: Any) -> list[bytes]:
    args = {**_GOOD, **changes}
    return build(*args.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"src": A6}, "addresses of 16 and 4 bytes; give two IPv4 (4) or two IPv6 (16)"),
        ({"src": A6[:5], "dst": B6[:5]}, "addresses of 5 and 5 bytes"),
        ({"src": "10.0.0.1"}, "src is a str; give bytes"),
        ({"l2": bytearray(14)}, "l2 is a bytearray; give bytes"),
        (
            {"l2": l2_for(4)[:13]},
            "l2 of 13 bytes; give an Ethernet header: 14 bytes, 18 or 22",
        ),
        ({"l2": l2_for(4) + bytes(2)}, "l2 of 16 bytes"),
        ({"l2": l2_for(4, 2)[:14] + bytes(12)}, "l2 of 26 bytes"),
        (
            {"l2": l2_for(16)},
            "l2 ends in EtherType 0x86dd but the addresses are IPv4; give a "
            "header ending in 0x0800",
        ),
        ({"src_port": 65536}, "UDP source port 65536 does not fit 16 bits; use 0..65535"),
        ({"dst_port": -1}, "UDP destination port -1 does not fit 16 bits; use 0..65535"),
        ({"dst_port": 1.0}, "UDP destination port 1.0 does not fit 16 bits"),
        ({"ip_id": 0x10000}, "IPv4 identification 65536 does not fit 16 bits"),
        ({"esp": (1 << 32, 1)}, "ESP SPI 4294967296 does not fit 32 bits"),
        ({"esp": (1, -1)}, "ESP sequence number -1 does not fit 64 bits"),
        ({"esp": [1, 1]}, "esp [1, 1]; give None or (SPI, first sequence number)"),
        (
            {"esp": (1, _SEQ_MAX - 1), "payloads": [b"", b"", b""]},
            f"ESP sequence numbers {_SEQ_MAX - 1}..{_SEQ_MAX + 1} do not fit 64 bits; send at "
            f"most 2 datagrams from {_SEQ_MAX - 1}",
        ),
        ({"payloads": b"abc"}, "payloads is a bytes; give a list (or tuple) of payloads"),
        ({"payloads": iter([b"a"])}, "payloads is a list_iterator; give a list"),
        ({"payloads": None}, "payloads is a NoneType; give a list"),
        ({"src_port": None}, "UDP source port None does not fit 16 bits"),
        ({"ip_id": 1 << 70}, f"IPv4 identification {1 << 70} does not fit 16 bits"),
        ({"esp": (1 << 64, 1)}, f"ESP SPI {1 << 64} does not fit 32 bits; use 0..4294967295"),
        ({"esp": (1, 1 << 64)}, f"ESP sequence number {1 << 64} does not fit 64 bits; use 0.."),
        ({"esp": (1, "1")}, "ESP sequence number '1' does not fit 64 bits"),
        ({"esp": (1,)}, "esp (1,); give None or (SPI, first sequence number)"),
        ({"payloads": [b"a", 7]}, "payload 1 is a int; give bytes"),
        (
            {"payloads": [b"a", "b"]},
            "payload 1 is a str; give bytes, bytearray or a contiguous memoryview",
        ),
        ({"payloads": [b"a", None]}, "payload 1 is a NoneType"),
        ({"payloads": [memoryview(bytes(8))[::2]]}, "payload 0 is a memoryview; give bytes"),
        (
            {"payloads": [b"", bytes(65508)]},
            "payload 1 has 65508 bytes; at most 65507 fit one IPv4 packet",
        ),
        (
            {"src": A6, "dst": B6, "l2": l2_for(16), "esp": (1, 1), "payloads": [bytes(65512)]},
            "payload 0 has 65512 bytes; at most 65511 fit one IPv6 packet with ESP",
        ),
    ],
)
def test_bad_arguments(build: BuildFrames, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match="^" + re.escape(message)):
        _call(build, **changes)


def test_edge_values_are_accepted(build: BuildFrames) -> None:
    (frame,) = _call(build, ip_id=0xFFFF, src_port=0, dst_port=0xFFFF, esp=(0xFFFF_FFFF, _SEQ_MAX))
    assert frame[14 + 4 : 14 + 6] == b"\xff\xff"  # identification
    assert frame[34:50] == b"\xff" * 16  # SPI, low 32 bits of the sequence number, the IV
    assert _call(build, payloads=[]) == []
    assert _call(build, payloads=()) == []


def test_error_mid_burst_frees_everything(build: BuildFrames) -> None:
    """A bad payload after good ones: nothing returned, no frame or buffer left behind."""
    held = bytearray(b"y" * 1000)
    good = b"x" * 5000
    payloads: list[Any] = [good, held, good] * 20 + [bytes(70000)]
    before = sys.getrefcount(good), sys.getrefcount(held)
    tracemalloc.start()
    try:
        for _ in range(3):  # warm up
            with pytest.raises(UsageError, match="payload 60 has 70000 bytes"):
                _call(build, payloads=payloads)
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(50):
            with pytest.raises(UsageError, match="payload 60 has 70000 bytes"):
                _call(build, payloads=payloads)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 50_000  # 50 bursts of 60 frames of up to 5 KB each would be 15 MB
    assert (sys.getrefcount(good), sys.getrefcount(held)) == before
    held += b"z"  # no buffer of it is still exported (a bytearray in use cannot be resized)


def test_compiled_takes_eight_arguments() -> None:
    require_built(frames.build_udp_frames is not reference_build_udp_frames, "wire/_frames.c")
    with pytest.raises(TypeError, match="takes 8 arguments"):
        frames.build_udp_frames(*list(_GOOD.values())[:7])


def test_reference_iv_is_crypto_explicit_iv() -> None:
    for seq in (0, 1, (1 << 32) - 1, 1 << 32, _SEQ_MAX):
        (frame,) = _call(reference_build_udp_frames, esp=(5, seq))
        assert frame[14 + 20 + 8 : 14 + 20 + 16] == explicit_iv(seq)
