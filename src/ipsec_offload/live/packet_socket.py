"""A real interface's frames, whole: a Linux packet socket (AF_PACKET) bound to one interface,
in promiscuous mode, as the agent sees a port (docs/live.md).

Frames come back as they were on the wire: a VLAN tag the kernel took off into the socket's
metadata (`PACKET_AUXDATA`) is put back after the MAC addresses. The socket does not see what
it sent itself (`PACKET_IGNORE_OUTGOING`). Reads never block: `recv_burst` takes what is
queued, up to a count, and `fileno` lets a caller wait on several sockets at once.

Where the package was built with it, the compiled `_pktio` moves a burst with one recvmmsg or
sendmmsg; the code here is its reference, the same frames in the same order
(`compiled=False` uses it, and tests compare the two).
"""

from __future__ import annotations

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


class PacketSocket:
    """One interface's frames in and out, promiscuous."""

    def __init__(self, ifname: str, *, rcvbuf: int = 8 << 20, compiled: bool | None = None) -> None:
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise UsageError(f"no interface named {ifname!r} here (ip link shows them)") from None
        self.ifname = ifname
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise UsageError(
                f"{ifname}: opening a packet socket needs root (or CAP_NET_RAW)"
            ) from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.bind((ifname, ETH_P_ALL))
            mreq = _MREQ.pack(self.ifindex, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        use = PKTIO_BUILT if compiled is None else compiled
        if use and _pktio is None:
            raise UsageError("the compiled packet I/O is not built (no C compiler at install)")
        self.compiled = use
        self.received = 0
        self.sent = 0
        self.send_errors = 0

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

    def recv_burst(self, limit: int = 64) -> list[bytes]:
        """The frames queued now (up to `limit`, at most 64), VLAN tags restored; never
        waits."""
        if self.compiled:
            got = _pktio.recv_burst(self._sock.fileno(), min(limit, 64))
            self.received += len(got)
            return got
        frames: list[bytes] = []
        sock = self._sock
        while len(frames) < limit:
            try:
                data, ancillary, _flags, _addr = sock.recvmsg(MAX_FRAME, _CMSG_SPACE)
            except BlockingIOError:
                break
            for level, kind, value in ancillary:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(value) >= _AUXDATA.size:
                    status, _, _, _, _, tci, tpid = _AUXDATA.unpack_from(value)
                    if status & TP_STATUS_VLAN_VALID:
                        if not status & TP_STATUS_VLAN_TPID_VALID:
                            tpid = 0x8100
                        data = data[:12] + struct.pack(">HH", tpid, tci) + data[12:]
            frames.append(data)
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
        self._sock.close()

    def __enter__(self) -> PacketSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
