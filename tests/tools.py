"""Helpers shared by the tests: external tools (tshark), Wireshark ESP decryption, scapy SAs.

Import them as ``from tools import ...`` (pytest puts the tests directory on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from ipsec_offload.sim.espsa import (
    ESP_SA_ALGORITHM_AES_GCM_128,
    ESP_SA_ALGORITHM_AES_GCM_256,
    EspSaEntry,
    write_esp_sa,
)

REQUIRE_TOOLS_ENV = "IPSEC_OFFLOAD_REQUIRE_TOOLS"
"""Set to 1 (CI does) to turn a missing external tool into a test failure instead of a skip."""

_INSTALL_HINTS = {
    "tshark": "apt-get install tshark",
    "editcap": "apt-get install wireshark-common",
}

# stderr lines tshark prints in normal operation; anything else is treated as a problem.
_BENIGN_STDERR = ("Running as user ",)


class TsharkError(Exception):
    """tshark failed, or complained on stderr (bad esp_sa table, dissector bug, Lua error)."""


def _missing_tool(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_TOOLS_ENV}=1, so this test may not be skipped)")
    pytest.skip(reason)


def require_fast_path() -> None:
    """Skip the test when the agent's compiled fast path was not built (no C compiler at
    install time); with ``IPSEC_OFFLOAD_REQUIRE_TOOLS=1`` fail instead."""
    from ipsec_offload.agent.fastpath import FAST_PATH_BUILT

    require_built(FAST_PATH_BUILT, "the agent's compiled fast path")


def require_built(built: bool, what: str) -> None:
    """Skip the test when the compiled module `what` names was not built; with
    ``IPSEC_OFFLOAD_REQUIRE_TOOLS=1`` fail instead."""
    if not built:
        _missing_tool(
            f"{what} is not built: install a C compiler and the Python headers, then"
            " reinstall the package (pip install -e .)"
        )


def require_tool(name: str) -> str:
    """The path of executable ``name``, or skip the test saying how to install it.

    With ``IPSEC_OFFLOAD_REQUIRE_TOOLS=1`` in the environment the test fails instead, so a CI
    run cannot pass by skipping.
    """
    path = shutil.which(name)
    if path is None:
        hint = _INSTALL_HINTS.get(name)
        _missing_tool(f"{name} not installed: {hint}" if hint else f"{name} not installed")
    return path


def require_linux_guest() -> None:
    """Skip the test when this machine cannot build or boot the Linux guest (QEMU, a static
    busybox, apt, gcc), saying what to install; with ``IPSEC_OFFLOAD_REQUIRE_TOOLS=1`` fail
    instead."""
    from ipsec_offload.sim.linux.image import missing_tools

    missing = missing_tools()
    if missing:
        _missing_tool("the Linux guest needs " + "; ".join(missing))


EspSaSource = Iterable[EspSaEntry] | str | os.PathLike[str] | None
"""What :func:`tshark_decode` takes as SAs: entries, the path of an esp_sa file, or nothing."""


def tshark_decode(
    pcap_path: str | os.PathLike[str],
    esp_sa: EspSaSource = None,
    fields: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
    *,
    lua_script: str | os.PathLike[str] | None = None,
    auth_check: bool = True,
    display_filter: str | None = None,
    allow_stderr: bool = False,
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Dissect ``pcap_path`` with tshark, ESP decryption on, and return one dict per frame.

    tshark runs with a private, temporary configuration directory (``WIRESHARK_CONFIG_DIR``,
    and ``HOME``/``XDG_CONFIG_HOME`` pointing into it, so no personal profile or plugin is
    read or touched) holding ``esp_sa``: written from ``esp_sa`` entries, or copied from
    ``esp_sa`` when it is a path. Options: ``-n`` (no name resolution),
    ``-o esp.enable_encryption_decode:TRUE`` and, with ``auth_check``,
    ``-o esp.enable_authentication_check:TRUE`` (so ``esp.icv_good``/``esp.icv_bad`` are set).

    With ``fields``, tshark prints those fields (``-T fields``) and each row maps every field
    name to its text, ``""`` when absent, several occurrences joined by ``,``. Without
    ``fields``, each dict is the ``layers`` object of tshark's ``-T json`` output (duplicate
    keys merged into lists). ``lua_script`` adds ``-X lua_script:FILE``, ``display_filter``
    adds ``-Y``, and ``extra_args`` go on the command line as they are.

    Skips (or, under ``IPSEC_OFFLOAD_REQUIRE_TOOLS=1``, fails) the test when tshark is
    missing. Raises :class:`TsharkError` when tshark exits non-zero or writes anything
    unexpected to stderr, unless ``allow_stderr``.
    """
    tshark = require_tool("tshark")
    with tempfile.TemporaryDirectory(prefix="ipsec-offload-tshark-") as tmp:
        home = Path(tmp) / "home"
        config = Path(tmp) / "wireshark"
        home.mkdir()
        config.mkdir()
        if isinstance(esp_sa, str | os.PathLike):
            shutil.copyfile(esp_sa, config / "esp_sa")
        elif esp_sa is not None:
            write_esp_sa(config / "esp_sa", esp_sa)
        env = dict(os.environ)
        env.update(
            WIRESHARK_CONFIG_DIR=str(config),
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
        )
        cmd = [
            tshark,
            "-n",
            "-r",
            os.fspath(pcap_path),
            "-o",
            "esp.enable_encryption_decode:TRUE",
            "-o",
            f"esp.enable_authentication_check:{'TRUE' if auth_check else 'FALSE'}",
        ]
        if lua_script is not None:
            cmd += ["-X", f"lua_script:{os.fspath(lua_script)}"]
        if display_filter is not None:
            cmd += ["-Y", display_filter]
        cmd += list(extra_args)
        if fields:
            cmd += ["-T", "fields", "-E", "header=n", "-E", "separator=/t"]
            cmd += ["-E", "occurrence=a", "-E", "aggregator=,", "-E", "quote=n"]
            for field in fields:
                cmd += ["-e", field]
        else:
            cmd += ["-T", "json", "--no-duplicate-keys"]
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    complaints = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not line.startswith(_BENIGN_STDERR)
    ]
    if proc.returncode != 0 or (complaints and not allow_stderr):
        raise TsharkError(
            f"tshark exited with {proc.returncode}: {' '.join(cmd)}\n" + "\n".join(complaints)
        )
    if fields:
        return _parse_fields(proc.stdout, fields)
    packets = json.loads(proc.stdout) if proc.stdout.strip() else []
    return [packet["_source"]["layers"] for packet in packets]


def _parse_fields(stdout: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        values = line.split("\t")
        if len(values) != len(fields):
            raise TsharkError(
                f"tshark printed {len(values)} columns for {len(fields)} fields"
                f" (is a Lua script printing to stdout?): {line!r}"
            )
        rows.append(dict(zip(fields, values, strict=True)))
    return rows


_GCM_KEY_MATERIAL_LEN = {ESP_SA_ALGORITHM_AES_GCM_128: 20, ESP_SA_ALGORITHM_AES_GCM_256: 36}


def scapy_sa(
    spi: int,
    key_material: bytes,
    algorithm: int,
    esn: bool = False,
    tunnel_header: Packet | None = None,
    *,
    esn_high: int = 0,
) -> SecurityAssociation:
    """A scapy ESP SecurityAssociation for AES-GCM with a 16-octet ICV (RFC 4106).

    ``key_material`` is key || 4-byte salt, as in the config channel and the esp_sa file:
    scapy's ``AES-GCM`` splits the salt off the end itself. The integrity algorithm is
    ``NULL`` (GCM authenticates). With ``esn`` the AAD is SPI || seq_hi || seq_lo and
    ``esn_high`` is seq_hi; scapy never advances it, so use :func:`scapy_encrypt` to send
    with a given 64-bit sequence number. ``tunnel_header`` (an ``IP``/``IPv6`` packet) makes
    it a tunnel-mode SA; otherwise transport mode.
    """
    expected = _GCM_KEY_MATERIAL_LEN.get(algorithm)
    if expected is None:
        raise ValueError(f"algorithm must be 1 (AES-GCM-128) or 2 (AES-GCM-256): {algorithm!r}")
    if len(key_material) != expected:
        raise ValueError(
            f"key_material for algorithm {algorithm} must be {expected} bytes (key || salt)"
        )
    return SecurityAssociation(
        ESP,
        spi=spi,
        crypt_algo="AES-GCM",
        crypt_key=key_material,
        auth_algo="NULL",
        tunnel_header=tunnel_header,
        esn_en=esn,
        esn=esn_high,
    )


def scapy_encrypt(sa: SecurityAssociation, packet: Packet, seq: int, iv: bytes) -> Packet:
    """``packet`` (an ``IP``/``IPv6`` packet) encrypted by ``sa`` with 64-bit sequence number
    ``seq`` and 8-byte explicit ``iv``; returns the outer IP packet.

    The sequence number goes through the SA's attributes because scapy's
    ``encrypt(seq_num=..., esn=...)`` treats 0 as "not given". Without ESN ``seq`` must fit
    in 32 bits.
    """
    if not sa.esn_en and seq >> 32:
        raise ValueError(f"sequence number {seq:#x} needs ESN")
    sa.seq_num = seq & 0xFFFFFFFF
    if sa.esn_en:
        sa.esn = seq >> 32
    result: Packet = sa.encrypt(packet, iv=iv)
    return result


def ether_frame(
    packet: Packet, src: str = "02:00:00:00:00:01", dst: str = "02:00:00:00:00:02"
) -> bytes:
    """The raw bytes of ``packet`` (``IP`` or ``IPv6``) behind an Ethernet header."""
    if not isinstance(packet, IP | IPv6):
        raise TypeError(f"ether_frame takes an IP or IPv6 packet, not {type(packet).__name__}")
    return bytes(Ether(src=src, dst=dst) / packet)
