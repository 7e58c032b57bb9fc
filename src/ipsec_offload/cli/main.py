"""The `ipsec-offload` command."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click

from ipsec_offload.bench.cli import bench
from ipsec_offload.cli.compare import compare
from ipsec_offload.cli.ctl import ctl
from ipsec_offload.cli.live import live, live_host
from ipsec_offload.cli.progress import Progress
from ipsec_offload.errors import IpsecOffloadError, UsageError
from ipsec_offload.live.agent import RING_FRAMES, LiveAgent, check_cpus, parse_cpus
from ipsec_offload.live.workers import LiveWorkers
from ipsec_offload.sim.agent_options import AGENT_OPTIONS, agent_config
from ipsec_offload.sim.golden import run_golden
from ipsec_offload.sim.linux.guest import LinuxGuest
from ipsec_offload.sim.linux.image import GUEST_DIR_ENV, KERNEL_METAPACKAGE, build_image
from ipsec_offload.sim.report import FAILED, build_report, summary, write_outputs, xfrm_listing
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
    "--strict",
    is_flag=True,
    help="Exit with status 1 when a challenge or invariant FAILED or a flow is incomplete"
    " (for CI gates; under --naive the switched-off fix's failure counts too).",
)
@click.option(
    "--pcapng",
    is_flag=True,
    help="Also write each link as pcapng (host-link.pcapng, wire-link.pcapng): an interface"
    " per direction and a comment naming each frame.",
)
@click.option(
    "--linux-peers",
    is_flag=True,
    help="Make every peer a Linux peer: a real Linux kernel under QEMU does its IP and ESP"
    " (the guest is built once with `ipsec-offload linux-guest build`; docs/linux-peer.md).",
)
def run(
    scenario: str | None,
    out: Path,
    naive: tuple[str, ...],
    timeline: int,
    xfrm: bool,
    strict: bool,
    pcapng: bool,
    linux_peers: bool,
) -> None:
    """Run SCENARIO (a TOML file, or a built-in: default, basic, faults) and print its summary.

    Without SCENARIO, the built-in default tells the deck's whole story on one port.
    """
    try:
        spec, source = resolve_scenario(scenario)
        prepared = prepare(spec, source, naive, linux_peers=linux_peers)
        with Progress("simulating") as progress:
            prepared.run(progress.update)
        report = build_report(prepared)
        write_outputs(prepared.bed, out, report, pcapng=pcapng)
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary(report, out, timeline))
    if xfrm:
        click.echo(f"\n{xfrm_listing(prepared.bed)}")
    if strict:
        failed = [
            c["challenge"]
            for c in report["challenges"] + report["invariants"]
            if c["outcome"] == FAILED
        ]
        incomplete = [name for name, flow in report["flows"].items() if not flow["complete"]]
        if failed or incomplete:
            parts = [f"FAILED: {', '.join(failed)}"] if failed else []
            parts += [f"incomplete flows: {', '.join(incomplete)}"] if incomplete else []
            raise click.ClickException(f"--strict: {'; '.join(parts)}")


@main.group("linux-guest")
def linux_guest() -> None:
    """The Linux guest that runs Linux peers: a stock Debian kernel under QEMU."""


@linux_guest.command("build")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Where to build and keep the image (default: ${GUEST_DIR_ENV}, else the user's"
    " cache, ipsec-offload/linux-guest).",
)
@click.option(
    "--kernel-package",
    default=None,
    help="The linux-image package to boot (default: the one Debian's"
    f" {KERNEL_METAPACKAGE} depends on now).",
)
@click.option("--force", is_flag=True, help="Rebuild even when the cached image is current.")
@click.option("--boot", is_flag=True, help="Then boot it once and say how long that took.")
def linux_guest_build(
    directory: Path | None, kernel_package: str | None, force: bool, boot: bool
) -> None:
    """Build the guest's image from Debian's packages (reused while its inputs are the same)."""
    try:
        started = time.monotonic()
        image = build_image(directory, kernel_package=kernel_package, force=force)
        took = time.monotonic() - started
        size = image.initramfs.stat().st_size + image.kernel.stat().st_size
        click.echo(
            f"{image.kernel.parent}: {image.kernel_package} {image.kernel_version}"
            f" ({image.release}), kernel and initramfs {size / 1e6:.1f} MB, ready in {took:.1f} s"
        )
        if boot:
            with LinuxGuest.boot(image) as guest:
                release = guest.run("/bin/uname", "-r")[1].strip()
                click.echo(f"booted {release} under QEMU (TCG) in {guest.boot_seconds:.1f} s")
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc


def _agent_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of `agent` that set the agent: one per entry of AGENT_OPTIONS."""
    for option in reversed(AGENT_OPTIONS):
        command = click.option(
            option.flag,
            option.param,
            multiple=option.repeatable,
            type=click.Choice(option.choices) if option.choices else str,
            metavar=option.metavar,
            help=option.help,
        )(command)
    return command


@main.command()
@click.option(
    "--host-in",
    "host_in",
    type=click.Path(dir_okay=False, path_type=Path),
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
    help="Where to write the frames the agent emits toward the NIC.",
)
@click.option(
    "--wire-out",
    "wire_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the frames the agent emits toward the wire.",
)
@click.option(
    "--esp-sa",
    "esp_sa",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the keys of the SAs the agent learned, in Wireshark's esp_sa format.",
)
@click.option(
    "--live",
    is_flag=True,
    help="Run the agent between two real interfaces (--host-if, --wire-if) instead of pcaps;"
    " root or CAP_NET_RAW (docs/live.md).",
)
@click.option("--host-if", "host_if", metavar="IF", help="--live: the interface toward the NIC.")
@click.option("--wire-if", "wire_if", metavar="IF", help="--live: the interface toward the wire.")
@click.option(
    "--pcap-dir",
    "pcap_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="--live: capture the four links there (nic-to-agent.pcap and so on, as `run` names"
    " them), complete at the stop.",
)
@click.option(
    "--stats-interval",
    type=click.FloatRange(min=0.001),
    default=5.0,
    show_default=True,
    help="--live: seconds between statistics lines on stderr (SIGUSR1: all counters now).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0),
    help="--live: stop after these seconds (default: at SIGINT or SIGTERM).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="--live: worker processes over the kernel's packet fanout, each SA in one of them"
    ' (docs/live.md, "Workers").',
)
@click.option(
    "--cpus",
    metavar="LIST",
    help="--live: run worker i on the i-th CPU of LIST alone (0,1 or 0-3; one per worker);"
    " default: where the scheduler puts them.",
)
@click.option(
    "--ring-frames",
    type=click.IntRange(min=0),
    default=RING_FRAMES,
    show_default=True,
    help="--live: each packet socket's receive ring, in frames of up to 2 KiB (0: no ring,"
    ' one recvmsg a frame; docs/live.md, "The live agent").',
)
@click.option(
    "--forward-only",
    is_flag=True,
    hidden=True,
    help="--live: carry frames across untouched (the benchmark's plain forwarder).",
)
@_agent_options
def agent(
    host_in: Path | None,
    wire_in: Path | None,
    host_out: Path | None,
    wire_out: Path | None,
    esp_sa: Path | None,
    live: bool,
    host_if: str | None,
    wire_if: str | None,
    pcap_dir: Path | None,
    stats_interval: float,
    duration: float | None,
    workers: int,
    cpus: str | None,
    ring_frames: int,
    forward_only: bool,
    **settings: str | tuple[str, ...] | None,
) -> None:
    """The agent alone: a frame-level golden model driven by pcap files, or (--live) the
    agent between two real interfaces.

    The options after --duration set the agent; a run writes the command that replays it,
    with its agent's settings, into report.json ("golden").
    """
    values = {option.name: _texts(settings[option.param]) for option in AGENT_OPTIONS}
    try:
        config = agent_config(values)
        if live:
            given = _given(
                ("--host-in", host_in), ("--wire-in", wire_in), ("--host-out", host_out),
                ("--wire-out", wire_out), ("--esp-sa", esp_sa),
            )  # fmt: skip
            if given:
                raise UsageError(f"--live reads interfaces, not files: drop {', '.join(given)}")
            if host_if is None or wire_if is None:
                raise UsageError("--live needs --host-if IF and --wire-if IF")
            if not settings["boot_id"]:
                # a real agent's BOOT_ID differs at every start (spec 9), so the PF can tell
                config = replace(config, boot_id=int.from_bytes(os.urandom(8)) or 1)
            pinned = check_cpus(parse_cpus(cpus) if cpus else (), workers)
            if workers > 1:
                for name, given_with in (
                    ("--pcap-dir", pcap_dir),
                    ("--forward-only", forward_only),
                ):
                    if given_with:
                        raise UsageError(
                            f"{name} goes with --workers 1: with more, each worker's agent sees"
                            " only its own SAs' frames and answers no config request itself"
                            " (capture the two interfaces instead)"
                        )
                stats = LiveWorkers(
                    config, host_if, wire_if, workers=workers, stats_interval=stats_interval,
                    ring_frames=ring_frames, cpus=pinned,
                ).run(duration)  # fmt: skip
            else:
                if pinned:
                    os.sched_setaffinity(0, set(pinned))
                stats = LiveAgent(
                    config, host_if, wire_if, pcap_dir=pcap_dir, stats_interval=stats_interval,
                    forward_only=forward_only, ring_frames=ring_frames,
                ).run(duration)  # fmt: skip
            click.echo(json.dumps(stats, indent=2, sort_keys=True))
            return
        live_only = _given(
            ("--host-if", host_if), ("--wire-if", wire_if), ("--pcap-dir", pcap_dir),
            ("--duration", duration), ("--workers", None if workers == 1 else workers),
            ("--ring-frames", None if ring_frames == RING_FRAMES else ring_frames),
            ("--cpus", cpus),
        )  # fmt: skip
        if live_only:
            verb = "goes" if len(live_only) == 1 else "go"
            raise UsageError(f"{', '.join(live_only)} {verb} with --live")
        if host_in is None or host_out is None or wire_out is None:
            raise UsageError("give --host-in, --host-out and --wire-out (or --live)")
        with Progress("replaying") as progress:
            summary = run_golden(
                host_in=host_in,
                wire_in=wire_in,
                host_out=host_out,
                wire_out=wire_out,
                esp_sa=esp_sa,
                config=config,
                progress=progress.update,
            )
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary)


def _given(*options: tuple[str, object]) -> list[str]:
    """The names of the options that were given (not None)."""
    return [name for name, value in options if value is not None]


def _texts(value: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """An option's values as given: none, one, or (repeatable) several."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else value


main.add_command(bench)
main.add_command(compare)
main.add_command(ctl)
main.add_command(live)
main.add_command(live_host)
