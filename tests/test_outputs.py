"""A command's outputs: checked together before anything is computed, each written whole or
not at all, never over an input, a device or another output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsec_offload.cli.main import main
from ipsec_offload.errors import UsageError
from ipsec_offload.sim.outputs import check_outputs, replacing, write_text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    result = CliRunner().invoke(main, ["run", "basic", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def agent(run_dir: Path, *args: str) -> tuple[int, str]:
    base = ["agent", "--host-in", str(run_dir / "nic-to-agent.pcap")]
    base += ["--wire-in", str(run_dir / "wire-to-agent.pcap")]
    result = CliRunner().invoke(main, [*base, *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (("--host-out", "HO.pcap", "--wire-out", "nodir/WO.pcap"), "the folder"),
        (("--host-out", "HO.pcap", "--wire-out", "WO.pcap", "--esp-sa", "nodir/k"), "the folder"),
        (("--host-out", "X.pcap", "--wire-out", "X.pcap"), "is the output --host-out too"),
        (("--host-out", "H.pcap", "--wire-out", "W.pcap", "--esp-sa", "W.pcap"), "output"),
        (("--host-out", "fifo", "--wire-out", "W.pcap"), "not a regular file"),
    ],
)
def test_agent_outputs_that_cannot_all_be_written_write_none(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    outputs: tuple[str, ...],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    os.mkfifo("fifo")
    code, output = agent(run_dir, *outputs)
    assert code == 1
    assert output.startswith("Error: --") and message in output and output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_an_output_over_an_input_is_refused_and_the_input_kept(run_dir: Path) -> None:
    before = (run_dir / "nic-to-agent.pcap").read_bytes()
    code, output = agent(
        run_dir, "--host-out", str(run_dir / "nic-to-agent.pcap"), "--wire-out", "/tmp/x.pcap"
    )
    assert code == 1 and "is the input --host-in too" in output
    assert (run_dir / "nic-to-agent.pcap").read_bytes() == before


def test_check_outputs_names_the_option_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--a .*: the folder .* does not exist$"):
        check_outputs({}, {"--a": tmp_path / "no" / "f"})
    with pytest.raises(UsageError, match=r"^--a .*: is a folder; give a file name$"):
        check_outputs({}, {"--a": tmp_path})
    check_outputs({"--in": tmp_path / "i"}, {"--a": tmp_path / "a", "--b": None})


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "kept.txt"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError), replacing(path) as temporary:
        Path(temporary).write_text("half")
        raise RuntimeError("the disk is full")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]
