"""docs/tutorial.md quotes the summary's challenge and invariant lines of each run it tells
of; each quoted line must be what that run prints today, so the tutorial's numbers cannot
drift. A `...` in a quoted line stands for text left out. Prose numbers are
the author's to keep by these lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsec_offload.cli.main import main

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
_LINE = re.compile(r"^\s+(\d+\.|\S+->\S+ \S+)\s")
"""A summary line the tutorial may quote: a challenge or invariant (by its number) or a flow
(by its name)."""


def sections() -> list[tuple[str, tuple[str, ...], list[str], str]]:
    """(heading, run arguments, quoted result lines, prose) for each heading whose first
    code block quotes summary lines."""
    text = TUTORIAL.read_text()
    found = []
    scenario = "default"
    for part in re.split(r"^(#{2,3} .*)$", text, flags=re.M)[1:]:
        if part.startswith("#"):
            heading = part
            continue
        if "`faults` story" in heading:
            scenario = "faults"
        blocks = re.findall(r"^```\n(.*?)^```", part, flags=re.M | re.S)
        if not blocks:
            continue
        quoted = [line for line in blocks[0].splitlines() if _LINE.match(line)]
        if not quoted:
            continue
        args = (
            scenario,
            *[a for s in re.findall(r"--naive ([\w-]+)", heading) for a in ("--naive", s)],
        )
        prose = re.sub(r"^```\n.*?^```", "", part, flags=re.M | re.S)
        found.append((heading, args, quoted, prose))
    return found


def _normal(line: str) -> str:
    return " ".join(line.split())


SECTIONS = sections()


def test_the_tutorial_quotes_every_run_it_tells_of() -> None:
    assert len(SECTIONS) >= 9
    assert {args[0] for _h, args, _q, _p in SECTIONS} == {"default", "faults"}


@pytest.mark.parametrize(
    ("heading", "args", "quoted", "prose"), SECTIONS, ids=[s[0] for s in SECTIONS]
)
def test_each_quoted_summary_line_and_counter_is_what_the_run_prints(
    heading: str, args: tuple[str, ...], quoted: list[str], prose: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(main, ["run", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    printed = {
        m.group(1): _normal(line) for line in result.output.splitlines() if (m := _LINE.match(line))
    }
    for line in quoted:
        key = _LINE.match(line).group(1)  # type: ignore[union-attr]
        want = _normal(line)
        got = printed.get(key, "(not printed)")
        assert _matches(want, got), f"{heading}\nquoted:  {want}\nprinted: {got}"
    # the counters the prose names: the agent's (NAME=N, or an Rx status NAME N) as the
    # summary prints them, a host's (`name` N) as report.json holds them
    report = (tmp_path / "out" / "report.json").read_text()
    for name, value in re.findall(r"\b([A-Z][A-Z_]{3,})[= ](\d+)\b", prose):
        if name in ("OFFLOAD", "VLAN"):
            continue  # a metadata bit and a VLAN id, not counters
        assert f"{name}={value}" in result.output or f"{name} {value}" in result.output, (
            f"{heading}: the prose says {name} {value}"
        )
    for name, value in re.findall(r"`([a-z_]+)` (\d+)", prose):
        assert f'"{name}": {value}' in report, f"{heading}: the prose says {name} {value}"


def _matches(quoted: str, printed: str) -> bool:
    """Whether `printed` is `quoted` with each `...` standing for some text left out."""
    parts = [part.strip() for part in quoted.split("...")]
    if not printed.startswith(parts[0]):
        return False
    at = len(parts[0])
    for part in parts[1:]:
        found = printed.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return quoted.endswith("...") or printed.endswith(parts[-1])
