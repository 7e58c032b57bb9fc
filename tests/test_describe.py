"""sim.describe: the comment a pcapng packet carries names what the frame is."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ipsec_offload.cli.main import main
from ipsec_offload.sim.describe import describe_frame, describer
from ipsec_offload.sim.pcap import read_pcap
from ipsec_offload.wire.config import (
    ConfigMessage,
    ConfigStatus,
    Opcode,
    build_config,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag, build_ethernet
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


def test_a_config_request_and_reply_are_named_with_txn_and_status() -> None:
    eth = build_ethernet(EthernetHeader(A, B, EtherType.CONFIG))
    request = eth + build_config(ConfigMessage(Opcode.ADD_SA, 0x12, ()))
    reply = eth + build_config(
        ConfigMessage(Opcode.ADD_SA | Opcode.REPLY, 0x12, encode_sa_index(3), ConfigStatus.EXISTS)
    )
    assert describe_frame(request, rx=False) == "config ADD_SA request, txn 0x12"
    assert describe_frame(reply, rx=True) == "config ADD_SA reply, txn 0x12, status EXISTS"
    assert describe_frame(eth + b"\x01", rx=False).startswith("config frame that does not parse")


def test_the_metadata_word_is_read_as_tx_toward_the_agent_and_rx_from_it() -> None:
    tx = build_tx_metadata(TxMetadata(True, 17, 14, 5))
    rx = build_rx_metadata(RxMetadata(True, RxStatus.REPLAY, 9))
    tagged_tx = build_ethernet(EthernetHeader(A, B, EtherType.IPV4, (), tx)) + ESP_V4
    tagged_rx = build_ethernet(EthernetHeader(A, B, EtherType.IPV4, (), rx)) + ESP_V4
    assert describe_frame(tagged_tx, rx=False) == (
        f"Tx metadata {tx:#010x} (offload, next header 17, L3 at 14, ESP at 20),"
        " ESP SPI 0x00001001 seq 7"
    )
    assert describe_frame(tagged_rx, rx=True) == (
        f"Rx metadata {rx:#010x} (REPLAY, SA index 9), ESP SPI 0x00001001 seq 7"
    )
    assert describer("agent-to-nic")(tagged_rx) == describe_frame(tagged_rx, rx=True)
    assert "that does not parse" in describe_frame(tagged_rx, rx=False)  # Rx bits as Tx


def test_vlans_esp_other_ethertypes_and_garbage() -> None:
    vlan = build_ethernet(EthernetHeader(A, B, EtherType.IPV4, (VlanTag(0x8100, 20),)))
    assert describe_frame(vlan + ESP_V4, rx=False) == "VLAN 20, ESP SPI 0x00001001 seq 7"
    arp = build_ethernet(EthernetHeader(A, B, 0x0806)) + bytes(28)
    assert describe_frame(arp, rx=False) == "EtherType 0x0806"
    assert describe_frame(b"\x00" * 5, rx=False).startswith("not an Ethernet frame")


def test_run_pcapng_writes_each_link_with_both_directions_and_comments(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "basic", "--pcapng", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for link in ("host-link", "wire-link"):
        assert read_pcap(out / f"{link}.pcapng") == read_pcap(out / f"{link}.pcap")
        data = (out / f"{link}.pcapng").read_bytes()
        assert data.count(b"agent") >= 2  # the two interfaces' names
    host = (out / "host-link.pcapng").read_bytes()
    assert b"config GET_CAPS request, txn 0x1" in host
    assert b"Tx metadata" in host and b"Rx metadata" in host
