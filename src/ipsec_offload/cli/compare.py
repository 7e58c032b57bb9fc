"""`ipsec-offload compare`: the scoreboard of a bench, expected frames against actual ones.

The comparing is `sim.scoreboard`; this module reads the files and prints. Exit codes: 0 when
every compared capture is equal, 1 when one differs, 2 for a usage error (a file that is
missing or not a pcap, a bad esp_sa file or option), one line naming the file and what is
wrong. docs/bench.md has the whole story and the JSON keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from ipsec_offload.errors import IpsecOffloadError
from ipsec_offload.sim import scoreboard
from ipsec_offload.sim.espsa import read_esp_sa
from ipsec_offload.sim.pcap import PcapRecord, read_pcap
from ipsec_offload.sim.scoreboard import (
    Comparison,
    EspKeys,
    MetaLayout,
    comparison_json,
    format_comparison,
)
from ipsec_offload.wire.ethernet import EtherType, check_ethertype

RUN_FILES = {
    "agent-to-nic": MetaLayout.RX,
    "agent-to-wire": MetaLayout.AUTO,
}
"""What `--run` compares in each folder (the agent's two outputs, the names `run` writes),
and how it reads their metadata tags: the agent sends Rx metadata toward the host."""

JSON_FORMAT = "ipsec-offload-compare"
JSON_VERSION = 1

_LAYOUTS = {"auto": MetaLayout.AUTO, "tx": MetaLayout.TX, "rx": MetaLayout.RX}


class CompareUsageError(click.ClickException):
    """A usage error of `compare`: one line, exit code 2 (1 means the captures differ)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class _Pair:
    name: str
    expected: Path
    actual: Path
    layout: MetaLayout


@click.command()
@click.argument("expected", type=click.Path(path_type=Path))
@click.argument("actual", type=click.Path(path_type=Path))
@click.option(
    "--run",
    "run_folders",
    is_flag=True,
    help="EXPECTED and ACTUAL are folders: compare the agent-to-nic.pcap and agent-to-wire.pcap"
    " of each (both directions of an agent run).",
)
@click.option(
    "--esp-sa",
    "esp_sa",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SA keys in Wireshark's esp_sa format: decrypt ESP and compare plaintext and trailer.",
)
@click.option(
    "--timestamps", is_flag=True, help="Compare timestamps too (a difference is a mismatch)."
)
@click.option(
    "--max",
    "max_findings",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Findings to describe per comparison, in frame order (0: all of them).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines instead.")
@click.option(
    "--meta",
    type=click.Choice(sorted(_LAYOUTS)),
    default=None,
    help="Read metadata tags as Tx or Rx metadata, or guess per frame (default: auto; with"
    " --run, rx for agent-to-nic).",
)
@click.option(
    "--meta-ethertype",
    default=f"0x{EtherType.META:04x}",
    show_default=True,
    help="The EtherType of the metadata tag.",
)
def compare(
    expected: Path,
    actual: Path,
    run_folders: bool,
    esp_sa: Path | None,
    timestamps: bool,
    max_findings: int,
    as_json: bool,
    meta: str | None,
    meta_ethertype: str,
) -> None:
    """Compare EXPECTED.pcap (the golden model's) with ACTUAL.pcap (the RTL's), frame by
    frame and field by field; exit 0 when equal, 1 when they differ, 2 for a usage error."""
    try:
        ethertype = _ethertype(meta_ethertype)
        pairs = _pairs(expected, actual, run_folders, meta)
        keys = EspKeys(read_esp_sa(esp_sa)) if esp_sa is not None else None
        loaded = [(pair, read_pcap(pair.expected), read_pcap(pair.actual)) for pair in pairs]
    except IpsecOffloadError as exc:
        raise CompareUsageError(str(exc)) from exc
    results = [
        (pair, _compare(exp, act, pair.layout, keys, ethertype, timestamps, max_findings))
        for pair, exp, act in loaded
    ]
    same = all(result.same for _, result in results)
    if as_json:
        document = {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "equal": same,
            "comparisons": [
                comparison_json(pair.name, str(pair.expected), str(pair.actual), result)
                for pair, result in results
            ],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        for pair, result in results:
            click.echo(format_comparison(pair.name, str(pair.expected), str(pair.actual), result))
            click.echo()
        differ = [pair.name for pair, result in results if not result.same]
        if differ:
            click.echo(f"DIFFERENT: {', '.join(differ)}")
        else:
            click.echo(f"EQUAL: {len(results)} of {len(results)} compared")
    if not same:
        click.get_current_context().exit(1)


def _ethertype(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise CompareUsageError(
            f"--meta-ethertype {text!r}: give a number such as 0x88b5"
        ) from None
    return check_ethertype(value, f"--meta-ethertype {text}")


def _pairs(expected: Path, actual: Path, run_folders: bool, meta: str | None) -> list[_Pair]:
    chosen = None if meta is None else _LAYOUTS[meta]
    if not run_folders:
        return [_Pair(expected.name, expected, actual, chosen or MetaLayout.AUTO)]
    for folder in (expected, actual):
        if not folder.is_dir():
            raise CompareUsageError(
                f"{folder}: not a folder (--run compares the agent-to-nic.pcap and"
                " agent-to-wire.pcap of two folders)"
            )
    return [
        _Pair(name, expected / f"{name}.pcap", actual / f"{name}.pcap", chosen or layout)
        for name, layout in RUN_FILES.items()
    ]


def _compare(
    expected: list[PcapRecord],
    actual: list[PcapRecord],
    layout: MetaLayout,
    keys: EspKeys | None,
    meta_ethertype: int,
    timestamps: bool,
    max_findings: int,
) -> Comparison:
    return scoreboard.compare(
        expected,
        actual,
        keys=keys,
        meta=layout,
        meta_ethertype=meta_ethertype,
        timestamps=timestamps,
        detail=max_findings or None,
    )
