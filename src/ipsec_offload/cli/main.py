"""The `ipsec-offload` command."""

from __future__ import annotations

from pathlib import Path

import click

from ipsec_offload.errors import IpsecOffloadError
from ipsec_offload.sim.demo import format_summary, run_demo
from ipsec_offload.sim.golden import run_golden


@click.group()
@click.version_option(package_name="ipsec-offload")
def main() -> None:
    """Reference model and emulator of an SR-IOV NIC with an inline IPsec ESP offload agent."""


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Folder for the pcaps, the esp_sa keys file and report.json.",
)
def run(out: Path) -> None:
    """Run the built-in default scenario and print its summary."""
    try:
        report = run_demo(out)
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_summary(report, out))


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
    "--kek",
    "keks",
    multiple=True,
    metavar="ID:HEX",
    help="A key-encryption key the agent holds for WRAPPED_KEY (repeatable).",
)
@click.option("--sad-size", default=4096, show_default=True, help="SAD entries.")
def agent(
    host_in: Path,
    wire_in: Path | None,
    host_out: Path,
    wire_out: Path,
    esp_sa: Path | None,
    agent_mac: str,
    keks: tuple[str, ...],
    sad_size: int,
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
            keks=keks,
            sad_size=sad_size,
        )
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary)
