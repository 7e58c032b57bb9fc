"""`ipsec-offload compare`, the scoreboard of a bench (docs/bench.md, sim/scoreboard.py).

- The golden model's outputs compared with the run it replays: equal, exit 0.
- One error planted in each field class is named, with both values: Ethernet, a VLAN ID,
  the metadata word, config header fields and a TLV, IPv4 lengths and checksum, ESP SPI,
  sequence number, IV, ciphertext and ICV, and with the keys the decryption, the trailer and a
  plaintext byte. Frames that do not parse are findings, never tracebacks.
- Missing, extra and reordered frames; timestamps only with --timestamps; --run.
- --json keys; usage errors exit 2 with one line naming the file.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.cli.main import main
from ipsec_offload.crypto.esp import explicit_iv
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.errors import UsageError
from ipsec_offload.sim.espsa import format_esp_sa, parse_esp_sa, read_esp_sa
from ipsec_offload.sim.pcap import PcapRecord, read_pcap, write_pcap
from ipsec_offload.sim.report import write_outputs
from ipsec_offload.sim.runner import prepare
from ipsec_offload.sim.scenario import builtin_scenario
from ipsec_offload.sim.scoreboard import (
    EspKeys,
    FindingKind,
    MetaLayout,
    align,
    compare,
    decode_frame,
)
from ipsec_offload.wire.ethernet import (
    EthernetHeader,
    EtherType,
    VlanTag,
    build_ethernet,
    ethernet_fields,
    parse_ethernet,
)
from ipsec_offload.wire.packet import find_esp

NIC, WIRE = "agent-to-nic.pcap", "agent-to-wire.pcap"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ipsec-offload run basic --out DIR`'s files, and the golden model's replay of them
    (EXP/agent-to-nic.pcap, EXP/agent-to-wire.pcap) beside them."""
    run = prepare(*builtin_scenario("basic"))
    run.run()
    out = tmp_path_factory.mktemp("basic")
    write_outputs(run.bed, out, {})
    exp = out / "EXP"
    exp.mkdir()
    result = cli(
        "agent",
        "--host-in",
        out / "nic-to-agent.pcap",
        "--wire-in",
        out / "wire-to-agent.pcap",
        "--host-out",
        exp / NIC,
        "--wire-out",
        exp / WIRE,
        "--boot-id",
        run.bed.agent.config.boot_id,
        "--pf-mac",
        (run.bed.agent.config.pf_mac or b"").hex(":"),
    )
    assert result.exit_code == 0, result.output
    (out / "boot_id").write_text(str(run.bed.agent.config.boot_id))
    return out


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def records(run_dir: Path, name: str) -> list[PcapRecord]:
    return read_pcap(run_dir / name)


def l3(frame: bytes) -> int:
    """Where the EtherType's payload starts (after the metadata and VLAN tags)."""
    return ethernet_fields(frame)[5]


def first(recs: list[PcapRecord], test: Callable[[bytes], bool]) -> int:
    return next(i for i, r in enumerate(recs) if test(r.frame))


def is_wire_esp4(frame: bytes) -> bool:
    esp = find_esp(frame)
    return esp is not None and len(esp.dst) == 4 and esp.eth.metadata is None


def is_config(opcode: int) -> Callable[[bytes], bool]:
    def test(frame: bytes) -> bool:
        eth = parse_ethernet(frame)
        return eth.ethertype == EtherType.CONFIG and frame[l3(frame) + 1] == opcode

    return test


def is_rx_ok(frame: bytes) -> bool:
    return parse_ethernet(frame).metadata == 0x8000_0002 and find_esp(frame) is not None


def flip(offset: Callable[[bytes], int], mask: int = 0x01) -> Callable[[bytes], bytes]:
    def mutate(frame: bytes) -> bytes:
        out = bytearray(frame)
        out[offset(frame)] ^= mask
        return bytes(out)

    return mutate


def replaced(recs: list[PcapRecord], index: int, frame: bytes) -> list[PcapRecord]:
    out = list(recs)
    out[index] = PcapRecord(out[index].time_ns, frame)
    return out


def compare_json(tmp_path: Path, exp: list[PcapRecord], act: list[PcapRecord], *extra: object):
    e, a = tmp_path / "exp.pcap", tmp_path / "act.pcap"
    write_pcap(e, exp)
    write_pcap(a, act)
    result = cli("compare", "--json", *extra, e, a)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def only_finding(document: dict[str, Any]) -> dict[str, Any]:
    (comparison,) = document["comparisons"]
    assert comparison["findings_total"] == 1, comparison
    (finding,) = comparison["findings"]
    return finding


def fields_of(finding: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {diff["field"]: diff for diff in finding["fields"]}


# -- equal ------------------------------------------------------------------------------------


def test_the_golden_model_matches_the_run_it_replays(run_dir: Path) -> None:
    result = cli("compare", "--run", run_dir / "EXP", run_dir, "--esp-sa", run_dir / "esp_sa")
    assert result.exit_code == 0, result.output
    assert "agent-to-nic: EQUAL" in result.output
    assert "agent-to-wire: EQUAL" in result.output
    nic = len(records(run_dir, NIC))
    assert f"equal {nic}, mismatched 0, missing 0, extra 0, reordered 0" in result.output


def test_identical_files_exit_0(run_dir: Path) -> None:
    result = cli("compare", run_dir / WIRE, run_dir / WIRE)
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("EQUAL: 1 of 1 compared")


# -- one planted error per field class ----------------------------------------------------

Plant = tuple[str, Callable[[bytes], bool], Callable[[bytes], bytes], str, str, str]

PLANTS: dict[str, Plant] = {
    # name: (file, which frame, mutation, field, expected value, actual value)
    "eth dst": (
        WIRE,
        is_wire_esp4,
        flip(lambda f: 0),
        "eth.dst",
        "02:00:00:00:02:00",
        "03:00:00:00:02:00",
    ),
    "meta sa_index": (NIC, is_rx_ok, flip(lambda f: 17, 0x03), "meta.sa_index", "2", "1"),
    "config opcode": (
        NIC,
        is_config(0x81),
        flip(lambda f: l3(f) + 1, 0x03),
        "config.opcode",
        "ADD_SA reply (0x81)",
        "REMOVE_SA reply (0x82)",
    ),
    "config txn_id": (
        NIC,
        is_config(0x81),
        flip(lambda f: l3(f) + 9, 0x40),
        "config.txn_id",
        "2",
        "66",
    ),
    "config status": (
        NIC,
        is_config(0x81),
        flip(lambda f: l3(f) + 2, 0x04),
        "config.status",
        "OK (0)",
        "EXISTS (4)",
    ),
    "config TLV": (
        NIC,
        is_config(0x81),
        flip(lambda f: l3(f) + 12 + 4 + 3, 0x10),
        "config.tlv.SA_INDEX",
        "1",
        "17",
    ),
    "config CAPS TLV": (
        NIC,
        is_config(0x87),
        flip(lambda f: l3(f) + 12 + 4 + 5, 0x01),
        "config.tlv.CAPS",
        "algorithms AES_GCM_128,AES_GCM_256 sad_size 4096 window 4096",
        "algorithms AES_GCM_128,AES_GCM_256 sad_size 4352 window 4096",
    ),
    "ip checksum": (
        WIRE,
        is_wire_esp4,
        flip(lambda f: l3(f) + 11),
        "ipv4.checksum",
        "0xb60f (correct)",
        "0xb60e (wrong, should be 0xb60f)",
    ),
    "ip ttl": (WIRE, is_wire_esp4, flip(lambda f: l3(f) + 8, 0x80), "ipv4.ttl", "64", "192"),
    "esp spi": (
        WIRE,
        is_wire_esp4,
        flip(lambda f: l3(f) + 20 + 3, 0x04),
        "esp.spi",
        "0x00001001",
        "0x00001005",
    ),
    "esp seq": (WIRE, is_wire_esp4, flip(lambda f: l3(f) + 24 + 3, 0x02), "esp.seq", "1", "3"),
    "esp iv": (
        WIRE,
        is_wire_esp4,
        flip(lambda f: l3(f) + 28 + 7, 0x01),
        "esp.iv",
        "0x0000000000000001",
        "0x0000000000000000",
    ),
}


@pytest.mark.parametrize("plant", PLANTS, ids=list(PLANTS))
def test_a_planted_field_is_named_with_both_values(
    run_dir: Path, tmp_path: Path, plant: str
) -> None:
    name, which, mutate, field, expected, actual = PLANTS[plant]
    exp = records(run_dir, name)
    index = first(exp, which)
    code, document = compare_json(tmp_path, exp, replaced(exp, index, mutate(exp[index].frame)))
    assert code == 1
    finding = only_finding(document)
    assert finding["kind"] == "mismatched"
    assert finding["expected_frame"] == finding["actual_frame"] == index + 1
    diff = fields_of(finding)[field]
    assert (diff["expected"], diff["actual"]) == (expected, actual)


def test_a_vlan_id(run_dir: Path, tmp_path: Path) -> None:
    """Frames with a VLAN tag built with the project's builder; the RTL's has another VID."""
    exp = records(run_dir, WIRE)
    frame = exp[0].frame
    eth = parse_ethernet(frame)
    rest = frame[l3(frame) :]

    def tagged(vid: int) -> bytes:
        vlans = (VlanTag(EtherType.QINQ, 0x2000 | 100), VlanTag(EtherType.VLAN, vid))
        return build_ethernet(EthernetHeader(eth.dst, eth.src, eth.ethertype, vlans)) + rest

    code, document = compare_json(
        tmp_path, replaced(exp, 0, tagged(10)), replaced(exp, 0, tagged(11))
    )
    assert code == 1
    assert fields_of(only_finding(document)) == {
        "eth.vlan[1].vid": {
            "field": "eth.vlan[1].vid",
            "expected": "10",
            "actual": "11",
            "offset": None,
        }
    }


def test_ip_total_length(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    index = first(exp, is_wire_esp4)
    frame = bytearray(exp[index].frame)
    at = l3(frame) + 2
    frame[at : at + 2] = (int.from_bytes(frame[at : at + 2], "big") - 4).to_bytes(2, "big")
    code, document = compare_json(tmp_path, exp, replaced(exp, index, bytes(frame)))
    assert code == 1
    fields = fields_of(only_finding(document))
    assert (fields["ipv4.total_length"]["expected"], fields["ipv4.total_length"]["actual"]) == (
        "184",
        "180",
    )
    assert "wrong" in fields["ipv4.checksum"]["actual"]
    # the last 4 bytes of the ICV are now Ethernet padding
    assert fields["esp.icv"]["offset"] == 0
    assert fields["eth.padding"]["expected"] == "(absent)"


def test_ciphertext_and_icv_bytes_by_offset(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    index = first(exp, is_wire_esp4)
    frame = exp[index].frame
    start = l3(frame) + 20 + 16  # ESP header and IV
    act = replaced(exp, index, flip(lambda f: start + 37)(frame))
    act = replaced(act, index + 4, flip(lambda f: len(f) - 2, 0xFF)(exp[index + 4].frame))
    code, document = compare_json(tmp_path, exp, act)
    assert code == 1
    cipher, icv = document["comparisons"][0]["findings"]
    diff = fields_of(cipher)["esp.ciphertext"]
    assert list(fields_of(cipher)) == ["esp.ciphertext"]
    assert diff["offset"] == 37
    assert diff["expected"].startswith("132 bytes, [37:] " + frame[start + 37 : start + 45].hex())
    assert list(fields_of(icv)) == ["esp.icv"]
    assert fields_of(icv)["esp.icv"]["offset"] == 14


# -- with the keys: decryption, trailer, plaintext -------------------------------------------


def resealed(run_dir: Path, frame: bytes, change: Callable[[bytearray], None]) -> bytes:
    """`frame` encrypted again after `change` edits its plaintext (payload and trailer)."""
    esp = find_esp(frame)
    assert esp is not None
    (entry,) = (e for e in read_esp_sa(run_dir / "esp_sa") if e.spi == esp.spi)
    aead = EspAead(entry.algorithm, entry.key_material)
    iv = explicit_iv(esp.iv)
    plaintext = bytearray(aead.open(esp.spi, esp.seq, entry.esn, iv, esp.sealed))
    change(plaintext)
    sealed = aead.seal(esp.spi, esp.seq, entry.esn, iv, bytes(plaintext))
    start = frame.index(esp.sealed)
    return frame[:start] + sealed + frame[start + len(sealed) :]


def keyed(run_dir: Path, tmp_path: Path, act_frame: bytes, index: int) -> dict[str, Any]:
    exp = records(run_dir, WIRE)
    code, document = compare_json(
        tmp_path, exp, replaced(exp, index, act_frame), "--esp-sa", run_dir / "esp_sa"
    )
    assert code == 1
    return fields_of(only_finding(document))


def test_with_keys_a_frame_that_does_not_decrypt(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    index = first(exp, is_wire_esp4)
    fields = keyed(run_dir, tmp_path, flip(lambda f: l3(f) + 40)(exp[index].frame), index)
    assert fields["esp.decrypt"]["expected"] == "ok"
    assert fields["esp.decrypt"]["actual"] == "ICV does not verify"
    # that one field says it: what only the expected frame shows is left out
    assert list(fields) == ["esp.ciphertext", "esp.decrypt"]


def test_with_keys_a_trailer_field(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    index = first(exp, is_wire_esp4)

    def next_header_59(plaintext: bytearray) -> None:
        plaintext[-1] = 59

    fields = keyed(run_dir, tmp_path, resealed(run_dir, exp[index].frame, next_header_59), index)
    assert (fields["esp.next_header"]["expected"], fields["esp.next_header"]["actual"]) == (
        "UDP (17)",
        "NONE (59)",
    )
    assert "esp.decrypt" not in fields  # both decrypt
    assert fields["esp.inner.udp.src_port"]["actual"] == "(absent)"


def test_with_keys_the_padding(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    index = first(exp, is_wire_esp4)

    def pad_byte(plaintext: bytearray) -> None:
        plaintext[-3] = 7  # the last pad byte (pad length 2: 01 02)

    fields = keyed(run_dir, tmp_path, resealed(run_dir, exp[index].frame, pad_byte), index)
    assert fields["esp.trailer"] == {
        "field": "esp.trailer",
        "expected": "valid",
        "actual": "invalid: pad byte 2 is 7, not 2",
        "offset": None,
    }
    assert fields["esp.padding"]["expected"] == "0102 (2 bytes)"
    assert fields["esp.padding"]["actual"] == "0107 (2 bytes)"
    assert fields["esp.padding"]["offset"] == 1


def test_with_keys_a_plaintext_byte(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    index = first(exp, is_wire_esp4)

    def payload_byte(plaintext: bytearray) -> None:
        plaintext[8 + 50] ^= 0x20  # after the 8-byte UDP header

    fields = keyed(run_dir, tmp_path, resealed(run_dir, exp[index].frame, payload_byte), index)
    assert fields["esp.inner.payload"]["offset"] == 50
    assert fields["esp.inner.udp.checksum"]["actual"].endswith("(wrong)")
    assert fields["esp.inner.udp.checksum"]["expected"].endswith("(correct)")
    assert {"esp.ciphertext", "esp.icv"} < set(fields)


def test_with_keys_ipv6_tunnel_with_esn(run_dir: Path, tmp_path: Path) -> None:
    """SPI 0x1003 is AES-GCM-256 with ESN (its high sequence bits come from the IV) and
    carries an inner IPv6 packet: a planted inner hop limit is named."""
    exp = records(run_dir, WIRE)
    index = first(exp, lambda f: (e := find_esp(f)) is not None and e.spi == 0x1003)

    def hop_limit(plaintext: bytearray) -> None:
        plaintext[7] = 1

    fields = keyed(run_dir, tmp_path, resealed(run_dir, exp[index].frame, hop_limit), index)
    assert (
        fields["esp.inner.ipv6.hop_limit"]["expected"],
        fields["esp.inner.ipv6.hop_limit"]["actual"],
    ) == ("64", "1")


def test_without_a_key_for_the_spi(run_dir: Path) -> None:
    frame = records(run_dir, WIRE)[0].frame
    decoded = decode_frame(frame, keys=None)
    assert "esp.decrypt" not in decoded.fields
    fields = decode_frame(frame, keys=EspKeys([])).fields
    assert fields["esp.decrypt"] == "no key for SPI 0x00001001 to 192.0.2.2"


# -- frames that do not parse -----------------------------------------------------------------


def test_frames_that_do_not_parse_are_findings(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, NIC)
    config = first(exp, is_config(0x81))
    bad_tlv_length = bytearray(exp[config].frame)
    bad_tlv_length[l3(bad_tlv_length) + 11] = 200
    act = replaced(exp, 0, exp[0].frame[:10])
    act = replaced(act, config, bytes(bad_tlv_length))
    code, document = compare_json(tmp_path, exp, act)
    assert code == 1
    short, tlv = document["comparisons"][0]["findings"]
    assert fields_of(short)["eth.error"]["actual"] == (
        "does not parse: ethernet: frame of 10 bytes is shorter than 14 (at byte 10)"
    )
    assert "ethernet does not parse" in short["actual_summary"]
    assert fields_of(tlv)["config.error"]["actual"].startswith(
        "does not parse: config: tlv_length 200 exceeds"
    )

    # a layer that does not parse on one side is that one field, not all that follows it
    wire = records(run_dir, WIRE)
    longer = bytearray(wire[0].frame)
    longer[l3(longer) + 2] += 1  # total length + 256
    _, document = compare_json(tmp_path, wire, replaced(wire, 0, bytes(longer)))
    assert fields_of(only_finding(document)) == {
        "ipv4.error": {
            "field": "ipv4.error",
            "expected": "(absent)",
            "actual": "does not parse: ipv4: total length 440 outside 20..184 bytes (at byte 2)",
            "offset": None,
        }
    }


def test_bytes_no_field_covers(run_dir: Path, tmp_path: Path) -> None:
    """The config header's reserved byte has no field: the first differing byte is named."""
    exp = records(run_dir, NIC)
    index = first(exp, is_config(0x81))
    act = replaced(exp, index, flip(lambda f: l3(f) + 5)(exp[index].frame))
    _, document = compare_json(tmp_path, exp, act)
    fields = fields_of(only_finding(document))
    assert "config.error" in fields  # parse_config refuses a reserved byte that is not 0
    exp_w = records(run_dir, WIRE)
    act_w = replaced(exp_w, 0, exp_w[0].frame + b"\x00")  # one more padding byte
    _, document = compare_json(tmp_path, exp_w, act_w)
    fields = fields_of(only_finding(document))
    assert fields["eth.padding"]["expected"] == "(absent)"
    assert fields["frame.length"] == {
        "field": "frame.length",
        "expected": "198",
        "actual": "199",
        "offset": None,
    }


# -- missing, extra, reordered ----------------------------------------------------------------


def test_missing_extra_and_reordered_frames(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    act = list(exp)
    stranger = records(run_dir, NIC)[0]
    act[10], act[11] = act[11], act[10]  # reordered
    del act[20]  # missing: expected #21
    act.insert(30, stranger)  # extra: actual #31
    code, document = compare_json(tmp_path, exp, act)
    assert code == 1
    (comparison,) = document["comparisons"]
    assert comparison["counts"] == {
        "equal": len(exp) - 2,
        "mismatched": 0,
        "missing": 1,
        "extra": 1,
        "reordered": 1,
    }
    kinds = [(f["kind"], f["expected_frame"], f["actual_frame"]) for f in comparison["findings"]]
    assert kinds in (
        [("reordered", 11, 12), ("missing", 21, None), ("extra", None, 31)],
        [("reordered", 12, 11), ("missing", 21, None), ("extra", None, 31)],
    )
    extra = comparison["findings"][2]
    assert extra["summary"].startswith("Rx meta, config EVENT txn 1")


def test_a_missing_frame_among_mismatched_ones_is_paired_by_esp_keys(
    run_dir: Path, tmp_path: Path
) -> None:
    """Every frame differs (the RTL sets TTL 63) and one is missing: the others are paired with
    their own (SPI, sequence number), not shifted by one."""
    exp = [r for r in records(run_dir, WIRE) if is_wire_esp4(r.frame)][:12]
    act = [replaced([r], 0, flip(lambda f: l3(f) + 8, 0x7F)(r.frame))[0] for r in exp]
    del act[5]
    code, document = compare_json(tmp_path, exp, act, "--max", "0")
    assert code == 1
    (comparison,) = document["comparisons"]
    assert comparison["counts"]["missing"] == 1
    assert comparison["counts"]["mismatched"] == 11
    assert comparison["field_counts"] == {"ipv4.checksum": 11, "ipv4.ttl": 11}
    missing = [f for f in comparison["findings"] if f["kind"] == "missing"]
    assert [f["expected_frame"] for f in missing] == [6]


def test_timestamps_only_when_asked(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    act = list(exp)
    act[3] = PcapRecord(act[3].time_ns + 2000, act[3].frame)
    code, _ = compare_json(tmp_path, exp, act)
    assert code == 0
    code, document = compare_json(tmp_path, exp, act, "--timestamps")
    assert code == 1
    finding = only_finding(document)
    assert finding["expected_frame"] == 4
    diff = fields_of(finding)["time"]
    nanoseconds = exp[3].time_ns
    assert nanoseconds < 10**9
    assert diff["expected"] == f"0.{nanoseconds:09d} s"
    assert diff["actual"] == f"0.{nanoseconds + 2000:09d} s"


def test_run_compares_both_directions(run_dir: Path, tmp_path: Path) -> None:
    act = tmp_path / "RTL"
    act.mkdir()
    write_pcap(act / NIC, records(run_dir, NIC))
    wire = records(run_dir, WIRE)
    index = first(wire, is_wire_esp4)
    write_pcap(
        act / WIRE, replaced(wire, index, flip(lambda f: l3(f) + 24 + 3, 0x02)(wire[index].frame))
    )
    result = cli("compare", "--run", run_dir / "EXP", act)
    assert result.exit_code == 1, result.output
    assert "agent-to-nic: EQUAL" in result.output
    assert "agent-to-wire: DIFFERENT" in result.output
    assert "esp.seq  expected 1" in result.output
    assert "         actual   3" in result.output
    assert result.output.rstrip().endswith("DIFFERENT: agent-to-wire")


def test_max_limits_the_findings_described(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    act = exp[:-5]
    e, a = tmp_path / "e.pcap", tmp_path / "a.pcap"
    write_pcap(e, exp)
    write_pcap(a, act)
    result = cli("compare", "--max", "2", e, a)
    assert result.exit_code == 1
    assert result.output.count("MISSING expected #") == 2
    assert "... 3 more findings not shown (--max N, 0 for all)" in result.output
    result = cli("compare", "--max", "0", e, a)
    assert result.output.count("MISSING expected #") == 5


# -- JSON -------------------------------------------------------------------------------------


def test_json_keys(run_dir: Path, tmp_path: Path) -> None:
    exp = records(run_dir, WIRE)
    act = replaced(exp[1:], 0, flip(lambda f: 0)(exp[1].frame))
    _, document = compare_json(tmp_path, exp, act, "--max", "1")
    assert list(document) == ["format", "version", "equal", "comparisons"]
    assert (document["format"], document["version"], document["equal"]) == (
        "ipsec-offload-compare",
        1,
        False,
    )
    (comparison,) = document["comparisons"]
    assert list(comparison) == [
        "name",
        "expected",
        "actual",
        "equal",
        "counts",
        "field_counts",
        "findings",
        "findings_total",
    ]
    assert comparison["expected"] == {"file": str(tmp_path / "exp.pcap"), "frames": len(exp)}
    assert comparison["findings_total"] == 2
    assert len(comparison["findings"]) == 1
    (finding,) = comparison["findings"]
    assert list(finding) == [
        "kind",
        "expected_frame",
        "actual_frame",
        "summary",
        "actual_summary",
        "fields",
    ]
    assert finding["kind"] in {kind.name.lower() for kind in FindingKind}
    assert all(
        list(diff) == ["field", "expected", "actual", "offset"] for diff in finding["fields"]
    )


# -- usage errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "nope.pcap: cannot read pcap file: No such file or directory"),
        ("not a pcap", "text.pcap: not a pcap file"),
        ("run on files", "not a folder (--run compares"),
        ("bad esp_sa", "esp_sa: line 2: SPI 'zz' is not a hex number"),
        ("bad ethertype", "--meta-ethertype 0x12345"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    run_dir: Path, tmp_path: Path, case: str, message: str
) -> None:
    good = run_dir / WIRE
    text = tmp_path / "text.pcap"
    text.write_text("hello\n")
    bad_keys = tmp_path / "esp_sa"
    bad_keys.write_text('# comment\n"IPv4","*","192.0.2.2","zz","x","0x00","NULL",""\n')
    args: dict[str, list[object]] = {
        "missing": [tmp_path / "nope.pcap", good],
        "not a pcap": [good, text],
        "run on files": ["--run", good, good],
        "bad esp_sa": ["--esp-sa", bad_keys, good, good],
        "bad ethertype": ["--meta-ethertype", "0x12345", good, good],
    }
    result = cli("compare", *args[case])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in result.output


# -- the esp_sa reader --------------------------------------------------------------------


def test_esp_sa_round_trip(run_dir: Path) -> None:
    text = (run_dir / "esp_sa").read_text()
    entries = parse_esp_sa(text)
    assert [(e.spi, e.algorithm, e.esn) for e in entries] == [
        (0x1001, 1, False),
        (0x1002, 1, False),
        (0x1003, 2, True),
        (0x1004, 2, True),
    ]
    assert format_esp_sa(entries) == text


def test_esp_sa_errors_name_the_line() -> None:
    with pytest.raises(UsageError, match=r"^keys: line 1: encryption algorithm 'NULL'"):
        parse_esp_sa('"IPv4","*","192.0.2.2","0x1","NULL","","NULL",""\n', "keys")
    with pytest.raises(UsageError, match=r"^keys: line 1: destination address 192.0.2.2 does"):
        parse_esp_sa('"IPv6","*","192.0.2.2","0x1","NULL","","NULL",""\n', "keys")


# -- the alignment ----------------------------------------------------------------------------


@given(
    st.lists(st.integers(0, 6), max_size=40),
    st.lists(st.integers(0, 6), max_size=40),
)
def test_align_gives_a_common_subsequence(a: list[int], b: list[int]) -> None:
    pairs = align(a, b)
    assert all(a[i] == b[j] for i, j in pairs)
    assert all(i1 < i2 and j1 < j2 for (i1, j1), (i2, j2) in pairwise(pairs))
    if a == b:
        assert pairs == [(i, i) for i in range(len(a))]


def test_align_a_long_trace_with_few_edits() -> None:
    """100,000 frames, mostly distinct, some repeated, a few edits: all but the edited
    frames line up."""
    rng = random.Random(7)
    a = [i if i % 100 else -1 for i in range(100_000)]  # every 100th frame the same
    b = list(a)
    for k in sorted(rng.sample(range(1, 99_000), 20), reverse=True):
        del b[k]
    b.insert(500, 10**9)
    b[700], b[701] = b[701], b[700]
    pairs = align(a, b)
    assert len(pairs) >= len(b) - 3


def test_compare_counts_every_frame(run_dir: Path) -> None:
    """Each expected frame is equal, mismatched, missing or reordered; each actual frame equal,
    mismatched, extra or reordered."""
    exp = records(run_dir, NIC)
    rng = random.Random(3)
    act = list(exp)
    middle = act[10:20]
    rng.shuffle(middle)
    act[10:20] = middle
    del act[30:33]
    act[5] = PcapRecord(act[5].time_ns, flip(lambda f: 0)(act[5].frame))
    act.append(exp[0])
    result = compare(exp, act, detail=None)
    assert result.equal + result.mismatched + result.missing + result.reordered == len(exp)
    assert result.equal + result.mismatched + result.extra + result.reordered == len(act)
    assert result.total_findings == len(result.findings) > 0


def test_plaintext_esp_frames_of_the_host_link(run_dir: Path, tmp_path: Path) -> None:
    """Frames the agent decrypted (Rx status OK) keep ESP header, IV, plaintext and trailer
    (no ICV); frames for offload (Tx OFFLOAD) stop after the payload (wire-format.md 5): both
    are read as plaintext, without keys."""
    nic = records(run_dir, NIC)
    index = first(nic, is_rx_ok)
    rx = decode_frame(nic[index].frame, meta=MetaLayout.RX).fields
    assert (rx["esp.trailer"], rx["esp.next_header"], rx["esp.inner.udp.checksum"][-9:]) == (
        "valid",
        "UDP (17)",
        "(correct)",
    )
    assert "esp.icv" not in rx
    host_in = records(run_dir, "nic-to-agent.pcap")
    offload = first(host_in, lambda f: parse_ethernet(f).metadata == 0x8011_0E05)
    tx = decode_frame(host_in[offload].frame, meta=MetaLayout.TX).fields
    assert tx["meta.offload"] == "1" and tx["meta.next_header"] == "UDP (17)"
    assert "esp.trailer" not in tx and "esp.icv" not in tx
    assert tx["esp.inner.udp.dst_port"] == "5000"
    # a plaintext byte of a decrypted frame, named without keys
    act = replaced(nic, index, flip(lambda f: len(f) - 5)(nic[index].frame))
    _, document = compare_json(tmp_path, nic, act, "--meta", "rx")
    fields = fields_of(only_finding(document))
    assert list(fields) == ["esp.inner.udp.checksum", "esp.inner.payload"]


# -- the documented example -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_the_worked_example_of_readme_and_bench_md(run_dir: Path, tmp_path: Path) -> None:
    """README and docs/bench.md show `compare` on a run with a planted wrong IV and a lost
    frame: the same commands give the same report (file names aside)."""
    readme = (ROOT / "README.md").read_text()
    bench = (ROOT / "docs" / "bench.md").read_text()
    boot_id = (run_dir / "boot_id").read_text()
    assert f"--boot-id {boot_id} --pf-mac 02:00:00:00:01:00" in readme
    assert f"--boot-id {boot_id} --pf-mac 02:00:00:00:01:00" in bench
    rtl = tmp_path / "rtl"
    rtl.mkdir()
    write_pcap(rtl / NIC, records(run_dir, NIC))
    wire = records(run_dir, WIRE)
    frame = bytearray(wire[4].frame)
    frame[14 + 20 + 8 + 7] ^= 0x01  # as docs/bench.md plants it
    wire[4] = PcapRecord(wire[4].time_ns, bytes(frame))
    del wire[9]
    write_pcap(rtl / WIRE, wire)
    result = cli("compare", "--run", run_dir / "EXP", rtl, "--esp-sa", run_dir / "esp_sa")
    assert result.exit_code == 1
    shown = readme.split("agent-to-wire: DIFFERENT\n", 1)[1].split("```", 1)[0]
    report = result.output.split("agent-to-wire: DIFFERENT\n", 1)[1]
    lines = [
        line
        for line in shown.splitlines()
        if line and "expected/" not in line and "rtl/" not in line
    ]
    assert [line for line in report.splitlines() if line in lines] == lines
    assert shown in bench
