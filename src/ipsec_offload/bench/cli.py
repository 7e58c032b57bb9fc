"""`ipsec-offload bench`: the benchmark as a command."""

from __future__ import annotations

from pathlib import Path

import click

from ipsec_offload.bench.report import table, targets, write_json
from ipsec_offload.bench.run import FULL, QUICK, run_benchmark
from ipsec_offload.errors import IpsecOffloadError


@click.command("bench")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench.json"),
    show_default=True,
    help="JSON file for every figure and ratio.",
)
@click.option(
    "--quick", is_flag=True, help="Tiny sizes: shows that every figure is produced, in seconds."
)
@click.option("--markdown", is_flag=True, help="Print the table in Markdown.")
@click.option(
    "--strict", is_flag=True, help="Exit with status 1 when a target is missed (for CI gates)."
)
def bench(out: Path, quick: bool, markdown: bool, strict: bool) -> None:
    """Measure the datapath against its ceiling (bare AES-GCM) and its peer (scapy).

    Agent Tx and Rx, the whole simulated path, SAD lookups, memory per SA, the config plane
    and the golden model, each as an absolute figure and as a ratio to its baseline from the
    same run. A full run takes about two minutes; see docs/performance.md.
    """
    if not out.parent.is_dir():
        raise click.ClickException(f"{out}: the folder {out.parent} does not exist")
    try:
        results = run_benchmark(
            QUICK if quick else FULL, lambda step: click.echo(f"measuring {step}", err=True)
        )
        write_json(results, out)
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    machine = results.machine
    click.echo(
        f"{machine['cpus']} processors, {machine['cpu']}, {machine['python']},"
        f" cryptography {machine['cryptography']}, scapy {machine['scapy']};"
        f" fast paths {machine['fast paths']}"
    )
    click.echo(table(results, markdown))
    for note in results.notes:
        click.echo(note)
    with_target = targets(results)
    met = sum(1 for _, ratio in with_target if ratio.met)
    click.echo(f"\n{met} of {len(with_target)} targets met; {results.seconds:.0f} s; JSON: {out}")
    if strict and met < len(with_target):
        raise click.ClickException(f"--strict: {len(with_target) - met} targets missed")
