"""Scenario files: the built-ins validate, and every malformed file gets one clear error
naming the file, the place and what is wrong, and nothing runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsec_offload.agent.fastpath import FAST_PATH_BUILT
from ipsec_offload.cli.main import main
from ipsec_offload.errors import ScenarioError
from ipsec_offload.sim.runner import prepare
from ipsec_offload.sim.scenario import BUILTIN, builtin_scenario, load_scenario, parse_scenario
from tools import require_built

GOOD = """
[pf]
name = "host"
mac = "02:00:00:00:00:10"
ipv4 = "10.0.0.1"

[[vm]]
name = "vm1"
vf = 0
mac = "02:00:00:00:01:01"
ipv4 = "10.0.0.11"
vlans = [10]

[[peer]]
name = "peer"
mac = "02:00:00:00:00:20"
ipv4 = "10.0.0.2"

[[sa]]
name = "host-peer"
between = ["host", "peer"]

[[flow]]
from = "host"
to = "peer"
count = 3
"""


def test_the_good_file_and_the_builtins_validate() -> None:
    scenario = parse_scenario(GOOD, "good.toml")
    assert scenario.vm[0].vlans[0].vid == 10 and scenario.vm[0].vlans[0].tpid == 0x8100
    for name in BUILTIN:
        spec, source = builtin_scenario(name)
        run = prepare(spec, source)
        run.run()
        assert run.bed.now > 0


BAD = [
    # (what to change in GOOD, where the error must point, words of the message)
    ("count = 3", 'count = "three"', "flow[0].count", "integer"),
    ('ipv4 = "10.0.0.1"', 'ipv4 = "10.0.0.1"\ncolour = "blue"', "pf.colour", "unknown key"),
    (
        'name = "host-peer"\nbetween = ["host", "peer"]',
        'name = "x"\nbetween = ["host", "vm1"]',
        "flow[0]",
        "no SA between host and peer",
    ),
    ("vlans = [10]", "vlans = [4095]", "vm[0].vlans[0].vid", "4094"),
    ('mac = "02:00:00:00:00:20"', 'mac = "02:00:00:00:01:01"', "peer[0].mac", "vm1's MAC"),
    ('ipv4 = "10.0.0.11"', 'ipv4 = "10.0.0.300"', "vm[0].ipv4", "not an IPv4 address"),
    ('to = "peer"', 'to = "nobody"', "flow[0].to", "no host named 'nobody'"),
    ("vf = 0", "vf = -1", "vm[0].vf", "greater than or equal to 0"),
    ('mac = "02:00:00:00:00:10"', 'mac = "01:00:5e:00:00:01"', "pf.mac", "multicast"),
    ("count = 3", 'count = 3\nprotocol = "sctp"', "flow[0].protocol", "'udp', 'tcp' or 'icmp'"),
    ("vlans = [10]", "vlans = [10, 20, 30]", "vm[0].vlans", "at most 2"),
    (
        "[[sa]]",
        '[[event]]\nat = 0.1\naction = "destroy_vm"\ntarget = "peer"\n\n[[sa]]',
        "event[0].target",
        "needs a VM",
    ),
    ('ipv4 = "10.0.0.2"', 'ipv6 = "2001:db8::2"', "sa[0].family", "peer has no IPv4"),
    ("[pf]", "[pff]", "pff", "unknown key"),
    (
        "[[sa]]",
        '[[event]]\nat = 0.1\naction = "replay_wire"\ntarget = "peer"\n\n[[sa]]',
        "event[0].target",
        "the PF's or a VM's name",
    ),
    (
        "[[sa]]",
        '[[event]]\nat = 0.1\naction = "reset_pf"\nopcode = "add_sa"\n\n[[sa]]',
        "event[0].opcode",
        "only lose_config and lose_replies",
    ),
    (
        "[[sa]]",
        '[[event]]\nat = 0.1\naction = "lose_config"\nopcode = "add_sas"\n\n[[sa]]',
        "event[0].opcode",
        "'add_sa'",
    ),
    ("[pf]", '[port]\npf_mac = "02:00:00:00:00"\n\n[pf]', "port.pf_mac", "not a MAC"),
]


@pytest.mark.parametrize(("old", "new", "where", "what"), BAD)
def test_malformed_scenario_names_the_place(
    tmp_path: Path, old: str, new: str, where: str, what: str
) -> None:
    assert old in GOOD
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.source == str(path)
    assert caught.value.where == where
    assert what in caught.value.what
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"Error: {path}: {where}: " in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[pf\nname = 1")
    with pytest.raises(ScenarioError, match="TOML"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="No such file"):
        load_scenario(tmp_path / "absent.toml")
    result = CliRunner().invoke(main, ["run", "nonexistent-scenario"])
    assert result.exit_code == 1
    assert "nor a built-in (default, basic, faults)" in result.output


def test_a_vm_booting_on_a_busy_vf_is_a_scenario_error() -> None:
    text = (
        GOOD
        + """
[[vm]]
name = "vm1b"
vf = 0
mac = "02:00:00:00:01:01"
ipv4 = "10.0.0.12"
vlans = [10]
start = 0.001
"""
    )
    scenario = parse_scenario(text, "busy.toml")
    run = prepare(scenario, "busy.toml")
    with pytest.raises(ScenarioError, match=r"busy.toml: vm\[1\].start: VF 0 has a VM already"):
        run.run()


# -- hostile files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (GOOD.encode("utf-16"), "not UTF-8 text at byte 0 (it looks like UTF-16)"),
        (GOOD.replace("host", "hôst").encode("latin-1"), "not UTF-8 text at byte"),
        (b"a = 1\n\x00\x01\x02", "holds NUL bytes"),
        (("a = " + "[" * 5000 + "]" * 5000).encode(), "nested too deep"),
        (b"#" * (1 << 20) + b"\n", "larger than 1048576 bytes"),
    ],
    ids=["utf-16", "latin-1", "binary", "deep", "huge"],
)
def test_a_hostile_file_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {path}: ")
    assert message in result.output and result.output.count("\n") == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        ("count = 3", "count = true", "flow[0].count", "valid integer"),
        ("count = 3", "count = 3\nstart = 1e300", "flow[0].start", "less than or equal to 3600"),
        ("count = 3", "count = 1000000\nrate = 1.0", "flow[0]", "after the 3600 s"),
        ("vf = 0", "vf = 0.0", "vm[0].vf", "valid integer"),
        ('"peer"]', '"peer"]\nesn = 1', "sa[0].esn", "valid boolean"),
        ('ipv4 = "10.0.0.2"', 'ipv4 = "10.0.0.1"', "peer[0].ipv4", "is host's address too"),
        ('mac = "02:00:00:00:00:20"', 'mac = "ff:ff:ff:ff:ff:ff"', "peer[0].mac", "multicast"),
    ],
)
def test_values_of_the_wrong_type_or_out_of_time_name_their_field(
    old: str, new: str, where: str, message: str
) -> None:
    assert old in GOOD
    with pytest.raises(ScenarioError) as info:
        parse_scenario(GOOD.replace(old, new, 1), "t.toml")
    assert str(info.value).startswith(f"t.toml: {where}: ")
    assert message in str(info.value)


def test_a_negative_timeline_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "basic", "--timeline", "-1"])
    assert result.exit_code == 2 and "-1 is not in the range x>=0" in result.output


def test_a_sad_the_machine_cannot_map_is_one_line_naming_the_port(tmp_path: Path) -> None:
    """The largest SAD (2^24-1 entries) reserves about 6 GiB of address space for its
    compiled index: where that is not to be had, the run says so in one line."""
    require_built(FAST_PATH_BUILT, "the agent's compiled module (agent/_datapath.c)")
    path = tmp_path / "big.toml"
    path.write_text(GOOD + "\n[port]\nsad_size = 16777215\n")
    script = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30));"
        " from ipsec_offload.cli.main import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "run", str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: {path}: port: a SAD of 16777215 entries")
    assert done.stderr.count("\n") == 1
