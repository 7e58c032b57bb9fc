"""sim.espsa: the esp_sa file format, and proof that tshark decrypts with the file we write.

The ESP frames are built by scapy (tools.scapy_sa), written with our write_pcap, and
dissected by tshark with our esp_sa file; tshark must give back the UDP datagrams that were
sent. AES-GCM is also checked against the ``cryptography`` library directly, so that the
scapy SA set-up (key || salt, AAD with and without ESN) is known to follow RFC 4106.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP
from scapy.packet import Packet, Raw

from ipsec_offload.errors import UsageError
from ipsec_offload.sim.espsa import EspSaEntry, format_esp_sa, write_esp_sa
from ipsec_offload.sim.pcap import PcapRecord, write_pcap
from tools import (
    REQUIRE_TOOLS_ENV,
    TsharkError,
    ether_frame,
    require_tool,
    scapy_encrypt,
    scapy_sa,
    tshark_decode,
)

KEY128 = bytes(range(16)) + bytes.fromhex("a0a1a2a3")
KEY256 = bytes(range(0x20, 0x40)) + bytes.fromhex("b0b1b2b3")

V4_A = bytes([192, 0, 2, 1])
V4_B = bytes([198, 51, 100, 7])
V6_A = bytes.fromhex("20010db8000000000000000000000001")
V6_B = bytes.fromhex("20010db8000000000000000000000002")

FIELDS = [
    "esp.spi",
    "esp.sequence",
    "udp.srcport",
    "udp.dstport",
    "data.data",
    "esp.pad_len",
    "esp.protocol",
    "esp.icv_good",
    "esp.icv_bad",
]


@dataclass(frozen=True)
class Case:
    """One SA and the datagrams sent on it."""

    entry: EspSaEntry
    first_seq: int
    payloads: tuple[bytes, ...]

    def inner(self, payload: bytes, index: int) -> Packet:
        udp = UDP(sport=50000 + index, dport=50100 + self.entry.spi % 100) / Raw(payload)
        if len(self.entry.src) == 4:
            return IP(src=_text(self.entry.src), dst=_text(self.entry.dst)) / udp
        return IPv6(src=_text(self.entry.src), dst=_text(self.entry.dst)) / udp


def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


# Payload lengths 8..11 give every pad length 0..3 for a UDP datagram in transport mode.
PAYLOADS = (b"payload0", b"payload01", b"payload012", b"payload0123")

CASES = {
    "ipv4-gcm128": Case(EspSaEntry(V4_A, V4_B, 0x00001001, KEY128, 1), 1, PAYLOADS),
    "ipv6-gcm256": Case(EspSaEntry(V6_A, V6_B, 0x00002002, KEY256, 2), 7, PAYLOADS),
    "ipv4-gcm256": Case(EspSaEntry(V4_B, V4_A, 0xC0FFEE01, KEY256, 2), 0xFFFFFFFE, PAYLOADS[:2]),
    "ipv6-gcm128-esn": Case(
        EspSaEntry(V6_B, V6_A, 0x00003003, KEY128, 1, esn=True), (1 << 32) + 5, PAYLOADS
    ),
}


def _frames(case: Case) -> list[bytes]:
    sa = scapy_sa(case.entry.spi, case.entry.key_material, case.entry.algorithm, esn=case.entry.esn)
    frames = []
    for index, payload in enumerate(case.payloads):
        seq = case.first_seq + index
        iv = struct.pack("!Q", seq)  # the IV convention of the spec: IV = sequence number
        frames.append(ether_frame(scapy_encrypt(sa, case.inner(payload, index), seq, iv)))
    return frames


def _pad_len(payload: bytes) -> int:
    return -(8 + len(payload) + 2) % 4


def test_format_esp_sa_golden() -> None:
    entries = [
        EspSaEntry(V4_A, V4_B, 0xABCD, KEY128, 1),
        EspSaEntry(V6_A, V6_B, 0x12345678, KEY256, 2, esn=True),
    ]
    assert format_esp_sa(entries) == (
        "# Wireshark ESP SA table (esp_sa), written by ipsec-offload\n"
        '"IPv4","192.0.2.1","198.51.100.7","0x0000abcd",'
        '"AES-GCM with 16 octet ICV [RFC4106]",'
        '"0x000102030405060708090a0b0c0d0e0fa0a1a2a3","NULL",""\n'
        "# SPI 0x12345678 uses extended sequence numbers:"
        " Wireshark decrypts it but reports its ICV as bad\n"
        '"IPv6","2001:db8::1","2001:db8::2","0x12345678",'
        '"AES-GCM with 16 octet ICV [RFC4106]",'
        '"0x202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3fb0b1b2b3",'
        '"NULL",""\n'
    )
    assert format_esp_sa([]) == "# Wireshark ESP SA table (esp_sa), written by ipsec-offload\n"


def test_write_esp_sa_writes_the_formatted_text(tmp_path: Path) -> None:
    entries = [CASES["ipv4-gcm128"].entry]
    path = tmp_path / "esp_sa"
    write_esp_sa(path, entries)
    assert path.read_bytes() == format_esp_sa(entries).encode("ascii")
    with pytest.raises(UsageError, match="cannot write esp_sa file"):
        write_esp_sa(tmp_path / "missing" / "esp_sa", entries)


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"src": b"\x01\x02\x03"}, "EspSaEntry.src"),
        ({"dst": V6_B}, "both be IPv4"),
        ({"spi": 1 << 32}, "32 bits"),
        ({"spi": -1}, "32 bits"),
        ({"algorithm": 3}, "EspSaEntry.algorithm"),
        ({"algorithm": 2}, "36 bytes"),
        ({"key_material": KEY128[:16]}, "20 bytes"),
    ],
)
def test_bad_entry_is_a_usage_error(kwargs: dict[str, object], what: str) -> None:
    fields: dict[str, object] = {
        "src": V4_A,
        "dst": V4_B,
        "spi": 1,
        "key_material": KEY128,
        "algorithm": 1,
    }
    fields.update(kwargs)
    with pytest.raises(UsageError, match=what):
        EspSaEntry(**fields)  # type: ignore[arg-type]


@pytest.mark.interop
@pytest.mark.parametrize("esn", [False, True])
def test_scapy_sa_is_rfc4106(esn: bool) -> None:
    """The scapy SA from tools matches AES-GCM computed directly (key || salt, AAD, IV)."""
    spi, seq, iv = 0x01020304, (7 << 32) + 9 if esn else 9, bytes.fromhex("1122334455667788")
    sa = scapy_sa(spi, KEY256, 2, esn=esn)
    inner = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2) / Raw(b"abc")
    esp = scapy_encrypt(sa, inner, seq, iv)[ESP]
    assert (esp.spi, esp.seq) == (spi, seq & 0xFFFFFFFF)
    udp = bytes(inner[UDP])
    pad = bytes(range(1, _pad_len(udp[8:]) + 1))
    plaintext = udp + pad + bytes([len(pad), 17])
    aad = struct.pack("!II", spi, seq >> 32) if esn else struct.pack("!I", spi)
    aad += struct.pack("!I", seq & 0xFFFFFFFF)
    expected = AESGCM(KEY256[:32]).encrypt(KEY256[32:] + iv, plaintext, aad)
    assert esp.data == iv + expected
    assert bytes(sa.decrypt(IP(bytes(esp.underlayer)))[UDP]) == udp


@pytest.mark.interop
def test_tshark_decrypts_with_our_esp_sa(tmp_path: Path) -> None:
    frames: list[tuple[Case, int, bytes]] = []
    for case in CASES.values():
        frames += [(case, i, frame) for i, frame in enumerate(_frames(case))]
    pcap = tmp_path / "esp.pcap"
    write_pcap(pcap, [PcapRecord.at(1.0 + n / 1000, f) for n, (_, _, f) in enumerate(frames)])

    rows = tshark_decode(pcap, [case.entry for case in CASES.values()], FIELDS)

    assert len(rows) == len(frames)
    for row, (case, index, _) in zip(rows, frames, strict=True):
        payload = case.payloads[index]
        where = f"{case.entry.spi:#010x} #{index}: {row}"
        assert int(row["esp.spi"], 16) == case.entry.spi, where
        assert int(row["esp.sequence"]) == (case.first_seq + index) & 0xFFFFFFFF, where
        # Decrypted: the UDP header and payload are back, and the ESP trailer is dissected.
        assert int(row["udp.srcport"]) == 50000 + index, where
        assert int(row["udp.dstport"]) == 50100 + case.entry.spi % 100, where
        assert bytes.fromhex(row["data.data"]) == payload, where
        assert int(row["esp.pad_len"]) == _pad_len(payload), where
        assert int(row["esp.protocol"], 0) == 17, where
        if not case.entry.esn:
            # Wireshark 4.0 authenticates SPI || seq only: it cannot check an ESN SA's ICV.
            assert (row["esp.icv_good"], row["esp.icv_bad"]) == ("1", "0"), where


@pytest.mark.interop
def test_tshark_with_esp_sa_file_path_and_negative_controls(tmp_path: Path) -> None:
    case = CASES["ipv4-gcm128"]
    good = _frames(case)[0]
    tampered = bytearray(good)
    tampered[-20] ^= 0x01  # a ciphertext byte, 4 bytes before the 16-byte ICV
    unknown = _frames(Case(EspSaEntry(V4_A, V4_B, 0x0BADBAD0, KEY128, 1), 1, PAYLOADS))[0]
    pcap = tmp_path / "controls.pcap"
    write_pcap(
        pcap,
        [
            PcapRecord.at(0.0, good),
            PcapRecord.at(1.0, bytes(tampered)),
            PcapRecord.at(2.0, unknown),
        ],
    )
    esp_sa = tmp_path / "esp_sa"
    write_esp_sa(esp_sa, [case.entry])

    good_row, tampered_row, unknown_row = tshark_decode(pcap, esp_sa, FIELDS)

    assert bytes.fromhex(good_row["data.data"]) == PAYLOADS[0]
    assert (good_row["esp.icv_good"], good_row["esp.icv_bad"]) == ("1", "0")
    assert (tampered_row["esp.icv_good"], tampered_row["esp.icv_bad"]) == ("0", "1")
    assert unknown_row["esp.spi"] == "0x0badbad0"
    assert unknown_row["udp.dstport"] == ""
    assert unknown_row["esp.icv_good"] in ("", "0")


@pytest.mark.interop
def test_tshark_json_output(tmp_path: Path) -> None:
    case = CASES["ipv6-gcm256"]
    pcap = tmp_path / "json.pcap"
    write_pcap(pcap, [PcapRecord.at(0.0, frame) for frame in _frames(case)[:1]])
    (layers,) = tshark_decode(pcap, [case.entry])
    assert layers["udp"]["udp.dstport"] == str(50100 + case.entry.spi % 100)
    assert "esp" in layers


def test_require_tool_skips_or_fails_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv(REQUIRE_TOOLS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="tshark not installed: apt-get install"):
        require_tool("tshark")
    monkeypatch.setenv(REQUIRE_TOOLS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="tshark not installed"):
        require_tool("tshark")


@pytest.mark.interop
def test_tshark_decode_reports_a_bad_esp_sa_file(tmp_path: Path) -> None:
    pcap = tmp_path / "one.pcap"
    write_pcap(pcap, [PcapRecord.at(0.0, _frames(CASES["ipv4-gcm128"])[0])])
    esp_sa = tmp_path / "esp_sa"
    esp_sa.write_text('"IPv4","*","*","*","no such algorithm","0x00","NULL",""\n')
    with pytest.raises(TsharkError, match="esp_sa"):
        tshark_decode(pcap, esp_sa, ["esp.spi"])
