"""Every built-in scenario, under every `--naive` switch and none, replayed by the golden model
with the command its report.json names (`golden`), both outputs compared byte for byte.

- The command is run as report.json writes it (its paths relative to the output folder), and
  what it writes must be what the run's agent sent toward the NIC and the wire.
- A run whose agent restarted (a `restart_agent` event) is the README's exception: the golden
  agent never loses its SAD. The report names the event and how many frames of each output
  came before it; those must match, and the exception must be exactly the scenario's event.
- The options: every `AgentConfig` setting has one, an `AgentConfig` written as options reads
  back equal, and the host/driver-side switches are refused with a message that says so.
- The keys file learns each SA as it is added, never by walking the SAD (linear time).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import fields, replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.agent.sad import SecurityAssociationDatabase
from ipsec_offload.bench.traffic import SPI, config_frame, sa_request
from ipsec_offload.cli.main import main
from ipsec_offload.cli.progress import Progress
from ipsec_offload.errors import UsageError
from ipsec_offload.sim.agent_options import (
    AGENT_OPTIONS,
    NOT_OPTIONS,
    agent_argv,
    agent_config,
    covered_fields,
)
from ipsec_offload.sim.golden import replay
from ipsec_offload.sim.pcap import PcapRecord, read_pcap, write_pcap
from ipsec_offload.sim.scenario import AGENT_NAIVE, NAIVE_SWITCHES, builtin_scenario
from ipsec_offload.wire.config import Algorithm, Direction

SCENARIOS = ("default", "basic", "faults")


def comparable(records: list[PcapRecord]) -> list[tuple[int, bytes]]:
    """The records as the golden model must reproduce them: in file order, each with its
    nanosecond timestamp (the simulator and the golden model share one clock and one order
    at a tie, `sim/clock.py`)."""
    return [(r.time_ns, r.frame) for r in records]


def restart_events(scenario: str) -> list[str]:
    """The scenario fields that restart the agent: the documented exception."""
    spec, _source = builtin_scenario(scenario)
    return [f"event[{i}]" for i, e in enumerate(spec.event) if e.action == "restart_agent"]


@pytest.mark.parametrize("switch", [None, *NAIVE_SWITCHES])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_reports_command_reproduces_the_run(
    scenario: str, switch: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    naive = [] if switch is None else ["--naive", switch]
    ran = CliRunner().invoke(main, ["run", scenario, "--out", str(out), *naive])
    assert ran.exit_code == 0, ran.output
    golden = json.loads((out / "report.json").read_text())["golden"]
    argv = golden["argv"]
    assert argv[:2] == ["ipsec-offload", "agent"]
    assert shlex.split(golden["command"]) == argv
    assert golden["command"] in ran.output  # the summary tells it too
    # the run's agent-side switch is in the command as the agent's setting
    assert ("--naive" in argv) == (switch == "ivdb")
    assert ("--pf-mac" in argv) == (switch not in ("port-tag", "vf-filter"))

    monkeypatch.chdir(out)  # the command's paths are relative to the output folder
    replayed = CliRunner().invoke(main, argv[1:])
    assert replayed.exit_code == 0, replayed.output

    until = golden["until"]
    restarts = restart_events(scenario)
    if restarts:
        assert until is not None and until["event"] == restarts[0]
    else:
        assert until is None
    assert sorted(golden["reproduces"].values()) == ["agent-to-nic.pcap", "agent-to-wire.pcap"]
    for mine, theirs in golden["reproduces"].items():
        got, want = read_pcap(out / mine), read_pcap(out / theirs)
        if until is not None:
            # the frames the agent sent before it restarted, and no more
            count = until["frames"][theirs]
            assert 0 < count <= len(want)
            got, want = got[:count], want[:count]
        assert len(got) == len(want), mine
        assert comparable(got) == comparable(want), mine


def test_the_ivdb_run_needs_its_switch_in_the_command(tmp_path: Path) -> None:
    """`--naive ivdb` changes the agent: without the switch the golden agent writes its own
    sequence numbers and IVs where the stack's repeat (the TSO segments of the default
    scenario), and the wire output differs from the run's."""
    out = tmp_path / "out"
    ran = CliRunner().invoke(main, ["run", "default", "--out", str(out), "--naive", "ivdb"])
    assert ran.exit_code == 0, ran.output
    argv = json.loads((out / "report.json").read_text())["golden"]["argv"]
    at = argv.index("--naive")
    assert argv[at + 1] == "ivdb"
    values = argv_values(argv[2:at] + argv[at + 2 :])
    inputs = [read_pcap(out / values.pop(flag)[0]) for flag in ("host-in", "wire-in")]
    for flag in ("host-out", "wire-out"):
        del values[flag]
    with_switch = replay(IpsecAgent(agent_config({**values, "naive": ["ivdb"]})), *inputs)
    without = replay(IpsecAgent(agent_config(values)), *inputs)
    want = read_pcap(out / "agent-to-wire.pcap")
    assert comparable(with_switch.wire_out) == comparable(want)
    assert comparable(without.wire_out) != comparable(want)


# -- the options ------------------------------------------------------------------------------


def test_every_setting_of_the_agent_has_an_option() -> None:
    every = {f.name for f in fields(AgentConfig)}
    assert covered_fields() == every - set(NOT_OPTIONS)
    assert {o.name for o in AGENT_OPTIONS} >= {"pf-mac", "boot-id", "sad-size", "kek", "naive"}


def argv_values(argv: list[str]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for flag, text in zip(argv[::2], argv[1::2], strict=True):
        values.setdefault(flag.removeprefix("--"), []).append(text)
    return values


@pytest.mark.parametrize(
    "config",
    [
        AgentConfig(),
        AgentConfig(pf_mac=bytes.fromhex("020000000010"), boot_id=(1 << 64) - 1),
        AgentConfig(
            mac=bytes.fromhex("02000000aa01"),
            pf_mac=bytes.fromhex("020000000010"),
            sad_size=7,
            max_replay_window=1 << 31,
            default_replay_window=0,
            ports=256,
            hairpin_size=0,
            txn_memory=1,
            meta_ethertype=0x9000,
            config_ethertype=0x9001,
            keks={7: bytes(range(16)), 0xFFFFFFFF: bytes(32)},
            ivdb=False,
            boot_id=0,
            event_slots=3,
        ),
    ],
    ids=["default", "pf-and-boot-id", "every-setting"],
)
def test_a_configuration_written_as_options_reads_back_equal(config: AgentConfig) -> None:
    argv = agent_argv(config)
    assert agent_config(argv_values(argv)) == config
    # and the command line takes them so
    assert agent_config(argv_values(agent_argv(replace(config, fast_path=False)))) == config


def test_each_agent_side_switch_is_its_run_setting() -> None:
    """`--naive` gives the fields the runner sets for the same switch (AGENT_NAIVE)."""
    for switch, settings in AGENT_NAIVE.items():
        config = agent_config({"naive": [switch]})
        assert {k: getattr(config, k) for k in settings} == settings
    assert agent_argv(agent_config({"naive": ["ivdb"]})) == ["--naive", "ivdb"]
    # port-tag and vf-filter give no PF MAC: the golden model's default already
    assert agent_argv(agent_config({"naive": ["port-tag", "vf-filter"]})) == []


@pytest.mark.parametrize("switch", [s for s in NAIVE_SWITCHES if s not in AGENT_NAIVE])
def test_a_host_side_switch_is_refused_with_why(switch: str, tmp_path: Path) -> None:
    pcap = tmp_path / "in.pcap"
    write_pcap(pcap, [])
    result = CliRunner().invoke(
        main,
        [
            *("agent", "--host-in", str(pcap), "--host-out", str(tmp_path / "h")),
            *("--wire-out", str(tmp_path / "w"), "--naive", switch),
        ],
    )
    assert result.exit_code != 0
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    assert f"--naive {switch}" in line
    assert "host/driver-side" in line and "does not change the agent's output" in line
    assert not (tmp_path / "h").exists()


def test_contradicting_options_are_one_clean_error() -> None:
    with pytest.raises(UsageError, match="--pf-mac 02:00:00:00:00:10 and --naive port-tag"):
        agent_config({"pf-mac": ["02:00:00:00:00:10"], "naive": ["port-tag"]})
    with pytest.raises(UsageError, match="--sad-size 0: give 1 "):
        agent_config({"sad-size": ["0"]})
    with pytest.raises(UsageError, match="--meta-ethertype 'x'"):
        agent_config({"meta-ethertype": ["x"]})
    with pytest.raises(UsageError, match="default_replay_window"):
        agent_config({"default-replay-window": ["100"], "max-replay-window": ["10"]})


# -- linear time and progress -------------------------------------------------------------


def add_sa_records(agent: IpsecAgent, n: int) -> list[PcapRecord]:
    return [
        PcapRecord(
            i * 1000,
            config_frame(agent, sa_request(Direction.OUTBOUND, Algorithm.AES_GCM_128, SPI + i), i),
        )
        for i in range(1, n + 1)
    ]


def test_the_keys_are_learned_without_walking_the_sad(monkeypatch: pytest.MonkeyPatch) -> None:
    """Walking the SAD after every config request made n ADD_SA cost n^2 (41 s at 5,000)."""
    agent = IpsecAgent(AgentConfig(sad_size=100))
    records = add_sa_records(agent, 100)

    def walked(_sad: SecurityAssociationDatabase) -> None:
        raise AssertionError("the golden model walked the SAD")

    monkeypatch.setattr(SecurityAssociationDatabase, "__iter__", walked)
    fractions: list[float] = []
    monkeypatch.setattr("ipsec_offload.sim.golden.PROGRESS_EVERY", 16)
    result = replay(agent, records, [], fractions.append)
    assert [sa.spi for sa in result.sas] == [SPI + i for i in range(1, 101)]
    assert agent.channel.on_add is None  # the hook is the caller's again
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len(fractions) == 100 // 16 + 2


def test_the_agent_command_shows_progress_on_a_long_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pcap = tmp_path / "in.pcap"
    write_pcap(pcap, add_sa_records(IpsecAgent(), 20))
    args = ["agent", "--host-in", str(pcap), "--host-out", str(tmp_path / "h.pcap")]
    args += ["--wire-out", str(tmp_path / "w.pcap")]
    quick = CliRunner().invoke(main, args)
    assert quick.exit_code == 0, quick.output
    assert "replaying" not in quick.stderr  # a quick one shows none
    monkeypatch.setattr(Progress, "DELAY", 0.0)
    slow = CliRunner().invoke(main, args)
    assert slow.exit_code == 0, slow.output
    assert "replaying" in slow.stderr
    assert "replaying" not in slow.stdout
