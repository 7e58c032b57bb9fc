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
Such an SA gets a comment line saying so.

The file goes in the Wireshark configuration directory as ``esp_sa`` (for example a directory
named by ``WIRESHARK_CONFIG_DIR``), and decryption is switched on with
``-o esp.enable_encryption_decode:TRUE`` (``-o esp.enable_authentication_check:TRUE`` to have
the ICV checked).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass

from ipsec_offload.errors import UsageError

__all__ = [
    "ESP_SA_ALGORITHM_AES_GCM_128",
    "ESP_SA_ALGORITHM_AES_GCM_256",
    "SALT_LEN",
    "EspSaEntry",
    "format_esp_sa",
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
    name = os.fspath(path)
    text = format_esp_sa(entries)
    try:
        with open(name, "w", encoding="ascii", newline="\n") as out:
            out.write(text)
    except OSError as exc:
        raise UsageError(f"{name}: cannot write esp_sa file: {exc.strerror or exc}") from None
