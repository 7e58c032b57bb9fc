"""Classic pcap files of Ethernet frames (linktype 1), read and written as raw bytes.

The files go through scapy's raw pcap classes, so a frame is never decoded or rebuilt: the
bytes written are the bytes read back. Timestamps are integer nanoseconds (the simulator's
clock), so every time survives a round trip exactly. Written files are little-endian with
nanosecond timestamps (`resolution="us"` writes microseconds, rounding each time to the
nearest one), so the same records always give the same bytes. Reading also accepts
big-endian, microsecond and gzip-compressed pcap files, and pcapng files (through scapy's
reader: every Ethernet interface's packets in file order, at the interface's resolution).

pcapng is written here (`write_pcapng`, or `write_pcap` to a path ending in ``.pcapng``):
scapy's pcapng writer has microsecond timestamps only (no ``if_tsresol``). A file holds one
interface per capture (for a link, one per direction, named after it), nanosecond
timestamps, the direction flag where given, and a comment per packet where the interface's
`describe` names what the frame is.

Every problem with a file is a :class:`~ipsec_offload.errors.UsageError` naming the file and
what is wrong with it.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from scapy.error import Scapy_Exception
from scapy.utils import RawPcapNgReader, RawPcapReader, RawPcapWriter

from ipsec_offload.errors import UsageError
from ipsec_offload.sim.clock import NS_PER_S, seconds, to_ns
from ipsec_offload.sim.outputs import replacing

__all__ = [
    "LINKTYPE_ETHERNET",
    "Interface",
    "PcapRecord",
    "PcapSink",
    "PcapStream",
    "read_pcap",
    "write_pcap",
    "write_pcapng",
]

LINKTYPE_ETHERNET = 1
"""The pcap link-layer header type of Ethernet (DLT_EN10MB)."""

_SNAPLEN = 262144  # libpcap's maximum, the snapshot length the files declare
MAX_FRAME = 4 * 65535
"""The longest frame a record may hold here: what scapy's reader reads of one record (a
TSO send, the longest frame this project makes, is at most 64 KiB and its headers)."""
_FILE_HEADER_LEN = 24
_RECORD_HEADER_LEN = 16
_MAX_TIME = 2**32  # the seconds field of a record is 32 bits
_NS_PER_US = 1_000
_RESOLUTIONS = {"ns": NS_PER_S, "us": 1_000_000}
"""The sub-second units a written file may use, by name."""


@dataclass(frozen=True, slots=True)
class PcapRecord:
    """One captured frame: ``time_ns`` in integer nanoseconds (>= 0, below 2**32 seconds),
    ``frame`` the raw bytes."""

    time_ns: int
    frame: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.frame, bytes):
            raise UsageError(f"PcapRecord.frame must be bytes, not {type(self.frame).__name__}")
        if not isinstance(self.time_ns, int) or isinstance(self.time_ns, bool):
            raise UsageError(f"PcapRecord.time_ns must be an int of nanoseconds: {self.time_ns!r}")
        if not 0 <= self.time_ns < _MAX_TIME * NS_PER_S:
            raise UsageError(f"PcapRecord.time_ns must be in [0, 2**32 s): {self.time_ns!r}")

    @classmethod
    def at(cls, time: float, frame: bytes) -> PcapRecord:
        """A record at `time` seconds (the nearest nanosecond)."""
        if not isinstance(time, int | float) or not math.isfinite(time):
            raise UsageError(f"PcapRecord time must be a finite number of seconds: {time!r}")
        return cls(to_ns(time), frame)

    @property
    def time(self) -> float:
        """The time in seconds, as the sans-IO cores take it (the exact time is `time_ns`)."""
        return seconds(self.time_ns)


def _split_time(time_ns: int, per_second: int) -> tuple[int, int]:
    """Seconds and sub-second units of a record time (rounded to the nearest unit)."""
    sec, sub = divmod((time_ns * per_second + NS_PER_S // 2) // NS_PER_S, per_second)
    if sec >= _MAX_TIME:
        raise UsageError(f"PcapRecord.time_ns rounds to 2**32 seconds or more: {time_ns!r}")
    return sec, sub


def _open_reader(name: str) -> Any:
    """A scapy RawPcapReader for ``name``, or a UsageError saying why there is none."""
    try:
        size = os.path.getsize(name)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read pcap file: {exc.strerror or exc}") from None
    if os.path.isdir(name):
        raise UsageError(f"{name}: cannot read pcap file: it is a directory")
    if size == 0:
        raise UsageError(f"{name}: not a pcap file: the file is empty")
    try:
        reader = RawPcapReader(name)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read pcap file: {exc.strerror or exc}") from None
    except (Scapy_Exception, EOFError):
        raise UsageError(
            f"{name}: not a pcap file: no valid pcap file header (bad magic number or truncated)"
        ) from None
    return reader


def read_pcap(path: str | os.PathLike[str]) -> list[PcapRecord]:
    """Read every frame of a pcap or pcapng file of Ethernet frames, in file order.

    Raises :class:`UsageError` naming the file if it is missing or unreadable, is not a pcap
    file, has a link type other than Ethernet (1), or has a truncated record. scapy's own
    warnings are kept off stderr: every problem is the one UsageError.
    """
    scapy_log = logging.getLogger("scapy.runtime")
    level = scapy_log.level
    scapy_log.setLevel(logging.ERROR)
    try:
        return _read(os.fspath(path))
    finally:
        scapy_log.setLevel(level)


def _read(name: str) -> list[PcapRecord]:
    reader = _open_reader(name)
    if isinstance(reader, RawPcapNgReader):
        return _read_pcapng(name, reader)
    try:
        linktype = int(reader.linktype)
        if linktype != LINKTYPE_ETHERNET:
            raise UsageError(
                f"{name}: link type {linktype} is not supported, only Ethernet"
                f" (link type {LINKTYPE_ETHERNET})"
            )
        divisor, unit = (NS_PER_S, 1) if reader.nano else (1_000_000, _NS_PER_US)
        records: list[PcapRecord] = []
        consumed = _FILE_HEADER_LEN
        while True:
            try:
                data, meta = reader._read_packet(_SNAPLEN)
            except EOFError:
                break
            caplen = int(meta.caplen)
            if caplen > MAX_FRAME:
                raise UsageError(
                    f"{name}: record {len(records) + 1} holds {caplen} bytes, more than the"
                    f" {MAX_FRAME} this tool reads of a record"
                )
            if len(data) != caplen:
                raise UsageError(
                    f"{name}: record {len(records) + 1} is truncated or too large"
                    f" (captured length {caplen}, {len(data)} bytes read)"
                )
            consumed += _RECORD_HEADER_LEN + caplen
            fraction = int(meta.usec)
            if fraction >= divisor:
                raise UsageError(
                    f"{name}: record {len(records) + 1} has an invalid timestamp"
                    f" (sub-second field {fraction})"
                )
            time_ns = int(meta.sec) * NS_PER_S + fraction * unit
            records.append(PcapRecord(time_ns, bytes(data)))
        trailing = int(reader.f.tell()) - consumed
        if trailing:
            raise UsageError(
                f"{name}: {trailing} bytes after record {len(records)} are not a whole record"
                " (truncated file)"
            )
        return records
    except OSError as exc:
        raise UsageError(f"{name}: cannot read pcap file: {exc.strerror or exc}") from None
    finally:
        reader.close()


def _read_pcapng(name: str, reader: Any) -> list[PcapRecord]:
    """Every packet of a pcapng file's Ethernet interfaces, in file order."""
    records: list[PcapRecord] = []
    try:
        while True:
            try:
                data, meta = reader._read_packet(_SNAPLEN)
            except EOFError:
                break
            if int(meta.linktype) != LINKTYPE_ETHERNET:
                raise UsageError(
                    f"{name}: packet {len(records) + 1} is on an interface of link type"
                    f" {int(meta.linktype)}, only Ethernet (link type {LINKTYPE_ETHERNET})"
                )
            ticks = int(meta.tshigh) << 32 | int(meta.tslow)
            time_ns = (ticks * NS_PER_S + int(meta.tsresol) // 2) // int(meta.tsresol)
            records.append(PcapRecord(time_ns, bytes(data)))
    except (struct.error, Scapy_Exception) as exc:
        raise UsageError(
            f"{name}: damaged pcapng file after {len(records)} packets: {exc}"
        ) from None
    except OSError as exc:
        raise UsageError(f"{name}: cannot read pcap file: {exc.strerror or exc}") from None
    finally:
        reader.close()
    return records


def write_pcap(
    path: str | os.PathLike[str], records: Iterable[PcapRecord], *, resolution: str = "ns"
) -> None:
    """Write ``records`` to a classic pcap file of Ethernet frames, replacing the file (to a
    pcapng file of one interface, named after the file, when `path` ends in ``.pcapng``).

    The file is little-endian with nanosecond timestamps, or with `resolution="us"`
    microsecond ones (each time rounded to the nearest microsecond, the half up); the parent
    directory must exist. Frames may be up to 262144 bytes. Raises :class:`UsageError`
    naming the file if it cannot be written.
    """
    name = os.fspath(path)
    if name.endswith(".pcapng"):
        write_pcapng(path, [Interface(os.path.basename(name)[: -len(".pcapng")], records)])
        return
    per_second = _RESOLUTIONS.get(resolution)
    if per_second is None:
        raise UsageError(f"{name}: resolution {resolution!r}: write 'ns' or 'us'")
    with replacing(name, "pcap file") as temporary:
        _write_classic(name, temporary, records, per_second)


def _check_record(name: str, record: object, writer: str) -> None:
    """A record `writer` can write to `name`: a PcapRecord whose frame fits a record."""
    if not isinstance(record, PcapRecord):
        raise UsageError(f"{name}: {writer} takes PcapRecord items, not {type(record).__name__}")
    if len(record.frame) > MAX_FRAME:
        raise UsageError(
            f"{name}: a frame of {len(record.frame)} bytes is longer than the"
            f" {MAX_FRAME}-byte limit of a record"
        )


def _write_classic(
    name: str, temporary: str, records: Iterable[PcapRecord], per_second: int
) -> None:
    try:
        writer = RawPcapWriter(
            temporary,
            linktype=LINKTYPE_ETHERNET,
            endianness="<",
            snaplen=_SNAPLEN,
            nano=per_second == NS_PER_S,
        )
    except OSError as exc:
        raise UsageError(f"{name}: cannot write pcap file: {exc.strerror or exc}") from None
    try:
        writer.write_header(None)
        for record in records:
            _check_record(name, record, "write_pcap")
            sec, sub = _split_time(record.time_ns, per_second)
            writer.write_packet(record.frame, sec=sec, usec=sub)
    except OSError as exc:
        raise UsageError(f"{name}: cannot write pcap file: {exc.strerror or exc}") from None
    finally:
        writer.close()


class PcapSink:
    """Collects the frames seen on a link, in memory, to be written to a pcap file later."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: list[PcapRecord] = []

    def add(self, time_ns: int, frame: bytes) -> None:
        """Record ``frame`` as seen at ``time_ns`` nanoseconds."""
        self._records.append(PcapRecord(time_ns, frame))

    @property
    def records(self) -> tuple[PcapRecord, ...]:
        """The records collected so far, in the order they were added."""
        return tuple(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[PcapRecord]:
        return iter(tuple(self._records))

    def clear(self) -> None:
        """Forget every record collected so far."""
        self._records.clear()

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the records collected so far to ``path`` (see :func:`write_pcap`)."""
        write_pcap(path, self._records)


class PcapStream:
    """A classic pcap file written as frames come (a live capture): records go to a file
    beside `path` as they are added, and `close` renames it to `path` once complete, so that
    an interrupted run leaves no half file under the name (`abort` removes it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if os.path.isdir(self.path) or (
            os.path.exists(self.path) and not os.path.isfile(self.path)
        ):
            raise UsageError(f"{self.path}: cannot write a pcap file there")
        directory, base = os.path.split(self.path)
        self._temporary = os.path.join(directory, f".{base}.{os.getpid()}.tmp")
        try:
            self._writer: Any = RawPcapWriter(
                self._temporary, linktype=LINKTYPE_ETHERNET, endianness="<", snaplen=_SNAPLEN,
                nano=True,
            )  # fmt: skip
            self._writer.write_header(None)
        except OSError as exc:
            raise UsageError(
                f"{self.path}: cannot write pcap file: {exc.strerror or exc}"
            ) from None
        self.count = 0

    def add(self, time_ns: int, frame: bytes) -> None:
        """Append one record at `time_ns` nanoseconds (since the capture's start)."""
        sec, sub = _split_time(time_ns, NS_PER_S)
        self._writer.write_packet(frame[:MAX_FRAME], sec=sec, usec=sub)
        self.count += 1

    def close(self) -> None:
        """Finish the file and give it its name."""
        self._writer.close()
        os.replace(self._temporary, self.path)

    def abort(self) -> None:
        """Drop what was written."""
        self._writer.close()
        if os.path.lexists(self._temporary):
            os.unlink(self._temporary)


# -- pcapng --------------------------------------------------------------------------------

Describe = Callable[[bytes], str | None]
"""What a frame is, in a few words, for its packet's comment (None: no comment)."""

_SHB = 0x0A0D0D0A
_IDB, _EPB = 1, 6
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT, _IF_NAME, _EPB_FLAGS, _IF_TSRESOL = 0, 1, 2, 2, 9
_TSRESOL_NS = 9
"""if_tsresol: 10^-9 seconds."""


@dataclass(frozen=True, slots=True)
class Interface:
    """One capture of a pcapng file: its name, its records, the direction of its packets
    as seen from the capture point (0: not given, 1: inbound, 2: outbound), and what names a
    frame for its packet's comment."""

    name: str
    records: Iterable[PcapRecord]
    direction: int = 0
    describe: Describe | None = None


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(kind: int, body: bytes) -> bytes:
    """A pcapng block: type, total length, body (padded to 32 bits), total length."""
    body += bytes(-len(body) % 4)
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def write_pcapng(path: str | os.PathLike[str], interfaces: Sequence[Interface]) -> None:
    """Write `interfaces` to a pcapng file, replacing it: one interface description per
    capture, then every record in time order (on a tie, in `interfaces` order, each
    capture's own order kept), with nanosecond timestamps, the interface's direction flag
    and, where its `describe` names the frame, a comment. Raises UsageError naming the
    file."""
    name = os.fspath(path)
    shb = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)
    blocks = [_block(_SHB, shb)]
    packets: list[tuple[int, int, int, bytes]] = []
    for index, interface in enumerate(interfaces):
        options = _option(_IF_NAME, interface.name.encode())
        options += _option(_IF_TSRESOL, bytes((_TSRESOL_NS,))) + _option(_OPT_END, b"")
        blocks.append(_block(_IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, _SNAPLEN) + options))
        for order, record in enumerate(interface.records):
            _check_record(name, record, "write_pcapng")
            packets.append((record.time_ns, index, order, record.frame))
    packets.sort(key=lambda p: p[:3])
    for time_ns, index, _order, frame in packets:
        options = b""
        describe = interfaces[index].describe
        note = describe(frame) if describe is not None else None
        if note:
            options += _option(_OPT_COMMENT, note.encode())
        if interfaces[index].direction:
            options += _option(_EPB_FLAGS, struct.pack("<I", interfaces[index].direction & 3))
        if options:
            options += _option(_OPT_END, b"")
        head = struct.pack(
            "<IIIII", index, time_ns >> 32, time_ns & 0xFFFFFFFF, len(frame), len(frame)
        )
        blocks.append(_block(_EPB, head + frame + bytes(-len(frame) % 4) + options))
    with replacing(name, "pcap file") as temporary:
        try:
            with open(temporary, "wb") as file:
                file.write(b"".join(blocks))
        except OSError as exc:
            raise UsageError(f"{name}: cannot write pcap file: {exc.strerror or exc}") from None
