"""The Wireshark dissector (ipsec_offload/interop/ipsec_offload.lua) under tshark.

tshark loads the shipped file with ``-X lua_script:`` and prints PDML, whose ``showname`` is
what a person sees in Wireshark. Expected names and values come from the project's own
enums and codecs (Opcode, ConfigStatus, TlvType, RxStatus, parse_config, parse_*_metadata),
so every opcode, TLV, status and metadata field is checked against the wire format as
implemented: on hand-built frames, on malformed ones, on the agent's outputs and on every
pcap that ``ipsec-offload run`` writes. ESP behind a metadata tag must still decrypt with an
esp_sa file, and the plaintext the dissector shows for frames the agent encrypts or decrypted
must be what Wireshark decrypts on the wire.

tshark returns 0 even when a Lua script fails: every run checks stderr and looks for Lua
errors in the dissection.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from ipsec_offload.agent.agent import IpsecAgent
from ipsec_offload.cli.main import main as cli
from ipsec_offload.interop import dissector_path
from ipsec_offload.sim.espsa import EspSaEntry, write_esp_sa
from ipsec_offload.sim.pcap import PcapRecord, read_pcap, write_pcap
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    Caps,
    ConfigMessage,
    ConfigStatus,
    Direction,
    Event,
    EventType,
    ListSasReply,
    ListSasRequest,
    LocalAddr,
    Opcode,
    SaEntry,
    SaStats,
    Tlv,
    TlvType,
    build_config,
    encode_add_sa,
    encode_caps,
    encode_count,
    encode_event,
    encode_list_sas_reply,
    encode_list_sas_request,
    encode_local_addr,
    encode_sa_index,
    encode_sa_stats,
    parse_config,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag, build_ethernet
from ipsec_offload.wire.metadata import (
    RxMetadata,
    RxStatus,
    TxMetadata,
    build_rx_metadata,
    build_tx_metadata,
    parse_rx_metadata,
    parse_tx_metadata,
)
from tools import require_tool, scapy_encrypt, scapy_sa, tshark_decode

pytestmark = pytest.mark.interop

LUA = files("ipsec_offload.interop") / "ipsec_offload.lua"
AGENT_MAC = bytes.fromhex("020000000001")
HOST_MAC = bytes.fromhex("020000000010")
PEER_MAC = bytes.fromhex("020000000020")
LOCAL4, REMOTE4 = "192.0.2.1", "192.0.2.2"
LOCAL6, REMOTE6 = "2001:db8::1", "2001:db8::2"
KEY128 = bytes(range(1, 17)) + bytes.fromhex("cafebabe")
KEY256 = bytes(range(100, 132)) + bytes.fromhex("01020304")
_BENIGN_STDERR = ("Running as user ",)


# -- running tshark ------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One PDML field or protocol: abbreviation, display text, value."""

    name: str
    show: str
    showname: str
    value: str
    is_proto: bool = False


class Packet(list[Item]):
    """The items of one frame, in tree order."""

    def all(self, name: str) -> list[Item]:
        return [i for i in self if i.name == name]

    def one(self, name: str) -> Item:
        found = self.all(name)
        assert len(found) == 1, (name, found)
        return found[0]

    def names(self, prefix: str = "ipsec_offload.") -> list[str]:
        return [i.name for i in self if i.name.startswith(prefix)]

    def has(self, name: str) -> bool:
        return any(i.name == name for i in self)

    def _layer_at(self, start: int) -> Packet:
        end = next((n for n in range(start + 1, len(self)) if self[n].is_proto), len(self))
        return Packet(self[start:end])

    def layer(self, proto: str, index: int = 0) -> Packet:
        """The items of the ``index``-th ``proto`` layer (up to the next protocol)."""
        starts = [n for n, i in enumerate(self) if i.is_proto and i.name == proto]
        return self._layer_at(starts[index])

    def our_layers(self) -> list[Packet]:
        """Every layer of the dissector's protocols (ipsec_offload.*)."""
        return [
            self._layer_at(n)
            for n, i in enumerate(self)
            if i.is_proto and i.name.startswith("ipsec_offload.")
        ]


def lua_path() -> str:
    return os.fspath(LUA)


def dissect(
    pcap: Path,
    *,
    esp_sa: Path | Iterable[EspSaEntry] | None = None,
    prefs: Sequence[str] = (),
) -> list[Packet]:
    """tshark with the shipped dissector and a private profile; one Packet per frame."""
    tshark = require_tool("tshark")
    with tempfile.TemporaryDirectory(prefix="ipsec-offload-lua-") as tmp:
        config, home = Path(tmp) / "wireshark", Path(tmp) / "home"
        config.mkdir()
        home.mkdir()
        if isinstance(esp_sa, Path):
            shutil.copyfile(esp_sa, config / "esp_sa")
        elif esp_sa is not None:
            write_esp_sa(config / "esp_sa", esp_sa)
        env = dict(os.environ)
        env.update(
            WIRESHARK_CONFIG_DIR=str(config), HOME=str(home), XDG_CONFIG_HOME=str(home / ".c")
        )
        cmd = [tshark, "-n", "-r", os.fspath(pcap), "-X", f"lua_script:{lua_path()}"]
        cmd += ["-o", "esp.enable_encryption_decode:TRUE", "-T", "pdml"]
        for pref in prefs:
            cmd += ["-o", pref]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    complaints = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not line.startswith(_BENIGN_STDERR)
    ]
    assert proc.returncode == 0 and not complaints, (proc.returncode, complaints)
    packets = []
    for element in ET.fromstring(proc.stdout).iter("packet"):
        packet = Packet(
            Item(
                e.get("name", ""),
                e.get("show", ""),
                e.get("showname", ""),
                e.get("value", ""),
                e.tag == "proto",
            )
            for e in element.iter()
            if e.tag in ("field", "proto")
        )
        lua_errors = [
            i for i in packet if i.name == "_ws.lua.error" or "Lua Error" in i.show + i.showname
        ]
        assert not lua_errors, lua_errors
        packets.append(packet)
    return packets


def write_frames(path: Path, frames: Iterable[bytes]) -> Path:
    write_pcap(path, [PcapRecord.at(i * 0.001, f) for i, f in enumerate(frames)])
    return path


# -- what the dissector must show, from the project's codecs -------------------------------

_ALG_NAMES = {int(a): a.name.replace("_", "-") for a in Algorithm}


def _hex(data: bytes) -> str:
    return data.hex()


def expected_tlv(tlv: Tlv) -> list[tuple[str, str, str]]:
    """(abbreviation, "showname" or "value" or "show", text) the TLV's value must show."""
    v, t = tlv.value, TlvType(tlv.type)
    u = int.from_bytes(v, "big") if v else 0
    p = "ipsec_offload.cfg.tlv."
    if t is TlvType.SA_INDEX:
        return [(p + "sa_index", "showname", f"SA index: {u}")]
    if t is TlvType.DIR:
        name = "inbound (decrypt)" if u == 0 else "outbound (encrypt)"
        return [(p + "dir", "showname", f"Direction: {name} ({u})")]
    if t is TlvType.SPI:
        return [(p + "spi", "showname", f"SPI: 0x{u:08x}")]
    if t in (TlvType.DST_ADDR, TlvType.SRC_ADDR):
        side = "dst" if t is TlvType.DST_ADDR else "src"
        label = "Destination" if side == "dst" else "Source"
        family = "ipv4" if len(v) == 4 else "ipv6"
        addr = ipaddress.ip_address(v)
        return [(f"{p}{side}_{family}", "showname", f"{label} address: {addr}")]
    if t is TlvType.ALG:
        return [(p + "alg", "showname", f"Algorithm: {_ALG_NAMES[u]} ({u})")]
    if t is TlvType.KEY:
        return [
            (p + "key", "value", _hex(v)),
            (p + "key.aes_key", "value", _hex(v[:-4])),
            (p + "key.salt", "value", _hex(v[-4:])),
        ]
    if t is TlvType.WRAPPED_KEY:
        return [(p + "wrapped_key", "value", _hex(v))]
    if t is TlvType.LOCAL_MAC:
        return [(p + "local_mac", "showname", f"Local MAC: {v.hex(':')}")]
    if t is TlvType.VLAN:
        tpid, tci = struct.unpack("!HH", v)
        kind = {0x8100: "802.1Q", 0x88A8: "802.1ad"}[tpid]
        return [
            (p + "vlan.tpid", "showname", f"TPID: {kind} (0x{tpid:04x})"),
            (p + "vlan.tci", "showname", f"TCI: 0x{tci:04x}"),
            (p + "vlan.pcp", "show", str(tci >> 13)),
            (p + "vlan.dei", "show", str((tci >> 12) & 1)),
            (p + "vlan.vid", "show", str(tci & 0xFFF)),
        ]
    if t is TlvType.ESN:
        return [(p + "esn", "showname", "Extended sequence numbers: True")]
    if t is TlvType.STATS:
        counters = struct.unpack("!7Q", v)
        labels = ["Packets", "Bytes"] + [f"{RxStatus(s).name} errors" for s in range(1, 6)]
        keys = ["packets", "bytes", "no_sa", "auth_failed", "replay", "malformed", "sa_expired"]
        return [
            (f"{p}stats.{k}", "showname", f"{label}: {n}")
            for k, label, n in zip(keys, labels, counters, strict=True)
        ]
    if t is TlvType.SA_ENTRY:
        index, direction, spi, addr_len = struct.unpack_from("!IBIB", v)
        dst = ipaddress.ip_address(v[10 : 10 + addr_len])
        (seq,) = struct.unpack_from("!Q", v, 10 + addr_len)
        name = "inbound (decrypt)" if direction == 0 else "outbound (encrypt)"
        family = "ipv4" if addr_len == 4 else "ipv6"
        return [
            (p + "sa_entry.sa_index", "showname", f"SA index: {index}"),
            (p + "sa_entry.dir", "showname", f"Direction: {name} ({direction})"),
            (p + "sa_entry.spi", "showname", f"SPI: 0x{spi:08x}"),
            (p + "sa_entry.addr_len", "showname", f"Address length: {addr_len}"),
            (f"{p}sa_entry.dst_{family}", "showname", f"Destination address: {dst}"),
            (p + "sa_entry.seq", "showname", f"Sequence number: {seq}"),
        ]
    if t is TlvType.EVENT_TYPE:
        return [(p + "event_type", "showname", f"Event type: {EventType(u).name} ({u})")]
    if t is TlvType.BOOT_ID:
        return [(p + "boot_id", "showname", f"Boot ID: 0x{u:016x}")]
    if t is TlvType.CAPS:
        count = v[0]
        sad, window = struct.unpack_from("!II", v, 1 + count)
        return [
            (p + "caps.alg_count", "showname", f"Algorithm count: {count}"),
            *((p + "caps.alg", "showname", f"Algorithm: {_ALG_NAMES[a]} ({a})") for a in v[1:-8]),
            (p + "caps.sad_size", "showname", f"SAD size: {sad}"),
            (p + "caps.max_replay_window", "showname", f"Max replay window: {window}"),
        ]
    simple = {
        TlvType.REPLAY_WINDOW: ("replay_window", "Replay window"),
        TlvType.LIFETIME_PACKETS: ("lifetime_packets", "Lifetime (packets)"),
        TlvType.LIFETIME_BYTES: ("lifetime_bytes", "Lifetime (bytes)"),
        TlvType.COUNT: ("count", "Count"),
        TlvType.KEK_ID: ("kek_id", "KEK ID"),
        TlvType.SEQ: ("seq", "Sequence number"),
        TlvType.SOFT_LIFETIME_PACKETS: ("soft_lifetime_packets", "Soft lifetime (packets)"),
        TlvType.SOFT_LIFETIME_BYTES: ("soft_lifetime_bytes", "Soft lifetime (bytes)"),
    }
    key, label = simple[t]
    return [(p + key, "showname", f"{label}: {u}")]


def expected_config(msg: ConfigMessage) -> list[tuple[str, str, str]]:
    """Every field the dissector must show for a valid version-1 config message."""
    base = msg.opcode & 0x7F
    reply = " reply" if msg.opcode & 0x80 else ""
    p = "ipsec_offload.cfg."
    name = Opcode(base).name
    tlv_length = sum(4 + len(t.value) for t in msg.tlvs)
    out = [
        (p + "version", "showname", "Version: 1"),
        (p + "opcode", "showname", f"Opcode: {name}{reply} (0x{msg.opcode:02x})"),
        (p + "opcode.reply", "suffix", f"Reply: {bool(reply)}"),
        (p + "opcode.request", "suffix", f"Request opcode: {name} (0x{base:02x})"),
        (p + "status", "showname", f"Status: {ConfigStatus(msg.status).name} ({msg.status})"),
        (p + "flags", "showname", f"Flags: 0x{msg.flags:02x}"),
        (p + "port", "showname", f"Port: {msg.port}"),
        (p + "reserved", "showname", "Reserved: 0x00"),
        (p + "txn_id", "showname", f"Transaction ID: {msg.txn_id} (0x{msg.txn_id:08x})"),
        (p + "tlv_length", "showname", f"TLV length: {tlv_length}"),
    ]
    for tlv in msg.tlvs:
        name = TlvType(tlv.type).name
        out += [
            (p + "tlv.type", "showname", f"Type: {name} (0x{tlv.type:04x})"),
            (p + "tlv.length", "showname", f"Length: {len(tlv.value)}"),
            *expected_tlv(tlv),
        ]
    return out


def check_fields(packet: Packet, expected: list[tuple[str, str, str]]) -> None:
    """The named fields, in tree order, show exactly the expected texts (``suffix``: the
    showname ends with the text, for bit fields whose showname starts with the bits)."""
    wanted = {name for name, _, _ in expected}
    actual = [(i.name, i) for i in packet if i.name in wanted]
    assert [name for name, _ in actual] == [name for name, _, _ in expected]
    for (name, item), (_, attr, text) in zip(actual, expected, strict=True):
        if attr == "suffix":
            assert item.showname.endswith(text), (name, item.showname, text)
        else:
            assert getattr(item, attr) == text, (name, attr, getattr(item, attr), text)


_TLV_PROBLEMS = ("truncated", "bad_length", "unknown", "bad_value")


def check_config_frame(packet: Packet, msg: ConfigMessage) -> None:
    """Header, every TLV and every value as the project's codecs read them; no complaint."""
    layer = packet.layer("ipsec_offload.cfg")
    check_fields(layer, expected_config(msg))
    tlv_items = layer.all("ipsec_offload.cfg.tlv")
    assert [i.showname.split(":")[0] for i in tlv_items] == [
        f"TLV {TlvType(t.type).name}" for t in msg.tlvs
    ]
    problems = [n for n in layer.names("ipsec_offload.cfg.tlv.") if n.endswith(_TLV_PROBLEMS)]
    assert not problems
    assert not packet.has("_ws.malformed")


def expected_tx(word: int) -> list[tuple[str, str, str]]:
    """The Tx view of a word, as parse_tx_metadata reads it (direction first)."""
    m = parse_tx_metadata(word)
    p = "ipsec_offload.meta."
    return [
        (p + "direction", "show", "1"),
        (p + "tx", "show", f"0x{word:08x}"),
        (p + "offload", "suffix", f"OFFLOAD: {m.offload}"),
        (p + "tx_reserved", "show", "0x00000000"),
        (p + "next_header", "show", str(m.next_header)),
        (p + "l3_offset", "suffix", f"L3_OFFSET (bytes): {m.l3_offset}"),
        (p + "esp_offset", "suffix", f"({m.esp_offset * 4} bytes from the IP header)"),
    ]


def expected_rx(word: int) -> list[tuple[str, str, str]]:
    """The Rx view of a word, as parse_rx_metadata reads it (direction first)."""
    m = parse_rx_metadata(word)
    p = "ipsec_offload.meta."
    return [
        (p + "direction", "show", "2"),
        (p + "rx", "show", f"0x{word:08x}"),
        (p + "ipsec", "suffix", f"IPSEC: {m.ipsec}"),
        (p + "status", "suffix", f"STATUS: {m.status.name} ({int(m.status)})"),
        (p + "rx_reserved", "show", "0x00000000"),
        (p + "sa_index", "suffix", f"SA_INDEX: {m.sa_index}"),
    ]


def tx_valid(word: int) -> bool:
    return not word & 0x7F000000


def rx_valid(word: int) -> bool:
    return (word >> 27) & 0xF <= 5 and not word & 0x07000000


# -- hand-built frames ---------------------------------------------------------------------


def config_frame(msg: ConfigMessage, src: bytes = HOST_MAC, dst: bytes = AGENT_MAC) -> bytes:
    header = EthernetHeader(dst=dst, src=src, ethertype=EtherType.CONFIG)
    return build_ethernet(header) + build_config(msg)


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def every_config_message() -> list[ConfigMessage]:
    """Every opcode, request and reply, and every TLV type with a value."""
    add_v4 = AddSaRequest(
        direction=Direction.INBOUND,
        spi=0x1234,
        dst=addr(LOCAL4),
        src=addr(REMOTE4),
        alg=Algorithm.AES_GCM_128,
        key=KEY128,
        local_mac=HOST_MAC,
        vlans=(VlanTag(0x8100, 0x2064),),
        esn=True,
        replay_window=128,
    )
    add_v6 = AddSaRequest(
        direction=Direction.OUTBOUND,
        spi=0xFEDCBA98,
        dst=addr(REMOTE6),
        src=addr(LOCAL6),
        alg=Algorithm.AES_GCM_256,
        wrapped_key=bytes(range(48)),
        kek_id=0x01020304,
        local_mac=HOST_MAC,
        vlans=(VlanTag(0x88A8, 0xF007), VlanTag(0x8100, 0x00C8)),
        esn=True,
        seq=2**40 + 1,
        replay_window=4096,
        lifetime_packets=10**6,
        lifetime_bytes=2**63 + 5,
        soft_lifetime_packets=9 * 10**5,
        soft_lifetime_bytes=2**62 + 3,
    )
    add_key256 = AddSaRequest(Direction.INBOUND, 7, addr(LOCAL6), Algorithm.AES_GCM_256, KEY256)
    add_wrapped128 = AddSaRequest(
        Direction.INBOUND,
        8,
        addr(LOCAL4),
        Algorithm.AES_GCM_128,
        wrapped_key=bytes(range(32)),
        kek_id=1,
    )
    stats = SaStats(packets=10, bytes=1400, errors=(1, 2, 3, 4, 2**64 - 1))
    caps = Caps((Algorithm.AES_GCM_128, Algorithm.AES_GCM_256), 1024, 4096)
    caps_1_1 = Caps((Algorithm.AES_GCM_128,), 64, 1024, boot_id=0x0123456789ABCDEF)
    listing = ListSasReply(
        (
            SaEntry(3, Direction.OUTBOUND, 0x1234, addr(REMOTE4), 2**32 + 5),
            SaEntry(0xFFFFFF, Direction.INBOUND, 0xFEDCBA98, addr(LOCAL6), 2**64 - 1),
        ),
        0x01000000,
    )
    domain = ListSasRequest(HOST_MAC, (VlanTag(0x88A8, 10), VlanTag(0x8100, 100)), 17)
    reply = Opcode.REPLY
    return [
        ConfigMessage(Opcode.ADD_SA, 0x2A, encode_add_sa(add_v4)),
        ConfigMessage(Opcode.ADD_SA, 0xFFFFFFFF, encode_add_sa(add_v6), port=2, flags=0x5A),
        ConfigMessage(Opcode.ADD_SA, 3, encode_add_sa(add_key256)),
        ConfigMessage(Opcode.ADD_SA, 4, encode_add_sa(add_wrapped128)),
        ConfigMessage(Opcode.ADD_SA | reply, 0x2A, encode_sa_index(3)),
        ConfigMessage(Opcode.ADD_SA | reply, 5, (), status=ConfigStatus.EXISTS),
        ConfigMessage(Opcode.ADD_SA | reply, 6, (), status=ConfigStatus.KEY_UNWRAP_FAILED),
        ConfigMessage(Opcode.ADD_SA | reply, 7, (), status=ConfigStatus.NO_SPACE),
        ConfigMessage(Opcode.ADD_SA | reply, 8, (), status=ConfigStatus.BAD_VERSION),
        ConfigMessage(Opcode.REMOVE_SA, 9, encode_sa_index(0xFFFFFF)),
        ConfigMessage(Opcode.REMOVE_SA | reply, 9, (), status=ConfigStatus.NOT_FOUND),
        ConfigMessage(Opcode.REMOVE_ALL_SAS, 10, (), port=1),
        ConfigMessage(Opcode.REMOVE_ALL_SAS | reply, 10, encode_count(5), port=1),
        ConfigMessage(
            Opcode.ADD_LOCAL_ADDR,
            11,
            encode_local_addr(LocalAddr(HOST_MAC, (VlanTag(0x88A8, 10), VlanTag(0x8100, 100)))),
        ),
        ConfigMessage(Opcode.ADD_LOCAL_ADDR | reply, 11, (), status=ConfigStatus.BAD_REQUEST),
        ConfigMessage(Opcode.REMOVE_LOCAL_ADDR, 12, encode_local_addr(LocalAddr(PEER_MAC))),
        ConfigMessage(Opcode.REMOVE_LOCAL_ADDR | reply, 12, ()),
        ConfigMessage(Opcode.GET_SA_STATS, 13, encode_sa_index(1)),
        ConfigMessage(Opcode.GET_SA_STATS | reply, 13, encode_sa_stats(stats)),
        ConfigMessage(Opcode.GET_CAPS, 14, ()),
        ConfigMessage(Opcode.GET_CAPS | reply, 14, encode_caps(caps)),
        ConfigMessage(Opcode.GET_CAPS | reply, 15, (), status=ConfigStatus.UNSUPPORTED),
        ConfigMessage(Opcode.GET_CAPS | reply, 16, encode_caps(caps_1_1)),
        ConfigMessage(Opcode.LIST_SAS, 17, encode_list_sas_request(ListSasRequest())),
        ConfigMessage(Opcode.LIST_SAS, 18, encode_list_sas_request(domain), port=1),
        ConfigMessage(Opcode.LIST_SAS | reply, 18, encode_list_sas_reply(listing), port=1),
        ConfigMessage(Opcode.LIST_SAS | reply, 19, encode_list_sas_reply(ListSasReply((), 0))),
        ConfigMessage(Opcode.LIST_SAS | reply, 20, (), status=ConfigStatus.BAD_REQUEST),
        *(
            ConfigMessage(
                Opcode.EVENT,
                0x80000000 + kind,
                encode_event(Event(kind, 2**64 - kind, None if kind == 1 else kind * 1000)),
            )
            for kind in EventType
        ),
        ConfigMessage(Opcode.EVENT | reply, 0x80000001, ()),
    ]


def sent_by_agent(msg: ConfigMessage) -> bool:
    """The agent sends replies and EVENT requests; the PF requests and EVENT replies."""
    if msg.opcode & 0x7F == Opcode.EVENT:
        return not msg.opcode & Opcode.REPLY
    return bool(msg.opcode & Opcode.REPLY)


def test_the_dissector_ships_with_the_package() -> None:
    assert LUA.is_file()
    assert Path(lua_path()) == dissector_path()
    text = LUA.read_text()
    assert "ipsec_offload.meta" in text and "ipsec_offload.cfg" in text
    assert 'Proto("ipsec_offload.meta"' in text


def test_every_opcode_tlv_and_status_by_name(tshark: str, tmp_path: Path) -> None:
    messages = every_config_message()
    assert {m.opcode & 0x7F for m in messages} == {int(o) for o in Opcode if o != Opcode.REPLY}
    assert {t.type for m in messages for t in m.tlvs} == {int(t) for t in TlvType}
    assert {m.status for m in messages} == {int(s) for s in ConfigStatus}
    # what the agent sends carries an Rx tag (all zero), what the PF sends none
    frames = []
    for msg in messages:
        frame = config_frame(msg)
        if sent_by_agent(msg):
            frame = config_frame(msg, src=AGENT_MAC, dst=HOST_MAC)
            frame = frame[:12] + struct.pack("!HI", EtherType.META, 0) + frame[12:]
        frames.append(frame)
    packets = dissect(write_frames(tmp_path / "config.pcap", frames))
    assert len(packets) == len(messages)
    for packet, msg in zip(packets, messages, strict=True):
        check_config_frame(packet, msg)
        info = packet.one("ipsec_offload.cfg")
        assert Opcode(msg.opcode & 0x7F).name in info.showname
        errors = packet.all("ipsec_offload.cfg.status_error")
        assert len(errors) == (1 if msg.status else 0)
        if sent_by_agent(msg):
            assert packet.one("ipsec_offload.meta.direction").show == "2"
            assert packet.one("ipsec_offload.meta.etype").showname == (
                "Type: ipsec-offload config (0x88b6)"
            )
        else:
            assert not packet.has("ipsec_offload.meta")


# spec 1.1 messages written out by hand from the spec 9 tables (not by the encoders)
HAND_LIST_SAS = (
    "01 08 00 00 00 00 00000030 001a"  # LIST_SAS, txn 48, 26 bytes of TLVs
    "0009 0006 020000000010"  # LOCAL_MAC
    "000a 0004 81000064"  # VLAN 100
    "0001 0004 00000005"  # SA_INDEX: the cursor
)
HAND_LIST_SAS_REPLY = (
    "01 88 00 00 00 00 00000030 0048"  # LIST_SAS reply, OK, txn 48, 72 bytes of TLVs
    "0014 0016 00000003 01 00001234 04 c0a80002 0000000100000005"  # SA_ENTRY IPv4
    "0014 0022 0a0b0c0d 00 fedcba98 10 20010db8000000000000000000000002"  # SA_ENTRY IPv6
    "0000000000000040"  # ... its SEQ
    "0001 0004 00000000"  # SA_INDEX: next cursor 0, done
)
HAND_EVENT = (
    "01 09 00 00 00 00 00000040 0019"  # EVENT, txn 64, 25 bytes of TLVs
    "0015 0001 02"  # EVENT_TYPE SOFT_EXPIRE
    "0016 0008 0123456789abcdef"  # BOOT_ID
    "0001 0004 00000007"  # SA_INDEX 7
)
HAND_EVENT_REPLY = "01 89 00 00 00 00 00000040 0000"
HAND_CAPS = (
    "01 87 00 00 00 00 00000007 001b"  # GET_CAPS reply, 27 bytes of TLVs
    "0011 000b 02 01 02 00000400 00001000"  # CAPS
    "0016 0008 00000000deadbeef"  # BOOT_ID
)
HAND_ADD_SA = (
    "01 01 00 00 00 00 0000002a 004a"  # ADD_SA, txn 42, 74 bytes of TLVs
    "0002 0001 01 0003 0004 00001234 0004 0004 c0a80002 0006 0001 01"
    "0007 0014 000102030405060708090a0b0c0d0e0f10111213"
    "0017 0008 00000000000003e8"  # SOFT_LIFETIME_PACKETS 1000
    "0018 0008 0000000000100000"  # SOFT_LIFETIME_BYTES 1048576
)


def test_spec_1_1_fields_on_hand_written_frames(tshark: str, tmp_path: Path) -> None:
    bodies = [HAND_LIST_SAS, HAND_LIST_SAS_REPLY, HAND_EVENT, HAND_EVENT_REPLY]
    bodies += [HAND_CAPS, HAND_ADD_SA]
    frames = [raw_config(b"", bytes.fromhex(body.replace(" ", ""))) for body in bodies]
    request, reply, event, ack, caps, add_sa = dissect(write_frames(tmp_path / "h.pcap", frames))
    p = "ipsec_offload.cfg."

    assert request.one(p + "opcode").showname == "Opcode: LIST_SAS (0x08)"
    assert request.one(p + "tlv.local_mac").show == "02:00:00:00:00:10"
    assert request.one(p + "tlv.vlan.vid").show == "100"
    assert request.one(p + "tlv.sa_index").show == "5"

    assert reply.one(p + "opcode").showname == "Opcode: LIST_SAS reply (0x88)"
    assert reply.one("ipsec_offload.cfg").showname.endswith(
        "LIST_SAS reply, txn 48, OK, 2 SAs, done"
    )
    assert [i.showname for i in reply.all(p + "tlv")] == [
        "TLV SA_ENTRY: SA 3, outbound (encrypt), SPI 0x00001234, 192.168.0.2, seq 4294967301",
        "TLV SA_ENTRY: SA 168496141, inbound (decrypt), SPI 0xfedcba98, 2001:db8::2, seq 64",
        "TLV SA_INDEX: 0",
    ]
    entry = "tlv.sa_entry."
    assert [i.show for i in reply.all(p + entry + "sa_index")] == ["3", "168496141"]
    assert [i.show for i in reply.all(p + entry + "dir")] == ["1", "0"]
    assert [i.show for i in reply.all(p + entry + "spi")] == ["0x00001234", "0xfedcba98"]
    assert [i.show for i in reply.all(p + entry + "addr_len")] == ["4", "16"]
    assert reply.one(p + entry + "dst_ipv4").show == "192.168.0.2"
    assert reply.one(p + entry + "dst_ipv6").show == "2001:db8::2"
    assert [i.show for i in reply.all(p + entry + "seq")] == ["4294967301", "64"]
    assert reply.one(p + "tlv.sa_index").show == "0"

    assert event.one(p + "opcode").showname == "Opcode: EVENT (0x09)"
    assert event.one("ipsec_offload.cfg").showname.endswith(
        "EVENT request, txn 64, SOFT_EXPIRE SA 7"
    )
    assert event.one(p + "tlv.event_type").showname == "Event type: SOFT_EXPIRE (2)"
    assert event.one(p + "tlv.boot_id").showname == "Boot ID: 0x0123456789abcdef"
    assert event.one(p + "tlv.sa_index").show == "7"
    assert ack.one(p + "opcode").showname == "Opcode: EVENT reply (0x89)"
    assert not ack.has(p + "tlv")

    assert caps.one(p + "tlv.caps.sad_size").show == "1024"
    assert caps.one(p + "tlv.boot_id").show == "0x00000000deadbeef"
    assert add_sa.one(p + "tlv.soft_lifetime_packets").showname == ("Soft lifetime (packets): 1000")
    assert add_sa.one(p + "tlv.soft_lifetime_bytes").showname == ("Soft lifetime (bytes): 1048576")
    for packet in (request, reply, event, ack, caps, add_sa):
        problems = [n for n in packet.names(p + "tlv.") if n.endswith(_TLV_PROBLEMS)]
        assert not problems and not packet.has("_ws.malformed")


def test_event_frames_go_the_other_way(tshark: str, tmp_path: Path) -> None:
    """Behind an all-zero word, an EVENT is what the agent sends (Rx) and its reply what the
    PF sends (Tx), the reverse of the other opcodes; the source MAC is not the agent's here."""
    event = bytes.fromhex(HAND_EVENT.replace(" ", ""))
    ack = bytes.fromhex(HAND_EVENT_REPLY.replace(" ", ""))
    frames = [
        tagged(0, event, EtherType.CONFIG, src=PEER_MAC, dst=HOST_MAC),
        tagged(0, ack, EtherType.CONFIG, src=HOST_MAC, dst=AGENT_MAC),
    ]
    to_pf, to_agent = dissect(write_frames(tmp_path / "event.pcap", frames))
    assert to_pf.one("ipsec_offload.meta.direction").showname.endswith(
        "[an EVENT follows, which the agent sends]"
    )
    assert to_pf.one("ipsec_offload.meta.direction").show == "2"
    assert to_agent.one("ipsec_offload.meta.direction").show == "1"


def test_config_frame_padding_is_not_read_as_tlvs(tshark: str, tmp_path: Path) -> None:
    msg = ConfigMessage(Opcode.GET_CAPS, 1, ())
    frame = config_frame(msg)
    (packet,) = dissect(write_frames(tmp_path / "pad.pcap", [frame + bytes(60 - len(frame))]))
    check_config_frame(packet, msg)
    assert packet.one("ipsec_offload.cfg.padding").value == "00" * (60 - len(frame))


def raw_config(header: bytes, body: bytes) -> bytes:
    return build_ethernet(EthernetHeader(AGENT_MAC, HOST_MAC, EtherType.CONFIG)) + header + body


def header(opcode: int = 1, tlv_length: int = 0, version: int = 1, reserved: int = 0) -> bytes:
    return struct.pack("!BBBBBBIH", version, opcode, 0, 0, 0, reserved, 1, tlv_length)


def tlv(tlv_type: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("!HH", tlv_type, len(value) if length is None else length) + value


MALFORMED = [
    ("short header", raw_config(b"\x01\x01\x00\x00\x00\x00\x00\x00", b""), "cfg.truncated"),
    (
        "tlv_length past the end",
        raw_config(header(tlv_length=20), tlv(1, bytes(4))),
        "cfg.bad_tlv_length",
    ),
    (
        "truncated TLV header",
        raw_config(header(tlv_length=10), tlv(3, b"\x00\x00\x12\x34") + b"\x00\x01"),
        "cfg.tlv.truncated",
    ),
    (
        "truncated TLV value",
        raw_config(header(tlv_length=14), tlv(7, bytes(10), length=20)),
        "cfg.tlv.truncated",
    ),
    ("SPI of 2 bytes", raw_config(header(tlv_length=6), tlv(3, b"\x12\x34")), "cfg.tlv.bad_length"),
    (
        "CAPS count mismatch",
        raw_config(header(0x87, 13), tlv(0x11, b"\x03\x01" + bytes(7))),
        "cfg.tlv.bad_length",
    ),
    ("unknown TLV", raw_config(header(tlv_length=7), tlv(0x99, b"abc")), "cfg.tlv.unknown"),
    ("reserved byte", raw_config(header(7, reserved=1), b""), "cfg.reserved_set"),
    ("version 2", raw_config(header(version=2, tlv_length=4), tlv(0x0B, b"")), "cfg.bad_version"),
    ("SPI 0", raw_config(header(tlv_length=8), tlv(3, bytes(4))), "cfg.tlv.bad_value"),
    ("DIR 2", raw_config(header(tlv_length=5), tlv(2, b"\x02")), "cfg.tlv.bad_value"),
    ("ALG 9", raw_config(header(tlv_length=5), tlv(6, b"\x09")), "cfg.tlv.bad_value"),
    ("TPID 0x9100", raw_config(header(4, 8), tlv(0x0A, b"\x91\x00\x00\x64")), "cfg.tlv.bad_value"),
    ("tag cut short", PEER_MAC + HOST_MAC + b"\x88\xb5\x80\x00", "meta.truncated"),
    (
        "SA_ENTRY of 23 bytes",
        raw_config(header(0x88, 27), tlv(0x14, bytes(23))),
        "cfg.tlv.bad_length",
    ),
    (
        "SA_ENTRY address length 16 in 22 bytes",
        raw_config(
            header(0x88, 26), tlv(0x14, bytes.fromhex("00000003 01 00001234 10") + bytes(12))
        ),
        "cfg.tlv.bad_value",
    ),
    (
        "SA_ENTRY DIR 2",
        raw_config(
            header(0x88, 26), tlv(0x14, bytes.fromhex("00000003 02 00001234 04") + bytes(12))
        ),
        "cfg.tlv.bad_value",
    ),
    (
        "SA_ENTRY SPI 0",
        raw_config(
            header(0x88, 26), tlv(0x14, bytes.fromhex("00000003 01 00000000 04") + bytes(12))
        ),
        "cfg.tlv.bad_value",
    ),
    ("EVENT_TYPE 5", raw_config(header(9, 5), tlv(0x15, b"\x05")), "cfg.tlv.bad_value"),
    ("EVENT_TYPE of 2 bytes", raw_config(header(9, 6), tlv(0x15, b"\0\1")), "cfg.tlv.bad_length"),
    ("BOOT_ID of 4 bytes", raw_config(header(9, 8), tlv(0x16, bytes(4))), "cfg.tlv.bad_length"),
    (
        "soft lifetime of 4 bytes",
        raw_config(header(1, 8), tlv(0x17, bytes(4))),
        "cfg.tlv.bad_length",
    ),
]


def test_malformed_frames_get_expert_info(tshark: str, tmp_path: Path) -> None:
    frames = [frame for _, frame, _ in MALFORMED]
    packets = dissect(write_frames(tmp_path / "bad.pcap", frames))
    for (what, _, expert), packet in zip(MALFORMED, packets, strict=True):
        assert packet.has(f"ipsec_offload.{expert}"), (what, packet.names())
        if expert.endswith(("truncated", "bad_length", "bad_tlv_length")):
            groups = {i.showname for i in packet.all("_ws.expert.group")}
            assert "Group: Malformed" in groups, what
    truncated = packets[3]
    assert truncated.one("ipsec_offload.cfg.tlv").showname == "TLV KEY (truncated)"
    assert truncated.one("ipsec_offload.cfg.tlv.value").value == "00" * 10
    short_spi = packets[4]
    assert short_spi.one("ipsec_offload.cfg.tlv.value").value == "1234"
    assert not short_spi.has("ipsec_offload.cfg.tlv.spi")
    version2 = packets[8]
    assert version2.one("ipsec_offload.cfg.body").value == "000b0000"
    assert not version2.has("ipsec_offload.cfg.tlv")


def tagged(
    word: int,
    packet: bytes,
    ethertype: int,
    vlans: tuple[VlanTag, ...] = (),
    src: bytes = HOST_MAC,
    dst: bytes = PEER_MAC,
) -> bytes:
    header = EthernetHeader(dst, src, ethertype, vlans=vlans, metadata=word)
    return build_ethernet(header) + packet


def test_tx_and_rx_metadata_fields(tshark: str, tmp_path: Path) -> None:
    udp = bytes(UDP(sport=1, dport=2) / Raw(b"hello"))
    esp4 = bytes(IP(src=LOCAL4, dst=REMOTE4, proto=50) / Raw(struct.pack("!IIQ", 5, 1, 1) + udp))
    esp6 = bytes(IPv6(src=LOCAL6, dst=REMOTE6, nh=50) / Raw(struct.pack("!IIQ", 6, 1, 1) + udp))
    plain = bytes(IP(src=REMOTE4, dst=LOCAL4) / UDP() / Raw(b"not esp"))
    tx = [
        (build_tx_metadata(TxMetadata(True, 17, 14, 5)), esp4, EtherType.IPV4, ()),
        (
            build_tx_metadata(TxMetadata(True, 17, 18, 5)),
            esp4,
            EtherType.IPV4,
            (VlanTag(0x8100, 5),),
        ),
        (build_tx_metadata(TxMetadata(True, 17, 14, 10)), esp6, EtherType.IPV6, ()),
        (build_tx_metadata(TxMetadata(False, 0, 14, 5)), esp4, EtherType.IPV4, ()),
        (0, esp4, EtherType.IPV4, ()),  # bypass: ESP from a software SA
    ]
    rx = [
        (build_rx_metadata(RxMetadata(True, status, 7 if status != RxStatus.NO_SA else 0)), esp4)
        for status in RxStatus
    ]
    frames = [tagged(w, p, e, v) for w, p, e, v in tx]
    frames += [tagged(w, p, EtherType.IPV4, src=PEER_MAC, dst=HOST_MAC) for w, p in rx]
    frames.append(tagged(0, plain, EtherType.IPV4, src=PEER_MAC, dst=HOST_MAC))
    packets = dissect(write_frames(tmp_path / "meta.pcap", frames))
    for (word, *_), packet in zip(tx, packets, strict=False):
        check_fields(packet, expected_tx(word))
        assert not packet.has("ipsec_offload.meta.rx")
    for (word, _), packet in zip(rx, packets[len(tx) :], strict=False):
        check_fields(packet, expected_rx(word))
        assert not packet.has("ipsec_offload.meta.tx")
    # the frames to encrypt and the frame decrypted by the agent show their payload in the clear
    for packet in packets[:3]:
        assert packet.one("ipsec_offload.esp.state").show == "1"
        assert packet.one("udp.srcport").show == "1"
        assert packet.one("data.data").value == b"hello".hex()
    assert (
        packets[0]
        .one("ipsec_offload.meta.esp_offset")
        .showname.endswith("ESP_OFFSET (4-byte words): 5 (20 bytes from the IP header)")
    )
    assert (
        packets[0].one("ipsec_offload.meta.next_header").showname.endswith("NEXT_HEADER: UDP (17)")
    )
    # an ambiguous all-zero word shows both meanings
    zero = packets[-1]
    assert zero.one("ipsec_offload.meta.direction").show == "3"
    assert zero.has("ipsec_offload.meta.tx") and zero.has("ipsec_offload.meta.rx")
    # scapy's default UDP ports make it DNS, which Wireshark finds malformed: that is
    # reported on the tag, not as a Lua error
    assert zero.has("dns") and zero.has("ipsec_offload.meta.malformed_payload")
    statuses = [p.one("ipsec_offload.meta").showname for p in packets[len(tx) : -1]]
    assert statuses == [
        "ipsec-offload metadata tag, Rx OK SA 7",
        "ipsec-offload metadata tag, Rx NO_SA",
        "ipsec-offload metadata tag, Rx AUTH_FAILED SA 7",
        "ipsec-offload metadata tag, Rx REPLAY SA 7",
        "ipsec-offload metadata tag, Rx MALFORMED",
        "ipsec-offload metadata tag, Rx SA_EXPIRED SA 7",
    ]
    experts = [
        [n for n in p.names() if n in ("ipsec_offload.meta.no_sa", "ipsec_offload.meta.rx_error")]
        for p in packets[len(tx) : -1]
    ]
    assert experts == [[], ["ipsec_offload.meta.no_sa"]] + [["ipsec_offload.meta.rx_error"]] * 4


def test_esp_the_agent_decrypted_shows_its_trailer(tshark: str, tmp_path: Path) -> None:
    udp = bytes(UDP(sport=1, dport=2) / Raw(b"hi"))  # 10 bytes: padding 1, 2 to 4-byte align

    def decrypted(trailer: bytes) -> bytes:
        esp = struct.pack("!IIQ", 0x77, 3, 3) + udp + trailer
        ip = bytes(IP(src=REMOTE4, dst=LOCAL4, proto=50) / Raw(esp))
        word = build_rx_metadata(RxMetadata(True, RxStatus.OK, 9))
        return tagged(word, ip, EtherType.IPV4, src=PEER_MAC, dst=HOST_MAC)

    frames = [
        decrypted(b"\x01\x02\x02\x11"),
        decrypted(b"\x09\x09\x02\x11"),
        decrypted(b"\x01\x02\xc8\x11"),
    ]
    good, bad_pad, too_long = dissect(write_frames(tmp_path / "clear.pcap", frames))
    check_fields(
        good,
        [
            ("ipsec_offload.esp.state", "show", "2"),
            ("ipsec_offload.esp.spi", "show", "0x00000077"),
            ("ipsec_offload.esp.sequence", "show", "3"),
            ("ipsec_offload.esp.iv", "value", "0000000000000003"),
            ("ipsec_offload.esp.payload", "value", udp.hex()),
            ("ipsec_offload.esp.pad", "value", "0102"),
            ("ipsec_offload.esp.pad_len", "show", "2"),
            ("ipsec_offload.esp.next_header", "showname", "Next header: UDP (17)"),
        ],
    )
    assert good.one("data.data").value == b"hi".hex()
    assert not [n for n in good.names() if n.startswith("ipsec_offload.esp.") and "bad" in n]
    assert bad_pad.has("ipsec_offload.esp.bad_padding")
    assert too_long.has("ipsec_offload.esp.truncated") and not too_long.has("udp")


def test_direction_preference_and_problem_words(tshark: str, tmp_path: Path) -> None:
    esp4 = bytes(IP(src=LOCAL4, dst=REMOTE4, proto=50) / Raw(bytes(24)))
    word = build_tx_metadata(TxMetadata(True, 17, 14, 5))
    frames = [
        tagged(word, esp4, EtherType.IPV4, (VlanTag(0x8100, 5),)),  # offsets off by a VLAN
        tagged(0xB7000001, esp4, EtherType.IPV4),  # Tx reserved set, Rx status 6
        tagged(word, esp4, EtherType.IPV4),
        # a metadata EtherType after a VLAN tag is payload to the agent
        build_ethernet(EthernetHeader(PEER_MAC, HOST_MAC, EtherType.META, (VlanTag(0x8100, 5),)))
        + struct.pack("!I", word)
        + b"\x08\x00"
        + esp4,
    ]
    pcap = write_frames(tmp_path / "dir.pcap", frames)
    auto = dissect(pcap)
    assert [p.one("ipsec_offload.meta.direction").show for p in auto[:3]] == ["2", "1", "1"]
    assert auto[1].has("ipsec_offload.meta.reserved_set")
    assert auto[3].has("ipsec_offload.meta.not_outermost")
    as_tx = dissect(pcap, prefs=["ipsec_offload.meta.direction:Tx"])
    assert as_tx[0].one("ipsec_offload.meta.direction").showname.endswith("[preference]")
    assert as_tx[0].has("ipsec_offload.meta.bad_offsets")
    assert not as_tx[2].has("ipsec_offload.meta.bad_offsets")
    as_rx = dissect(pcap, prefs=["ipsec_offload.meta.direction:Rx"])
    assert {p.one("ipsec_offload.meta.direction").show for p in as_rx[:3]} == {"2"}
    assert as_rx[1].has("ipsec_offload.meta.bad_status")
    assert as_rx[1].has("ipsec_offload.meta.reserved_set")
    both = dissect(pcap, prefs=["ipsec_offload.meta.direction:Both"])
    assert all(p.has("ipsec_offload.meta.tx") and p.has("ipsec_offload.meta.rx") for p in both)
    # the agent's address decides for frames it sends, whatever the word
    agent = dissect(pcap, prefs=[f"ipsec_offload.meta.agent_mac:{HOST_MAC.hex(':')}"])
    assert {p.one("ipsec_offload.meta.direction").show for p in agent[:3]} == {"2"}


def test_nested_tags_leave_esp_to_wireshark_afterwards(tshark: str, tmp_path: Path) -> None:
    """A tag behind a tag (a forged one, to the agent mere payload) is dissected, and the next
    frames' ESP still goes to Wireshark's ESP dissector."""
    esp = bytes(IP(src=LOCAL4, dst=REMOTE4, proto=50) / Raw(struct.pack("!IIQ", 5, 1, 1) + b"x"))
    inner = struct.pack("!IH", build_tx_metadata(TxMetadata(True, 17, 14, 5)), EtherType.IPV4)
    outer = build_rx_metadata(RxMetadata(True, RxStatus.OK, 1))
    nested = tagged(outer, inner + esp, EtherType.META, src=PEER_MAC, dst=HOST_MAC)
    plain = build_ethernet(EthernetHeader(PEER_MAC, HOST_MAC, EtherType.IPV4)) + esp
    pcap = write_frames(tmp_path / "nested.pcap", [nested, plain, nested, plain])
    for prefs in ([], ["ipsec_offload.meta.direction:Tx"]):
        packets = dissect(pcap, prefs=prefs)
        for first, second in (packets[:2], packets[2:]):
            assert len(first.our_layers()) == 3  # meta, meta, esp in the clear
            assert first.layer("ipsec_offload.meta", 1).has("ipsec_offload.meta.not_outermost")
            assert second.one("esp.spi").show == "0x00000005"
            assert not second.has("ipsec_offload.esp")


def test_ethertype_preferences(tshark: str, tmp_path: Path) -> None:
    msg = ConfigMessage(Opcode.GET_CAPS, 1, ())
    frame = config_frame(msg)
    moved = frame[:12] + b"\x90\x01" + frame[14:]
    pcap = write_frames(tmp_path / "types.pcap", [frame, moved])
    default = dissect(pcap)
    assert default[0].has("ipsec_offload.cfg") and not default[1].has("ipsec_offload.cfg")
    custom = dissect(pcap, prefs=["ipsec_offload.cfg.ethertype:0x9001"])
    assert not custom[0].has("ipsec_offload.cfg")
    check_config_frame(custom[1], msg)


# -- the agent's outputs and ESP decryption behind the tag ---------------------------------


def test_esp_behind_a_metadata_tag_decrypts_with_esp_sa(tshark: str, tmp_path: Path) -> None:
    """Ciphertext the agent passes up (NO_SA, REPLAY), and a software-SA frame sent in bypass,
    decrypt in Wireshark behind the tag; the frame the agent decrypted shows its plaintext."""
    agent = IpsecAgent()
    add = AddSaRequest(
        Direction.INBOUND,
        0x3001,
        addr(LOCAL4),
        Algorithm.AES_GCM_128,
        KEY128,
        src=addr(REMOTE4),
        local_mac=HOST_MAC,
        vlans=(VlanTag(0x8100, 100),),
    )
    reply = agent.from_host([config_frame(ConfigMessage(Opcode.ADD_SA, 1, encode_add_sa(add)))])
    assert parse_config(reply.to_host[0][20:]).status == ConfigStatus.OK
    known = scapy_sa(0x3001, KEY128, 1)
    unknown = scapy_sa(0x3002, KEY256, 2)
    software = scapy_sa(0x4001, KEY128, 1)
    peer, host = PEER_MAC.hex(":"), HOST_MAC.hex(":")

    def datagram(text: bytes, src: str = REMOTE4, dst: str = LOCAL4) -> IP | IPv6:
        outer = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
        return outer / UDP(sport=7000, dport=7001) / Raw(text)

    iv = struct.pack("!Q", 1)
    ok = Ether(src=peer, dst=host) / Dot1Q(vlan=100) / scapy_encrypt(known, datagram(b"ok"), 1, iv)
    no_sa = Ether(src=peer, dst=host) / scapy_encrypt(
        unknown, datagram(b"no sa", REMOTE6, LOCAL6), 1, iv
    )
    out = agent.from_wire([bytes(ok), bytes(ok), bytes(no_sa)])
    assert len(out.to_host) == 3
    bypass = Ether(src=host, dst=peer) / scapy_encrypt(
        software, datagram(b"software", LOCAL4, REMOTE4), 9, struct.pack("!Q", 9)
    )
    bypass_frame = tagged(0, bytes(bypass)[14:], EtherType.IPV4)
    pcap = write_frames(tmp_path / "agent.pcap", [*out.to_host, bypass_frame])
    keys = [
        EspSaEntry(addr(REMOTE4), addr(LOCAL4), 0x3001, KEY128, 1),
        EspSaEntry(addr(REMOTE6), addr(LOCAL6), 0x3002, KEY256, 2),
        EspSaEntry(addr(LOCAL4), addr(REMOTE4), 0x4001, KEY128, 1),
    ]
    fields = [
        "ipsec_offload.meta.direction",
        "ipsec_offload.meta.status",
        "ipsec_offload.esp.spi",
        "esp.spi",
        "esp.icv_good",
        "udp.srcport",
        "data.data",
    ]
    rows = tshark_decode(pcap, keys, fields, lua_script=lua_path())
    got = [tuple(row[f] for f in fields) for row in rows]
    assert got == [
        ("2", "0", "0x00003001", "", "", "7000", b"ok".hex()),  # decrypted by the agent
        ("2", "3", "", "0x00003001", "1", "7000", b"ok".hex()),  # REPLAY: ciphertext
        ("2", "1", "", "0x00003002", "1", "7000", b"no sa".hex()),  # NO_SA: ciphertext
        ("1", "", "", "0x00004001", "1", "7000", b"software".hex()),  # Tx bypass
    ]


# -- the pcaps `ipsec-offload run` writes --------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(cli, ["run", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def ethertype_after_macs(frame: bytes) -> int:
    return int(struct.unpack_from("!H", frame, 12)[0])


def test_demo_pcaps_name_every_field(tshark: str, demo: Path) -> None:
    pcaps = sorted(demo.glob("*.pcap"))
    assert {"host-link.pcap", "wire-link.pcap"} <= {p.name for p in pcaps}
    seen_tlvs: set[int] = set()
    seen_opcodes: set[int] = set()
    for pcap in pcaps:
        records = read_pcap(pcap)
        packets = dissect(pcap, esp_sa=demo / "esp_sa")
        assert len(packets) == len(records)
        for record, packet in zip(records, packets, strict=True):
            frame = record.frame
            for layer in packet.our_layers():
                assert not layer.has("_ws.malformed"), (pcap.name, layer)
            ethertype = ethertype_after_macs(frame)
            if ethertype == EtherType.META:
                tag = packet.layer("ipsec_offload.meta")
                assert tag[0].showname.startswith("ipsec-offload metadata tag, ")
                word = struct.unpack_from("!I", frame, 14)[0]
                direction = tag.one("ipsec_offload.meta.direction").show
                assert direction in ("1", "2", "3")
                if direction in ("1", "3"):
                    if tx_valid(word):
                        check_fields(tag, expected_tx(word)[1:])
                    else:
                        assert tag.has("ipsec_offload.meta.reserved_set")
                if direction in ("2", "3"):
                    assert rx_valid(word)  # the heuristic never picks Rx for an invalid word
                    check_fields(tag, expected_rx(word)[1:])
                inner = ethertype_after_macs(frame[6:])
            else:
                inner = ethertype
            if inner == EtherType.CONFIG:
                start = 20 if ethertype == EtherType.META else 14
                msg = parse_config(frame[start:])
                check_config_frame(packet, msg)
                seen_tlvs |= {t.type for t in msg.tlvs}
                seen_opcodes.add(msg.opcode)
    # the default run configures SAs and local addresses and reads the capabilities
    assert {Opcode.ADD_SA, Opcode.ADD_SA | Opcode.REPLY, Opcode.GET_CAPS} <= seen_opcodes
    assert {TlvType.SPI, TlvType.KEY, TlvType.SA_INDEX, TlvType.CAPS} <= seen_tlvs


def test_demo_tx_and_rx_tags_by_direction(tshark: str, demo: Path) -> None:
    """nic-to-agent.pcap holds Tx words, agent-to-nic.pcap Rx words: with the direction
    preference every field is right, and on the merged host link the heuristic agrees."""
    tx_frames = {r.frame for r in read_pcap(demo / "nic-to-agent.pcap")}
    rx_frames = {r.frame for r in read_pcap(demo / "agent-to-nic.pcap")}
    for name, pref, expect in (
        ("nic-to-agent.pcap", "Tx", expected_tx),
        ("agent-to-nic.pcap", "Rx", expected_rx),
    ):
        records = read_pcap(demo / name)
        packets = dissect(demo / name, prefs=[f"ipsec_offload.meta.direction:{pref}"])
        checked = 0
        for record, packet in zip(records, packets, strict=True):
            if ethertype_after_macs(record.frame) != EtherType.META:
                continue
            word = struct.unpack_from("!I", record.frame, 14)[0]
            if pref == "Tx" and not tx_valid(word):
                continue  # a malicious VF's word: not Tx metadata the codecs accept
            check_fields(packet.layer("ipsec_offload.meta"), expect(word))
            checked += 1
        assert checked
    host = read_pcap(demo / "host-link.pcap")
    packets = dissect(demo / "host-link.pcap")
    wrong = []
    for record, packet in zip(host, packets, strict=True):
        if ethertype_after_macs(record.frame) != EtherType.META:
            continue
        guessed = packet.layer("ipsec_offload.meta").one("ipsec_offload.meta.direction").show
        truth = "1" if record.frame in tx_frames else "2" if record.frame in rx_frames else "?"
        if guessed not in (truth, "3"):
            wrong.append((guessed, truth, record.frame[14:18].hex()))
    assert not wrong


def _hexes(row: dict[str, str], *names: str) -> str:
    return "".join(row[n] for n in names)


def _sa_key(row: dict[str, str], spi_field: str) -> tuple[str, str, str]:
    """VLAN, outer source address and SPI of a row (tunnel mode adds inner addresses)."""
    source = (row["ip.src"] or row["ipv6.src"]).split(",")[0]
    return row["vlan.id"], source, row[spi_field]


def test_demo_plaintext_matches_what_wireshark_decrypts(tshark: str, demo: Path) -> None:
    """Frames the agent decrypted (Rx OK) show, as ipsec_offload.esp, exactly what Wireshark
    decrypts from the same ESP packet on the wire or in the hairpin, and the plaintext of
    the frames handed to the agent for encryption (Tx OFFLOAD) is what Wireshark decrypts
    from the agent's output; every ESP frame of the wire link decrypts."""
    esp_fields = ["vlan.id", "ip.src", "ipv6.src", "esp.spi", "esp.sequence", "esp.icv_good"]
    esp_fields += ["esp.decrypted_data"]
    ciphertext: dict[tuple[str, ...], str] = {}
    wire_rows = []
    for name in ("wire-link.pcap", "agent-hairpin.pcap"):
        rows = tshark_decode(
            demo / name, demo / "esp_sa", esp_fields, lua_script=lua_path(), auth_check=True
        )
        for row in rows:
            if row["esp.spi"]:
                key = _sa_key(row, "esp.spi")
                ciphertext[(*key, row["esp.sequence"])] = row["esp.decrypted_data"]
        if name == "wire-link.pcap":
            wire_rows = [r for r in rows if r["esp.spi"]]
    assert wire_rows
    clear_fields = ["vlan.id", "ip.src", "ipv6.src", "ipsec_offload.meta.status"]
    clear_fields += ["ipsec_offload.esp.spi", "ipsec_offload.esp.sequence"]
    clear_fields += ["ipsec_offload.esp.payload", "ipsec_offload.esp.pad"]
    clear_fields += ["ipsec_offload.esp.pad_len", "ipsec_offload.esp.next_header"]
    clear_fields += ["ipsec_offload.esp.state", "ipsec_offload.meta.not_outermost"]
    rows = tshark_decode(demo / "host-link.pcap", None, clear_fields, lua_script=lua_path())
    decrypted = [r for r in rows if r["ipsec_offload.esp.state"] == "2"]
    assert decrypted
    for row in decrypted:
        key = _sa_key(row, "ipsec_offload.esp.spi")
        wire = ciphertext[(*key, row["ipsec_offload.esp.sequence"])]
        trailer = f"{int(row['ipsec_offload.esp.pad_len']):02x}"
        trailer += f"{int(row['ipsec_offload.esp.next_header']):02x}"
        shown = _hexes(row, "ipsec_offload.esp.payload", "ipsec_offload.esp.pad") + trailer
        assert shown == wire
    # the agent picks the sequence number (IVDB), so a Tx frame is found by its plaintext:
    # some ESP packet of its SA decrypts to it, followed by 0-3 bytes of padding and 2 more
    offloaded = [
        r
        for r in rows
        if r["ipsec_offload.esp.state"] == "1" and not r["ipsec_offload.meta.not_outermost"]
    ]
    assert offloaded
    by_sa: dict[tuple[str, ...], list[str]] = {}
    for (*key, _), data in ciphertext.items():
        by_sa.setdefault(tuple(key), []).append(data)
    for row in offloaded:
        payload = row["ipsec_offload.esp.payload"]
        candidates = by_sa.get(_sa_key(row, "ipsec_offload.esp.spi"), [])
        assert any(d.startswith(payload) and 4 <= len(d) - len(payload) <= 10 for d in candidates)
    # Every ESP frame of the wire link decrypts with a good ICV (tshark 4.0 cannot check
    # the ICV of an ESN SA: those frames only decrypt).
    esn_spis = {
        line.split()[2]
        for line in (demo / "esp_sa").read_text().splitlines()
        if line.startswith("# SPI ") and "extended sequence numbers" in line
    }
    bad = [r for r in wire_rows if r["esp.icv_good"] != "1" and r["esp.spi"] not in esn_spis]
    assert bad == []


# -- the documentation -----------------------------------------------------------------------


def test_docs_list_every_field_and_preference(tshark: str, tmp_path: Path) -> None:
    """Installed as docs/wireshark.md says (the personal Lua plugins folder), tshark lists the
    dissector's fields and preferences; the page names every one and nothing else."""
    home = tmp_path / "home"
    plugins = home / ".local" / "lib" / "wireshark" / "plugins"
    plugins.mkdir(parents=True)
    shutil.copyfile(lua_path(), plugins / "ipsec_offload.lua")
    env = dict(os.environ)
    env.pop("WIRESHARK_CONFIG_DIR", None)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    fields = subprocess.run(
        [tshark, "-G", "fields"], env=env, capture_output=True, text=True, check=True
    ).stdout
    registered = {
        line.split("\t")[2]
        for line in fields.splitlines()
        if line.startswith(("P\t", "F\t")) and line.split("\t")[2].startswith("ipsec_offload")
    }
    prefs = subprocess.run(
        [tshark, "-G", "defaultprefs"], env=env, capture_output=True, text=True, check=True
    ).stdout
    preferences = {
        line[1:].split(":")[0] for line in prefs.splitlines() if line.startswith("#ipsec_offload")
    }
    assert len(registered) > 90 and len(preferences) == 5
    docs = (Path(__file__).resolve().parents[1] / "docs" / "wireshark.md").read_text()
    named = set(re.findall(r"`(ipsec_offload\.(?:meta|cfg|esp)[a-z0-9_.]*)", docs))
    assert registered - named == set()
    assert preferences - named == set()
    assert named - registered - preferences == set()
