"""Classic pcap files of Ethernet frames (linktype 1), read and written as raw bytes.

The files go through scapy's raw pcap classes, so a frame is never decoded or rebuilt: the
bytes written are the bytes read back. Timestamps are integer nanoseconds (the simulator's
clock), so every time survives a round trip exactly. Written files are little-endian with
nanosecond timestamps (`resolution="us"` writes microseconds, rounding each time to the
nearest one), so the same records always give the same bytes. Reading also accepts
big-endian, microsecond and gzip-compressed pcap files; pcapng is refused (convert it with
``editcap -F pcap``).

Every problem with a file is a :class:`~ipsec_offload.errors.UsageError` naming the file and
what is wrong with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from scapy.error import Scapy_Exception
from scapy.utils import RawPcapNgReader, RawPcapReader, RawPcapWriter

from ipsec_offload.errors import UsageError
from ipsec_offload.sim.clock import NS_PER_S, seconds, to_ns

__all__ = ["LINKTYPE_ETHERNET", "PcapRecord", "PcapSink", "read_pcap", "write_pcap"]

LINKTYPE_ETHERNET = 1
"""The pcap link-layer header type of Ethernet (DLT_EN10MB)."""

_SNAPLEN = 262144  # libpcap's maximum; frames up to this length are kept whole
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
    if isinstance(reader, RawPcapNgReader):
        reader.close()
        raise UsageError(
            f"{name}: pcapng files are not supported, only classic pcap"
            " (convert it with: editcap -F pcap IN OUT)"
        )
    return reader


def read_pcap(path: str | os.PathLike[str]) -> list[PcapRecord]:
    """Read every frame of a classic pcap file of Ethernet frames, in file order.

    Raises :class:`UsageError` naming the file if it is missing or unreadable, is not a pcap
    file, has a link type other than Ethernet (1), or has a truncated record.
    """
    name = os.fspath(path)
    reader = _open_reader(name)
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


def write_pcap(
    path: str | os.PathLike[str], records: Iterable[PcapRecord], *, resolution: str = "ns"
) -> None:
    """Write ``records`` to a classic pcap file of Ethernet frames, replacing the file.

    The file is little-endian with nanosecond timestamps, or with `resolution="us"`
    microsecond ones (each time rounded to the nearest microsecond, the half up); the parent
    directory must exist. Frames may be up to 262144 bytes. Raises :class:`UsageError`
    naming the file if it cannot be written.
    """
    name = os.fspath(path)
    per_second = _RESOLUTIONS.get(resolution)
    if per_second is None:
        raise UsageError(f"{name}: resolution {resolution!r}: write 'ns' or 'us'")
    try:
        writer = RawPcapWriter(
            name,
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
            if not isinstance(record, PcapRecord):
                raise UsageError(
                    f"{name}: write_pcap takes PcapRecord items, not {type(record).__name__}"
                )
            if len(record.frame) > _SNAPLEN:
                raise UsageError(
                    f"{name}: a frame of {len(record.frame)} bytes is longer than the"
                    f" {_SNAPLEN}-byte limit of a pcap record"
                )
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
