"""The scapy layers (ipsec_offload.interop.scapy_layers) against the agent and the codecs.

Frames crafted in scapy must be what the agent accepts (ADD_SA with every TLV, offload frames
it encrypts), the agent's outputs must read back through the layers (Rx tags with STATUS and
SA_INDEX, config replies), and scapy's bytes must equal the project's `build_config` /
`build_ethernet` for every opcode, in both directions.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Padding, Raw

from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.crypto.keywrap import wrap_key
from ipsec_offload.interop.scapy_layers import (
    EVENT_TYPES,
    IpsecOffloadConfig,
    IpsecOffloadMeta,
    IpsecOffloadRxMeta,
    IpsecOffloadTlv,
    IpsecOffloadTxMeta,
    TlvAlg,
    TlvBootId,
    TlvCaps,
    TlvCount,
    TlvDir,
    TlvDstAddr,
    TlvEsn,
    TlvEventType,
    TlvKekId,
    TlvKey,
    TlvLifetimeBytes,
    TlvLifetimePackets,
    TlvLocalMac,
    TlvReplayWindow,
    TlvSaEntry,
    TlvSaIndex,
    TlvSeq,
    TlvSoftLifetimeBytes,
    TlvSoftLifetimePackets,
    TlvSpi,
    TlvSrcAddr,
    TlvStats,
    TlvVlan,
    TlvWrappedKey,
    guess_meta_direction,
    meta_direction,
    parse_frame,
)
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
    build_config,
    decode_add_sa,
    decode_caps,
    decode_event,
    decode_list_sas_reply,
    decode_list_sas_request,
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
from tools import scapy_encrypt, scapy_sa

pytestmark = pytest.mark.interop

AGENT = "02:00:00:00:00:01"
HOST = "02:00:00:00:00:10"
PEER = "02:00:00:00:00:20"
LOCAL4, REMOTE4 = "192.0.2.1", "192.0.2.2"
LOCAL6, REMOTE6 = "2001:db8::1", "2001:db8::2"
KEY128 = bytes(range(1, 17)) + bytes.fromhex("cafebabe")
KEY256 = bytes(range(100, 132)) + bytes.fromhex("01020304")
KEK = bytes(range(0x40, 0x60))
KEK_ID = 9
ICV_LEN = 16


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def config_frame(msg: ConfigMessage, src: str = HOST, dst: str = AGENT) -> bytes:
    """A config frame as the project's codecs write it."""
    header = EthernetHeader(dst=mac(dst), src=mac(src), ethertype=EtherType.CONFIG)
    return build_ethernet(header) + build_config(msg)


def scapy_config(config: IpsecOffloadConfig, src: str = HOST, dst: str = AGENT) -> Packet:
    return Ether(dst=dst, src=src) / config


def add_sa_request(
    direction: int,
    spi: int,
    src: str,
    dst: str,
    alg: int = 1,
    key: bytes = KEY128,
    vlans: tuple[tuple[int, int], ...] = (),
    extra: tuple[Packet, ...] = (),
    txn_id: int = 1,
    local_mac: str = HOST,
) -> Packet:
    """ADD_SA in scapy: DIR, SPI, DST_ADDR, SRC_ADDR, ALG, KEY, LOCAL_MAC, VLANs, extras."""
    tlvs = [
        TlvDir(dir=direction),
        TlvSpi(spi=spi),
        TlvDstAddr(addr=dst),
        TlvSrcAddr(addr=src),
        TlvAlg(alg=alg),
        TlvKey(key=key),
        TlvLocalMac(mac=local_mac),
        *(TlvVlan(tpid=tpid, vid=vid) for tpid, vid in vlans),
        *extra,
    ]
    return scapy_config(IpsecOffloadConfig(opcode=1, txn_id=txn_id, tlvs=tlvs))


def only(frames: list[bytes]) -> bytes:
    assert len(frames) == 1, frames
    return frames[0]


def reply_of(agent: IpsecAgent, request: Packet) -> Packet:
    """The agent's one reply to ``request``, read with the layers (direction guessed)."""
    out = agent.from_host([bytes(request)])
    assert not out.to_wire
    return parse_frame(only(out.to_host))


# -- the agent accepts what scapy builds ---------------------------------------------------


@pytest.mark.parametrize(
    ("family", "alg", "key", "vlans", "extra"),
    [
        (4, 1, KEY128, (), ()),
        (4, 1, KEY128, ((0x8100, 100),), (TlvEsn(), TlvReplayWindow(replay_window=256))),
        (
            6,
            2,
            KEY256,
            ((0x88A8, 7), (0x8100, 200)),
            (
                TlvEsn(),
                TlvSeq(seq=1 << 33),
                TlvReplayWindow(replay_window=1024),
                TlvLifetimePackets(lifetime_packets=1000),
                TlvLifetimeBytes(lifetime_bytes=1 << 40),
            ),
        ),
    ],
)
def test_agent_accepts_add_sa_built_in_scapy(
    family: int,
    alg: int,
    key: bytes,
    vlans: tuple[tuple[int, int], ...],
    extra: tuple[Packet, ...],
) -> None:
    agent = IpsecAgent()
    src, dst = (REMOTE4, LOCAL4) if family == 4 else (REMOTE6, LOCAL6)
    request = add_sa_request(0, 0x1234, src, dst, alg, key, vlans, extra, txn_id=77)
    # the project's decoder reads the same SA out of the scapy bytes
    decoded = decode_add_sa(parse_config(bytes(request)[14:]).tlvs)
    assert (decoded.spi, decoded.dst, decoded.key) == (0x1234, addr(dst), key)
    assert [(v.tpid, v.vid) for v in decoded.vlans] == list(vlans)

    reply = reply_of(agent, request)
    assert isinstance(reply[IpsecOffloadMeta], IpsecOffloadRxMeta)
    assert reply[IpsecOffloadRxMeta].fields == {
        "ipsec": 0,
        "status": 0,
        "reserved": 0,
        "sa_index": 0,
        "type": EtherType.CONFIG,
    }
    assert reply[Ether].src == AGENT and reply[Ether].dst == HOST
    cfg = reply[IpsecOffloadConfig]
    assert (cfg.opcode, cfg.is_reply, cfg.base_opcode) == (0x81, True, Opcode.ADD_SA)
    assert (cfg.status, cfg.txn_id, cfg.port) == (ConfigStatus.OK, 77, 0)
    assert [type(t) for t in cfg.tlvs] == [TlvSaIndex]
    assert cfg[TlvSaIndex].sa_index == 1
    assert cfg.answers(request[IpsecOffloadConfig])
    sa = agent.sad.get(1)
    assert sa is not None and sa.spi == 0x1234 and sa.key_material == key


def test_agent_unwraps_a_wrapped_key_built_in_scapy() -> None:
    agent = IpsecAgent(AgentConfig(keks={KEK_ID: KEK}))
    tlvs = [
        TlvDir(dir=1),
        TlvSpi(spi=0x4321),
        TlvDstAddr(addr=REMOTE4),
        TlvAlg(alg=2),
        TlvWrappedKey(wrapped_key=wrap_key(KEK, KEY256)),
        TlvKekId(kek_id=KEK_ID),
        TlvLocalMac(mac=HOST),
    ]
    reply = reply_of(agent, scapy_config(IpsecOffloadConfig(opcode=1, txn_id=3, tlvs=tlvs)))
    assert reply[IpsecOffloadConfig].status == ConfigStatus.OK
    assert reply[TlvSaIndex].sa_index == 1
    sa = agent.sad.get(1)
    assert sa is not None and sa.key_material == KEY256

    wrong = [*tlvs[:4], TlvWrappedKey(wrapped_key=wrap_key(bytes(32), KEY256)), *tlvs[5:]]
    wrong[1] = TlvSpi(spi=0x4322)
    refused = reply_of(agent, scapy_config(IpsecOffloadConfig(opcode=1, txn_id=4, tlvs=wrong)))
    assert refused[IpsecOffloadConfig].status == ConfigStatus.KEY_UNWRAP_FAILED
    assert refused[IpsecOffloadConfig].sprintf("%status%") == "KEY_UNWRAP_FAILED"
    assert refused[IpsecOffloadConfig].tlvs == []


def test_every_opcode_round_trips_through_the_agent() -> None:
    agent = IpsecAgent()
    caps = reply_of(agent, scapy_config(IpsecOffloadConfig(opcode="GET_CAPS", txn_id=1)))
    assert caps[IpsecOffloadConfig].sprintf("%opcode%") == "GET_CAPS_REPLY"
    assert caps[TlvCaps].algorithms == [1, 2]
    assert caps[TlvCaps].sad_size == agent.config.sad_size
    assert caps[TlvCaps].max_replay_window == agent.config.max_replay_window

    local = [TlvLocalMac(mac=HOST), TlvVlan(tpid=0x8100, vid=100)]
    added = reply_of(agent, scapy_config(IpsecOffloadConfig(opcode=4, txn_id=2, tlvs=local)))
    assert added[IpsecOffloadConfig].status == ConfigStatus.OK
    again = reply_of(agent, scapy_config(IpsecOffloadConfig(opcode=4, txn_id=3, tlvs=local)))
    assert again[IpsecOffloadConfig].status == ConfigStatus.EXISTS
    removed = reply_of(agent, scapy_config(IpsecOffloadConfig(opcode=5, txn_id=4, tlvs=local)))
    assert removed[IpsecOffloadConfig].status == ConfigStatus.OK

    for txn, spi in ((5, 0x100), (6, 0x101)):
        reply = reply_of(agent, add_sa_request(0, spi, REMOTE4, LOCAL4, txn_id=txn))
        assert reply[IpsecOffloadConfig].status == ConfigStatus.OK
    stats = reply_of(
        agent, scapy_config(IpsecOffloadConfig(opcode=6, txn_id=7, tlvs=[TlvSaIndex(sa_index=2)]))
    )
    assert stats[IpsecOffloadConfig].status == ConfigStatus.OK
    assert (stats[TlvStats].packets, stats[TlvStats].bytes, stats[TlvStats].replay) == (0, 0, 0)
    gone = reply_of(
        agent, scapy_config(IpsecOffloadConfig(opcode=2, txn_id=8, tlvs=[TlvSaIndex(sa_index=2)]))
    )
    assert gone[IpsecOffloadConfig].status == ConfigStatus.OK
    missing = reply_of(
        agent, scapy_config(IpsecOffloadConfig(opcode=2, txn_id=9, tlvs=[TlvSaIndex(sa_index=2)]))
    )
    assert missing[IpsecOffloadConfig].status == ConfigStatus.NOT_FOUND
    everything = reply_of(agent, scapy_config(IpsecOffloadConfig(opcode=3, txn_id=10)))
    assert everything[TlvCount].count == 1

    unknown = reply_of(agent, scapy_config(IpsecOffloadConfig(opcode=0x42, txn_id=11)))
    assert unknown[IpsecOffloadConfig].status == ConfigStatus.UNSUPPORTED
    bad = reply_of(agent, scapy_config(IpsecOffloadConfig(version=2, opcode=7, txn_id=12)))
    assert bad[IpsecOffloadConfig].sprintf("%status%") == "BAD_VERSION"
    spi0 = reply_of(agent, add_sa_request(0, 0, REMOTE4, LOCAL4, txn_id=13))
    assert spi0[IpsecOffloadConfig].status == ConfigStatus.BAD_REQUEST


# -- offload and receive through the agent -------------------------------------------------


def test_agent_encrypts_an_offload_frame_built_with_the_tx_layer() -> None:
    agent = IpsecAgent()
    reply = reply_of(agent, add_sa_request(1, 0x2001, LOCAL4, REMOTE4, vlans=((0x8100, 100),)))
    assert reply[IpsecOffloadConfig].status == ConfigStatus.OK
    iv = struct.pack("!Q", 1)
    inner = UDP(sport=4000, dport=5000) / Raw(b"offloaded by scapy")
    frame = (
        Ether(src=HOST, dst=PEER)
        / IpsecOffloadTxMeta(offload=1, next_header=17)
        / Dot1Q(vlan=100)
        / IP(src=LOCAL4, dst=REMOTE4, proto=50)
        / ESP(spi=0x2001, seq=1, data=iv + bytes(inner))
    )
    raw = bytes(frame)
    # the offsets the layer filled in are the ones the driver would write
    word = build_tx_metadata(TxMetadata(offload=True, next_header=17, l3_offset=18, esp_offset=5))
    assert raw[12:18] == struct.pack("!HI", EtherType.META, word)
    assert parse_frame(raw)[IpsecOffloadMeta].__class__ is IpsecOffloadTxMeta

    out = agent.from_host([raw])
    wire = Ether(only(out.to_wire))
    assert not wire.haslayer(IpsecOffloadMeta)
    assert wire[Dot1Q].vlan == 100
    assert (wire[ESP].spi, wire[ESP].seq) == (0x2001, 1)
    sa = scapy_sa(0x2001, KEY128, 1)
    plain = sa.decrypt(wire[IP])
    # what the agent encrypted is the payload behind the IV, as scapy built it
    assert bytes(plain[UDP]) == bytes(inner)


def test_agent_rx_tags_read_through_the_rx_layer() -> None:
    agent = IpsecAgent()
    reply = reply_of(agent, add_sa_request(0, 0x3001, REMOTE4, LOCAL4))
    index = reply[TlvSaIndex].sa_index
    sa = scapy_sa(0x3001, KEY128, 1)
    payload = IP(src=REMOTE4, dst=LOCAL4) / UDP(sport=1, dport=2) / Raw(b"x" * 40)
    encrypted = Ether(src=PEER, dst=HOST) / scapy_encrypt(sa, payload, 1, struct.pack("!Q", 1))
    unknown = Ether(src=PEER, dst=HOST) / scapy_encrypt(
        scapy_sa(0x3002, KEY128, 1), payload, 1, struct.pack("!Q", 1)
    )
    second = Ether(src=PEER, dst=HOST) / scapy_encrypt(sa, payload, 2, struct.pack("!Q", 2))
    tampered = bytearray(bytes(second))
    tampered[-1] ^= 1
    plain = Ether(src=PEER, dst=HOST) / payload
    frames = [bytes(encrypted), bytes(encrypted), bytes(unknown), bytes(tampered), bytes(plain)]
    out = agent.from_wire(frames)
    assert len(out.to_host) == 5
    tags = [parse_frame(f)[IpsecOffloadMeta] for f in out.to_host]
    assert all(isinstance(t, IpsecOffloadRxMeta) for t in tags[:4])
    got = [(t.ipsec, t.sprintf("%status%"), t.sa_index) for t in tags[:4]]
    assert got == [
        (1, "OK", index),
        (1, "REPLAY", index),
        (1, "NO_SA", 0),
        (1, "AUTH_FAILED", index),
    ]
    # an all-zero word without a config reply behind it reads as Tx unless told otherwise
    assert parse_frame(out.to_host[4], "rx")[IpsecOffloadRxMeta].fields["ipsec"] == 0
    # the decrypted frame: ESP header, IV, plaintext, trailer, no ICV
    ok = parse_frame(out.to_host[0], "rx")
    assert ok[IpsecOffloadRxMeta].type == EtherType.IPV4
    assert bytes(ok[IP].payload)[16 : 16 + len(payload[UDP])] == bytes(payload[UDP])
    assert [t.word for t in tags[:4]] == [
        build_rx_metadata(RxMetadata(True, RxStatus.OK, index)),
        build_rx_metadata(RxMetadata(True, RxStatus.REPLAY, index)),
        build_rx_metadata(RxMetadata(True, RxStatus.NO_SA, 0)),
        build_rx_metadata(RxMetadata(True, RxStatus.AUTH_FAILED, index)),
    ]


# -- byte-exact against the project's codecs -----------------------------------------------

_ADD_SA_V6 = AddSaRequest(
    direction=Direction.OUTBOUND,
    spi=0xDEADBEEF,
    dst=addr(REMOTE6),
    src=addr(LOCAL6),
    alg=Algorithm.AES_GCM_256,
    wrapped_key=bytes(range(48)),
    kek_id=3,
    local_mac=mac(HOST),
    vlans=(VlanTag(0x88A8, 0x2007), VlanTag(0x8100, 0xE0C8)),
    esn=True,
    seq=2**40,
    replay_window=4096,
    lifetime_packets=10**6,
    lifetime_bytes=2**50,
    soft_lifetime_packets=9 * 10**5,
    soft_lifetime_bytes=2**49,
)
_ADD_SA_V4 = AddSaRequest(
    direction=Direction.INBOUND,
    spi=0x1234,
    dst=addr("192.168.0.2"),
    src=addr("192.168.0.1"),
    alg=Algorithm.AES_GCM_128,
    key=bytes(range(20)),
    local_mac=mac(HOST),
    vlans=(VlanTag(0x8100, 100),),
    esn=True,
    replay_window=128,
)
_STATS = SaStats(packets=10, bytes=1400, errors=(1, 2, 3, 4, 2**63))
_CAPS = Caps(
    algorithms=(Algorithm.AES_GCM_128, Algorithm.AES_GCM_256), sad_size=1024, max_replay_window=4096
)
_CAPS_1_1 = Caps((Algorithm.AES_GCM_256,), 64, 1024, boot_id=0xFEDCBA9876543210)
_ENTRY4 = SaEntry(3, Direction.OUTBOUND, 0x1234, addr("192.168.0.2"), 2**32 + 5)
_ENTRY6 = SaEntry(0x0A0B0C0D, Direction.INBOUND, 0xFEDCBA98, addr(REMOTE6), 64)
_DOMAIN = ListSasRequest(mac(HOST), (VlanTag(0x88A8, 10), VlanTag(0x8100, 100)), 5)

CASES: list[tuple[str, ConfigMessage, IpsecOffloadConfig]] = [
    (
        "add-sa-v4-key",
        ConfigMessage(Opcode.ADD_SA, 0x2A, encode_add_sa(_ADD_SA_V4)),
        IpsecOffloadConfig(
            opcode=1,
            txn_id=0x2A,
            tlvs=[
                TlvDir(dir=0),
                TlvSpi(spi=0x1234),
                TlvDstAddr(addr="192.168.0.2"),
                TlvSrcAddr(addr="192.168.0.1"),
                TlvAlg(alg=1),
                TlvKey(key=bytes(range(20))),
                TlvLocalMac(mac=HOST),
                TlvVlan(vid=100),
                TlvEsn(),
                TlvReplayWindow(replay_window=128),
            ],
        ),
    ),
    (
        "add-sa-v6-wrapped",
        ConfigMessage(Opcode.ADD_SA, 7, encode_add_sa(_ADD_SA_V6), port=3),
        IpsecOffloadConfig(
            opcode="ADD_SA",
            txn_id=7,
            port=3,
            tlvs=[
                TlvDir(dir="outbound"),
                TlvSpi(spi=0xDEADBEEF),
                TlvDstAddr(addr=REMOTE6),
                TlvSrcAddr(addr=LOCAL6),
                TlvAlg(alg="AES-GCM-256"),
                TlvWrappedKey(wrapped_key=bytes(range(48))),
                TlvKekId(kek_id=3),
                TlvLocalMac(mac=HOST),
                TlvVlan(tpid=0x88A8, pcp=1, vid=7),
                TlvVlan(tpid=0x8100, pcp=7, dei=0, vid=200),
                TlvEsn(),
                TlvSeq(seq=2**40),
                TlvReplayWindow(replay_window=4096),
                TlvLifetimePackets(lifetime_packets=10**6),
                TlvLifetimeBytes(lifetime_bytes=2**50),
                TlvSoftLifetimePackets(soft_lifetime_packets=9 * 10**5),
                TlvSoftLifetimeBytes(soft_lifetime_bytes=2**49),
            ],
        ),
    ),
    (
        "add-sa-reply",
        ConfigMessage(Opcode.ADD_SA | Opcode.REPLY, 0x2A, encode_sa_index(3)),
        IpsecOffloadConfig(opcode=0x81, txn_id=0x2A, tlvs=[TlvSaIndex(sa_index=3)]),
    ),
    (
        "remove-sa",
        ConfigMessage(Opcode.REMOVE_SA, 0x10, encode_sa_index(2**32 - 1)),
        IpsecOffloadConfig(opcode=2, txn_id=0x10, tlvs=[TlvSaIndex(sa_index=2**32 - 1)]),
    ),
    (
        "remove-sa-reply-not-found",
        ConfigMessage(Opcode.REMOVE_SA | Opcode.REPLY, 0x10, (), status=ConfigStatus.NOT_FOUND),
        IpsecOffloadConfig(opcode=0x82, status="NOT_FOUND", txn_id=0x10),
    ),
    (
        "remove-all-sas",
        ConfigMessage(Opcode.REMOVE_ALL_SAS, 0x2B, (), port=1),
        IpsecOffloadConfig(opcode=3, txn_id=0x2B, port=1),
    ),
    (
        "remove-all-sas-reply",
        ConfigMessage(Opcode.REMOVE_ALL_SAS | Opcode.REPLY, 0x2B, encode_count(5), port=1),
        IpsecOffloadConfig(opcode=0x83, txn_id=0x2B, port=1, tlvs=[TlvCount(count=5)]),
    ),
    (
        "add-local-addr",
        ConfigMessage(
            Opcode.ADD_LOCAL_ADDR,
            0x2E,
            encode_local_addr(LocalAddr(mac(HOST), (VlanTag(0x88A8, 10), VlanTag(0x8100, 100)))),
        ),
        IpsecOffloadConfig(
            opcode=4,
            txn_id=0x2E,
            tlvs=[
                TlvLocalMac(mac=HOST),
                TlvVlan(tpid=0x88A8, vid=10),
                TlvVlan(tpid=0x8100, vid=100),
            ],
        ),
    ),
    (
        "remove-local-addr",
        ConfigMessage(Opcode.REMOVE_LOCAL_ADDR, 0x2F, encode_local_addr(LocalAddr(mac(PEER)))),
        IpsecOffloadConfig(opcode=5, txn_id=0x2F, tlvs=[TlvLocalMac(mac=PEER)]),
    ),
    (
        "get-sa-stats",
        ConfigMessage(Opcode.GET_SA_STATS, 0x2C, encode_sa_index(1)),
        IpsecOffloadConfig(opcode=6, txn_id=0x2C, tlvs=[TlvSaIndex(sa_index=1)]),
    ),
    (
        "get-sa-stats-reply",
        ConfigMessage(Opcode.GET_SA_STATS | Opcode.REPLY, 0x2C, encode_sa_stats(_STATS)),
        IpsecOffloadConfig(
            opcode=0x86,
            txn_id=0x2C,
            tlvs=[
                TlvStats(
                    packets=10,
                    bytes=1400,
                    no_sa=1,
                    auth_failed=2,
                    replay=3,
                    malformed=4,
                    sa_expired=2**63,
                )
            ],
        ),
    ),
    ("get-caps", ConfigMessage(Opcode.GET_CAPS, 7, ()), IpsecOffloadConfig(opcode=7, txn_id=7)),
    (
        "get-caps-reply",
        ConfigMessage(Opcode.GET_CAPS | Opcode.REPLY, 7, encode_caps(_CAPS)),
        IpsecOffloadConfig(
            opcode=0x87,
            txn_id=7,
            tlvs=[TlvCaps(algorithms=[1, 2], sad_size=1024, max_replay_window=4096)],
        ),
    ),
    (
        "get-caps-reply-boot-id",
        ConfigMessage(Opcode.GET_CAPS | Opcode.REPLY, 8, encode_caps(_CAPS_1_1)),
        IpsecOffloadConfig(
            opcode="GET_CAPS_REPLY",
            txn_id=8,
            tlvs=[
                TlvCaps(algorithms=[2], sad_size=64, max_replay_window=1024),
                TlvBootId(boot_id=0xFEDCBA9876543210),
            ],
        ),
    ),
    (
        "list-sas-all",
        ConfigMessage(Opcode.LIST_SAS, 0x31, encode_list_sas_request(ListSasRequest())),
        IpsecOffloadConfig(opcode="LIST_SAS", txn_id=0x31),
    ),
    (
        "list-sas-domain",
        ConfigMessage(Opcode.LIST_SAS, 0x30, encode_list_sas_request(_DOMAIN), port=2),
        IpsecOffloadConfig(
            opcode=8,
            txn_id=0x30,
            port=2,
            tlvs=[
                TlvLocalMac(mac=HOST),
                TlvVlan(tpid=0x88A8, vid=10),
                TlvVlan(tpid=0x8100, vid=100),
                TlvSaIndex(sa_index=5),
            ],
        ),
    ),
    (
        "list-sas-reply",
        ConfigMessage(
            Opcode.LIST_SAS | Opcode.REPLY,
            0x30,
            encode_list_sas_reply(ListSasReply((_ENTRY4, _ENTRY6), 0x0A0B0C0E)),
            port=2,
        ),
        IpsecOffloadConfig(
            opcode="LIST_SAS_REPLY",
            txn_id=0x30,
            port=2,
            tlvs=[
                TlvSaEntry(
                    sa_index=3, dir="outbound", spi=0x1234, dst="192.168.0.2", seq=2**32 + 5
                ),
                TlvSaEntry(sa_index=0x0A0B0C0D, dir=0, spi=0xFEDCBA98, dst=REMOTE6, seq=64),
                TlvSaIndex(sa_index=0x0A0B0C0E),
            ],
        ),
    ),
    (
        "list-sas-reply-empty",
        ConfigMessage(
            Opcode.LIST_SAS | Opcode.REPLY, 0x32, encode_list_sas_reply(ListSasReply((), 0))
        ),
        IpsecOffloadConfig(opcode=0x88, txn_id=0x32, tlvs=[TlvSaIndex(sa_index=0)]),
    ),
    (
        "event-soft-expire",
        ConfigMessage(
            Opcode.EVENT, 0x40, encode_event(Event(EventType.SOFT_EXPIRE, 0x0123456789ABCDEF, 7))
        ),
        IpsecOffloadConfig(
            opcode="EVENT",
            txn_id=0x40,
            tlvs=[
                TlvEventType(event_type="SOFT_EXPIRE"),
                TlvBootId(boot_id=0x0123456789ABCDEF),
                TlvSaIndex(sa_index=7),
            ],
        ),
    ),
    (
        "event-agent-started",
        ConfigMessage(Opcode.EVENT, 0x41, encode_event(Event(EventType.AGENT_STARTED, 2**64 - 1))),
        IpsecOffloadConfig(
            opcode=9,
            txn_id=0x41,
            tlvs=[TlvEventType(event_type=1), TlvBootId(boot_id=2**64 - 1)],
        ),
    ),
    (
        "event-reply",
        ConfigMessage(Opcode.EVENT | Opcode.REPLY, 0x40, ()),
        IpsecOffloadConfig(opcode="EVENT_REPLY", txn_id=0x40),
    ),
    (
        "bad-version-reply",
        ConfigMessage(Opcode.ADD_SA | Opcode.REPLY, 0x2D, (), status=ConfigStatus.BAD_VERSION),
        IpsecOffloadConfig(opcode=0x81, status=7, txn_id=0x2D),
    ),
    (
        "unknown-tlv",
        ConfigMessage(0x42, 1, (Tlv(0x0099, b"\x01\x02\x03"), Tlv(0x0003, b"\x00\x01"))),
        IpsecOffloadConfig(
            opcode=0x42,
            txn_id=1,
            tlvs=[
                IpsecOffloadTlv(type=0x99, value=b"\x01\x02\x03"),
                IpsecOffloadTlv(type=3, value=b"\x00\x01"),
            ],
        ),
    ),
]


@pytest.mark.parametrize(("msg", "layer"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_config_bytes_equal_the_codecs_both_ways(msg: ConfigMessage, layer: Packet) -> None:
    project = config_frame(msg)
    crafted = bytes(scapy_config(layer))
    assert crafted == project
    # project bytes -> scapy -> the same bytes, and the same TLVs as the project reads them
    dissected = Ether(project)
    assert bytes(dissected) == project
    cfg = dissected[IpsecOffloadConfig]
    assert (cfg.opcode, cfg.status, cfg.txn_id, cfg.port) == (
        msg.opcode,
        msg.status,
        msg.txn_id,
        msg.port,
    )
    assert cfg.tlv_length == len(project) - 14 - 12
    assert [bytes(t) for t in cfg.tlvs] == [
        struct.pack("!HH", t.type, len(t.value)) + t.value for t in msg.tlvs
    ]
    # scapy bytes -> the project's parser -> the same message
    assert parse_config(crafted[14:]) == msg


def test_decoded_tlv_fields_match_the_request() -> None:
    cfg = Ether(config_frame(ConfigMessage(1, 7, encode_add_sa(_ADD_SA_V6))))[IpsecOffloadConfig]
    assert [type(t).__name__ for t in cfg.tlvs] == [
        "TlvDir",
        "TlvSpi",
        "TlvDstAddr",
        "TlvSrcAddr",
        "TlvAlg",
        "TlvWrappedKey",
        "TlvKekId",
        "TlvLocalMac",
        "TlvVlan",
        "TlvVlan",
        "TlvEsn",
        "TlvSeq",
        "TlvReplayWindow",
        "TlvLifetimePackets",
        "TlvLifetimeBytes",
        "TlvSoftLifetimePackets",
        "TlvSoftLifetimeBytes",
    ]
    assert cfg.tlv(TlvDir).sprintf("%dir%") == "outbound"
    assert cfg.tlv(TlvSpi).spi == 0xDEADBEEF
    assert (cfg.tlv(TlvDstAddr).addr, cfg.tlv(TlvSrcAddr).addr) == (REMOTE6, LOCAL6)
    assert cfg.tlv(TlvAlg).sprintf("%alg%") == "AES-GCM-256"
    assert cfg.tlv(8).wrapped_key == bytes(range(48))
    assert cfg.tlv(TlvKekId).kek_id == 3
    assert cfg.tlv(TlvLocalMac).mac == HOST
    outer, inner = (t for t in cfg.tlvs if isinstance(t, TlvVlan))
    assert (outer.tpid, outer.pcp, outer.dei, outer.vid, outer.tci) == (0x88A8, 1, 0, 7, 0x2007)
    assert (inner.tpid, inner.pcp, inner.vid, inner.tci) == (0x8100, 7, 200, 0xE0C8)
    assert cfg.tlv(TlvEsn).length == 0
    assert cfg.tlv(TlvSeq).seq == 2**40
    assert cfg.tlv(TlvReplayWindow).replay_window == 4096
    assert cfg.tlv(TlvLifetimePackets).lifetime_packets == 10**6
    assert cfg.tlv(TlvLifetimeBytes).lifetime_bytes == 2**50
    assert cfg.tlv(TlvSoftLifetimePackets).soft_lifetime_packets == 9 * 10**5
    assert cfg.tlv(0x0018).soft_lifetime_bytes == 2**49
    key = Ether(config_frame(ConfigMessage(1, 1, encode_add_sa(_ADD_SA_V4))))[TlvKey]
    assert (key.aes_key, key.salt) == (bytes(range(16)), bytes(range(16, 20)))


def _hand(body: str) -> bytes:
    """A config frame from the host around a message written out by hand."""
    header = EthernetHeader(mac(AGENT), mac(HOST), EtherType.CONFIG)
    return build_ethernet(header) + bytes.fromhex(body)


def test_spec_1_1_tlvs_dissect_from_hand_written_bytes() -> None:
    """LIST_SAS reply, EVENT and a GET_CAPS reply as the spec 9 tables lay them out."""
    reply = Ether(
        _hand(
            "01 88 00 00 00 00 00000030 0048"  # LIST_SAS reply, OK, txn 48, 72 bytes
            "0014 0016 00000003 01 00001234 04 c0a80002 0000000100000005"
            "0014 0022 0a0b0c0d 00 fedcba98 10 20010db8000000000000000000000002 0000000000000040"
            "0001 0004 00000000"  # next cursor 0: done
        )
    )[IpsecOffloadConfig]
    assert reply.sprintf("%opcode%") == "LIST_SAS_REPLY" and reply.is_reply
    assert [type(t) for t in reply.tlvs] == [TlvSaEntry, TlvSaEntry, TlvSaIndex]
    first, second, cursor = reply.tlvs
    assert (first.length, first.sa_index, first.sprintf("%dir%"), first.spi) == (
        22,
        3,
        "outbound",
        0x1234,
    )
    assert (first.addr_len, first.dst, first.seq) == (4, "192.168.0.2", 2**32 + 5)
    assert (second.length, second.sa_index, second.sprintf("%dir%"), second.spi) == (
        34,
        0x0A0B0C0D,
        "inbound",
        0xFEDCBA98,
    )
    assert (second.addr_len, second.dst, second.seq) == (16, "2001:db8::2", 64)
    assert cursor.sa_index == 0

    event = Ether(
        _hand(
            "01 09 00 00 00 00 00000040 0019"  # EVENT, txn 64, 25 bytes
            "0015 0001 04"  # EVENT_TYPE SEQ_SOFT_LIMIT
            "0016 0008 0123456789abcdef"  # BOOT_ID
            "0001 0004 00000007"  # SA_INDEX 7
        )
    )[IpsecOffloadConfig]
    assert event.sprintf("%opcode%") == "EVENT" and not event.is_reply
    assert event[TlvEventType].sprintf("%event_type%") == "SEQ_SOFT_LIMIT"
    assert event[TlvEventType].event_type == 4
    assert event[TlvBootId].boot_id == 0x0123456789ABCDEF
    assert event.tlv(TlvSaIndex).sa_index == 7
    ack = Ether(_hand("01 89 00 00 00 00 00000040 0000"))[IpsecOffloadConfig]
    assert ack.sprintf("%opcode%") == "EVENT_REPLY" and ack.answers(event)

    caps = Ether(
        _hand(
            "01 87 00 00 00 00 00000007 001b"
            "0011 000b 02 01 02 00000400 00001000"  # CAPS
            "0016 0008 00000000deadbeef"  # BOOT_ID
        )
    )[IpsecOffloadConfig]
    assert caps[TlvBootId].boot_id == 0xDEADBEEF
    assert caps[TlvCaps].sad_size == 1024

    soft = Ether(
        _hand(
            "01 01 00 00 00 00 0000002a 0018"
            "0017 0008 00000000000003e8"  # SOFT_LIFETIME_PACKETS 1000
            "0018 0008 0000000000100000"  # SOFT_LIFETIME_BYTES 1 MiB
        )
    )[IpsecOffloadConfig]
    assert soft[TlvSoftLifetimePackets].soft_lifetime_packets == 1000
    assert soft[TlvSoftLifetimeBytes].soft_lifetime_bytes == 1 << 20
    assert {int(e): e.name for e in EventType} == EVENT_TYPES


def test_spec_1_1_frames_built_in_scapy_decode_with_the_codecs() -> None:
    def body(layer: IpsecOffloadConfig) -> tuple[Tlv, ...]:
        return parse_config(bytes(scapy_config(layer))[14:]).tlvs

    request = IpsecOffloadConfig(
        opcode="LIST_SAS",
        tlvs=[TlvLocalMac(mac=HOST), TlvVlan(vid=100), TlvSaIndex(sa_index=9)],
    )
    assert decode_list_sas_request(body(request)) == ListSasRequest(
        mac(HOST), (VlanTag(0x8100, 100),), 9
    )
    entries = [
        TlvSaEntry(sa_index=i, dir=i % 2, spi=0x100 + i, dst=dst, seq=i * 1000)
        for i, dst in ((1, LOCAL4), (2, REMOTE6), (7, "10.0.0.7"))
    ]
    reply = IpsecOffloadConfig(opcode="LIST_SAS_REPLY", tlvs=[*entries, TlvSaIndex(sa_index=8)])
    assert decode_list_sas_reply(body(reply)) == ListSasReply(
        (
            SaEntry(1, Direction.OUTBOUND, 0x101, addr(LOCAL4), 1000),
            SaEntry(2, Direction.INBOUND, 0x102, addr(REMOTE6), 2000),
            SaEntry(7, Direction.OUTBOUND, 0x107, addr("10.0.0.7"), 7000),
        ),
        8,
    )
    event = IpsecOffloadConfig(
        opcode="EVENT",
        tlvs=[TlvEventType(event_type="HARD_EXPIRE"), TlvBootId(boot_id=5), TlvSaIndex(sa_index=2)],
    )
    assert decode_event(body(event)) == Event(EventType.HARD_EXPIRE, 5, 2)
    caps = IpsecOffloadConfig(
        opcode="GET_CAPS_REPLY", tlvs=[TlvCaps(algorithms=[1]), TlvBootId(boot_id=1 << 63)]
    )
    assert decode_caps(body(caps)) == Caps((Algorithm.AES_GCM_128,), 0, 0, 1 << 63)


def test_sa_entry_of_a_wrong_length_stays_generic() -> None:
    for value in (
        bytes(23),  # neither 22 nor 34
        bytes.fromhex("00000003 01 00001234 10 c0a80002 0000000000000001"),  # 16 in 22 bytes
        bytes.fromhex("00000003 01 00001234 04") + bytes(24),  # 4 in 34 bytes
    ):
        frame = Ether(config_frame(ConfigMessage(0x88, 1, (Tlv(0x0014, value),))))
        (tlv,) = frame[IpsecOffloadConfig].tlvs
        assert type(tlv) is IpsecOffloadTlv
        assert (tlv.sprintf("%type%"), tlv.value) == ("SA_ENTRY", value)
    short_boot = Ether(config_frame(ConfigMessage(0x09, 1, (Tlv(0x0016, bytes(4)),))))
    assert type(short_boot[IpsecOffloadConfig].tlvs[0]) is IpsecOffloadTlv


def test_padding_wrong_lengths_and_other_versions() -> None:
    frame = config_frame(ConfigMessage(Opcode.GET_CAPS, 5, ()))
    padded = Ether(frame + bytes(60 - len(frame)))
    assert padded[IpsecOffloadConfig].tlvs == []
    assert bytes(padded[Padding]) == bytes(60 - len(frame))
    # a known type with a value of the wrong length stays a generic TLV
    short_spi = Ether(config_frame(ConfigMessage(1, 1, (Tlv(0x0003, b"\x12\x34"),))))
    (tlv,) = short_spi[IpsecOffloadConfig].tlvs
    assert type(tlv) is IpsecOffloadTlv
    assert (tlv.sprintf("%type%"), tlv.length, tlv.value) == ("SPI", 2, b"\x12\x34")
    bad_caps = Ether(config_frame(ConfigMessage(0x87, 1, (Tlv(0x0011, b"\x03\x01"),))))
    assert type(bad_caps[IpsecOffloadConfig].tlvs[0]) is IpsecOffloadTlv
    # version 2: only the header is defined, the rest is left as it is
    v2 = bytes.fromhex("02 01 00 00 00 00 00 00 00 2d 00 04 00 03 00 00")
    other = Ether(build_ethernet(EthernetHeader(mac(AGENT), mac(HOST), EtherType.CONFIG)) + v2)
    assert other[IpsecOffloadConfig].version == 2
    assert other[IpsecOffloadConfig].tlvs == []
    assert bytes(other[Raw]) == bytes.fromhex("00 03 00 00")
    assert bytes(other) == bytes(other.copy())


# -- metadata tag --------------------------------------------------------------------------


def tagged(word: int, rest: bytes, vlans: tuple[VlanTag, ...] = (), ethertype: int = 0) -> bytes:
    return (
        build_ethernet(EthernetHeader(mac(PEER), mac(HOST), ethertype, vlans=vlans, metadata=word))
        + rest
    )


def test_tx_tag_matches_the_codecs_both_ways() -> None:
    ip = bytes(IPv6(src=LOCAL6, dst=REMOTE6) / IPv6ExtHdrHopByHop() / ESP(spi=5, data=bytes(8)))
    word = build_tx_metadata(TxMetadata(True, 41, 22, 12))
    vlans = (VlanTag(0x88A8, 0x0007), VlanTag(0x8100, 0x0064))
    project = tagged(word, ip, vlans, EtherType.IPV6)
    crafted = bytes(
        Ether(dst=PEER, src=HOST)
        / IpsecOffloadMeta(offload=1, next_header=41)
        / Dot1AD(vlan=7)
        / Dot1Q(vlan=100)
        / IPv6(src=LOCAL6, dst=REMOTE6)
        / IPv6ExtHdrHopByHop()
        / ESP(spi=5, data=bytes(8))
    )
    assert crafted == project
    dissected = Ether(project)
    tag = dissected[IpsecOffloadMeta]
    assert isinstance(tag, IpsecOffloadTxMeta)
    assert (tag.offload, tag.reserved, tag.next_header, tag.l3_offset, tag.esp_offset) == (
        1,
        0,
        41,
        22,
        12,
    )
    assert tag.type == 0x88A8 and dissected[Dot1AD].vlan == 7
    assert dissected[Dot1AD].payload.vlan == 100 and dissected[ESP].spi == 5
    assert bytes(dissected) == project
    bypass = Ether(dst=PEER, src=HOST) / IpsecOffloadTxMeta() / IP(src=LOCAL4, dst=REMOTE4)
    assert bytes(bypass)[12:18] == struct.pack("!HI", EtherType.META, 0)


def test_rx_tag_matches_the_codecs_both_ways() -> None:
    ip = IP(src=REMOTE4, dst=LOCAL4) / UDP()
    for status, index in ((RxStatus.OK, 7), (RxStatus.SA_EXPIRED, 0xFFFFFF)):
        word = build_rx_metadata(RxMetadata(True, status, index))
        project = tagged(word, bytes(ip), (VlanTag(0x8100, 5),), EtherType.IPV4)
        crafted = bytes(
            Ether(dst=PEER, src=HOST)
            / IpsecOffloadRxMeta(ipsec=1, status=int(status), sa_index=index)
            / Dot1Q(vlan=5)
            / ip
        )
        assert crafted == project
        tag = parse_frame(project)[IpsecOffloadMeta]
        assert isinstance(tag, IpsecOffloadRxMeta)
        assert (tag.ipsec, tag.status, tag.reserved, tag.sa_index) == (1, status, 0, index)
        assert tag.sprintf("%status%") == status.name


def test_direction_can_be_forced_and_switched() -> None:
    frame = tagged(0x80000E05, bytes(IP(src=LOCAL4, dst=REMOTE4, proto=50)), (), EtherType.IPV4)
    assert isinstance(parse_frame(frame)[IpsecOffloadMeta], IpsecOffloadTxMeta)
    forced = parse_frame(frame, "rx")[IpsecOffloadMeta]
    assert isinstance(forced, IpsecOffloadRxMeta)
    assert (forced.ipsec, forced.status, forced.sa_index) == (1, 0, 0x0E05)
    with meta_direction("rx"):
        assert isinstance(Ether(frame)[IpsecOffloadMeta], IpsecOffloadRxMeta)
    assert isinstance(Ether(frame)[IpsecOffloadMeta], IpsecOffloadTxMeta)
    back = forced.as_tx()
    assert (back.offload, back.l3_offset, back.esp_offset) == (1, 14, 5)
    assert bytes(back) == bytes(forced) == frame[14:]
    assert isinstance(back.as_rx(), IpsecOffloadRxMeta)
    assert back.haslayer(IP)
    with pytest.raises(ValueError, match="direction"):
        parse_frame(frame, "up")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("word", "rest", "expected"),
    [
        (0x80000E05, b"\x08\x00\x45", "tx"),  # offload, L3 at 14, IPv4 there
        (0x80000007, b"\x08\x00\x45", "rx"),  # L3_OFFSET 0: an Rx word, SA 7
        (0x80001205, b"\x81\x00\x00\x05\x08\x00\x45", "tx"),  # one VLAN: L3 at 18
        (0x80000E05, b"\x81\x00\x00\x05\x08\x00\x45", "rx"),  # offsets do not match
        (0x98000003, b"\x08\x00\x45", "rx"),  # REPLAY
        (0xFF000000, b"\x08\x00", "tx"),  # invalid either way: only a host sends that
        (0x00110E05, b"\x08\x00\x45", "tx"),  # bypass with offsets
        (0x00000000, b"\x88\xb6\x01\x81", "rx"),  # config reply
        (0x00000000, b"\x88\xb6\x01\x01", "tx"),  # config request
        (0x00000000, b"\x88\xb6\x01\x09", "rx"),  # EVENT: the agent sends it
        (0x00000000, b"\x88\xb6\x01\x89", "tx"),  # EVENT reply: the PF sends it
        (0x00000000, b"\x88\xb6\x01\x88", "rx"),  # LIST_SAS reply
        (0x00000000, b"\x08\x00\x45", "tx"),  # ambiguous: Tx bypass
    ],
)
def test_direction_heuristic(word: int, rest: bytes, expected: str) -> None:
    assert guess_meta_direction(struct.pack("!I", word) + rest) == expected


@given(st.integers(0, 2**32 - 1))
def test_every_word_reads_as_the_codecs_read_it(word: int) -> None:
    rest = struct.pack("!I", word) + b"\x08\x00" + bytes(20)
    tx = IpsecOffloadTxMeta(rest)
    rx = IpsecOffloadRxMeta(rest)
    assert bytes(tx) == bytes(rx) == rest
    assert tx.word == rx.word == word
    if not word & 0x7F000000:
        m = parse_tx_metadata(word)
        assert (bool(tx.offload), tx.next_header, tx.l3_offset, tx.esp_offset) == (
            m.offload,
            m.next_header,
            m.l3_offset,
            m.esp_offset,
        )
    if (word >> 27) & 0xF <= 5 and not word & 0x07000000:
        r = parse_rx_metadata(word)
        assert (bool(rx.ipsec), rx.status, rx.sa_index) == (r.ipsec, r.status, r.sa_index)


def test_the_example_in_the_docs_runs() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "wireshark.md"
    section = docs.read_text().split("### Example: talk to the agent from scapy")[1]
    code = section.split("```python")[1].split("```")[0]
    namespace: dict[str, object] = {}
    exec(compile(code, str(docs), "exec"), namespace)
    wire = namespace["wire"]
    assert isinstance(wire, Packet)
    assert wire.haslayer(ESP) and not wire.haslayer(IpsecOffloadMeta)
