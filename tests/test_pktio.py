"""The compiled batched packet I/O (`live/_pktio.c`) against its Python reference
(`PacketSocket` with `compiled=False`): the same frames, in the same order, VLAN tags put back
alike, through one recvmsg a frame and through a receive ring; a full ring's drops and a
frame cut short are counted; and a fuzz of each call against its reference, over datagram
socket pairs and crafted rings (run under AddressSanitizer and UBSan by `make sanitize`)."""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_offload.errors import UsageError
from ipsec_offload.live.packet_socket import (
    PKTIO_BUILT,
    TP_STATUS_COPY,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    PacketSocket,
    read_ring,
)
from live_port import veth_pair
from tools import require_built

pytestmark = pytest.mark.xdist_group("live")


@pytest.fixture(scope="module")
def pktio() -> object:
    require_built(PKTIO_BUILT, "the compiled packet I/O (live/_pktio.c)")
    from ipsec_offload.live import _pktio

    return _pktio


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    with veth_pair("pk", "the packet I/O tests") as pair:
        yield pair


def _frame(n: int, size: int, vlan: int | None = None) -> bytes:
    dst, src = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")
    tag = b"" if vlan is None else b"\x81\x00" + vlan.to_bytes(2, "big")
    body = bytes((n + i) & 0xFF for i in range(size))
    return dst + src + tag + b"\x88\xb5" + body


def test_compiled_and_reference_read_and_write_alike(pktio: object, veth: tuple[str, str]) -> None:
    """Frames sent by each path (plain, VLAN-tagged, the largest the link takes) arrive, read
    by a compiled and a reference socket on the same interface, as the same list."""
    a, b = veth
    frames = [
        _frame(n, 46 + 97 * n % 1400, vlan=(n % 3 == 0 and 10 + n) or None) for n in range(90)
    ]
    frames.append(_frame(99, 1500 - 2))
    with (
        PacketSocket(b, compiled=True) as compiled_rx,
        PacketSocket(b, compiled=False) as reference_rx,
    ):
        for compiled in (True, False):
            with PacketSocket(a, compiled=compiled) as tx:
                tx.send(frames)
                assert (tx.sent, tx.send_errors) == (len(frames), 0)
            for rx in (compiled_rx, reference_rx):
                got = _receive(rx, len(frames))
                assert got == frames, f"compiled rx {rx.compiled}, compiled tx {compiled}"


def test_a_refused_frame_is_counted_and_the_rest_go(pktio: object, veth: tuple[str, str]) -> None:
    """A frame longer than the link takes is refused (EMSGSIZE) by either path: counted, and
    the frames after it still go."""
    a, b = veth
    frames = [_frame(1, 100), _frame(2, 9000), _frame(3, 100)]
    for compiled in (True, False):
        with PacketSocket(b, compiled=False) as rx, PacketSocket(a, compiled=compiled) as tx:
            tx.send(frames)
            assert (tx.sent, tx.send_errors) == (2, 1)
            assert _receive(rx, 2) == [frames[0], frames[2]]


def test_rings_read_as_the_reference_does(pktio: object, veth: tuple[str, str]) -> None:
    """A ring read by the compiled and the reference reader gives what one recvmsg a frame
    gives: tagged and untagged frames, and jumbo frames longer than a slot, which come whole
    through the socket's queue in their turn."""
    a, b = veth
    for name in (a, b):
        subprocess.run(["ip", "link", "set", name, "mtu", "9000"], check=True)
    frames = [
        _frame(n, 46 + 97 * n % 1400, vlan=(n % 3 == 0 and 10 + n) or None) for n in range(90)
    ]
    frames += [_frame(90, 1498), _frame(91, 4000), _frame(92, 8900, vlan=5), _frame(93, 60)]
    with (
        PacketSocket(b, ring_frames=256, compiled=True) as compiled_ring,
        PacketSocket(b, ring_frames=256, compiled=False) as reference_ring,
        PacketSocket(b, compiled=False) as reference,
    ):
        with PacketSocket(a) as tx:
            tx.send(frames)
        for rx in (compiled_ring, reference_ring, reference):
            assert _receive(rx, len(frames)) == frames, f"ring {rx.ring}, compiled {rx.compiled}"
            assert rx.read_kernel_drops() == 0
        for rx in (compiled_ring, reference_ring):
            assert rx.ring is not None
            assert (rx.ring.slots, rx.ring.truncated) == (256, 0)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_full_ring_drops_and_counts(pktio: object, veth: tuple[str, str], compiled: bool) -> None:
    """A ring of 32 slots sent 50 frames unread keeps the first 32; the kernel counts the 18
    it dropped; the ring takes frames again once read."""
    a, b = veth
    frames = [_frame(n, 100) for n in range(55)]
    with PacketSocket(b, ring_frames=1, compiled=compiled) as rx, PacketSocket(a) as tx:
        assert rx.ring is not None and rx.ring.slots == 32  # one block
        tx.send(frames[:50])
        assert _receive(rx, 50) == frames[:32]
        assert rx.read_kernel_drops() == 18
        tx.send(frames[50:])
        assert _receive(rx, 5) == frames[50:]
        assert rx.read_kernel_drops() == 18


@pytest.mark.parametrize("compiled", [True, False])
def test_a_long_frame_with_no_room_for_its_copy_is_counted(
    pktio: object, veth: tuple[str, str], compiled: bool
) -> None:
    """Frames longer than a slot are copied whole to the socket's queue while it has room;
    with the smallest queue only the first is, and the two after it arrive cut short:
    counted as truncated, not handed on."""
    a, b = veth
    for name in (a, b):
        subprocess.run(["ip", "link", "set", name, "mtu", "9000"], check=True)
    frames = [_frame(1, 5000), _frame(2, 5000), _frame(3, 5000), _frame(4, 100)]
    with (
        PacketSocket(b, ring_frames=64, rcvbuf=1, compiled=compiled) as rx,
        PacketSocket(a) as tx,
    ):
        tx.send(frames)
        assert _receive(rx, 2) == [frames[0], frames[3]]
        assert rx.ring is not None and rx.ring.truncated == 2


def test_a_ring_too_large_is_refused(pktio: object, veth: tuple[str, str]) -> None:
    with pytest.raises(
        UsageError, match=r"a receive ring of 1073741824 frames \(2097152 MiB\): .*; give fewer"
    ):
        PacketSocket(veth[1], ring_frames=1 << 30)


def _receive(rx: PacketSocket, count: int) -> list[bytes]:
    """What `rx` receives until it has `count` frames (or for 5 s: the kernel may deliver
    a veth's frames a moment after the send, when the machine is busy)."""
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        select.select([rx], [], [], 0.1)
        got += rx.recv_burst(64)
    return got


def test_arguments_are_checked(pktio: object) -> None:
    with pytest.raises(ValueError, match="limit 0"):
        pktio.recv_burst(0, 0)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="limit 65"):
        pktio.recv_burst(0, 65)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="list of bytes"):
        pktio.send_burst(0, [b"x", "y"])  # type: ignore[attr-defined]
    with pytest.raises(OSError):
        pktio.recv_burst(-1, 1)  # type: ignore[attr-defined]


@settings(max_examples=200)
@given(
    st.lists(st.binary(min_size=0, max_size=70_000), max_size=150),
    st.integers(min_value=1, max_value=64),
)
def test_fuzz_over_a_socket_pair(pktio: object, frames: list[bytes], limit: int) -> None:
    """Any datagrams (empty, large, more than a burst) through send_burst and recv_burst on a
    datagram socket pair come out whole and in order, `limit` at a time (no auxdata there:
    nothing to restore)."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for sock in (left, right):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        right.setblocking(False)
        got: list[bytes] = []
        for start in range(0, len(frames), 16):
            chunk = frames[start : start + 16]
            sent, refused = pktio.send_burst(left.fileno(), chunk)  # type: ignore[attr-defined]
            assert (sent, refused) == (len(chunk), 0)
            while True:
                burst = pktio.recv_burst(right.fileno(), limit)  # type: ignore[attr-defined]
                assert len(burst) <= limit
                if not burst:
                    break
                got += burst
        assert got == [frame[: 65535 + 18] for frame in frames]
    finally:
        left.close()
        right.close()


_SLOT = struct.Struct("=IIIHHIIHH4x")


@st.composite
def _rings(draw: st.DrawFn) -> tuple[int, bytearray, int]:
    """A crafted TPACKET_V2 ring: slots of a drawn size, each with drawn header fields (the
    user's or the kernel's, copy, VLAN flags; lengths and offsets in and out of bounds)."""
    frame_size = draw(st.sampled_from([32, 48, 64, 128, 256]))
    slots = draw(st.integers(min_value=1, max_value=12))
    ring = bytearray(draw(st.binary(min_size=frame_size * slots, max_size=frame_size * slots)))
    flags = st.sampled_from(
        [0, TP_STATUS_USER, TP_STATUS_USER | TP_STATUS_COPY, TP_STATUS_USER | TP_STATUS_VLAN_VALID,
         TP_STATUS_USER | TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID]
    )  # fmt: skip
    small = st.integers(min_value=0, max_value=frame_size + 8)
    for slot in range(slots):
        snaplen = draw(small)
        length = draw(st.one_of(st.just(snaplen), small, st.integers(0, 2**32 - 1)))
        fields = (
            draw(flags), length, snaplen, draw(small), 0, 0, 0,
            draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)),
        )  # fmt: skip
        _SLOT.pack_into(ring, slot * frame_size, *fields)
    return frame_size, ring, draw(st.integers(min_value=0, max_value=slots - 1))


@settings(max_examples=300)
@given(
    _rings(),
    st.lists(st.binary(min_size=0, max_size=3000), max_size=6),
    st.integers(min_value=1, max_value=20),
)
def test_fuzz_ring_reader_against_its_reference(
    pktio: object, crafted: tuple[int, bytearray, int], queued: list[bytes], limit: int
) -> None:
    """Any ring (a hostile kernel's, as far as the reader can tell) and any datagrams queued
    for the copies: the compiled reader gives the reference's frames, next head and count of
    frames cut short, and leaves the ring as the reference does."""
    frame_size, ring, head = crafted
    results = []
    for reader in ("compiled", "reference"):
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            right.setblocking(False)
            for datagram in queued:
                left.send(datagram)
            mine = bytearray(ring)
            if reader == "compiled":
                got = pktio.ring_recv(right.fileno(), mine, frame_size, head, limit)  # type: ignore[attr-defined]
            else:
                got = read_ring(right, mine, head, limit, frame_size)
            results.append((got, mine))
        finally:
            left.close()
            right.close()
    assert results[0] == results[1]
    frames, _, _ = results[0][0]
    assert len(frames) <= limit


def test_ring_arguments_are_checked(pktio: object) -> None:
    ring = bytearray(256)
    with pytest.raises(ValueError, match="frame size 100 does not divide"):
        pktio.ring_recv(0, ring, 100, 0, 1)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="frame size 512 does not divide"):
        pktio.ring_recv(0, ring, 512, 0, 1)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="head 2, limit 1: give 0 <= head < 2"):
        pktio.ring_recv(0, ring, 128, 2, 1)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="limit 0"):
        pktio.ring_recv(0, ring, 128, 0, 0)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        pktio.ring_recv(0, bytes(256), 128, 0, 1)  # type: ignore[attr-defined]
