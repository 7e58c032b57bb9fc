"""The agent's settings as options of `ipsec-offload agent`, both ways.

One table, `AGENT_OPTIONS`, names every setting of `AgentConfig` that changes what the agent
emits, as the option that gives it: the command's options are made from it (`cli/main.py`),
`agent_config` reads their values into an `AgentConfig`, and `agent_argv` writes an
`AgentConfig` back as the options that give it. A run writes `agent_argv` of its agent's
configuration into report.json (`golden`), so the command that replays a run is made by the
same table that reads it: a setting cannot be in one and missing from the other.

Every option left out gives `AgentConfig`'s default, and `agent_argv` writes only the settings
that differ from it. `AgentConfig.fast_path` has no option: both paths give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.agent.replay import MAX_WINDOW_SIZE
from ipsec_offload.errors import UsageError
from ipsec_offload.sim.scenario import AGENT_NAIVE, NAIVE_SWITCHES
from ipsec_offload.wire.addr import mac_from_str, mac_to_str

_DEFAULT = AgentConfig()
Fields = dict[str, Any]
Reader = Callable[[Sequence[str]], Fields]
Writer = Callable[[AgentConfig], list[str]]


@dataclass(frozen=True, slots=True)
class AgentOption:
    """One option of `ipsec-offload agent` and the `AgentConfig` fields it sets."""

    name: str
    """The option is --NAME."""
    fields: tuple[str, ...]
    metavar: str
    help: str
    read: Reader
    """The option's values (one, or several for a repeatable option) to the fields they set;
    a bad value raises UsageError naming the option and the value."""
    write: Writer
    """The values that give a configuration's fields (none for the default)."""
    repeatable: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def param(self) -> str:
        """The option's parameter name in the click command."""
        return self.name.replace("-", "_")


def _bad(name: str, text: str, what: str, *, quoted: bool = True) -> UsageError:
    shown = repr(text) if quoted else text
    return UsageError(f"--{name} {shown}: {what}")


def _number(
    name: str, field: str, low: int, high: int | None, what: str, *, hex_: bool = False
) -> tuple[Reader, Writer]:
    """An integer setting in low .. high (None: no upper bound; hex_: written as 0x....)."""

    def read(texts: Sequence[str]) -> Fields:
        text = texts[-1]
        try:
            value = int(text, 0)
        except ValueError:
            raise _bad(name, text, f"not a number; give {what}") from None
        if value < low or (high is not None and value > high):
            raise _bad(name, text, f"give {what}", quoted=False)
        return {field: value}

    def write(config: AgentConfig) -> list[str]:
        value = getattr(config, field)
        if value == getattr(_DEFAULT, field):
            return []
        return [f"0x{value:04x}" if hex_ else str(value)]

    return read, write


def _mac(name: str, field: str) -> tuple[Reader, Writer]:
    def read(texts: Sequence[str]) -> Fields:
        text = texts[-1]
        try:
            return {field: mac_from_str(text)}
        except (UsageError, ValueError) as exc:
            raise _bad(name, text, str(exc)) from None

    def write(config: AgentConfig) -> list[str]:
        value = getattr(config, field)
        return [] if value is None or value == getattr(_DEFAULT, field) else [mac_to_str(value)]

    return read, write


def _read_keks(texts: Sequence[str]) -> Fields:
    """Key-encryption keys from "ID:HEX" texts (16, 24 or 32 bytes each)."""
    keks: dict[int, bytes] = {}
    for text in texts:
        ident, sep, hexkey = text.partition(":")
        try:
            kek_id = int(ident, 0)
            key = bytes.fromhex(hexkey)
        except ValueError:
            kek_id, key = -1, b""
        if not sep or not 0 <= kek_id <= 0xFFFFFFFF or len(key) not in (16, 24, 32):
            raise _bad("kek", text, "write ID:HEX with a 32-bit ID and a 16, 24 or 32-byte key")
        keks[kek_id] = key
    return {"keks": keks}


def _write_keks(config: AgentConfig) -> list[str]:
    return [f"{kek_id}:{key.hex()}" for kek_id, key in sorted(config.keks.items())]


_DRIVER_SIDE = tuple(s for s in NAIVE_SWITCHES if s not in AGENT_NAIVE)


def _read_naive(texts: Sequence[str]) -> Fields:
    """The agent-side switches of `run --naive` (AGENT_NAIVE); the others are refused."""
    settings: Fields = {}
    for switch in texts:
        if switch not in AGENT_NAIVE:
            raise UsageError(
                f"--naive {switch}: host/driver-side, as are {', '.join(_DRIVER_SIDE)}: it"
                " does not change the agent's output, only the frames the agent is given,"
                " which the pcaps hold; replay without it (the agent-side switches:"
                f" {', '.join(AGENT_NAIVE)})"
            )
        settings.update(AGENT_NAIVE[switch])
    return settings


def _write_naive(config: AgentConfig) -> list[str]:
    """Each agent-side switch whose fields `config` has and that differs from the default
    (`port-tag` and `vf-filter` give no PF MAC, which is already the default)."""
    switches: list[str] = []
    seen: list[Fields] = []
    for switch, settings in AGENT_NAIVE.items():
        mine = all(getattr(config, k) == v for k, v in settings.items())
        default = all(getattr(_DEFAULT, k) == v for k, v in settings.items())
        if mine and not default and settings not in seen:
            switches.append(switch)
            seen.append(settings)
    return switches


def _option(
    name: str,
    fields_: tuple[str, ...],
    metavar: str,
    help_: str,
    read_write: tuple[Reader, Writer],
    **more: Any,
) -> AgentOption:
    return AgentOption(name, fields_, metavar, help_, read_write[0], read_write[1], **more)


def _default(field: str, *, hex_: bool = False) -> str:
    value = getattr(_DEFAULT, field)
    return f" [default: {f'0x{value:04x}' if hex_ else value}]"


_U64 = (1 << 64) - 1
AGENT_OPTIONS: tuple[AgentOption, ...] = (
    _option(
        "agent-mac",
        ("mac",),
        "MAC",
        "The agent's own MAC address (config frames must be sent to it)"
        f" [default: {mac_to_str(_DEFAULT.mac)}].",
        _mac("agent-mac", "mac"),
    ),
    _option(
        "pf-mac",
        ("pf_mac",),
        "MAC",
        "The PF driver's MAC: config frames from any other source are ignored and counted"
        " [default: accept any source].",
        _mac("pf-mac", "pf_mac"),
    ),
    _option(
        "naive",
        tuple(sorted({k for settings in AGENT_NAIVE.values() for k in settings})),
        "SWITCH",
        f"A switch of `run --naive` that changes the agent: {', '.join(AGENT_NAIVE)}"
        " (repeatable; ivdb: the stack's sequence numbers and IVs are used; port-tag and"
        " vf-filter: config from any source, as without --pf-mac). The others change only"
        " the host side and are refused.",
        (_read_naive, _write_naive),
        repeatable=True,
        choices=NAIVE_SWITCHES,
    ),
    _option(
        "kek",
        ("keks",),
        "ID:HEX",
        "A key-encryption key the agent holds for WRAPPED_KEY (repeatable).",
        (_read_keks, _write_keks),
        repeatable=True,
    ),
    _option(
        "sad-size",
        ("sad_size",),
        "N",
        "SAD entries." + _default("sad_size"),
        _number("sad-size", "sad_size", 1, (1 << 24) - 1, "1 .. 2^24-1 (SA_INDEX is 24 bits)"),
    ),
    _option(
        "max-replay-window",
        ("max_replay_window",),
        "N",
        "The largest replay window an ADD_SA may ask for." + _default("max_replay_window"),
        _number("max-replay-window", "max_replay_window", 0, MAX_WINDOW_SIZE, "0 .. 2^31 packets"),
    ),
    _option(
        "default-replay-window",
        ("default_replay_window",),
        "N",
        "The replay window of an ADD_SA without REPLAY_WINDOW." + _default("default_replay_window"),
        _number(
            "default-replay-window",
            "default_replay_window",
            0,
            MAX_WINDOW_SIZE,
            "0 .. 2^31 packets (at most --max-replay-window)",
        ),
    ),
    _option(
        "ports",
        ("ports",),
        "N",
        "Ports the agent serves (a config header's port must be below)." + _default("ports"),
        _number("ports", "ports", 1, 256, "1 .. 256"),
    ),
    _option(
        "hairpin-size",
        ("hairpin_size",),
        "N",
        "Entries of the hairpin table (ADD_LOCAL_ADDR)." + _default("hairpin_size"),
        _number("hairpin-size", "hairpin_size", 0, None, "0 or more"),
    ),
    _option(
        "txn-memory",
        ("txn_memory",),
        "N",
        "Config replies remembered for retransmitted requests." + _default("txn_memory"),
        _number("txn-memory", "txn_memory", 0, None, "0 or more"),
    ),
    _option(
        "event-slots",
        ("event_slots",),
        "N",
        "The table of unanswered EVENT frames." + _default("event_slots"),
        _number("event-slots", "event_slots", 1, None, "1 or more"),
    ),
    _option(
        "meta-ethertype",
        ("meta_ethertype",),
        "ETHERTYPE",
        "The metadata tag's EtherType." + _default("meta_ethertype", hex_=True),
        _number("meta-ethertype", "meta_ethertype", 0, 0xFFFF, "an EtherType", hex_=True),
    ),
    _option(
        "config-ethertype",
        ("config_ethertype",),
        "ETHERTYPE",
        "The config frames' EtherType." + _default("config_ethertype", hex_=True),
        _number("config-ethertype", "config_ethertype", 0, 0xFFFF, "an EtherType", hex_=True),
    ),
    _option(
        "boot-id",
        ("boot_id",),
        "N",
        "The agent's BOOT_ID (u64): in GET_CAPS replies and EVENT frames. To reproduce a"
        " simulated run, give its agent's (report.json, golden.argv)." + _default("boot_id"),
        _number("boot-id", "boot_id", 0, _U64, "0 .. 2^64-1 (BOOT_ID is a u64)"),
    ),
)
"""Every option of `ipsec-offload agent` that sets the agent, in --help's order."""

NOT_OPTIONS = ("fast_path",)
"""The `AgentConfig` fields without an option: they never change the agent's output."""


def agent_config(values: Mapping[str, Sequence[str]]) -> AgentConfig:
    """The configuration that the options give: `values` maps an option's name to the values
    given (none: the option was left out). Two options that set one field differently (--pf-mac
    with --naive port-tag) are an error naming both."""
    settings: Fields = {}
    given_by: dict[str, str] = {}
    for option in AGENT_OPTIONS:
        texts = values.get(option.name, ())
        if not texts:
            continue
        shown = f"{option.flag} {' '.join(texts)}"
        for field, value in option.read(texts).items():
            if field in settings and settings[field] != value:
                raise UsageError(
                    f"{given_by[field]} and {shown} contradict each other (both set the"
                    f" agent's {field}): leave one out"
                )
            settings[field] = value
            given_by[field] = shown
    try:
        return AgentConfig(**settings)
    except UsageError as exc:
        raise UsageError(f"the agent's settings do not go together: {exc}") from None


def agent_argv(config: AgentConfig) -> list[str]:
    """The options that give `config` (its fast_path aside): `agent_config` reads them back
    into an equal configuration."""
    argv: list[str] = []
    for option in AGENT_OPTIONS:
        for text in option.write(config):
            argv += [option.flag, text]
    return argv


def covered_fields() -> set[str]:
    """The `AgentConfig` fields that some option sets."""
    return {name for option in AGENT_OPTIONS for name in option.fields}
