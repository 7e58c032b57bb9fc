"""Scenario files (TOML): what to build on one port and what to do with it, validated.

The schema is a set of pydantic models (extra keys forbidden). A bad file gets one
ScenarioError naming the file, the field path (``vm[1].vlans[0]``) and what is wrong, and
nothing runs. Cross references (hosts named by an SA or a flow, an SA for every flow, unique
names, MACs and VF numbers) are checked after the fields. See docs/scenarios.md.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ipsec_offload.errors import ScenarioError

NAIVE_SWITCHES = (
    "sa-key",
    "ownership-db",
    "port-tag",
    "hairpin",
    "ivdb",
    "vf-filter",
    "seq-handover",
    "resync",
)
"""The deck's fixes and spec 9's `run --naive` can switch off (any number at once)."""

AGENT_NAIVE: dict[str, dict[str, Any]] = {
    "port-tag": {"pf_mac": None},
    "ivdb": {"ivdb": False},
    "vf-filter": {"pf_mac": None},
}
"""The switches that change the agent itself, each with the `AgentConfig` fields it sets
(the runner applies them; `ipsec-offload agent --naive` takes these and no others). `ivdb`
makes the agent use the stack's sequence numbers and IVs; `port-tag` and `vf-filter` open its
config plane to any source (no PF MAC: its source check backs both fixes, so switching off
either switches it off too) besides what they change in the PF driver. The others (`sa-key`,
`ownership-db`, `hairpin`, `seq-handover`, `resync`) change only the host stack or the
drivers: the agent is the same, and only the frames it is given differ."""


MAX_SECONDS = 3600.0
"""The latest time a scenario may name (an hour of simulated time; the PF's GET_CAPS probe
alone runs once a second through it)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _mac(value: str) -> str:
    parts = value.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{value!r} is not a MAC address like 02:00:00:00:01:00")
    try:
        raw = bytes.fromhex("".join(parts))
    except ValueError:
        raise ValueError(f"{value!r} is not a MAC address like 02:00:00:00:01:00") from None
    if raw[0] & 1:
        raise ValueError(f"{value} is a multicast address; a host needs a unicast MAC")
    return value.lower()


def _address(value: str, family: int) -> str:
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv{family} address") from None
    if parsed.version != family:
        raise ValueError(f"{value!r} is not an IPv{family} address")
    return value


Mac = Annotated[str, Field(description="MAC address, 02:00:00:00:01:00")]


class VlanSpec(_Model):
    """One VLAN tag: `vid` 1..4094 and `tpid` 0x8100 (802.1Q) or 0x88a8 (802.1ad)."""

    vid: StrictInt = Field(ge=1, le=4094)
    tpid: Literal[0x8100, 0x88A8] = 0x8100


def _vlans(value: Any) -> Any:
    """`vlans = [10]` is shorthand for `vlans = [{ vid = 10 }]`; at most two (Q-in-Q)."""
    if isinstance(value, list):
        return [{"vid": v} if isinstance(v, int) else v for v in value]
    return value


class HostSpec(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    mac: Mac
    ipv4: str | None = None
    ipv6: str | None = None
    vlans: list[VlanSpec] = Field(default_factory=list, max_length=2)

    @field_validator("mac")
    @classmethod
    def _check_mac(cls, value: str) -> str:
        return _mac(value)

    @field_validator("ipv4")
    @classmethod
    def _check_ipv4(cls, value: str | None) -> str | None:
        return None if value is None else _address(value, 4)

    @field_validator("ipv6")
    @classmethod
    def _check_ipv6(cls, value: str | None) -> str | None:
        return None if value is None else _address(value, 6)

    @field_validator("vlans", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _vlans(value)

    @model_validator(mode="after")
    def _has_an_address(self) -> HostSpec:
        if self.ipv4 is None and self.ipv6 is None:
            raise ValueError("give the host an ipv4 or an ipv6 address (or both)")
        return self


class PortSpec(_Model):
    mode: Literal["veb", "vepa"] = "veb"
    agent_mac: Mac = "02:00:00:00:00:01"
    pf_mac: Mac | None = Field(
        default=None,
        description="the PF MAC the agent takes config frames from (default: the PF's)",
    )
    sad_size: StrictInt = Field(default=4096, ge=1, le=(1 << 24) - 1)
    max_replay_window: StrictInt = Field(default=4096, ge=0, le=1 << 31)
    keks: dict[str, str] = Field(
        default_factory=dict, description="KEK id (decimal text) -> key in hex (16/24/32 bytes)"
    )

    @field_validator("agent_mac", "pf_mac")
    @classmethod
    def _check_mac(cls, value: str | None) -> str | None:
        return None if value is None else _mac(value)

    @field_validator("keks")
    @classmethod
    def _check_keks(cls, value: dict[str, str]) -> dict[str, str]:
        for ident, key in value.items():
            if not ident.isdigit() or int(ident) > 0xFFFFFFFF:
                raise ValueError(f"KEK id {ident!r} must be a 32-bit number")
            try:
                raw = bytes.fromhex(key)
            except ValueError:
                raise ValueError(f"KEK {ident}: {key!r} is not hex") from None
            if len(raw) not in (16, 24, 32):
                raise ValueError(f"KEK {ident}: {len(raw)} bytes; use 16, 24 or 32")
        return value


class VmSpec(HostSpec):
    vf: StrictInt = Field(ge=0, le=127)
    trusted: StrictBool = True
    kek: StrictInt | None = Field(default=None, description="wrap keys under this KEK id")
    start: StrictFloat = Field(
        default=0.0, ge=0.0, le=MAX_SECONDS, description="when the VM boots (seconds)"
    )


class SaSpec(_Model):
    name: str = Field(min_length=1)
    between: tuple[str, str]
    family: Literal[4, 6] = 4
    mode: Literal["transport", "tunnel"] = "transport"
    algorithm: Literal["aes-gcm-128", "aes-gcm-256"] = "aes-gcm-128"
    esn: StrictBool = False
    replay_window: StrictInt = Field(default=64, ge=0, le=1 << 31)
    offload: StrictBool = True
    spis: tuple[StrictInt, StrictInt] | None = None
    at: StrictFloat = Field(default=0.0, ge=0.0, le=MAX_SECONDS)
    soft_lifetime_packets: StrictInt = Field(default=0, ge=0, lt=1 << 64)
    lifetime_packets: StrictInt = Field(default=0, ge=0, lt=1 << 64)
    soft_lifetime_bytes: StrictInt = Field(default=0, ge=0, lt=1 << 64)
    lifetime_bytes: StrictInt = Field(default=0, ge=0, lt=1 << 64)

    @field_validator("spis")
    @classmethod
    def _check_spis(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(0 < spi <= 0xFFFFFFFF for spi in value):
            raise ValueError("SPIs are 1 .. 2^32-1")
        return value


class FlowSpec(_Model):
    source: str = Field(alias="from")
    to: str
    protocol: Literal["udp", "tcp", "icmp"] = "udp"
    family: Literal[4, 6] = 4
    size: StrictInt = Field(default=200, ge=1, le=65000)
    count: StrictInt = Field(default=10, ge=1, le=1_000_000)
    rate: StrictFloat = Field(default=10_000.0, gt=0, le=1e9, description="packets per second")
    start: StrictFloat = Field(default=0.0, ge=0.0, le=MAX_SECONDS)
    tso: StrictBool = False
    mss: StrictInt = Field(default=1400, ge=1, le=65535)
    sa: str | None = Field(default=None, description='the SA it uses, or "none" for clear')

    @model_validator(mode="after")
    def _ends_in_time(self) -> FlowSpec:
        last = self.start + (self.count - 1) / self.rate
        if last > MAX_SECONDS:
            raise ValueError(
                f"its last packet would leave at {last:g} s, after the {MAX_SECONDS:g} s a"
                " scenario may run: raise the rate or lower the count"
            )
        return self


ConfigOpcodeName = Literal[
    "add_sa",
    "remove_sa",
    "remove_all_sas",
    "add_local_addr",
    "remove_local_addr",
    "get_sa_stats",
    "get_caps",
]
"""Config opcodes by the names `lose_config` takes (spec 4): `Opcode` members, lower case."""


class EventSpec(_Model):
    at: StrictFloat = Field(ge=0.0, le=MAX_SECONDS)
    action: Literal[
        "destroy_vm",
        "reset_vf",
        "remove_vf",
        "reset_pf",
        "inject",
        "lose_config",
        "lose_replies",
        "lose_events",
        "replay_wire",
        "restart_agent",
    ]
    target: str | None = None
    frame: Literal["remove_all_sas", "add_sa", "forged_offload"] | None = None
    count: StrictInt = Field(default=1, ge=1, le=1000)
    opcode: ConfigOpcodeName | None = Field(
        default=None,
        description="lose_config, lose_replies: only requests (replies) of this opcode",
    )


class PeerSpec(HostSpec):
    kind: Literal["software", "linux"] = "software"
    """software: the model's own stack; linux: a real Linux kernel (the Linux guest)."""


class Scenario(_Model):
    """A whole scenario file."""

    description: str = ""
    port: PortSpec = Field(default_factory=PortSpec)
    pf: HostSpec
    vm: list[VmSpec] = Field(default_factory=list)
    peer: list[PeerSpec] = Field(default_factory=list)
    sa: list[SaSpec] = Field(default_factory=list)
    flow: list[FlowSpec] = Field(default_factory=list)
    event: list[EventSpec] = Field(default_factory=list)


MAX_SCENARIO_BYTES = 1 << 20
"""A scenario file's size limit (1 MiB): a scenario is a short text; a device or a runaway
file is refused before it is read whole."""


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; ScenarioError says where and what is wrong."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(source, "file", exc.strerror or str(exc)) from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            source, "file", f"larger than {MAX_SCENARIO_BYTES} bytes: not a scenario file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ScenarioError(
            source,
            "file",
            f"not UTF-8 text at byte {exc.start}{hint}: a TOML file is UTF-8 (save it so)",
        ) from None
    return parse_scenario(text, source)


BUILTIN = ("default", "basic", "faults")
"""Scenarios shipped with the package: `default` tells the deck's whole story."""


def builtin_scenario(name: str = "default") -> tuple[Scenario, str]:
    """A scenario shipped with the package, and the name messages use for it."""
    if name not in BUILTIN:
        raise ScenarioError(
            name, "scenario", f"no such file, nor a built-in ({', '.join(BUILTIN)})"
        )
    text = resources.files("ipsec_offload.sim").joinpath(f"scenarios/{name}.toml").read_text()
    source = f"built-in scenario {name!r}"
    return parse_scenario(text, source), source


def resolve_scenario(argument: str | None) -> tuple[Scenario, str]:
    """A scenario by file path, or by built-in name; None is the default."""
    if argument is None:
        return builtin_scenario()
    path = Path(argument)
    if path.exists():
        return load_scenario(path), str(path)
    return builtin_scenario(argument)


def parse_scenario(text: str, source: str) -> Scenario:
    """Validate scenario text from `source` (a file name for messages)."""
    if "\x00" in text:
        raise ScenarioError(source, "file", "holds NUL bytes: a binary file, not TOML text")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, "TOML", str(exc)) from None
    except RecursionError:
        raise ScenarioError(source, "TOML", "arrays or tables nested too deep") from None
    try:
        scenario = Scenario.model_validate(data)
    except RecursionError:
        raise ScenarioError(source, "(top level)", "values nested too deep") from None
    except ValidationError as exc:
        # An unknown key first: a misspelt one also makes the right one look missing.
        error = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        where = _path(error["loc"]) or "(top level)"
        raise ScenarioError(source, where, _message(error)) from None
    _check_references(scenario, source)
    return scenario


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: Any) -> str:
    kind, msg = error["type"], str(error["msg"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing (required)"
    return msg.removeprefix("Value error, ")


def _check_references(scenario: Scenario, source: str) -> None:
    def fail(where: str, what: str) -> None:
        raise ScenarioError(source, where, what)

    hosts: dict[str, HostSpec] = {scenario.pf.name: scenario.pf}
    macs = {scenario.pf.mac: "pf"}
    vfs: dict[int, str] = {}
    for kind, items in (("vm", scenario.vm), ("peer", scenario.peer)):
        for i, host in enumerate(items):
            where = f"{kind}[{i}]"
            if host.name in hosts:
                fail(f"{where}.name", f"{host.name!r} is used twice")
            hosts[host.name] = host
            if host.mac in macs and not isinstance(host, VmSpec):
                fail(f"{where}.mac", f"{host.mac} is {macs[host.mac]}'s MAC too")
            if isinstance(host, VmSpec):
                owner = vfs.get(host.vf)
                if owner is not None:
                    other = next(v for v in scenario.vm if v.name == owner)
                    if other.mac != host.mac or other.vlans != host.vlans:
                        fail(f"{where}.mac", f"VF {host.vf} (also {owner}'s) keeps its MAC/VLANs")
                elif host.mac in macs:
                    fail(f"{where}.mac", f"{host.mac} is {macs[host.mac]}'s MAC too")
                vfs.setdefault(host.vf, host.name)
                if host.kek is not None and str(host.kek) not in scenario.port.keks:
                    fail(f"{where}.kek", f"no KEK {host.kek} under [port.keks]")
            macs.setdefault(host.mac, host.name)
    _check_addresses(scenario, fail)
    sa_names = set()
    for i, sa in enumerate(scenario.sa):
        for side in sa.between:
            if side not in hosts:
                fail(f"sa[{i}].between", f"no host named {side!r}")
        if sa.between[0] == sa.between[1]:
            fail(f"sa[{i}].between", "an SA joins two different hosts")
        for side in sa.between:
            if _family_address(hosts[side], sa.family) is None:
                fail(f"sa[{i}].family", f"{side} has no IPv{sa.family} address")
        if sa.name in sa_names:
            fail(f"sa[{i}].name", f"{sa.name!r} is used twice")
        sa_names.add(sa.name)
    for i, flow in enumerate(scenario.flow):
        for field, side in (("from", flow.source), ("to", flow.to)):
            if side not in hosts:
                fail(f"flow[{i}].{field}", f"no host named {side!r}")
            if _family_address(hosts[side], flow.family) is None:
                fail(f"flow[{i}].family", f"{side} has no IPv{flow.family} address")
        if flow.sa == "none":
            continue
        pair = {flow.source, flow.to}
        matches = [s for s in scenario.sa if set(s.between) == pair and s.family == flow.family]
        if flow.sa is not None and flow.sa not in {s.name for s in matches}:
            fail(f"flow[{i}].sa", f"no SA {flow.sa!r} between {flow.source} and {flow.to}")
        if not matches:
            fail(
                f"flow[{i}]",
                f"no SA between {flow.source} and {flow.to} over IPv{flow.family}"
                ' (add one under [[sa]], or set sa = "none" for clear traffic)',
            )
    behind_nic = {scenario.pf.name} | {v.name for v in scenario.vm}
    for i, event in enumerate(scenario.event):
        needs_vm = event.action in ("destroy_vm", "reset_vf", "inject")
        if needs_vm and event.target not in {v.name for v in scenario.vm}:
            fail(f"event[{i}].target", f"{event.action} needs a VM's name, not {event.target!r}")
        if event.action == "remove_vf" and event.target not in vfs.values():
            fail(f"event[{i}].target", f"remove_vf needs a VM's name, not {event.target!r}")
        if event.action == "inject" and event.frame is None:
            fail(f"event[{i}].frame", "inject needs frame = remove_all_sas, add_sa, forged_offload")
        if event.action == "replay_wire" and event.target not in behind_nic:
            fail(
                f"event[{i}].target",
                f"replay_wire needs the PF's or a VM's name, not {event.target!r}",
            )
        if event.opcode is not None and event.action not in ("lose_config", "lose_replies"):
            fail(f"event[{i}].opcode", "only lose_config and lose_replies take an opcode")


def _check_addresses(scenario: Scenario, fail: Callable[[str, str], None]) -> None:
    """No address twice in one L2 domain (a VLAN stack): traffic to it would reach neither
    host. VMs on one VF, one after the other, may keep theirs."""
    vf_of = {vm.name: vm.vf for vm in scenario.vm}
    owners: dict[tuple[tuple[tuple[int, int], ...], str], str] = {}
    hosts = [("pf", scenario.pf)]
    hosts += [(f"vm[{i}]", vm) for i, vm in enumerate(scenario.vm)]
    hosts += [(f"peer[{i}]", peer) for i, peer in enumerate(scenario.peer)]
    for where, host in hosts:
        domain = tuple((tag.tpid, tag.vid) for tag in host.vlans)
        for option in ("ipv4", "ipv6"):
            text = getattr(host, option)
            if text is None:
                continue
            key = (domain, str(ipaddress.ip_address(text)))
            other = owners.setdefault(key, host.name)
            if other != host.name and not (
                host.name in vf_of and vf_of.get(other) == vf_of[host.name]
            ):
                fail(
                    f"{where}.{option}",
                    f"{text} is {other}'s address too (in one L2 domain, traffic to it would"
                    " reach neither)",
                )


def _family_address(host: HostSpec, family: int) -> str | None:
    return host.ipv4 if family == 4 else host.ipv6
