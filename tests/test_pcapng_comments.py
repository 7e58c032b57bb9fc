"""A pcapng packet's comment names what the frame is: the scoreboard's one-line summary, read
with the metadata layout of the link's direction."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ipsec_offload.cli.main import main
from ipsec_offload.sim.pcap import read_pcap
from ipsec_offload.sim.scoreboard import describer
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet
from ipsec_offload.wire.metadata import (
    RxMetadata,
    RxStatus,
    TxMetadata,
    build_rx_metadata,
    build_tx_metadata,
)

A, B = bytes.fromhex("020000000001"), bytes.fromhex("020000000010")
ESP_V4 = (
    bytes.fromhex("4500003c000100004032f6a7c0000201c0000202")
    + bytes.fromhex("00001001000000070000000000000007")
    + bytes(24)
)


def test_the_metadata_word_is_read_as_tx_toward_the_agent_and_rx_from_it() -> None:
    tx = build_tx_metadata(TxMetadata(False))
    rx = build_rx_metadata(RxMetadata(True, RxStatus.REPLAY, 9))
    assert "Tx meta" in describer("nic-to-agent")(
        build_ethernet(EthernetHeader(A, B, EtherType.IPV4, (), tx)) + ESP_V4
    )
    toward_host = build_ethernet(EthernetHeader(A, B, EtherType.IPV4, (), rx)) + ESP_V4
    summary = describer("agent-to-nic")(toward_host)
    assert summary.startswith("Rx meta REPLAY SA 9")
    assert "ESP SPI 0x00001001 seq 7" in summary


def test_run_pcapng_writes_each_link_with_both_directions_and_comments(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "basic", "--pcapng", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for link in ("host-link", "wire-link"):
        assert read_pcap(out / f"{link}.pcapng") == read_pcap(out / f"{link}.pcap")
    host = (out / "host-link.pcapng").read_bytes()
    assert b"nic-to-agent" in host and b"agent-to-nic" in host  # the interfaces' names
    assert b"config GET_CAPS txn 1, 26 bytes" in host
    assert b"Tx meta offload" in host and b"Rx meta OK" in host
