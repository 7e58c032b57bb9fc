"""`ipsec-offload live` (real applications over the model) and `live-host`, the process it
runs for the emulated host and the software peer (docs/live.md)."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import click

from ipsec_offload.errors import IpsecOffloadError
from ipsec_offload.live.host import LiveHost, LiveSa
from ipsec_offload.live.topology import (
    HOST_V4,
    HOST_V6,
    PEER_V4,
    PEER_V6,
    TUN_MTU,
    LiveTopology,
)
from ipsec_offload.sim.linux.guest import die_with_parent


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out-live"),
    show_default=True,
    help="Folder for the esp_sa keys, the agent's captures and each part's log.",
)
@click.option(
    "--run",
    "command",
    default=None,
    help="Run this command in the host's namespace, then take everything down and exit with"
    " its status (without it: wait for Ctrl-C).",
)
@click.option(
    "--peer-run",
    default=None,
    help="Start this command in the peer's namespace first (a server, say) and stop it at the end.",
)
@click.option(
    "--linux-peer",
    is_flag=True,
    help="The peer is the Linux guest (a real kernel's ESP, on a TAP device) instead of the"
    " model's software stack; --peer-run then runs in the guest's peer namespace.",
)
@click.option("--capture", is_flag=True, help="The agent captures its links into OUT/pcaps.")
def live(
    out: Path, command: str | None, peer_run: str | None, linux_peer: bool, capture: bool
) -> None:
    """Real applications over the model: the emulated host stack, PF driver and NIC behind a
    TUN device in one network namespace, the live agent in a second, a software peer behind
    its own TUN device in a third. Root."""
    try:
        topology = LiveTopology(out, "linux" if linux_peer else "software", capture)
        with topology:
            if topology.reaped:
                click.echo(
                    f"removed {', '.join(topology.reaped)}, left by an earlier run that was killed",
                    err=True,
                )
            server = None
            if peer_run and topology.guest is not None and topology.linux_peer is not None:
                netns = f"--net=/run/netns/{topology.linux_peer.netns}"
                # in the background, its output nowhere (peerd waits for a program's output)
                background = f"{peer_run} >/dev/null 2>&1 </dev/null &"
                topology.guest.run("/bin/nsenter", netns, "/bin/sh", "-c", background)
            elif peer_run:
                server = subprocess.Popen(
                    ["ip", "netns", "exec", topology.wire, *shlex.split(peer_run)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    preexec_fn=die_with_parent,
                )  # fmt: skip
                time.sleep(0.5)
            try:
                if command is None:
                    _wait_for_ctrl_c(topology)
                    return
                done = topology.run_in("app", *shlex.split(command), timeout=3600)
                click.echo(done.stdout, nl=False)
                click.echo(done.stderr, nl=False, err=True)
            finally:
                if server is not None:
                    server.terminate()
                    server.wait()
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(done.returncode)


def _wait_for_ctrl_c(topology: LiveTopology) -> None:
    click.echo(
        f"host {HOST_V4} and {HOST_V6} in namespace {topology.app}, peer {PEER_V4} and"
        f" {PEER_V6} in {topology.wire}:\n"
        f"  ip netns exec {topology.app} ping {PEER_V4}\n"
        f"  ip netns exec {topology.app} ping {PEER_V6}\n"
        f"  ip netns exec {topology.agent} tcpdump -i aw0 -w wire.pcap   # ESP; keys in"
        f" {topology.out / 'esp_sa'}\n"
        "Ctrl-C takes it all down."
    )
    stopped: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopped.append(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopped:
        time.sleep(0.2)


@click.command("live-host", hidden=True)
@click.option("--kind", type=click.Choice(["pf", "peer"]), required=True)
@click.option("--name", required=True)
@click.option("--mac", required=True)
@click.option("--ipv4", required=True)
@click.option("--ipv6", default=None)
@click.option("--iface", required=True)
@click.option("--tun", default="tun0", show_default=True)
@click.option("--neighbor", "neighbors", multiple=True, help="ADDRESS=MAC")
@click.option("--sa-file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--reverse", is_flag=True, help="This end is the SA file's remote one.")
@click.option("--offload", is_flag=True, help="Ask the device to offload the states.")
def live_host(
    kind: str,
    name: str,
    mac: str,
    ipv4: str,
    ipv6: str | None,
    iface: str,
    tun: str,
    neighbors: tuple[str, ...],
    sa_file: Path,
    reverse: bool,
    offload: bool,
) -> None:
    """One host of `live`: prints `ready` once its SAs are in, its counters at the stop."""
    try:
        table = {}
        for item in neighbors:
            address, _, neighbor_mac = item.partition("=")
            table[ipaddress.ip_address(address).packed] = _mac(neighbor_mac)
        addresses = {"ipv4": ipv4} if ipv6 is None else {"ipv4": ipv4, "ipv6": ipv6}
        host = LiveHost(
            "pf" if kind == "pf" else "peer", name, _mac(mac), addresses, iface, tun,
            neighbors=table,
        )  # fmt: skip
        # IPv6 on the TUN device only with an address for it, and then no router
        # solicitation: the model's stack routes nothing but its peer's prefix
        ipv6_sysctls = ["disable_ipv6=1"] if ipv6 is None else ["disable_ipv6=0", "accept_ra=0"]
        for setting in ipv6_sysctls:
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{tun}.{setting}"], check=False)
        commands = [["addr", "add", f"{ipv4}/24", "dev", tun]]
        if ipv6 is not None:
            commands.append(["-6", "addr", "add", f"{ipv6}/64", "dev", tun, "nodad"])
        commands.append(["link", "set", tun, "mtu", str(TUN_MTU), "up"])
        for args in commands:
            subprocess.run(["ip", *args], check=True, capture_output=True)
        signal.signal(signal.SIGTERM, lambda *_: host.stop())
        signal.signal(signal.SIGINT, lambda *_: host.stop())
        host.start()
        sas = [_sa(sa, reverse) for sa in json.loads(sa_file.read_text())]
        host.secure(sas, itertools.count(1), offload=offload)
        print("ready", flush=True)
        host.run()
        counters = dataclasses.asdict(host.stack.counters)
        print(json.dumps({"name": name, "counters": counters}, sort_keys=True), flush=True)
        host.close()
    except (IpsecOffloadError, OSError, subprocess.CalledProcessError) as exc:
        raise click.ClickException(str(exc)) from exc


def _sa(data: dict[str, str], reverse: bool) -> LiveSa:
    local, remote = (ipaddress.ip_address(data[k]).packed for k in ("local", "remote"))
    out, inn = int(data["spi_out"], 16), int(data["spi_in"], 16)
    key_out, key_in = bytes.fromhex(data["key_out"]), bytes.fromhex(data["key_in"])
    if reverse:
        return LiveSa(inn, out, key_in, key_out, remote, local)
    return LiveSa(out, inn, key_out, key_in, local, remote)


def _mac(text: str) -> bytes:
    value = bytes.fromhex(text.replace(":", ""))
    if len(value) != 6:
        raise click.BadParameter(f"{text!r} is not a MAC")
    return value
