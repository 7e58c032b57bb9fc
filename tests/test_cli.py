"""`ipsec-offload run`: the default scenario from the command line (README, "Using the
command line"): its summary, the files it writes, report.json, and determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ipsec_offload.cli.main import main
from ipsec_offload.sim.pcap import read_pcap

README = Path(__file__).resolve().parent.parent / "README.md"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", *args])


def readme_outputs() -> list[str]:
    """The file names in README's table of what `run` writes to DIR."""
    lines = README.read_text().splitlines()
    start = lines.index("| file | what |")
    names: list[str] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        first_column = line.split("|")[1]
        names += re.findall(r"`([^`]+)`", first_column)
    return names


def summary_rows(output: str) -> dict[str, list[str]]:
    """The 'Configured SAs' table of the summary: SA name -> its columns."""
    rows = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 7 and "/" in fields[0]:
            rows[fields[0]] = fields[1:]
    return rows


def test_run_writes_the_documented_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.exception is None

    # the summary names each SA with where it runs and the xdo_dev_state_add result
    rows = summary_rows(result.output)
    assert rows == {
        "ipv4-transport/out": ["0x00001001", "AES_GCM_128", "TRANSPORT", "DEVICE", "0", "25"],
        "ipv4-transport/in": ["0x00001002", "AES_GCM_128", "TRANSPORT", "DEVICE", "0", "25"],
        "ipv6-tunnel/out": ["0x00001003", "AES_GCM_256", "TUNNEL", "DEVICE", "0", "15"],
        "ipv6-tunnel/in": ["0x00001004", "AES_GCM_256", "TUNNEL", "SOFTWARE", "-95", "15"],
    }
    assert "Agent SAD: 3 of 4096 entries" in result.output
    assert "Agent drops by reason: none" in result.output
    assert str(out) in result.output

    names = readme_outputs()
    assert len(names) == 9
    assert {"host-link.pcap", "wire-link.pcap", "esp_sa", "report.json"} <= set(names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        if name.endswith(".pcap"):
            # The default run's port is in VEB mode: nothing is turned around.
            assert bool(read_pcap(out / name)) == (name != "agent-hairpin.pcap"), name
    link = {
        name: len(read_pcap(out / f"{name}.pcap"))
        for name in ("nic-to-agent", "agent-to-nic", "wire-to-agent", "agent-to-wire")
    }
    assert len(read_pcap(out / "host-link.pcap")) == link["nic-to-agent"] + link["agent-to-nic"]
    assert len(read_pcap(out / "wire-link.pcap")) == link["wire-to-agent"] + link["agent-to-wire"]

    report = json.loads((out / "report.json").read_text())
    counters = report["agent"]["counters"]
    # the host sends 20 + 5 (IPv4) and 10 + 5 (IPv6 echo replies) frames over offloaded SAs
    assert counters["paths"]["TX_ENCRYPTED"] == 40 == link["agent-to-wire"]
    assert counters["paths"]["RX_ESP"] == 40 == link["wire-to-agent"]
    # IPv4 inbound is offloaded (20 datagrams + 5 echo replies); IPv6 inbound is software
    assert counters["rx_status"]["OK"] == 25
    assert counters["rx_status"]["NO_SA"] == 15
    assert sum(counters["rx_status"].values()) == 40
    assert not any(counters["drops"].values())
    assert counters["paths"]["CONFIG_REQUEST"] == 4  # GET_CAPS and three ADD_SA
    assert report["agent"]["sad_used"] == 3
    assert [sa["packets"] for sa in report["agent"]["sas"]] == [25, 25, 15]
    assert report["delivered"] == {"host": 40, "peer": 40}
    assert report["delivered_offloaded"] == {"host": 25, "peer": 0}
    assert [(sa["name"], sa["offload"], sa["add_rc"]) for sa in report["sas"]] == [
        ("ipv4-transport/out", "DEVICE", 0),
        ("ipv4-transport/in", "DEVICE", 0),
        ("ipv6-tunnel/out", "DEVICE", 0),
        ("ipv6-tunnel/in", "SOFTWARE", -95),
    ]


def test_run_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        result = run("--out", str(out))
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert sum(name.endswith(".pcap") for name in names) == 7
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # and again into the same folder: the captures and keys are rewritten identically
    result = run("--out", str(first))
    assert result.exit_code == 0, result.output
    for name in names:
        if name.endswith(".pcap") or name == "esp_sa":
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_run_defaults_to_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run()
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "wire-link.pcap").is_file()
    assert (tmp_path / "out" / "report.json").is_file()


def test_run_into_a_file_is_a_clean_error(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("a file, not a folder\n")
    result = run("--out", str(occupied))
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert str(occupied) in result.output


def test_run_into_an_impossible_folder_is_a_clean_error(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("a file, not a folder\n")
    target = occupied / "out"
    result = run("--out", str(target))
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert str(target) in result.output
