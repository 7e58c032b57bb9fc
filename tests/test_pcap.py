"""sim.pcap: exact round trips and a UsageError naming the file for every bad file."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_offload.errors import UsageError
from ipsec_offload.sim.pcap import (
    Interface,
    PcapRecord,
    PcapSink,
    read_pcap,
    write_pcap,
    write_pcapng,
)

FRAME_A = bytes.fromhex("020000000002020000000001080045000014000100004011f7b2c0000201c0000202")
FRAME_B = bytes(range(256)) * 4
GLOBAL_HEADER_LE = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)
"""What write_pcap writes: nanosecond timestamps."""
GLOBAL_HEADER_US = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
S = 1_000_000_000


def _record_bytes(sec: int, frac: int, frame: bytes, endian: str = "<") -> bytes:
    return struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame


def test_round_trip_keeps_bytes_and_timestamps(tmp_path: Path) -> None:
    records = [
        PcapRecord(time_ns=0, frame=FRAME_A),
        PcapRecord(time_ns=S + 1, frame=FRAME_B),
        PcapRecord(time_ns=S + S // 2, frame=b""),
        PcapRecord(time_ns=2**32 * S - 1, frame=FRAME_A[:14]),
        PcapRecord(time_ns=S // 4, frame=FRAME_A),  # not sorted: order is kept
    ]
    path = tmp_path / "rt.pcap"
    write_pcap(path, records)
    assert read_pcap(path) == records
    assert read_pcap(str(path)) == records


def test_written_bytes_are_exact(tmp_path: Path) -> None:
    path = tmp_path / "exact.pcap"
    write_pcap(path, [PcapRecord(time_ns=12 * S + 34_567, frame=FRAME_A)])
    assert path.read_bytes() == GLOBAL_HEADER_LE + _record_bytes(12, 34_567, FRAME_A)


def test_microsecond_files_round_to_the_microsecond(tmp_path: Path) -> None:
    path = tmp_path / "round.pcap"
    records = [PcapRecord(S + 400, b"a"), PcapRecord(2 * S - 400, b"b"), PcapRecord(1500, b"c")]
    write_pcap(path, records, resolution="us")
    assert path.read_bytes()[:24] == GLOBAL_HEADER_US
    assert [r.time_ns for r in read_pcap(path)] == [S, 2 * S, 2000]


def test_a_resolution_other_than_ns_or_us_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="resolution 'ms'"):
        write_pcap(tmp_path / "x.pcap", [], resolution="ms")


def test_a_record_at_seconds_is_the_nearest_nanosecond() -> None:
    assert PcapRecord.at(0.010001, b"x") == PcapRecord(10_001_000, b"x")
    assert PcapRecord.at(0.010000999999999998, b"x").time_ns == 10_001_000
    assert PcapRecord(10_001_000, b"x").time == 0.010001


def test_empty_capture(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    write_pcap(path, [])
    assert path.read_bytes() == GLOBAL_HEADER_LE
    assert read_pcap(path) == []


def test_large_frame_is_not_truncated(tmp_path: Path) -> None:
    frame = bytes(range(256)) * 300  # 76800 bytes: a TSO super-frame, above 65535
    path = tmp_path / "big.pcap"
    write_pcap(path, [PcapRecord(3 * S, frame)])
    assert read_pcap(path) == [PcapRecord(3 * S, frame)]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**32 * S - 1), st.binary(max_size=200)),
        max_size=8,
    )
)
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, items: list) -> None:
    records = [PcapRecord(time_ns=ns, frame=frame) for ns, frame in items]
    path = tmp_path_factory.mktemp("prop") / "p.pcap"
    write_pcap(path, records)
    assert read_pcap(path) == records


def test_reads_big_endian_nanosecond_and_gzip(tmp_path: Path) -> None:
    big_nano = tmp_path / "be_ns.pcap"
    big_nano.write_bytes(
        struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
        + _record_bytes(7, 500_000_000, FRAME_A, ">")
    )
    assert read_pcap(big_nano) == [PcapRecord(7 * S + S // 2, FRAME_A)]
    plain = tmp_path / "plain.pcap"
    write_pcap(plain, [PcapRecord(2 * S + 3000, FRAME_B)], resolution="us")
    zipped = tmp_path / "plain.pcap.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_pcap(zipped) == [PcapRecord(2 * S + 3000, FRAME_B)]


def test_sink_collects_and_writes(tmp_path: Path) -> None:
    sink = PcapSink()
    sink.add(S // 2, FRAME_A)
    sink.add(3 * S // 4, FRAME_B)
    assert len(sink) == 2
    assert sink.records == (PcapRecord(S // 2, FRAME_A), PcapRecord(3 * S // 4, FRAME_B))
    assert list(sink) == list(sink.records)
    path = tmp_path / "sink.pcap"
    sink.write(path)
    assert read_pcap(path) == list(sink.records)
    sink.clear()
    assert len(sink) == 0


@pytest.mark.parametrize(
    ("time_ns", "frame"),
    [(-1, b""), (1.5, b""), (True, b""), (2**32 * S, b""), (0, "text")],
)
def test_bad_record_is_a_usage_error(time_ns: object, frame: object) -> None:
    with pytest.raises(UsageError, match="PcapRecord"):
        PcapRecord(time_ns=time_ns, frame=frame)  # type: ignore[arg-type]


@pytest.mark.parametrize("time", [float("nan"), float("inf"), -1.0, 2.0**32])
def test_a_record_at_a_bad_time_in_seconds_is_a_usage_error(time: float) -> None:
    with pytest.raises(UsageError, match="PcapRecord"):
        PcapRecord.at(time, b"")


def test_time_rounding_up_to_2_pow_32_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "late.pcap"
    with pytest.raises(UsageError, match="2\\*\\*32"):
        write_pcap(path, [PcapRecord(2**32 * S - 1, b"")], resolution="us")


def _bad_file_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, content: bytes | None, what: str) -> None:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        cases[name] = (path, what)

    case("missing.pcap", None, "cannot read")
    case("empty.pcap", b"", "empty")
    case("garbage.pcap", b"this is not a capture file at all\n", "not a pcap file")
    case("short-header.pcap", GLOBAL_HEADER_LE[:10], "not a pcap file")
    case("linktype.pcap", GLOBAL_HEADER_LE[:-4] + struct.pack("<I", 101), "link type 101")
    case(
        "cut-record.pcap",
        GLOBAL_HEADER_LE + _record_bytes(1, 0, FRAME_A)[:-5],
        "record 1 is truncated",
    )
    case(
        "cut-header.pcap",
        GLOBAL_HEADER_LE + _record_bytes(1, 0, FRAME_A) + b"\x01\x00\x00",
        "3 bytes after record 1",
    )
    case(
        "bad-usec.pcap",
        GLOBAL_HEADER_US + _record_bytes(1, 1_000_000, FRAME_A),
        "invalid timestamp",
    )
    case(
        "bad-nsec.pcap",
        GLOBAL_HEADER_LE + _record_bytes(1, S, FRAME_A),
        "invalid timestamp",
    )
    # a pcapng section header block, then an interface of link type 101 and a packet on it
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHII", 1, 20, 101, 0, 65535, 20)
    epb = struct.pack("<IIIIIII", 6, 32, 0, 0, 0, 0, 0) + struct.pack("<I", 32)
    case("raw-ip.pcapng", shb + idb + epb, "link type 101")
    return cases


@pytest.mark.parametrize(
    "name",
    [
        "missing.pcap",
        "empty.pcap",
        "garbage.pcap",
        "short-header.pcap",
        "linktype.pcap",
        "cut-record.pcap",
        "cut-header.pcap",
        "bad-usec.pcap",
        "bad-nsec.pcap",
        "raw-ip.pcapng",
    ],
)
def test_bad_file_is_a_usage_error_naming_it(tmp_path: Path, name: str) -> None:
    path, what = _bad_file_cases(tmp_path)[name]
    with pytest.raises(UsageError) as info:
        read_pcap(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert what in message


def test_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="directory"):
        read_pcap(tmp_path)
    with pytest.raises(UsageError, match="cannot write"):
        write_pcap(tmp_path, [])


def test_unwritable_path_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "out.pcap"
    with pytest.raises(UsageError) as info:
        write_pcap(path, [PcapRecord(0, FRAME_A)])
    assert str(info.value).startswith(f"{path}: cannot write pcap file")


def test_non_record_item_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="PcapRecord"):
        write_pcap(tmp_path / "x.pcap", [(0.0, FRAME_A)])  # type: ignore[list-item]


@pytest.mark.interop
def test_tshark_reads_what_we_write(tmp_path: Path, tshark: str) -> None:
    path = tmp_path / "ts.pcap"
    write_pcap(path, [PcapRecord.at(1.000001, FRAME_A), PcapRecord.at(2.5, FRAME_B)])
    out = subprocess.run(
        [
            tshark,
            "-n",
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.len",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    rows = [line.split("\t") for line in out if line]
    assert [(float(t), int(n)) for t, n in rows] == [(1.000001, len(FRAME_A)), (2.5, len(FRAME_B))]


# -- pcapng -----------------------------------------------------------------------------------


def _two_directions() -> list[Interface]:
    out = [PcapRecord(5, FRAME_A), PcapRecord(2**32 + 7, FRAME_B)]  # a high timestamp word
    back = [PcapRecord(5, FRAME_B[:100]), PcapRecord(S, FRAME_A[:3])]

    def note(frame: bytes) -> str:
        return f"frame of {len(frame)} bytes"

    return [
        Interface("nic-to-agent", out, direction=1, describe=note),
        Interface("agent-to-nic", back, 2, describe=note),
    ]


def test_pcapng_holds_both_directions_in_time_order_to_the_nanosecond(tmp_path: Path) -> None:
    path = tmp_path / "link.pcapng"
    write_pcapng(path, _two_directions())
    # on the tie at 5 ns, the first interface first
    assert read_pcap(path) == [
        PcapRecord(5, FRAME_A),
        PcapRecord(5, FRAME_B[:100]),
        PcapRecord(S, FRAME_A[:3]),
        PcapRecord(2**32 + 7, FRAME_B),
    ]
    assert path.read_bytes()[:4] == bytes.fromhex("0a0d0d0a")


def test_write_pcap_to_a_pcapng_path_writes_one_interface(tmp_path: Path) -> None:
    records = [PcapRecord(S + 1, FRAME_A), PcapRecord(S + 2, FRAME_B)]
    write_pcap(tmp_path / "agent-to-wire.pcapng", records)
    assert read_pcap(tmp_path / "agent-to-wire.pcapng") == records


def test_a_failed_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "kept.pcap"
    write_pcap(path, [PcapRecord(1, FRAME_A)])
    before = path.read_bytes()
    with pytest.raises(UsageError, match="PcapRecord"):
        write_pcap(path, [PcapRecord(2, FRAME_B), "not a record"])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="PcapRecord"):
        write_pcapng(path, [Interface("x", ["not a record"])])  # type: ignore[list-item]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pcap"]


@pytest.mark.interop
def test_tshark_reads_our_pcapng_interfaces_comments_and_nanoseconds(
    tmp_path: Path, tshark: str
) -> None:
    path = tmp_path / "link.pcapng"
    write_pcapng(path, _two_directions())
    out = subprocess.run(
        [
            tshark,
            "-n",
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.comment",
            "-e",
            "frame.len",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    rows = [line.split("\t") for line in out]
    assert [r[0] for r in rows] == ["nic-to-agent", "agent-to-nic", "agent-to-nic", "nic-to-agent"]
    assert rows[0][1].endswith("0.000000005") and rows[3][1].endswith("4.294967303")
    assert [r[2] for r in rows] == [f"frame of {n} bytes" for n in (len(FRAME_A), 100, 3, 1024)]


def test_the_longest_record_written_is_read_back_and_a_longer_one_refused_quietly(
    tmp_path: Path,
) -> None:
    longest = bytes(range(256)) * 1023 + bytes(252)  # 262140 bytes: 4 x 65535
    for name in ("max.pcap", "max.pcapng"):
        write_pcap(tmp_path / name, [PcapRecord(1, longest)])
        assert read_pcap(tmp_path / name) == [PcapRecord(1, longest)]
    with pytest.raises(UsageError, match="262141 bytes is longer than the 262140-byte limit"):
        write_pcap(tmp_path / "over.pcap", [PcapRecord(1, longest + b"x")])
    foreign = tmp_path / "foreign.pcap"
    foreign.write_bytes(GLOBAL_HEADER_US + _record_bytes(1, 0, bytes(262144)))
    with pytest.raises(UsageError, match="record 1 holds 262144 bytes, more than the 262140"):
        read_pcap(foreign)
    # the command says it in one line: scapy's "packet has been truncated" stays off stderr
    command = [sys.executable, "-c", "from ipsec_offload.cli.main import main; main()"]
    command += ["agent", "--host-in", str(foreign), "--host-out", str(tmp_path / "h.pcap")]
    command += ["--wire-out", str(tmp_path / "w.pcap")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr == (
        f"Error: {foreign}: record 1 holds 262144 bytes, more than the 262140"
        " this tool reads of a record\n"
    )
