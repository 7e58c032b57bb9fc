"""A real interface's frames, whole: a Linux packet socket (AF_PACKET) bound to one interface,
in promiscuous mode, as the agent sees a port (docs/live.md).

Frames come back as they were on the wire: a VLAN tag the kernel took off into the socket's
metadata (`PACKET_AUXDATA`) is put back after the MAC addresses. The socket does not see what
it sent itself (`PACKET_IGNORE_OUTGOING`). Reads never block: `recv_burst` takes what is
queued, up to a count, and `fileno` lets a caller wait on several sockets at once.

Where the package was built with it, the compiled `_pktio` moves a burst with one recvmmsg or
sendmmsg; the code here is its reference, the same frames in the same order
(`compiled=False` uses it, and tests compare the two).

With `ring_frames`, frames arrive through a receive ring the socket shares with the kernel
(PACKET_RX_RING, TPACKET_V2), in place of one recvmsg each: the kernel writes each frame into
the next free slot of `RING_FRAME` bytes and marks it the user's; the reader copies it out and
hands the slot back. A frame longer than a slot is also queued whole on the socket
(PACKET_COPY_THRESH) and read from there, in its turn. The ring holds `ring_frames` frames
however long each is; when it is full the kernel drops, and `kernel_drops` counts them.
"""

from __future__ import annotations

import mmap
import socket
import struct

from ipsec_offload.errors import UsageError

try:
    from ipsec_offload.live import _pktio
except ImportError:  # built without a C compiler
    _pktio = None  # type: ignore[assignment]

PKTIO_BUILT = _pktio is not None
"""Whether the compiled batched I/O was built with the package."""

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
_AUXDATA = struct.Struct("=IIIHHHH")
"""struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid."""
_MREQ = struct.Struct("=iHH8s")
"""struct packet_mreq: ifindex, type, alen, address."""
_CMSG_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
MAX_FRAME = 65535 + 18
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_COPY_THRESH = 7
PACKET_VERSION = 10
TPACKET_V2 = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_COPY = 1 << 1
_TPACKET2_HDR = struct.Struct("=IIIHHIIHH4x")
"""struct tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid."""
_STATUS = struct.Struct("=I")
_TPACKET_REQ = struct.Struct("=IIII")
"""struct tpacket_req: block_size, block_nr, frame_size, frame_nr."""
_TPACKET_STATS = struct.Struct("=II")
"""struct tpacket_stats: packets, drops."""
RING_FRAME = 2048
"""A receive ring's slot: a frame of a 1500-byte MTU, tagged, with the slot's header; a
longer one comes whole through the socket's queue."""
_RING_BLOCK = 1 << 16
"""The ring's memory comes in blocks of this many bytes (a multiple of the page size)."""


class PacketSocket:
    """One interface's frames in and out, promiscuous."""

    def __init__(
        self,
        ifname: str,
        *,
        rcvbuf: int = 8 << 20,
        compiled: bool | None = None,
        ring_frames: int = 0,
    ) -> None:
        """`ring_frames`: receive through a ring of that many slots (0: one recvmsg per
        frame); rounded up to a whole number of the ring's blocks."""
        use = PKTIO_BUILT if compiled is None else compiled
        if use and _pktio is None:
            raise UsageError("the compiled packet I/O is not built (no C compiler at install)")
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise UsageError(f"no interface named {ifname!r} here (ip link shows them)") from None
        self.ifname = ifname
        try:
            # protocol 0: no frame at all until the bind below, which takes this interface's
            # only (with ETH_P_ALL here, every interface's would queue until then)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise UsageError(
                f"{ifname}: opening a packet socket needs root (or CAP_NET_RAW)"
            ) from None
        self.ring: RxRing | None = None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self.ring = RxRing(sock, ring_frames) if ring_frames > 0 else None
            sock.bind((ifname, ETH_P_ALL))
            mreq = _MREQ.pack(self.ifindex, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
        except BaseException:
            if self.ring is not None:
                self.ring.close()
            sock.close()
            raise
        self._sock = sock
        self.compiled = use
        self.received = 0
        self.sent = 0
        self.send_errors = 0
        self.kernel_drops = 0
        """Frames the kernel dropped for want of room in the ring or the socket's queue,
        as of the last `read_kernel_drops`."""

    def fileno(self) -> int:
        return self._sock.fileno()

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Set a socket option (a fanout group, its program)."""
        self._sock.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        """An integer socket option."""
        return self._sock.getsockopt(level, option)

    def drain(self) -> int:
        """Drop the frames queued now; returns how many."""
        dropped = 0
        while frames := self.recv_burst():
            dropped += len(frames)
        return dropped

    def read_kernel_drops(self) -> int:
        """Add the kernel's drops since the last reading to `kernel_drops`; returns it."""
        _, drops = _TPACKET_STATS.unpack(
            self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        )
        self.kernel_drops += drops
        return self.kernel_drops

    def recv_burst(self, limit: int = 64) -> list[bytes]:
        """The frames queued now (up to `limit`, at most 64), VLAN tags restored; never
        waits."""
        if self.ring is not None:
            got = self.ring.read(min(limit, 64), compiled=self.compiled)
            self.received += len(got)
            return got
        if self.compiled:
            got = _pktio.recv_burst(self._sock.fileno(), min(limit, 64))
            self.received += len(got)
            return got
        frames: list[bytes] = []
        while len(frames) < limit and (frame := recv_one(self._sock)) is not None:
            frames.append(frame)
        self.received += len(frames)
        return frames

    def send(self, frames: list[bytes]) -> None:
        """Send frames in order; one the interface refuses (too long for its MTU) is counted
        in `send_errors` and the rest still go."""
        if self.compiled:
            sent, refused = _pktio.send_burst(self._sock.fileno(), frames)
            self.sent += sent
            self.send_errors += refused
            return
        sock = self._sock
        for frame in frames:
            try:
                sock.send(frame)
                self.sent += 1
            except BlockingIOError:
                # the queue toward the interface is full: wait for room, as a NIC's ring
                sock.setblocking(True)
                try:
                    sock.send(frame)
                    self.sent += 1
                except OSError:
                    self.send_errors += 1
                finally:
                    sock.setblocking(False)
            except OSError:
                self.send_errors += 1

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
        self._sock.close()

    def __enter__(self) -> PacketSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RxRing:
    """A socket's TPACKET_V2 receive ring, mapped; `read` takes the frames the kernel has
    handed over, in order. Set up before the socket is bound."""

    def __init__(self, sock: socket.socket, frames: int) -> None:
        per_block = _RING_BLOCK // RING_FRAME
        blocks = -(-frames // per_block)
        self.slots = blocks * per_block
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        request = _TPACKET_REQ.pack(_RING_BLOCK, blocks, RING_FRAME, self.slots)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
        except OSError as exc:
            raise UsageError(
                f"a receive ring of {self.slots} frames ({self.slots * RING_FRAME >> 20} MiB):"
                f" {exc.strerror}; give fewer ring frames"
            ) from None
        sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
        self._sock = sock
        self._map = mmap.mmap(sock.fileno(), self.slots * RING_FRAME)
        self.head = 0
        """The next slot to read."""
        self.truncated = 0
        """Frames cut short in a slot whose whole copy the socket's queue had no room for."""

    def read(self, limit: int, *, compiled: bool) -> list[bytes]:
        """Up to `limit` frames; each slot read goes back to the kernel."""
        if compiled:
            frames, self.head, truncated = _pktio.ring_recv(
                self._sock.fileno(), self._map, RING_FRAME, self.head, limit
            )
            self.truncated += truncated
            return frames
        frames, self.head, truncated = read_ring(self._sock, self._map, self.head, limit)
        self.truncated += truncated
        return frames

    def close(self) -> None:
        self._map.close()


def read_ring(
    sock: socket.socket,
    ring: mmap.mmap | bytearray,
    head: int,
    limit: int,
    frame_size: int = RING_FRAME,
) -> tuple[list[bytes], int, int]:
    """The reference of `_pktio.ring_recv`: up to `limit` frames from slot `head` on, the
    next head, and how many slots held a frame cut short (or a header pointing outside its
    slot)."""
    slots = len(ring) // frame_size
    frames: list[bytes] = []
    truncated = 0
    while len(frames) < limit:
        at = head * frame_size
        status, length, snaplen, mac, _, _, _, tci, tpid = _TPACKET2_HDR.unpack_from(ring, at)
        if not status & TP_STATUS_USER:
            break
        frame: bytes | None
        if status & TP_STATUS_COPY:
            frame = recv_one(sock)
        elif snaplen < length or mac + snaplen > frame_size:
            frame = None
        else:
            frame = bytes(ring[at + mac : at + mac + snaplen])
            if status & TP_STATUS_VLAN_VALID:
                frame = _tagged(frame, tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
        _STATUS.pack_into(ring, at, TP_STATUS_KERNEL)
        head = (head + 1) % slots
        if frame is None:
            truncated += 1
        else:
            frames.append(frame)
    return frames, head, truncated


def recv_one(sock: socket.socket) -> bytes | None:
    """One frame from the socket's queue, its VLAN tag put back; None when none is queued."""
    try:
        data, ancillary, _flags, _addr = sock.recvmsg(MAX_FRAME, _CMSG_SPACE)
    except BlockingIOError:
        return None
    for level, kind, value in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(value) >= _AUXDATA.size:
            status, _, _, _, _, tci, tpid = _AUXDATA.unpack_from(value)
            if status & TP_STATUS_VLAN_VALID:
                return _tagged(data, tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
    return data


def _tagged(frame: bytes, tpid: int, tci: int) -> bytes:
    """The frame with an 802.1Q tag after its MAC addresses (as it was on the wire)."""
    if len(frame) < 12:
        return frame
    return frame[:12] + struct.pack(">HH", tpid, tci) + frame[12:]
