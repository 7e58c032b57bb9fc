"""The `ipsec-offload` command."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ipsec_offload.bench.cli import bench
from ipsec_offload.cli.compare import compare
from ipsec_offload.errors import IpsecOffloadError
from ipsec_offload.sim.golden import run_golden
from ipsec_offload.sim.report import build_report, summary, write_outputs, xfrm_listing
from ipsec_offload.sim.runner import prepare
from ipsec_offload.sim.scenario import NAIVE_SWITCHES, resolve_scenario


@click.group()
@click.version_option(package_name="ipsec-offload")
def main() -> None:
    """Reference model and emulator of an SR-IOV NIC with an inline IPsec ESP offload agent."""


@main.command()
@click.argument("scenario", required=False)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Folder for the pcaps, the esp_sa keys file, each host's xfrm states and report.json.",
)
@click.option(
    "--naive",
    "naive",
    multiple=True,
    type=click.Choice(NAIVE_SWITCHES),
    help="Switch off one of the deck's fixes to watch its failure (repeatable).",
)
@click.option(
    "--timeline",
    default=40,
    show_default=True,
    type=click.IntRange(min=0),
    help="Timeline lines to print.",
)
@click.option(
    "--xfrm",
    is_flag=True,
    help="After the summary, print what `ip -s xfrm state` shows on every live host.",
)
@click.option(
    "--pcapng",
    is_flag=True,
    help="Also write each link as pcapng (host-link.pcapng, wire-link.pcapng): an interface"
    " per direction and a comment naming each frame.",
)
def run(
    scenario: str | None,
    out: Path,
    naive: tuple[str, ...],
    timeline: int,
    xfrm: bool,
    pcapng: bool,
) -> None:
    """Run SCENARIO (a TOML file, or a built-in: default, basic, faults) and print its summary.

    Without SCENARIO, the built-in default tells the deck's whole story on one port.
    """
    try:
        spec, source = resolve_scenario(scenario)
        prepared = prepare(spec, source, naive)
        with _Progress() as progress:
            prepared.run(progress.update)
        report = build_report(prepared)
        write_outputs(prepared.bed, out, report, pcapng=pcapng)
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary(report, out, timeline))
    if xfrm:
        click.echo(f"\n{xfrm_listing(prepared.bed)}")


class _Progress:
    """A progress bar on stderr, shown only once a run has taken more than a moment."""

    DELAY = 0.5

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._bar: Any = None
        self._shown = 0

    def __enter__(self) -> _Progress:
        return self

    def update(self, fraction: float) -> None:
        if self._bar is None and time.monotonic() - self._start > self.DELAY:
            self._bar = click.progressbar(length=1000, label="simulating", file=sys.stderr)
            self._bar.__enter__()
        if self._bar is not None:
            target = int(fraction * 1000)
            self._bar.update(target - self._shown)
            self._shown = target

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@main.command()
@click.option(
    "--host-in",
    "host_in",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Frames reaching the agent from the NIC (pcap).",
)
@click.option(
    "--wire-in",
    "wire_in",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Frames reaching the agent from the wire (pcap).",
)
@click.option(
    "--host-out",
    "host_out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the frames the agent emits toward the NIC.",
)
@click.option(
    "--wire-out",
    "wire_out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the frames the agent emits toward the wire.",
)
@click.option(
    "--esp-sa",
    "esp_sa",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the keys of the SAs the agent learned, in Wireshark's esp_sa format.",
)
@click.option(
    "--agent-mac",
    default="02:00:00:00:00:01",
    show_default=True,
    help="The agent's own MAC address (config frames must be sent to it).",
)
@click.option(
    "--pf-mac",
    default=None,
    help="The PF driver's MAC: config frames from any other source are ignored and counted"
    " (default: accept any source).",
)
@click.option(
    "--kek",
    "keks",
    multiple=True,
    metavar="ID:HEX",
    help="A key-encryption key the agent holds for WRAPPED_KEY (repeatable).",
)
@click.option("--sad-size", default=4096, show_default=True, help="SAD entries.")
@click.option(
    "--boot-id",
    "boot_id",
    default=1,
    show_default=True,
    help="The agent's BOOT_ID (u64): in GET_CAPS replies and EVENT frames. To reproduce a"
    " simulated run, give its agent's (report.json, agent.boot_id).",
)
def agent(
    host_in: Path,
    wire_in: Path | None,
    host_out: Path,
    wire_out: Path,
    esp_sa: Path | None,
    agent_mac: str,
    pf_mac: str | None,
    keks: tuple[str, ...],
    sad_size: int,
    boot_id: int,
) -> None:
    """The agent alone as a frame-level golden model, driven by pcap files."""
    try:
        summary = run_golden(
            host_in=host_in,
            wire_in=wire_in,
            host_out=host_out,
            wire_out=wire_out,
            esp_sa=esp_sa,
            agent_mac=agent_mac,
            pf_mac=pf_mac,
            keks=keks,
            sad_size=sad_size,
            boot_id=boot_id,
        )
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary)


main.add_command(bench)
main.add_command(compare)
