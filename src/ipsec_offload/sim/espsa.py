"""Wireshark's ESP SA table (the ``esp_sa`` UAT file), so that Wireshark can decrypt the wire.

One line per SA, eight quoted, comma-separated fields, as Wireshark 4.0 reads them::

    "IPv4","192.0.2.1","192.0.2.2","0x00001001","AES-GCM with 16 octet ICV [RFC4106]",
    "0x<key || salt in hex>","NULL",""

(on one line): protocol (``IPv4`` or ``IPv6``), source address, destination address, SPI,
encryption algorithm, encryption key, authentication algorithm, authentication key. AES-GCM
carries its own ICV, so the authentication algorithm is ``NULL`` with an empty key; the
encryption key is the key followed by the 4-byte salt (RFC 4106 section 8.1), and its length
tells AES-GCM-128 (20 bytes) from AES-GCM-256 (36 bytes). Lines starting with ``#`` are
comments.

Wireshark 4.0 has no sequence-number column: it always authenticates ``SPI || seq`` (32-bit
sequence numbers). For an SA with extended sequence numbers (RFC 4303 section 2.2.1) it still
decrypts the payload (the keystream does not depend on the AAD) but reports the ICV as bad.
Such an SA gets a comment line saying so, which :func:`parse_esp_sa` reads back.

The file goes in the Wireshark configuration directory as ``esp_sa`` (for example a directory
named by ``WIRESHARK_CONFIG_DIR``), and decryption is switched on with
``-o esp.enable_encryption_decode:TRUE`` (``-o esp.enable_authentication_check:TRUE`` to have
the ICV checked).
"""

from __future__ import annotations

import csv
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ipsec_offload.errors import UsageError
from ipsec_offload.sim.outputs import write_text

__all__ = [
    "ESP_SA_ALGORITHM_AES_GCM_128",
    "ESP_SA_ALGORITHM_AES_GCM_256",
    "SALT_LEN",
    "EspSaEntry",
    "format_esp_sa",
    "parse_esp_sa",
    "read_esp_sa",
    "write_esp_sa",
]

ESP_SA_ALGORITHM_AES_GCM_128 = 1
"""Algorithm code of AES-GCM with a 128-bit key and a 16-octet ICV (as in the config channel)."""
ESP_SA_ALGORITHM_AES_GCM_256 = 2
"""Algorithm code of AES-GCM with a 256-bit key and a 16-octet ICV (as in the config channel)."""

SALT_LEN = 4
"""Length of the salt at the end of the key material (RFC 4106 section 8.1)."""

_KEY_MATERIAL_LEN = {
    ESP_SA_ALGORITHM_AES_GCM_128: 16 + SALT_LEN,
    ESP_SA_ALGORITHM_AES_GCM_256: 32 + SALT_LEN,
}
_ENCRYPTION_ALGORITHM = "AES-GCM with 16 octet ICV [RFC4106]"
_AUTHENTICATION_ALGORITHM = "NULL"
_HEADER = "# Wireshark ESP SA table (esp_sa), written by ipsec-offload\n"
_ESN_COMMENT = re.compile(r"#\s*SPI (0x[0-9a-fA-F]+) uses extended sequence numbers")
_ALGORITHM_BY_LENGTH = {length: alg for alg, length in _KEY_MATERIAL_LEN.items()}
_PROTOCOL_ADDRESS_LEN = {"IPv4": 4, "IPv6": 16}
_FIELDS = 8


@dataclass(frozen=True, slots=True)
class EspSaEntry:
    """One ESP SA as Wireshark needs it to decrypt.

    ``src`` and ``dst`` are raw addresses of the outer IP header (both 4 or both 16 bytes;
    ``src`` None matches any source, written as Wireshark's ``*`` wildcard),
    ``key_material`` the key followed by the 4-byte salt, ``algorithm`` 1 for AES-GCM-128 and
    2 for AES-GCM-256, ``esn`` whether the SA uses extended sequence numbers.
    """

    src: bytes | None
    dst: bytes
    spi: int
    key_material: bytes
    algorithm: int
    esn: bool = False

    def __post_init__(self) -> None:
        for name, addr in (("src", self.src or self.dst), ("dst", self.dst)):
            if not isinstance(addr, bytes) or len(addr) not in (4, 16):
                raise UsageError(
                    f"EspSaEntry.{name} must be 4 (IPv4) or 16 (IPv6) raw bytes: {addr!r}"
                )
        if self.src is not None and len(self.src) != len(self.dst):
            raise UsageError("EspSaEntry.src and .dst must both be IPv4 or both be IPv6")
        if isinstance(self.spi, bool) or not isinstance(self.spi, int):
            raise UsageError(f"EspSaEntry.spi must be an int: {self.spi!r}")
        if not 0 <= self.spi <= 0xFFFFFFFF:
            raise UsageError(f"EspSaEntry.spi must fit in 32 bits: {self.spi:#x}")
        expected = _KEY_MATERIAL_LEN.get(self.algorithm)
        if expected is None:
            raise UsageError(
                f"EspSaEntry.algorithm must be {ESP_SA_ALGORITHM_AES_GCM_128} (AES-GCM-128) or"
                f" {ESP_SA_ALGORITHM_AES_GCM_256} (AES-GCM-256): {self.algorithm!r}"
            )
        if not isinstance(self.key_material, bytes) or len(self.key_material) != expected:
            raise UsageError(
                f"EspSaEntry.key_material for algorithm {self.algorithm} must be {expected}"
                f" bytes (key || 4-byte salt), got {len(self.key_material)}"
            )


def _address_text(addr: bytes | None) -> str:
    if addr is None:
        return "*"
    if len(addr) == 4:
        return str(ipaddress.IPv4Address(addr))
    return ipaddress.IPv6Address(addr).compressed


def _line(entry: EspSaEntry) -> str:
    fields = (
        "IPv4" if len(entry.dst) == 4 else "IPv6",
        _address_text(entry.src),
        _address_text(entry.dst),
        f"0x{entry.spi:08x}",
        _ENCRYPTION_ALGORITHM,
        "0x" + entry.key_material.hex(),
        _AUTHENTICATION_ALGORITHM,
        "",
    )
    return ",".join(f'"{field}"' for field in fields) + "\n"


def format_esp_sa(entries: Iterable[EspSaEntry]) -> str:
    """The text of an ``esp_sa`` file for ``entries``, in their order (Wireshark 4.0 format).

    The first line is a comment; an SA with ESN is preceded by a comment saying that Wireshark
    decrypts it but cannot check its ICV.
    """
    parts = [_HEADER]
    for entry in entries:
        if not isinstance(entry, EspSaEntry):
            raise UsageError(f"format_esp_sa takes EspSaEntry items, not {type(entry).__name__}")
        if entry.esn:
            parts.append(
                f"# SPI 0x{entry.spi:08x} uses extended sequence numbers:"
                " Wireshark decrypts it but reports its ICV as bad\n"
            )
        parts.append(_line(entry))
    return "".join(parts)


def write_esp_sa(path: str | os.PathLike[str], entries: Iterable[EspSaEntry]) -> None:
    """Write an ``esp_sa`` file for ``entries`` to ``path``, replacing it.

    Raises :class:`UsageError` naming the file if it cannot be written.
    """
    write_text(path, format_esp_sa(entries), "esp_sa file")


def parse_esp_sa(text: str, source: str = "esp_sa") -> list[EspSaEntry]:
    """The SAs of an ``esp_sa`` file's text, as :func:`format_esp_sa` writes them.

    Reads what this module writes, and Wireshark's own files where they stay within it:
    protocol ``IPv4`` or ``IPv6``, a source address or ``*``, a destination address, a hex SPI,
    ``AES-GCM with 16 octet ICV [RFC4106]`` with ``0x`` key || salt (20 or 36 bytes), any
    authentication columns (AES-GCM needs none). A comment saying that an SPI uses extended
    sequence numbers marks the next entry with that SPI as ESN. Blank lines and other comments
    are skipped. Raises :class:`UsageError` naming ``source``, the line and what is wrong.
    """
    entries: list[EspSaEntry] = []
    esn_spis: set[int] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            marked = _ESN_COMMENT.match(stripped)
            if marked:
                esn_spis.add(int(marked.group(1), 16))
            continue
        where = f"{source}: line {number}"
        entry = _parse_line(stripped, where, esn_spis)
        esn_spis.discard(entry.spi)
        entries.append(entry)
    return entries


def _parse_line(line: str, where: str, esn_spis: set[int]) -> EspSaEntry:
    try:
        fields = next(csv.reader([line], skipinitialspace=True))
    except csv.Error as exc:
        raise UsageError(f"{where}: not a line of quoted, comma-separated fields: {exc}") from None
    if len(fields) < _FIELDS - 2:
        raise UsageError(f"{where}: {len(fields)} fields, an esp_sa line has {_FIELDS}")
    protocol, src_text, dst_text, spi_text, algorithm, key_text = fields[:6]
    address_len = _PROTOCOL_ADDRESS_LEN.get(protocol)
    if address_len is None:
        raise UsageError(f"{where}: protocol {protocol!r}, give IPv4 or IPv6")
    src = None if src_text == "*" else _address(src_text, address_len, where, "source")
    dst = _address(dst_text, address_len, where, "destination")
    try:
        spi = int(spi_text, 16)
    except ValueError:
        raise UsageError(f"{where}: SPI {spi_text!r} is not a hex number like 0x00001001") from None
    if algorithm != _ENCRYPTION_ALGORITHM:
        raise UsageError(
            f"{where}: encryption algorithm {algorithm!r} is not supported,"
            f" only {_ENCRYPTION_ALGORITHM!r}"
        )
    key_hex = key_text[2:] if key_text[:2].lower() == "0x" else key_text
    try:
        key_material = bytes.fromhex(key_hex)
    except ValueError:
        raise UsageError(f"{where}: encryption key {key_text!r} is not 0x and hex digits") from None
    code = _ALGORITHM_BY_LENGTH.get(len(key_material))
    if code is None:
        raise UsageError(
            f"{where}: encryption key of {len(key_material)} bytes; AES-GCM takes key || salt"
            " of 20 (AES-GCM-128) or 36 (AES-GCM-256) bytes"
        )
    try:
        return EspSaEntry(src, dst, spi, key_material, code, esn=spi in esn_spis)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def _address(text: str, length: int, where: str, what: str) -> bytes:
    try:
        packed = ipaddress.ip_address(text).packed
    except ValueError:
        raise UsageError(f"{where}: {what} address {text!r} is not an IP address") from None
    if len(packed) != length:
        raise UsageError(f"{where}: {what} address {text} does not match the protocol")
    return packed


def read_esp_sa(path: str | os.PathLike[str]) -> list[EspSaEntry]:
    """The SAs of the ``esp_sa`` file at ``path`` (see :func:`parse_esp_sa`).

    Raises :class:`UsageError` naming the file if it cannot be read or a line is wrong.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as source:
            text = source.read()
    except OSError as exc:
        raise UsageError(f"{name}: cannot read esp_sa file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not an esp_sa file: it is not text") from None
    return parse_esp_sa(text, name)
