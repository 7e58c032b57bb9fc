"""Interop with Wireshark: tshark decrypts the basic scenario's wire with its esp_sa file.

A run writes the link captures and the keys (spec section 8); tshark, configured with
nothing but that esp_sa file, must decrypt every ESP frame of wire-link.pcap and find inside
exactly the datagrams and pings the scenario's flows sent. Wireshark 4.0 authenticates only the
8-byte AAD (SPI || seq), so the ICV check is asserted for the SAs without ESN only (see
sim/espsa.py); the ESN SAs are checked by scapy in test_interop_scapy.py.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ipsec_offload.sim.pcap import read_pcap
from ipsec_offload.sim.report import build_report, write_outputs
from ipsec_offload.sim.runner import payload_of, prepare
from ipsec_offload.sim.scenario import Scenario, builtin_scenario
from tools import tshark_decode

pytestmark = pytest.mark.interop

WIRE_FIELDS = [
    "frame.number",
    "frame.protocols",
    "ip.src",
    "ipv6.src",
    "esp.spi",
    "esp.sequence",
    "esp.iv",
    "esp.pad_len",
    "esp.protocol",
    "esp.icv_good",
    "esp.icv_bad",
    "udp.srcport",
    "udp.dstport",
    "icmp.type",
    "icmpv6.type",
    "data.data",
    "_ws.malformed",
]

HOST_FIELDS = ["frame.number", "frame.len", "eth.type", "frame.protocols", "_ws.malformed"]

# inner protocol chains tshark reports after "esp" (transport: UDP/ICMP; tunnel: IP in ESP)
PROTOCOL_CHAINS = {
    "udp:data": ("udp", 17),
    "icmp:data": ("ping", 1),
    "ip:udp:data": ("udp", 4),
    "ip:icmp:data": ("ping", 4),
    "ipv6:udp:data": ("udp", 41),
    "ipv6:icmpv6:data": ("ping", 41),
}


SCENARIO, _SOURCE = builtin_scenario("basic")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo")
    run = prepare(SCENARIO, _SOURCE)
    run.run()
    report = build_report(run)
    write_outputs(run.bed, out, report)
    return out, report


def expected_esp_frames(scenario: Scenario) -> Counter[tuple[str, int, bytes]]:
    """(kind, family, payload) of every ESP frame the flows put on the wire: one per
    datagram, two per ping (request and reply carry the same data)."""
    frames: Counter[tuple[str, int, bytes]] = Counter()
    for i, flow in enumerate(scenario.flow):
        kind = "udp" if flow.protocol == "udp" else "ping"
        for n in range(flow.count):
            payload = payload_of(i, n, flow.size)
            frames[(kind, flow.family, payload)] += 1 if kind == "udp" else 2
    return frames


def test_tshark_decrypts_every_wire_frame(tshark: str, demo: tuple[Path, dict[str, Any]]) -> None:
    out, report = demo
    rows = tshark_decode(out / "wire-link.pcap", out / "esp_sa", fields=WIRE_FIELDS)

    on_wire = len(read_pcap(out / "agent-to-wire.pcap")) + len(
        read_pcap(out / "wire-to-agent.pcap")
    )
    assert len(rows) == on_wire
    hosts = report["hosts"]
    sent_esp = sum(
        h["counters"]["tx_esp_offloaded"] + h["counters"]["tx_esp_software"] for h in hosts.values()
    )
    assert sum(expected_esp_frames(SCENARIO).values()) == sent_esp == 80
    esp_rows = [r for r in rows if r["esp.spi"]]
    assert len(esp_rows) == len(rows) == sent_esp  # the demo puts only ESP on the wire

    esn_of = {sa.name: sa.esn for sa in SCENARIO.sa}
    esn_by_spi = {int(sa["spi"], 16): esn_of[sa["sa"]] for sa in report["sas"]}
    assert sorted(esn_by_spi.values()) == [False, False, True, True]
    addresses = {
        name: {ipaddress.ip_address(s["src"]) for s in h["states"] if s["direction"] == "OUTBOUND"}
        for name, h in hosts.items()
    }
    seqs: dict[int, list[int]] = {}
    seen: Counter[tuple[str, int, bytes]] = Counter()
    for row in esp_rows:
        where = f"frame {row['frame.number']}: {row}"
        assert not row["_ws.malformed"], where
        protocols = row["frame.protocols"]
        assert "esp:" in protocols, where
        chain = protocols.split(":esp:", 1)[1]
        assert chain in PROTOCOL_CHAINS, f"not decrypted: {where}"
        kind, next_header = PROTOCOL_CHAINS[chain]
        assert int(row["esp.protocol"], 0) == next_header, where
        assert int(row["esp.pad_len"]) in range(4), where

        spi = int(row["esp.spi"], 16)
        seq = int(row["esp.sequence"])
        seqs.setdefault(spi, []).append(seq)
        assert row["esp.iv"] == f"{seq:016x}", where  # spec 2: IV = the 64-bit counter
        if not esn_by_spi[spi]:
            assert (row["esp.icv_good"], row["esp.icv_bad"]) == ("1", "0"), where

        family = 4 if row["ip.src"] else 6
        outer_src = ipaddress.ip_address((row["ip.src"] or row["ipv6.src"]).split(",")[0])
        payload = bytes.fromhex(row["data.data"])
        seen[(kind, family, payload)] += 1
        if kind == "udp":
            index = int(payload.split(b" ")[1])  # "flow <index> packet <n> ..."
            assert outer_src in addresses[SCENARIO.flow[index].source], where
            assert int(row["udp.srcport"]) == 40000 + index, where
            assert int(row["udp.dstport"]) == 5000 + index, where

    assert seen == expected_esp_frames(SCENARIO)
    # every SA numbers its packets 1, 2, 3, ... in wire order
    assert {spi: s == list(range(1, len(s) + 1)) for spi, s in seqs.items()} == dict.fromkeys(
        esn_by_spi, True
    )
    packets = {
        int(sa["spi"], 16): sa["packets"] for sa in report["sas"] if sa["direction"] == "outbound"
    }
    assert {spi: len(s) for spi, s in seqs.items()} == packets


def test_tshark_reads_the_host_link(tshark: str, demo: tuple[Path, dict[str, Any]]) -> None:
    """Metadata (0x88B5) and config (0x88B6) frames are unknown EtherTypes to Wireshark: the
    file must still read cleanly, every frame intact."""
    out, _report = demo
    rows = tshark_decode(out / "host-link.pcap", fields=HOST_FIELDS)
    records = read_pcap(out / "host-link.pcap")
    halves = len(read_pcap(out / "nic-to-agent.pcap")) + len(read_pcap(out / "agent-to-nic.pcap"))
    assert len(rows) == len(records) == halves
    assert [int(r["frame.len"]) for r in rows] == [len(r.frame) for r in records]
    assert {r["eth.type"] for r in rows} == {"0x88b5", "0x88b6"}
    for row, record in zip(rows, records, strict=True):
        assert int(row["eth.type"], 16) == int.from_bytes(record.frame[12:14], "big")
        assert row["frame.protocols"] == "eth:ethertype:data"
        assert not row["_ws.malformed"]
