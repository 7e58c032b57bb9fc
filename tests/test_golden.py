"""The frame-level golden model (spec section 8): `replay` and `ipsec-offload agent`.

- Fed what reached the agent in a simulation, a fresh agent emits exactly what the simulated
  agent emitted: same frames, same timestamps, same order (also with lost frames and config
  retransmissions).
- On pcaps built here by hand (config frames, an offload frame, a bypass frame, wire ESP
  encrypted here with `cryptography`), the command writes exactly the expected frames: the
  ADD_SA replies, the encrypted frame (decrypted again here), the decrypted inbound frame with
  its Rx tag, in timestamp order with the host side first on a tie, and the esp_sa file.
- Its errors are one line naming the file or option, never a traceback.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from scapy.compat import raw
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from agent_frames import is_event
from ipsec_offload.agent.agent import IpsecAgent
from ipsec_offload.agent.counters import Path as AgentPath
from ipsec_offload.cli.main import main
from ipsec_offload.sim.golden import replay
from ipsec_offload.sim.pcap import PcapRecord, read_pcap, write_pcap
from ipsec_offload.sim.report import write_outputs
from ipsec_offload.sim.runner import prepare
from ipsec_offload.sim.scenario import builtin_scenario
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    ConfigMessage,
    Direction,
    Opcode,
    build_config,
    encode_add_sa,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet
from tools import tshark_decode

pytestmark = pytest.mark.usefixtures("agent_path", "nic_path")

# -- (a) the golden model reproduces the simulation ---------------------------------------


def assert_replay_reproduces(bed: Testbed) -> None:
    caps = bed.captures
    result = replay(
        IpsecAgent(bed.agent.config), caps["nic-to-agent"].records, caps["wire-to-agent"].records
    )
    assert result.host_out == list(caps["agent-to-nic"].records)
    assert result.wire_out == list(caps["agent-to-wire"].records)


def basic_run() -> Testbed:
    """The built-in basic scenario (a PF host and a remote peer), run to the end."""
    run = prepare(*builtin_scenario("basic"))
    run.run()
    return run.bed


def test_replay_reproduces_the_demo() -> None:
    bed = basic_run()
    caps = bed.captures
    assert len(caps["agent-to-wire"]) == 40
    assert len(caps["agent-to-nic"]) > 40
    assert_replay_reproduces(bed)


def test_replay_reproduces_a_run_with_losses_and_retransmissions() -> None:
    """Lost config replies make the driver retransmit (the agent answers from its txn
    memory); lost data frames never reach the agent. The captures of the agent's inputs are
    taken after the loss, of its outputs before it."""
    bed = Testbed()
    bed.lose("agent-to-nic", 1)  # the GET_CAPS reply
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    bed.lose("agent-to-nic", 1)  # the first ADD_SA reply
    bed.secure(host, peer, family=4)
    bed.lose("nic-to-agent", 2, lambda f: f[12:14] == b"\x88\xb5")
    bed.lose("wire-to-agent", 1)
    for i in range(6):
        host.send_udp(peer.addresses[4], 1000 + i, 53, b"x" * i, bed.now)
        bed.settle(host)
        peer.send_udp(host.addresses[4], 53, 1000 + i, b"y" * i, bed.now)
        bed.settle(peer)
    assert bed.link_drops == {
        "nic-to-agent": 2,
        "agent-to-nic": 2,
        "wire-to-agent": 1,
        "agent-to-wire": 0,
        "vf-to-pf": 0,
        "pf-to-vf": 0,
    }
    assert bed.agent.counters.paths[AgentPath.CONFIG_RETRANSMIT] == 2
    assert len(bed.captures["agent-to-wire"]) == 4
    assert_replay_reproduces(bed)


def test_agent_command_reproduces_the_demo_pcaps(tmp_path: Path) -> None:
    """README: fed the demo's inputs, `ipsec-offload agent` writes agent-to-nic.pcap and
    agent-to-wire.pcap byte for byte, and the keys of the SAs the agent held."""
    bed = basic_run()
    demo = tmp_path / "demo"
    write_outputs(bed, demo, {})
    ho, wo, keys = tmp_path / "HO.pcap", tmp_path / "WO.pcap", tmp_path / "keys"
    result = invoke(
        "--host-in",
        demo / "nic-to-agent.pcap",
        "--wire-in",
        demo / "wire-to-agent.pcap",
        "--host-out",
        ho,
        "--wire-out",
        wo,
        "--esp-sa",
        keys,
        # the run's agent: its BOOT_ID (drawn by the testbed) and the PF's MAC it was given
        "--boot-id",
        bed.agent.config.boot_id,
        "--pf-mac",
        (bed.agent.config.pf_mac or b"").hex(":"),
    )
    assert result.exit_code == 0, result.output
    assert ho.read_bytes() == (demo / "agent-to-nic.pcap").read_bytes()
    assert wo.read_bytes() == (demo / "agent-to-wire.pcap").read_bytes()
    # the agent held 3 of the demo's 4 SAs (the IPv6 inbound one stayed in software)
    demo_lines = data_lines((demo / "esp_sa").read_text())
    golden_lines = data_lines(keys.read_text())
    assert len(demo_lines) == 4
    assert len(golden_lines) == 3
    assert set(golden_lines) < set(demo_lines)
    assert not any('"0x00001004"' in line for line in golden_lines)


# -- (b) hand-built pcaps through `ipsec-offload agent` -----------------------------------

AGENT_MAC = bytes.fromhex("020000000001")
HOST_MAC = bytes.fromhex("020000000a00")
GW_MAC = bytes.fromhex("020000000b00")
HOST_IP, REMOTE_IP = "192.0.2.10", "198.51.100.20"

OUT_SPI = 0x00002001
OUT_KEY = bytes(range(16)) + bytes.fromhex("a0a1a2a3")  # AES-128 key || salt
IN_SPI = 0x00003001
IN_KEY = bytes(range(0x40, 0x60)) + bytes.fromhex("b0b1b2b3")  # AES-256 key || salt
KEK_ID = 7
KEK = bytes(range(0x80, 0x90))
IN_HIGHEST = 2**32 + 10  # SEQ TLV of the inbound ESN SA: already received up to here
OUT_TXN, IN_TXN = 0x0A0B0C0D, 0x11223344

TX_WORD = 0x8011_0E05  # OFFLOAD | NEXT_HEADER 17 | L3_OFFSET 14 | ESP_OFFSET 5 words
BYPASS_WORD = 0x0000_0000
RX_NOT_ESP = 0x0000_0000  # IPSEC=0
RX_OK_SA2 = 0x8000_0002  # IPSEC=1 | STATUS OK | SA_INDEX 2

T_PLAIN, T_ADD_OUT, T_OFFLOAD, T_TIE, T_BYPASS = 0.5, 1.0, 2.0, 3.0, 4.5


def ether(dst: bytes, src: bytes, ethertype: int, word: int | None = None) -> bytes:
    tag = b"" if word is None else struct.pack(">HI", EtherType.META, word)
    return dst + src + tag + struct.pack(">H", ethertype)


def config_frame(txn: int, request: AddSaRequest) -> bytes:
    message = ConfigMessage(Opcode.ADD_SA, txn, encode_add_sa(request))
    header = EthernetHeader(dst=AGENT_MAC, src=HOST_MAC, ethertype=EtherType.CONFIG)
    return build_ethernet(header) + build_config(message)


def add_sa_reply(txn: int, sa_index: int) -> bytes:
    """Spec 4, written out: tagged (Rx, IPSEC=0) config frame from the agent, header
    version 1 | opcode 0x81 | status OK | flags | port | reserved | txn_id | tlv_length 8,
    then TLV SA_INDEX (type 1, length 4)."""
    header = bytes((1, 0x81, 0, 0, 0, 0)) + struct.pack(">IH", txn, 8)
    tlv = struct.pack(">HHI", 0x0001, 4, sa_index)
    return ether(HOST_MAC, AGENT_MAC, EtherType.CONFIG, RX_NOT_ESP) + header + tlv


def udp_segment(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    return raw(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload))[20:]


def ipv4(src: str, dst: str, proto: int, body: bytes, ident: int) -> bytes:
    return raw(IP(src=src, dst=dst, proto=proto, id=ident, flags="DF", ttl=64) / Raw(body))


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def trailer(length: int, next_header: int) -> bytes:
    padlen = -(length + 2) % 4
    return bytes(range(1, padlen + 1)) + bytes((padlen, next_header))


OUT_UDP = udp_segment(HOST_IP, REMOTE_IP, 40500, 40501, b"offloaded by the agent")
IN_UDP = udp_segment(REMOTE_IP, HOST_IP, 4601, 4600, b"decrypted by the agent!")
PLAIN_UDP = udp_segment(REMOTE_IP, HOST_IP, 9, 9, b"clear")
BYPASS_UDP = udp_segment(HOST_IP, REMOTE_IP, 7, 7, b"bypass")

OUT_REQUEST = AddSaRequest(
    direction=Direction.OUTBOUND,
    spi=OUT_SPI,
    dst=packed(REMOTE_IP),
    alg=Algorithm.AES_GCM_128,
    key=OUT_KEY,
    local_mac=HOST_MAC,
)
IN_REQUEST = AddSaRequest(
    direction=Direction.INBOUND,
    spi=IN_SPI,
    dst=packed(HOST_IP),
    src=packed(REMOTE_IP),
    alg=Algorithm.AES_GCM_256,
    wrapped_key=aes_key_wrap_with_padding(KEK, IN_KEY),
    kek_id=KEK_ID,
    local_mac=HOST_MAC,
    esn=True,
    seq=IN_HIGHEST,
    replay_window=128,
)


def offload_frame() -> bytes:
    """What the NIC hands the agent for offload (spec 3): L2 with the Tx tag | IPv4 |
    ESP header (SPI, seq 0) | IV 0 | plaintext UDP, no trailer, no ICV."""
    esp = struct.pack(">II", OUT_SPI, 0) + bytes(8)
    return ether(GW_MAC, HOST_MAC, EtherType.IPV4, TX_WORD) + ipv4(
        HOST_IP, REMOTE_IP, 50, esp + OUT_UDP, 0x1234
    )


def expected_encrypted() -> bytes:
    """Spec 8: the first packet of the SA leaves with sequence number 1 and IV 1; the tag is
    removed and the IPv4 total length and checksum fixed."""
    seq = 1
    iv = struct.pack(">Q", seq)
    aad = struct.pack(">II", OUT_SPI, seq)
    sealed = AESGCM(OUT_KEY[:16]).encrypt(
        OUT_KEY[16:] + iv, OUT_UDP + trailer(len(OUT_UDP), 17), aad
    )
    esp = struct.pack(">II", OUT_SPI, seq) + iv + sealed
    return ether(GW_MAC, HOST_MAC, EtherType.IPV4) + ipv4(HOST_IP, REMOTE_IP, 50, esp, 0x1234)


IN_SEQ = IN_HIGHEST + 1
IN_IV = bytes.fromhex("0102030405060708")


def wire_esp_frame() -> bytes:
    """ESP from the remote gateway for the inbound ESN SA: only the low 32 bits of the
    sequence number travel; the AAD has SPI || seq_hi || seq_lo (RFC 4106 section 5)."""
    aad = struct.pack(">IQ", IN_SPI, IN_SEQ)
    plaintext = IN_UDP + trailer(len(IN_UDP), 17)
    sealed = AESGCM(IN_KEY[:32]).encrypt(IN_KEY[32:] + IN_IV, plaintext, aad)
    esp = struct.pack(">II", IN_SPI, IN_SEQ & 0xFFFFFFFF) + IN_IV + sealed
    return ether(HOST_MAC, GW_MAC, EtherType.IPV4) + ipv4(REMOTE_IP, HOST_IP, 50, esp, 0x4321)


def expected_decrypted() -> bytes:
    """Spec 3: Rx tag OK with the SA index, IP length without the ICV, ESP header and IV
    kept, plaintext with its trailer in place, no ICV."""
    esp = struct.pack(">II", IN_SPI, IN_SEQ & 0xFFFFFFFF) + IN_IV
    body = esp + IN_UDP + trailer(len(IN_UDP), 17)
    return ether(HOST_MAC, GW_MAC, EtherType.IPV4, RX_OK_SA2) + ipv4(
        REMOTE_IP, HOST_IP, 50, body, 0x4321
    )


def tagged(frame: bytes, word: int) -> bytes:
    """`frame` with the Rx metadata tag after the source MAC."""
    return frame[:12] + struct.pack(">HI", EtherType.META, word) + frame[12:]


def plain_wire_frame() -> bytes:
    return ether(HOST_MAC, GW_MAC, EtherType.IPV4) + ipv4(REMOTE_IP, HOST_IP, 17, PLAIN_UDP, 9)


def bypass_frame(with_tag: bool) -> bytes:
    word = BYPASS_WORD if with_tag else None
    return ether(GW_MAC, HOST_MAC, EtherType.IPV4, word) + ipv4(
        HOST_IP, REMOTE_IP, 17, BYPASS_UDP, 7
    )


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    host_in, wire_in = tmp_path / "host-in.pcap", tmp_path / "wire-in.pcap"
    write_pcap(
        host_in,
        [
            PcapRecord.at(T_ADD_OUT, config_frame(OUT_TXN, OUT_REQUEST)),
            PcapRecord.at(T_OFFLOAD, offload_frame()),
            PcapRecord.at(T_TIE, config_frame(IN_TXN, IN_REQUEST)),
            PcapRecord.at(T_BYPASS, bypass_frame(with_tag=True)),
        ],
    )
    # out of time order in the file on purpose: the model sorts by timestamp
    write_pcap(
        wire_in,
        [PcapRecord.at(T_TIE, wire_esp_frame()), PcapRecord.at(T_PLAIN, plain_wire_frame())],
    )
    return host_in, wire_in


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, ["agent", *(str(a) for a in args)])


def data_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def run_hand_built(tmp_path: Path, *extra: object) -> tuple[Result, Path, Path, Path]:
    host_in, wire_in = write_inputs(tmp_path)
    ho, wo, keys = tmp_path / "HO.pcap", tmp_path / "WO.pcap", tmp_path / "esp_sa"
    result = invoke(
        "--host-in",
        host_in,
        "--wire-in",
        wire_in,
        "--host-out",
        ho,
        "--wire-out",
        wo,
        "--esp-sa",
        keys,
        *extra,
    )
    return result, ho, wo, keys


def test_agent_command_on_hand_built_pcaps(tmp_path: Path) -> None:
    result, ho, wo, keys = run_hand_built(tmp_path, "--kek", f"{KEK_ID}:{KEK.hex()}")
    assert result.exit_code == 0, result.output
    assert "4 host and 2 wire frames in" in result.output
    assert "4 to host and 2 to wire out" in result.output
    assert "SAD holds 2 SAs" in result.output

    host_out = read_pcap(ho)
    assert host_out == [
        PcapRecord.at(T_PLAIN, tagged(plain_wire_frame(), RX_NOT_ESP)),
        PcapRecord.at(T_ADD_OUT, add_sa_reply(OUT_TXN, 1)),
        # tie at T_TIE: the host side first, so the SA exists when the wire frame arrives
        PcapRecord.at(T_TIE, add_sa_reply(IN_TXN, 2)),
        PcapRecord.at(T_TIE, expected_decrypted()),
    ]
    wire_out = read_pcap(wo)
    assert wire_out == [
        PcapRecord.at(T_OFFLOAD, expected_encrypted()),
        PcapRecord.at(T_BYPASS, bypass_frame(with_tag=False)),
    ]

    # the encrypted frame, decrypted here with the SA's key
    frame = wire_out[0].frame
    assert frame[12:14] == b"\x08\x00"
    esp = frame[14 + 20 :]
    spi, seq = struct.unpack(">II", esp[:8])
    assert (spi, seq) == (OUT_SPI, 1)
    iv = esp[8:16]
    assert iv == struct.pack(">Q", 1)
    plaintext = AESGCM(OUT_KEY[:16]).decrypt(OUT_KEY[16:] + iv, esp[16:], esp[:8])
    assert plaintext == OUT_UDP + trailer(len(OUT_UDP), 17)

    assert data_lines(keys.read_text()) == [
        '"IPv4","*","198.51.100.20","0x00002001","AES-GCM with 16 octet ICV [RFC4106]",'
        f'"0x{OUT_KEY.hex()}","NULL",""',
        '"IPv4","198.51.100.20","192.0.2.10","0x00003001","AES-GCM with 16 octet ICV [RFC4106]",'
        f'"0x{IN_KEY.hex()}","NULL",""',
    ]
    comments = [line for line in keys.read_text().splitlines() if line.startswith("#")]
    assert any("0x00003001" in line for line in comments)  # the ESN SA is flagged
    assert not any("0x00002001" in line for line in comments)


def test_agent_command_without_the_kek(tmp_path: Path) -> None:
    """Without the key-encryption key the wrapped ADD_SA is refused (KEY_UNWRAP_FAILED, 6),
    and the ESP frame then finds no SA: it passes unchanged with STATUS NO_SA."""
    result, ho, _wo, keys = run_hand_built(tmp_path)
    assert result.exit_code == 0, result.output
    host_out = read_pcap(ho)
    assert [r.time for r in host_out] == [T_PLAIN, T_ADD_OUT, T_TIE, T_TIE]
    refused = host_out[2].frame
    header = refused[20 : 20 + 12]
    assert header == bytes((1, 0x81, 6, 0, 0, 0)) + struct.pack(">IH", IN_TXN, 0)
    no_sa = 0x8000_0000 | 1 << 27  # IPSEC=1 | STATUS NO_SA | SA_INDEX 0
    assert host_out[3].frame == tagged(wire_esp_frame(), no_sa)
    assert len(data_lines(keys.read_text())) == 1


@pytest.mark.interop
def test_golden_esp_sa_decrypts_in_tshark(tshark: str, tmp_path: Path) -> None:
    """The keys file the command writes lets tshark decrypt both directions (the outbound
    SA has no SRC_ADDR, so its line has Wireshark's '*' source)."""
    result, _ho, wo, keys = run_hand_built(tmp_path, "--kek", f"{KEK_ID}:{KEK.hex()}")
    assert result.exit_code == 0, result.output
    both = tmp_path / "both.pcap"
    write_pcap(both, [*read_pcap(wo), PcapRecord.at(T_TIE, wire_esp_frame())])
    rows = tshark_decode(both, keys, fields=["esp.spi", "esp.icv_good", "udp.srcport", "data.data"])
    assert [(r["esp.spi"], r["udp.srcport"]) for r in rows] == [
        ("0x00002001", "40500"),
        ("", "7"),
        ("0x00003001", "4601"),
    ]
    assert rows[0]["esp.icv_good"] == "1"
    assert bytes.fromhex(rows[0]["data.data"]) == b"offloaded by the agent"
    assert bytes.fromhex(rows[2]["data.data"]) == b"decrypted by the agent!"


# -- (c) errors ------------------------------------------------------------------------


def assert_clean_error(result: Result, *names: str) -> str:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for name in names:
        assert name in lines[0]
    return lines[0]


def test_missing_host_input(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pcap"
    ho, wo = tmp_path / "HO.pcap", tmp_path / "WO.pcap"
    result = invoke("--host-in", missing, "--host-out", ho, "--wire-out", wo)
    line = assert_clean_error(result, str(missing))
    assert line.startswith("Error: ")
    assert not ho.exists() and not wo.exists()


def test_missing_wire_input(tmp_path: Path) -> None:
    host_in, _wire_in = write_inputs(tmp_path)
    missing = tmp_path / "no-wire.pcap"
    ho, wo = tmp_path / "HO.pcap", tmp_path / "WO.pcap"
    result = invoke("--host-in", host_in, "--wire-in", missing, "--host-out", ho, "--wire-out", wo)
    assert_clean_error(result, str(missing))
    assert not ho.exists() and not wo.exists()


def test_input_that_is_not_a_pcap(tmp_path: Path) -> None:
    text = tmp_path / "notes.pcap"
    text.write_text("these are not the frames you are looking for\n")
    ho, wo = tmp_path / "HO.pcap", tmp_path / "WO.pcap"
    result = invoke("--host-in", text, "--host-out", ho, "--wire-out", wo)
    line = assert_clean_error(result, str(text))
    assert "not a pcap file" in line


@pytest.mark.parametrize(
    "kek",
    ["7", "x:" + KEK.hex(), "7:" + KEK.hex()[:-2], "7:not-hex", f"{2**32}:{KEK.hex()}"],
    ids=["no-colon", "bad-id", "short-key", "not-hex", "id-too-big"],
)
def test_bad_kek(tmp_path: Path, kek: str) -> None:
    host_in, _wire_in = write_inputs(tmp_path)
    ho, wo = tmp_path / "HO.pcap", tmp_path / "WO.pcap"
    result = invoke("--host-in", host_in, "--host-out", ho, "--wire-out", wo, "--kek", kek)
    assert_clean_error(result, "--kek", kek)
    assert not ho.exists()


def test_unwritable_output(tmp_path: Path) -> None:
    host_in, _wire_in = write_inputs(tmp_path)
    ho = tmp_path / "no-such-dir" / "HO.pcap"
    result = invoke("--host-in", host_in, "--host-out", ho, "--wire-out", tmp_path / "WO.pcap")
    assert_clean_error(result, str(ho))


def test_agent_command_takes_config_from_the_pf_mac_alone(tmp_path: Path) -> None:
    """Spec 9 invariant 3: given `--pf-mac`, the golden agent answers config frames from that
    source as before, and ignores (without a reply) and counts those from any other."""
    kek = ("--kek", f"{KEK_ID}:{KEK.hex()}")
    for name in ("pf", "all", "other"):
        (tmp_path / name).mkdir()
    result, ho, wo, _ = run_hand_built(tmp_path / "pf", *kek, "--pf-mac", HOST_MAC.hex(":"))
    assert result.exit_code == 0, result.output
    assert "SAD holds 2 SAs" in result.output and "drops: none" in result.output
    _, ho_all, wo_all, _ = run_hand_built(tmp_path / "all", *kek)
    assert wo.read_bytes() == wo_all.read_bytes()
    # spec 9: given the PF's MAC, the agent starts at the first record with AGENT_STARTED to
    # it, resent every 10 ms 5 times (nobody answers); otherwise the same frames
    records = read_pcap(ho)
    events = [r for r in records if is_event(r.frame)]
    assert [r.time for r in events] == pytest.approx([T_PLAIN + n / 100 for n in range(6)])
    assert [r.frame[:6] for r in events] == [HOST_MAC] * 6
    assert [r for r in records if not is_event(r.frame)] == read_pcap(ho_all)

    other = "02:00:00:00:00:99"
    result, ho, wo, _ = run_hand_built(tmp_path / "other", *kek, "--pf-mac", other)
    assert result.exit_code == 0, result.output
    assert "SAD holds 0 SAs" in result.output
    assert "CONFIG_NOT_FROM_PF=2" in result.output
    records = [r for r in read_pcap(ho) if not is_event(r.frame)]
    assert [r.time for r in records] == [T_PLAIN, T_TIE]  # no replies; NO_SA at T_TIE
    assert [r.frame for r in read_pcap(wo)] == [bypass_frame(with_tag=False)]


def test_bad_pf_mac(tmp_path: Path) -> None:
    host_in, _wire_in = write_inputs(tmp_path)
    ho, wo = tmp_path / "HO.pcap", tmp_path / "WO.pcap"
    result = invoke("--host-in", host_in, "--host-out", ho, "--wire-out", wo, "--pf-mac", "pf")
    assert_clean_error(result, "--pf-mac", "'pf'")
    assert not ho.exists()
