"""The compiled batched packet I/O (`live/_pktio.c`) against its Python reference
(`PacketSocket` with `compiled=False`): the same frames, in the same order, VLAN tags put back
alike; and a fuzz of both calls over datagram socket pairs (run under AddressSanitizer and
UBSan by `make sanitize`)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_offload.live.packet_socket import PKTIO_BUILT, PacketSocket
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
