"""`ipsec-offload ctl`: the agent's config channel from the command line, on a real
interface (docs/live.md), in `ip xfrm`'s spirit: one verb per request, text or --json."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

import click

from ipsec_offload.errors import IpsecOffloadError, ParseError, UsageError
from ipsec_offload.live.ctl import ConfigClient
from ipsec_offload.wire.addr import ip_to_str
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    ConfigMessage,
    ConfigStatus,
    Direction,
    ListSasRequest,
    Opcode,
    SaEntry,
    decode_caps,
    decode_count,
    decode_list_sas_reply,
    decode_sa_index,
    decode_sa_stats,
    encode_add_sa,
    encode_list_sas_request,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import VlanTag

_ALGORITHMS = {"aes-gcm-128": Algorithm.AES_GCM_128, "aes-gcm-256": Algorithm.AES_GCM_256}
_ERRORS = ("no_sa", "auth_fail", "replay", "malformed", "sa_expired")
"""GET_SA_STATS's error counters, one per Rx status 1..5 (spec 3)."""


@click.group()
@click.option("--dev", required=True, metavar="IF", help="The interface toward the agent.")
@click.option(
    "--agent-mac", default="02:00:00:00:00:01", show_default=True, help="The agent's MAC."
)
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 255),
              help="The config header's port byte.")  # fmt: skip
@click.option("--timeout", default=0.5, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds to wait for a reply before resending.")  # fmt: skip
@click.option("--retries", default=3, show_default=True, type=click.IntRange(min=0),
              help="Resends before giving up.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_context
def ctl(
    context: click.Context,
    dev: str,
    agent_mac: str,
    port: int,
    timeout: float,
    retries: int,
    as_json: bool,
) -> None:
    """Talk to a live agent over its config frames (root: a packet socket on --dev)."""
    try:
        mac = bytes.fromhex(agent_mac.replace(":", ""))
        if len(mac) != 6:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{agent_mac!r} is not a MAC", param_hint="--agent-mac") from None
    context.obj = {
        "client": lambda: ConfigClient(dev, mac, timeout, retries, port),
        "json": as_json,
    }


def _request(context: click.Context, opcode: Opcode, tlvs: tuple[Any, ...]) -> ConfigMessage:
    """Send one request; its reply, which must have status OK."""
    try:
        with context.obj["client"]() as client:
            reply: ConfigMessage = client.request(opcode, tlvs)
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    if reply.status != ConfigStatus.OK:
        status = ConfigStatus(reply.status).name
        raise click.ClickException(f"the agent answered {opcode.name} with {status}")
    return reply


def _call(
    context: click.Context,
    opcode: Opcode,
    tlvs: tuple[Any, ...],
    decode: Callable[[ConfigMessage], dict[str, Any]],
    text: Callable[[dict[str, Any]], str],
) -> None:
    """Send one request and print what `decode` made of its reply."""
    reply = _request(context, opcode, tlvs)
    try:
        result = decode(reply)
    except ParseError as exc:
        raise click.ClickException(f"the agent's {opcode.name} reply: {exc}") from exc
    click.echo(json.dumps(result, sort_keys=True) if context.obj["json"] else text(result))


@ctl.command()
@click.pass_context
def caps(context: click.Context) -> None:
    """GET_CAPS: the algorithms, the SAD's size, the largest replay window, the boot id."""

    def decode(reply: ConfigMessage) -> dict[str, Any]:
        found = decode_caps(reply.tlvs)
        return {
            "algorithms": [a.name.lower().replace("_", "-") for a in found.algorithms],
            "sad_size": found.sad_size,
            "max_replay_window": found.max_replay_window,
            "boot_id": found.boot_id,
        }

    _call(context, Opcode.GET_CAPS, (), decode, lambda r: (
        f"algorithms {' '.join(r['algorithms'])} sad-size {r['sad_size']}"
        f" max-replay-window {r['max_replay_window']} boot-id {r['boot_id']}"
    ))  # fmt: skip


@ctl.command("add-sa")
@click.option("--dir", "direction", type=click.Choice(["in", "out"]), required=True)
@click.option("--spi", required=True, help="The SPI (decimal or 0x...).")
@click.option("--dst", required=True, help="The SA's destination address.")
@click.option("--src", default=None, help="The SA's source address (optional).")
@click.option("--key", required=True, help="Key || 4-byte salt, in hex (RFC 4106).")
@click.option("--alg", type=click.Choice(list(_ALGORITHMS)), default="aes-gcm-128",
              show_default=True)  # fmt: skip
@click.option("--local-mac", default=None, help="The SA's domain: the function's MAC.")
@click.option("--vlan", "vlans", multiple=True, type=click.IntRange(1, 4094),
              help="The domain's VLAN ids, outermost first (802.1Q).")  # fmt: skip
@click.option("--esn", is_flag=True, help="64-bit sequence numbers.")
@click.option("--seq", default=None, type=click.IntRange(min=0), help="SEQ (spec 9).")
@click.option("--replay-window", default=None, type=click.IntRange(min=0))
@click.option("--lifetime-packets", default=None, type=click.IntRange(min=0))
@click.option("--soft-lifetime-packets", default=None, type=click.IntRange(min=0))
@click.pass_context
def add_sa(
    context: click.Context,
    direction: str,
    spi: str,
    dst: str,
    src: str | None,
    key: str,
    alg: str,
    local_mac: str | None,
    vlans: tuple[int, ...],
    esn: bool,
    seq: int | None,
    replay_window: int | None,
    lifetime_packets: int | None,
    soft_lifetime_packets: int | None,
) -> None:
    """ADD_SA: prints the SA index the agent gave it."""
    try:
        request = AddSaRequest(
            Direction.INBOUND if direction == "in" else Direction.OUTBOUND,
            _number(spi, "--spi"),
            _address(dst, "--dst"),
            _ALGORITHMS[alg],
            key=_hex(key, "--key"),
            src=None if src is None else _address(src, "--src"),
            local_mac=None if local_mac is None else _hex(local_mac.replace(":", ""), "MAC"),
            vlans=tuple(VlanTag(0x8100, vid) for vid in vlans),
            esn=esn,
            seq=seq,
            replay_window=replay_window,
            lifetime_packets=lifetime_packets,
            soft_lifetime_packets=soft_lifetime_packets,
        )
        tlvs = encode_add_sa(request)
    except (UsageError, ParseError) as exc:
        raise click.ClickException(str(exc)) from exc
    _call(context, Opcode.ADD_SA, tlvs, lambda r: {"sa_index": decode_sa_index(r.tlvs)},
          lambda r: f"sa-index {r['sa_index']}")  # fmt: skip


@ctl.command("remove-sa")
@click.argument("index", type=click.IntRange(min=0))
@click.pass_context
def remove_sa(context: click.Context, index: int) -> None:
    """REMOVE_SA by SA index."""
    _call(context, Opcode.REMOVE_SA, encode_sa_index(index), lambda r: {"removed": index},
          lambda r: f"removed sa-index {index}")  # fmt: skip


@ctl.command()
@click.pass_context
def flush(context: click.Context) -> None:
    """REMOVE_ALL_SAS: prints how many SAs went."""
    _call(context, Opcode.REMOVE_ALL_SAS, (), lambda r: {"removed": decode_count(r.tlvs)},
          lambda r: f"removed {r['removed']}")  # fmt: skip


@ctl.command("list")
@click.pass_context
def list_sas(context: click.Context) -> None:
    """LIST_SAS, every page: index, direction, SPI, destination and SEQ of each SA."""
    entries: list[dict[str, Any]] = []
    cursor = 0
    while True:
        tlvs = encode_list_sas_request(ListSasRequest(cursor=cursor or None))
        reply = _request(context, Opcode.LIST_SAS, tlvs)
        try:
            page = decode_list_sas_reply(reply.tlvs)
        except ParseError as exc:
            raise click.ClickException(f"the agent's LIST_SAS reply: {exc}") from exc
        entries += [_entry(e) for e in page.entries]
        cursor = page.next_cursor
        if not cursor:
            break
    if context.obj["json"]:
        click.echo(json.dumps({"sas": entries}, sort_keys=True))
        return
    for e in entries:
        click.echo(
            f"sa-index {e['sa_index']} dir {e['direction']} spi {e['spi']} dst {e['dst']}"
            f" seq {e['seq']}"
        )


@ctl.command()
@click.argument("index", type=click.IntRange(min=0))
@click.pass_context
def stats(context: click.Context, index: int) -> None:
    """GET_SA_STATS: packets, bytes and the errors by Rx status of one SA."""

    def decode(reply: ConfigMessage) -> dict[str, Any]:
        found = decode_sa_stats(reply.tlvs)
        return {"sa_index": index, "packets": found.packets, "bytes": found.bytes,
                **dict(zip(_ERRORS, found.errors, strict=True))}  # fmt: skip

    _call(context, Opcode.GET_SA_STATS, encode_sa_index(index), decode,
          lambda r: " ".join(f"{k.replace('_', '-')} {v}" for k, v in r.items()))  # fmt: skip


@ctl.command()
@click.option("--seconds", default=5.0, show_default=True, type=click.FloatRange(min=0))
@click.pass_context
def events(context: click.Context, seconds: float) -> None:
    """Listen for the agent's EVENT frames, answer each (as the PF does) and print them."""
    try:
        with context.obj["client"]() as client:
            found = client.listen(seconds)
    except IpsecOffloadError as exc:
        raise click.ClickException(str(exc)) from exc
    rows = [
        {"event": e.event_type.name, "boot_id": e.boot_id, "sa_index": e.sa_index} for e in found
    ]
    if context.obj["json"]:
        click.echo(json.dumps({"events": rows}, sort_keys=True))
        return
    for row in rows:
        index = "" if row["sa_index"] is None else f" sa-index {row['sa_index']}"
        click.echo(f"{row['event']} boot-id {row['boot_id']}{index}")


def _entry(entry: SaEntry) -> dict[str, Any]:
    return {
        "sa_index": entry.sa_index,
        "direction": "in" if entry.direction == Direction.INBOUND else "out",
        "spi": f"0x{entry.spi:08x}",
        "dst": ip_to_str(entry.dst),
        "seq": entry.seq,
    }


def _number(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"{what} {text!r}: write a number (decimal or 0x...)") from None


def _address(text: str, what: str) -> bytes:
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        raise UsageError(f"{what} {text!r} is not an IPv4 or IPv6 address") from None


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not hex") from None
