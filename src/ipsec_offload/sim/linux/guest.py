"""The Linux guest: QEMU running the image (`image.py`) under TCG, its frames over a UDP
socket pair on loopback, its commands over a virtio-serial port to peerd.

Theory of operation: QEMU's `-netdev socket,udp=...` carries each Ethernet frame of the
guest's eth0 as one datagram between QEMU and this process, with no root and no TAP device.
peerd (peerd.c) answers commands one line each over the `ctl` port. `exchange` is the one
meeting point of the two real-time worlds: it sends frames into the guest followed by a marker
frame, then waits (bounded) until peerd has seen the marker, which it sees only after the
stack has handled every frame before it, and until the marker peerd sends back comes out of
eth0, behind everything the guest sent meanwhile. What the guest sent and what its sockets
received up to then is the answer; nothing is read by guessing how long to wait.

The guest boots once (3 to 5 s under TCG) and serves any number of testbeds: each peer lives
in a network namespace of its own, removed with `reset`.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ipsec_offload.errors import LinuxGuestError, UsageError
from ipsec_offload.sim.linux.image import GuestImage, build_image, missing_tools
from ipsec_offload.wire.addr import mac_to_str

MARK_ETHERTYPE = 0x9000
"""The EtherType of the synchronisation markers (the loopback test protocol: no other part of
the model sends it), followed by `MARK_MAGIC` and the token."""
MARK_MAGIC = b"ipsec-offload mark"
GUEST_MAC = bytes.fromhex("020000fe0001")
"""The guest's eth0 (it sends nothing from it but the markers)."""
BOOT_TIMEOUT = 180.0
"""Seconds the boot may take before it counts as failed (3 to 5 s on an idle machine)."""
ANSWER_TIMEOUT = 30.0
"""Seconds a command or an exchange may take."""
_TOKEN = 8
_PR_SET_PDEATHSIG = 1
_TOKEN_AT = 14 + len(MARK_MAGIC)
_MARKER_SOURCE = bytes.fromhex("020000fe00ff")


@dataclass(frozen=True, slots=True)
class GuestDelivery:
    """A packet a peer's stack in the guest accepted (after ESP input and its policy check),
    as peerd's raw sockets saw it."""

    netns: str
    src: bytes
    dst: bytes
    protocol: int
    segment: bytes
    """The upper-layer header and payload."""


@dataclass(slots=True)
class Exchange:
    """What an `exchange` brought back."""

    frames: list[bytes] = field(default_factory=list)
    """Every frame the guest sent, in order."""
    deliveries: list[GuestDelivery] = field(default_factory=list)


class LinuxGuest:
    """A booted guest. `boot` starts one; `close` (or the with block) stops it."""

    def __init__(
        self,
        image: GuestImage,
        *,
        memory_mib: int = 128,
        tap: str | None = None,
        netns: str | None = None,
    ) -> None:
        self.image = image
        self.memory_mib = memory_mib
        self.tap = tap
        """eth0 on this TAP device (live mode) instead of the UDP socket pair: frames then
        come and go in real time, with no `exchange`."""
        self.netns = netns
        """The network namespace QEMU runs in (where `tap` is)."""
        self._scratch = Path(tempfile.mkdtemp(prefix="ipsec-offload-qemu-"))
        self.console_log = self._scratch / "console.log"
        self._frames = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._frames.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._frames.bind(("127.0.0.1", 0))
        self._qemu_port = _free_udp_port()
        self._frames.connect(("127.0.0.1", self._qemu_port))
        self._ctl: socket.socket | None = None
        self._buffer = b""
        self._next_id = 0
        self._token = 0
        self._pending: list[GuestDelivery] = []
        self.frames_in = 0
        """Frames sent into the guest (markers not counted)."""
        self.frames_out = 0
        """Frames the guest sent (markers not counted)."""
        self.boot_seconds = 0.0
        self.owner: object | None = None
        """What uses the guest now (a testbed's `LinuxWire`): one at a time."""
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def boot(
        cls,
        image: GuestImage | None = None,
        *,
        memory_mib: int = 128,
        tap: str | None = None,
        netns: str | None = None,
    ) -> LinuxGuest:
        """Boot the guest from `image` (default: build or reuse the cached one) and wait for
        peerd; with `tap`, its eth0 is that TAP device (of `netns`, if given)."""
        missing = missing_tools()
        if missing:
            raise LinuxGuestError("cannot run the Linux guest, missing: " + "; ".join(missing))
        guest = cls(image or build_image(), memory_mib=memory_mib, tap=tap, netns=netns)
        try:
            guest._start()
        except BaseException:
            guest.close()
            raise
        return guest

    def _start(self) -> None:
        control = self._scratch / "ctl.sock"
        _, frames_port = self._frames.getsockname()
        argv = [
            "qemu-system-x86_64",
            "-accel", "tcg",
            "-cpu", "max",
            "-M", "pc",
            "-m", str(self.memory_mib),
            "-smp", "1",
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-no-reboot",
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initramfs),
            "-append", "console=ttyS0 panic=-1 quiet loglevel=4",
            "-serial", f"file:{self.console_log}",
            "-netdev", (
                f"tap,id=wire,ifname={self.tap},script=no,downscript=no" if self.tap else
                f"socket,id=wire,udp=127.0.0.1:{frames_port},localaddr=127.0.0.1:{self._qemu_port}"
            ),
            "-device", f"virtio-net-pci,netdev=wire,mac={mac_to_str(GUEST_MAC)}",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ctl,path={control},server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=ctl",
        ]  # fmt: skip
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        started = time.monotonic()
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self._scratch / "qemu.log").open("wb"),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = started + BOOT_TIMEOUT
        while self._ctl is None:
            self._check_alive("starting")
            try:
                ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                ctl.connect(str(control))
                self._ctl = ctl
            except OSError:
                ctl.close()
                if time.monotonic() > deadline:
                    what = "QEMU did not open its control socket"
                    raise LinuxGuestError(self._stuck(what)) from None
                time.sleep(0.02)
        line = self._line(deadline, "booting")
        if line != b"READY":
            raise LinuxGuestError(self._stuck(f"peerd said {line!r} instead of READY"))
        self.boot_seconds = time.monotonic() - started

    # -- commands ---------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True) -> tuple[int, str]:
        """Run a program in the guest (argv[0] a path there); (exit status, output). With
        `check`, a non-zero status raises with the command and its output."""
        answer_id = self._command("X", *(arg.encode().hex() or "-" for arg in argv))
        status, output = self._answer(answer_id, " ".join(argv))
        text = output.decode(errors="replace")
        if check and status != 0:
            raise LinuxGuestError(f"in the Linux guest, `{' '.join(argv)}` failed: {text.strip()}")
        return status, text

    def ip(self, *args: str, netns: str | None = None, check: bool = True) -> str:
        """iproute2's ip in the guest (in `netns` when given)."""
        where = ("-n", netns) if netns is not None else ()
        return self.run("/sbin/ip", *where, *args, check=check)[1]

    def open_netns(self, netns: str) -> None:
        """Let peerd report and send in `netns` (which must exist)."""
        answer_id = self._command("O", netns)
        status, message = self._answer(answer_id, f"open {netns}")
        if status:
            raise LinuxGuestError(f"peerd cannot work in {netns}: {message.decode()}")

    def send(self, netns: str, dst: bytes, protocol: int, segment: bytes) -> None:
        """Send an upper-layer segment (checksummed) from `netns` to `dst` through its
        stack: its xfrm policies protect it, its routes and neighbours send it."""
        answer_id = self._command("S", netns, dst.hex(), str(protocol), segment.hex() or "-")
        status, message = self._answer(answer_id, f"send from {netns}")
        if status:
            raise LinuxGuestError(
                f"the Linux guest refused a send from {netns}: {message.decode()} (errno {status})"
            )

    def reset(self) -> None:
        """Remove every peer's namespace (their interfaces, states and policies go with
        them) and the VLAN devices, so that the next testbed starts from a guest with no
        peer."""
        for line in self.ip("netns", "list").splitlines():
            if line.strip():
                netns = line.split()[0]
                # the interface first: a namespace is torn down in the background, and its
                # macvlan's MAC would stay taken on eth0 a while
                self.ip("link", "delete", "eth0", netns=netns, check=False)
                self.ip("netns", "delete", netns)
        for line in self.ip("-o", "link", "show", "type", "vlan").splitlines():
            self.ip("link", "delete", line.split(":")[1].strip().split("@")[0], check=False)
        if self.tap is None:
            self.exchange([])

    # -- frames -----------------------------------------------------------------------------

    def exchange(self, frames: Iterable[bytes]) -> Exchange:
        """Send `frames` into the guest and wait until it has handled them: what it sent
        meanwhile (its answers, and anything it sent by itself since the last exchange) and
        what its peers' sockets received."""
        if self.tap is not None:
            raise UsageError("a guest on a TAP device exchanges frames in real time, not here")
        self._check_alive("exchanging frames")
        sent = 0
        for frame in frames:
            self._frames.send(frame)
            sent += 1
        self.frames_in += sent
        self._token += 1
        token = self._token.to_bytes(_TOKEN, "big")
        marker = GUEST_MAC + _MARKER_SOURCE + MARK_ETHERTYPE.to_bytes(2, "big") + MARK_MAGIC + token
        self._frames.send(marker + bytes(60 - len(marker)))
        out = Exchange(deliveries=self._pending)
        self._pending = []
        deadline = time.monotonic() + ANSWER_TIMEOUT
        seen_line = seen_frame = False
        while not (seen_line and seen_frame):
            ready = self._wait_readable(deadline, "a marker")
            if self._frames in ready:
                while True:
                    try:
                        frame = self._frames.recv(65536, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    if _is_marker(frame):
                        seen_frame = seen_frame or frame[_TOKEN_AT : _TOKEN_AT + _TOKEN] == token
                        continue
                    out.frames.append(frame)
                    self.frames_out += 1
            if self._ctl in ready or self._buffer:
                for line in self._lines():
                    if line.startswith(b"M "):
                        seen_line = seen_line or bytes.fromhex(line[2:].decode()) == token
                    else:
                        self._take(line, out.deliveries)
        return out

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop QEMU and remove its scratch folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for sock in (self._ctl, self._frames):
            if sock is not None:
                sock.close()
        self._ctl = None
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> LinuxGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- the control channel ----------------------------------------------------------------

    def _command(self, verb: str, *fields: str) -> str:
        self._check_alive(f"sending {verb}")
        assert self._ctl is not None
        self._next_id += 1
        answer_id = str(self._next_id)
        self._ctl.sendall(" ".join((verb, answer_id, *fields)).encode() + b"\n")
        return answer_id

    def _answer(self, answer_id: str, what: str) -> tuple[int, bytes]:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            for line in self._lines():
                if line.startswith(b"R "):
                    _, got, status, payload = line.decode().split(" ", 3)
                    if got == answer_id:
                        data = b"" if payload == "-" else bytes.fromhex(payload)
                        return int(status), data
                else:
                    self._take(line, self._pending)
            self._wait_readable(deadline, what, frames=False)

    def _take(self, line: bytes, into: list[GuestDelivery]) -> None:
        """Keep a delivery line (anything else peerd says unasked is ignored)."""
        if not line.startswith(b"D "):
            return
        _, netns, src, dst, protocol, segment = line.decode().split(" ")
        into.append(
            GuestDelivery(
                netns,
                bytes.fromhex(src),
                bytes.fromhex(dst),
                int(protocol),
                b"" if segment == "-" else bytes.fromhex(segment),
            )
        )

    def _lines(self) -> list[bytes]:
        """The complete lines peerd has sent so far (reads what is there, never waits)."""
        assert self._ctl is not None
        while True:
            try:
                data = self._ctl.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not data:
                raise LinuxGuestError(self._stuck("peerd closed its control port"))
            self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return lines

    def _line(self, deadline: float, what: str) -> bytes:
        while True:
            lines = self._lines()
            if lines:
                self._buffer = b"\n".join([*lines[1:], self._buffer])
                return lines[0]
            self._wait_readable(deadline, what, frames=False)

    def _wait_readable(
        self, deadline: float, what: str, *, frames: bool = True
    ) -> Sequence[socket.socket]:
        assert self._ctl is not None
        watched = [self._ctl, self._frames] if frames else [self._ctl]
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinuxGuestError(self._stuck(f"the Linux guest did not answer ({what})"))
            ready, _, _ = select.select(watched, [], [], min(left, 0.5))
            if ready:
                return ready
            self._check_alive(what)

    def _check_alive(self, what: str) -> None:
        if self._process is None or self._process.poll() is not None:
            raise LinuxGuestError(self._stuck(f"QEMU is not running ({what})"))

    def _stuck(self, what: str) -> str:
        """`what`, with the end of the guest's console and of QEMU's own messages."""
        tails = []
        for name in ("console.log", "qemu.log"):
            try:
                text = (self._scratch / name).read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                tails.append(f"{name}: " + " / ".join(text.splitlines()[-4:]))
        return f"{what} after {ANSWER_TIMEOUT:g} s or less" + (
            " (" + "; ".join(tails) + ")" if tails else ""
        )


_shared: list[LinuxGuest] = []


def shared_guest() -> LinuxGuest:
    """The guest this process boots once (from the cached image, built if need be) and every
    testbed without a guest of its own shares; stopped when the process exits."""
    if _shared and _shared[0].alive:
        return _shared[0]
    if _shared:
        _shared.pop().close()
    guest = LinuxGuest.boot()
    _shared.append(guest)
    atexit.register(guest.close)
    return guest


def die_with_parent() -> None:
    """In QEMU's process before it starts: a SIGKILL when this process ends, however it ends
    (prctl PR_SET_PDEATHSIG), so that no guest outlives the testbed that booted it."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _is_marker(frame: bytes) -> bool:
    return frame[12:_TOKEN_AT] == MARK_ETHERTYPE.to_bytes(2, "big") + MARK_MAGIC


def _free_udp_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
    finally:
        probe.close()
