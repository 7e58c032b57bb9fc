"""What a frame on the NIC-agent link or the wire is, in a few words: the comment a pcapng
packet carries (`sim/pcap.py`, `run --pcapng`), so that a bench engineer reading the capture
in Wireshark sees the frame's meaning beside its bytes.

Only the project's own codecs read the frame; one that does not parse is named as such."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from ipsec_offload.errors import ParseError
from ipsec_offload.wire.config import ConfigStatus, Opcode, parse_config_header
from ipsec_offload.wire.ethernet import EtherType, ethernet_fields
from ipsec_offload.wire.metadata import parse_rx_metadata, tx_metadata_fields
from ipsec_offload.wire.packet import find_esp


def _name(enum: type[Opcode] | type[ConfigStatus], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"{value:#04x}"


def describe_frame(frame: bytes, rx: bool, meta_ethertype: int = EtherType.META) -> str:
    """The frame's meaning: a config message (opcode, request or reply, txn_id, status), the
    metadata tag's word (an Rx word toward the host, `rx`; else a Tx word), an ESP packet's
    SPI and sequence number, or its EtherType."""
    try:
        _dst, _src, ethertype, vlans, metadata, l3 = ethernet_fields(frame, meta_ethertype)
    except ParseError as exc:
        return f"not an Ethernet frame: {exc}"
    parts = [f"VLAN {'/'.join(str(v.vid) for v in vlans)}"] if vlans else []
    if ethertype == EtherType.CONFIG:
        try:
            message = parse_config_header(memoryview(frame)[l3:])
        except ParseError as exc:
            return f"config frame that does not parse: {exc}"
        kind = "reply" if message.is_reply else "request"
        parts.append(f"config {_name(Opcode, message.base_opcode)} {kind}")
        parts.append(f"txn {message.txn_id:#x}")
        if message.is_reply:
            parts.append(f"status {_name(ConfigStatus, message.status)}")
        return ", ".join(parts)
    if metadata is not None:
        parts.append(_rx_metadata(metadata) if rx else _tx_metadata(metadata))
    esp = find_esp(frame, meta_ethertype)
    if esp is not None:
        parts.append(f"ESP SPI {esp.spi:#010x} seq {esp.seq}")
    else:
        parts.append(f"EtherType {ethertype:#06x}")
    return ", ".join(parts)


def describer(link: str, meta_ethertype: int = EtherType.META) -> Callable[[bytes], str]:
    """`describe_frame` for the frames of a link direction (the agent's output toward the
    NIC carries Rx metadata; everything else, Tx metadata if any)."""
    return partial(describe_frame, rx=link == "agent-to-nic", meta_ethertype=meta_ethertype)


def _tx_metadata(word: int) -> str:
    try:
        offload, next_header, l3_offset, esp_offset = tx_metadata_fields(word)
    except ParseError as exc:
        return f"Tx metadata {word:#010x} that does not parse: {exc}"
    if not offload:
        return f"Tx metadata {word:#010x} (no offload)"
    return (
        f"Tx metadata {word:#010x} (offload, next header {next_header},"
        f" L3 at {l3_offset}, ESP at {esp_offset * 4})"
    )


def _rx_metadata(word: int) -> str:
    try:
        rx = parse_rx_metadata(word)
    except ParseError as exc:
        return f"Rx metadata {word:#010x} that does not parse: {exc}"
    if not rx.ipsec:
        return f"Rx metadata {word:#010x} (not IPsec)"
    return f"Rx metadata {word:#010x} ({rx.status.name}, SA index {rx.sa_index})"
