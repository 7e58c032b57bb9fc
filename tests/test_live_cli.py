"""The live commands' misuse: one line saying what to fix, exit status 1, nothing started."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ipsec_offload.cli.main import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent", "--live", "--host-if", "lo"], "--live needs --host-if IF and --wire-if IF"),
        (["agent", "--live", "--host-if", "lo", "--wire-if", "lo"], "are both lo"),
        (["agent", "--host-if", "lo"], "--host-if goes with --live"),
        (["agent", "--ring-frames", "64"], "--ring-frames goes with --live"),
        (["agent", "--cpus", "0"], "--cpus goes with --live"),
        (["agent", "--host-if", "lo", "--wire-if", "x"], "--host-if, --wire-if go with --live"),
        (["agent", "--live", "--host-if", "a", "--wire-if", "b", "--host-in", "x.pcap"],
         "--live reads interfaces, not files: drop --host-in"),
        (["agent", "--host-in", "x.pcap"], "give --host-in, --host-out and --wire-out"),
        (["ctl", "--dev", "no-such-if0", "caps"], "no interface named 'no-such-if0'"),
        (["ctl", "--dev", "lo", "--agent-mac", "zz", "caps"], "is not a MAC"),
    ],
)  # fmt: skip
def test_misuse_says_what_to_fix(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
