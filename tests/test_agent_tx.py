"""The agent's Tx path (spec sections 2, 3 and 7): encryption, bypass, drops, the IVDB rule."""

from __future__ import annotations

import struct

import pytest

from agent_frames import (
    ETH_IPV4,
    ETH_IPV6,
    HOST_MAC,
    KEY128,
    KEY256,
    LOCAL4,
    LOCAL6,
    PEER4,
    PEER6,
    PEER_MAC,
    PROTO_UDP,
    VF_MAC,
    VLAN_INNER,
    VLAN_OUTER,
    VLAN_Q,
    add_sa,
    checksum16,
    eth_header,
    hop_by_hop,
    ipv4,
    offload_frame,
    open_encrypted,
    request,
    sa_index_tlv,
    trailer,
    tx_word,
)
from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.agent.counters import DropReason, Path
from ipsec_offload.wire.config import Algorithm, Direction, Opcode
from ipsec_offload.wire.ethernet import VlanTag

pytestmark = pytest.mark.usefixtures("agent_path")

OUT = Direction.OUTBOUND
IN = Direction.INBOUND
SPI = 0x0A0B0C0D
MAX32 = (1 << 32) - 1
MAX64 = (1 << 64) - 1


def _one_wire_frame(agent: IpsecAgent, frame: bytes) -> bytes:
    out = agent.from_host([frame])
    assert out.to_host == []
    assert len(out.to_wire) == 1
    return out.to_wire[0]


def _dropped(agent: IpsecAgent, frame: bytes, reason: DropReason) -> None:
    before = dict(agent.counters.drops)
    out = agent.from_host([frame])
    assert (out.to_host, out.to_wire) == ([], [])
    after = agent.counters.drops
    assert {r: after[r] - before[r] for r in after if after[r] != before[r]} == {reason: 1}


def _seqs(agent: IpsecAgent, ivs: list[int], key: bytes = KEY128, esn: bool = False) -> list[int]:
    """Send one offload frame per stack IV; the full sequence numbers that left, in order."""
    out = agent.from_host([offload_frame(SPI, iv, b"data") for iv in ivs])
    seqs = []
    for frame in out.to_wire:
        opened = open_encrypted(frame, key, esn=esn)
        assert opened.plaintext == b"data" + trailer(4, PROTO_UDP)
        seqs.append(opened.iv)
    return seqs


# -- encryption ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 37, 1400])
@pytest.mark.parametrize("alg", [Algorithm.AES_GCM_128, Algorithm.AES_GCM_256])
def test_ipv4_encrypted(size: int, alg: Algorithm) -> None:
    key = KEY128 if alg == Algorithm.AES_GCM_128 else KEY256
    agent = IpsecAgent()
    index = add_sa(agent, OUT, SPI, PEER4, key=key, alg=alg)
    payload = bytes((i * 7) & 0xFF for i in range(size))
    frame = offload_frame(SPI, 0, payload, next_header=0x29)
    wire = _one_wire_frame(agent, frame)
    assert wire[:14] == PEER_MAC + HOST_MAC + struct.pack(">H", ETH_IPV4)
    opened = open_encrypted(wire, key)
    assert (opened.spi, opened.seq_lo, opened.iv) == (SPI, 1, 1)
    pad = (4 - (size + 2) % 4) % 4
    assert opened.plaintext == payload + bytes(range(1, pad + 1)) + bytes((pad, 0x29))
    assert len(opened.plaintext) % 4 == 0
    assert opened.icv_len == 16
    ip = opened.ip_header
    assert struct.unpack(">H", ip[2:4])[0] == len(wire) - 14
    assert checksum16(ip) == 0
    original_ip = frame[20:40]
    # only total length and checksum change
    assert ip[:2] + ip[4:10] + ip[12:] == original_ip[:2] + original_ip[4:10] + original_ip[12:]
    assert len(wire) == 14 + 20 + 16 + size + pad + 2 + 16
    assert agent.counters.paths[Path.TX_ENCRYPTED] == 1
    sa = agent.sad.get(index)
    assert sa is not None and (sa.packets, sa.bytes) == (1, size)


@pytest.mark.parametrize("ext", [b"", hop_by_hop()], ids=["no-ext", "hop-by-hop"])
def test_ipv6_encrypted(ext: bytes) -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER6)
    payload = b"ipv6 payload!"
    frame = offload_frame(SPI, 0, payload, src_ip=LOCAL6, dst_ip=PEER6, ext=ext, next_header=6)
    wire = _one_wire_frame(agent, frame)
    assert wire[12:14] == struct.pack(">H", ETH_IPV6)
    opened = open_encrypted(wire, KEY128, ip_header_len=40 + len(ext))
    assert opened.plaintext == payload + trailer(len(payload), 6)
    assert (opened.seq_lo, opened.iv, opened.icv_len) == (1, 1, 16)
    ip = opened.ip_header
    assert struct.unpack(">H", ip[4:6])[0] == len(wire) - 14 - 40
    assert ip[:4] + ip[6:] == frame[20:24] + frame[26 : 20 + 40 + len(ext)]


def test_ipv4_options_are_kept() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    options = bytes((0x94, 4, 0, 0, 1, 0, 0, 0))  # router alert, NOP, end of options
    frame = offload_frame(SPI, 0, b"opts", options=options)
    wire = _one_wire_frame(agent, frame)
    opened = open_encrypted(wire, KEY128, ip_header_len=28)
    assert opened.plaintext == b"opts" + trailer(4, PROTO_UDP)
    assert opened.ip_header[0] == 0x47
    assert opened.ip_header[20:] == options
    assert checksum16(opened.ip_header) == 0
    assert struct.unpack(">H", opened.ip_header[2:4])[0] == len(wire) - 14


def test_vlan_stack_and_domain_sa() -> None:
    agent = IpsecAgent()
    vlans = (VLAN_OUTER, VLAN_INNER)
    add_sa(agent, OUT, SPI, PEER4, local_mac=VF_MAC, vlans=vlans)
    frame = offload_frame(SPI, 0, b"qinq", src_mac=VF_MAC, vlans=vlans)
    wire = _one_wire_frame(agent, frame)
    assert wire[:22] == eth_header(PEER_MAC, VF_MAC, ETH_IPV4, vlans)
    opened = open_encrypted(wire, KEY128, l3=22)
    assert opened.plaintext == b"qinq" + trailer(4, PROTO_UDP)


def test_ethernet_padding_after_the_ip_packet_is_not_encrypted() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    wire = _one_wire_frame(agent, offload_frame(SPI, 0, b"ab") + bytes(12))
    opened = open_encrypted(wire, KEY128)
    assert opened.plaintext == b"ab" + trailer(2, PROTO_UDP)


def test_stack_sequence_field_is_ignored_the_iv_rules() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    wire = _one_wire_frame(agent, offload_frame(SPI, 0, b"x", stack_seq=0xDEADBEEF))
    assert open_encrypted(wire, KEY128).seq_lo == 1


def test_too_large_for_ipv6_is_dropped() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER6)

    def big(size: int) -> bytes:
        return offload_frame(SPI, 0, bytes(size), src_ip=LOCAL6, dst_ip=PEER6)

    _dropped(agent, big(65499), DropReason.TOO_LARGE)
    wire = _one_wire_frame(agent, big(65498))
    assert struct.unpack(">H", wire[18:20])[0] == 65532


def test_too_large_for_ipv4_is_dropped() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    # 20 + 16 + payload + padding + 2 + 16 must fit the 16-bit total length
    _dropped(agent, offload_frame(SPI, 0, bytes(65479)), DropReason.TOO_LARGE)
    wire = _one_wire_frame(agent, offload_frame(SPI, 0, bytes(65478)))
    assert struct.unpack(">H", wire[16:18])[0] == 65532
    assert open_encrypted(wire, KEY128).iv == 2  # the dropped frame used up number 1


# -- bypass and pass-through ------------------------------------------------------------------


@pytest.mark.parametrize("word", [0, tx_word(False, 17, 14, 5), 0x00FFFFFF])
def test_offload_0_is_bypass(word: int) -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    frame = offload_frame(SPI, 0, b"clear", meta=word)
    wire = _one_wire_frame(agent, frame)
    assert wire == frame[:12] + frame[18:]
    assert agent.counters.paths[Path.TX_BYPASS] == 1
    sa = agent.sad.get(1)
    assert sa is not None and (sa.packets, sa.ivdb) == (0, 1)


def test_untagged_frame_passes_unchanged() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    frame = offload_frame(SPI, 0, b"untagged")
    untagged = frame[:12] + frame[18:]
    arp = eth_header(b"\xff" * 6, HOST_MAC, 0x0806) + bytes(28)
    out = agent.from_host([untagged, arp])
    assert out.to_wire == [untagged, arp]
    assert out.to_host == []
    assert agent.counters.paths[Path.TX_UNTAGGED] == 2


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        bytes(13),
        PEER_MAC + HOST_MAC + b"\x88\xb5\x80\x00",
        eth_header(PEER_MAC, HOST_MAC, 0x0800, (VLAN_Q, VLAN_Q, VLAN_Q)),
    ],
    ids=["empty", "13 bytes", "truncated tag", "three VLANs"],
)
def test_unparseable_host_frames_are_dropped(frame: bytes) -> None:
    _dropped(IpsecAgent(), frame, DropReason.MALFORMED_FRAME)


@pytest.mark.parametrize("bit", range(24, 31))
@pytest.mark.parametrize("offload", [True, False])
def test_reserved_bits_drop(bit: int, offload: bool) -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    word = tx_word(offload, PROTO_UDP, 14, 5) | 1 << bit
    _dropped(agent, offload_frame(SPI, 0, b"r", meta=word), DropReason.METADATA_RESERVED)


# -- offsets never trusted ---------------------------------------------------------------------


def _with_ip(ip_packet: bytes, word: int | None = None, ethertype: int = ETH_IPV4) -> bytes:
    if word is None:
        word = tx_word(True, PROTO_UDP, 14, 5)
    return eth_header(PEER_MAC, HOST_MAC, ethertype, meta=word) + ip_packet


def _esp_body(payload: bytes = b"p" * 8) -> bytes:
    return struct.pack(">IIQ", SPI, 0, 0) + payload


_BAD_OFFSETS = {
    "L3 0": offload_frame(SPI, 0, b"x", meta=tx_word(True, 17, 0, 5)),
    "L3 13": offload_frame(SPI, 0, b"x", meta=tx_word(True, 17, 13, 5)),
    "L3 15": offload_frame(SPI, 0, b"x", meta=tx_word(True, 17, 15, 5)),
    "L3 18": offload_frame(SPI, 0, b"x", meta=tx_word(True, 17, 18, 5)),
    "L3 255": offload_frame(SPI, 0, b"x", meta=tx_word(True, 17, 255, 5)),
    "L3 14 with a VLAN tag": offload_frame(
        SPI, 0, b"x", vlans=(VLAN_Q,), meta=tx_word(True, 17, 14, 5)
    ),
    "ESP 0": offload_frame(SPI, 0, b"x", meta=tx_word(True, 17, 14, 0)),
    "ESP 4": offload_frame(SPI, 0, b"x", meta=tx_word(True, 17, 14, 4)),
    "ESP 6": offload_frame(SPI, 0, b"x", meta=tx_word(True, 17, 14, 6)),
    "ESP 255": offload_frame(SPI, 0, b"x", meta=tx_word(True, 17, 14, 255)),
    "IPv6 ESP offset at the extension header": offload_frame(
        SPI,
        0,
        b"x",
        src_ip=LOCAL6,
        dst_ip=PEER6,
        ext=hop_by_hop(),
        meta=tx_word(True, 17, 14, 10),
    ),
    "IPv4 EtherType, IPv6 header": _with_ip(
        offload_frame(SPI, 0, b"x", src_ip=LOCAL6, dst_ip=PEER6)[20:],
        tx_word(True, 17, 14, 10),
    ),
    "IPv6 EtherType, IPv4 header": _with_ip(offload_frame(SPI, 0, b"x")[20:], ethertype=ETH_IPV6),
    "ARP EtherType": _with_ip(offload_frame(SPI, 0, b"x")[20:], ethertype=0x0806),
    "IP version 5": _with_ip(b"\x55" + offload_frame(SPI, 0, b"x")[21:]),
    "L3 past the IP header, at a packet inside the payload": _with_ip(
        ipv4(LOCAL4, PEER4, 8 + 20 + 24, proto=PROTO_UDP)
        + struct.pack(">HHHH", 4500, 4500, 8 + 20 + 24, 0)
        + ipv4(LOCAL4, PEER4, 24)
        + _esp_body(),
        tx_word(True, 17, 14 + 20 + 8, 5),
    ),
    "not ESP": _with_ip(ipv4(LOCAL4, PEER4, 24, proto=PROTO_UDP) + _esp_body()),
    "bad IPv4 checksum": _with_ip(
        ipv4(LOCAL4, PEER4, 24)[:10] + b"\x00\x00" + ipv4(LOCAL4, PEER4, 24)[12:] + _esp_body()
    ),
    "ESP header beyond the IP payload": _with_ip(ipv4(LOCAL4, PEER4, 4) + _esp_body()),
    "IV beyond the IP payload": _with_ip(ipv4(LOCAL4, PEER4, 12) + _esp_body()),
    "IP length beyond the frame": _with_ip(ipv4(LOCAL4, PEER4, 100) + _esp_body()),
    "IPv4 fragment": _with_ip(
        ipv4(LOCAL4, PEER4, 24)[:6] + b"\x20\x00" + ipv4(LOCAL4, PEER4, 24)[8:] + _esp_body()
    ),
    "nothing after the tag": eth_header(
        PEER_MAC, HOST_MAC, ETH_IPV4, meta=tx_word(True, 17, 14, 5)
    ),
}


@pytest.mark.parametrize("frame", _BAD_OFFSETS.values(), ids=_BAD_OFFSETS.keys())
def test_bad_offsets_drop(frame: bytes) -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    add_sa(agent, OUT, SPI, PEER6)
    _dropped(agent, frame, DropReason.BAD_OFFSETS)
    assert all(sa.packets == 0 and sa.ivdb == 1 for sa in agent.sad)


# -- SA lookup by domain ---------------------------------------------------------------------


def test_no_outbound_sa_never_leaves_in_the_clear() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, PEER4)  # inbound only: not usable for Tx
    add_sa(agent, OUT, SPI, PEER4, local_mac=VF_MAC, vlans=(VLAN_Q,))
    add_sa(agent, OUT, 0x5555, PEER4, src=LOCAL4)
    cases = [
        offload_frame(0x1234, 0, b"unknown spi"),
        offload_frame(SPI, 0, b"no domain", src_mac=VF_MAC),
        offload_frame(SPI, 0, b"wrong MAC", src_mac=HOST_MAC, vlans=(VLAN_Q,)),
        offload_frame(SPI, 0, b"wrong VLAN", src_mac=VF_MAC, vlans=(VlanTag(0x8100, 101),)),
        offload_frame(SPI, 0, b"wrong TPID", src_mac=VF_MAC, vlans=(VlanTag(0x88A8, 100),)),
        offload_frame(SPI, 0, b"extra VLAN", src_mac=VF_MAC, vlans=(VLAN_Q, VLAN_INNER)),
        offload_frame(SPI, 0, b"wrong dst", dst_ip=LOCAL4, src_mac=VF_MAC, vlans=(VLAN_Q,)),
        offload_frame(0x5555, 0, b"wrong src", src_ip=PEER4),
    ]
    for frame in cases:
        _dropped(agent, frame, DropReason.NO_OUTBOUND_SA)
    assert agent.counters.drops[DropReason.NO_OUTBOUND_SA] == len(cases)
    # PCP differs, VID matches: the domain is the same
    pcp = VlanTag(0x8100, 0xA000 | 100)
    wire = _one_wire_frame(agent, offload_frame(SPI, 0, b"ok", src_mac=VF_MAC, vlans=(pcp,)))
    assert open_encrypted(wire, KEY128, l3=18).plaintext[:2] == b"ok"
    assert len(_one_wire_frame(agent, offload_frame(0x5555, 0, b"ok"))) > 0


def test_naive_sa_matches_any_mac_and_vlan() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    frames = [
        offload_frame(SPI, 0, b"a"),
        offload_frame(SPI, 0, b"b", src_mac=VF_MAC, vlans=(VLAN_Q,)),
        offload_frame(SPI, 0, b"c", src_mac=PEER_MAC, vlans=(VLAN_OUTER, VLAN_INNER)),
    ]
    out = agent.from_host(frames)
    assert len(out.to_wire) == 3
    assert [open_encrypted(f, KEY128, l3=14 + 4 * i).iv for i, f in enumerate(out.to_wire)] == [
        1,
        2,
        3,
    ]


def test_domain_sa_preferred_over_naive() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4, key=KEY256, alg=Algorithm.AES_GCM_256)
    add_sa(agent, OUT, SPI, PEER4, local_mac=VF_MAC)
    vf = _one_wire_frame(agent, offload_frame(SPI, 0, b"vf", src_mac=VF_MAC))
    other = _one_wire_frame(agent, offload_frame(SPI, 0, b"pf"))
    assert open_encrypted(vf, KEY128).iv == 1
    assert open_encrypted(other, KEY256).iv == 1


# -- IVDB (spec section 7) ------------------------------------------------------------------


def test_stack_iv_0_leaves_with_seq_1_and_iv_1() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    assert _seqs(agent, [0, 0, 0]) == [1, 2, 3]


def test_ivdb_keeps_fresh_and_replaces_replicated() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    assert _seqs(agent, [5, 5, 5, 10, 3, 12, 12]) == [5, 6, 7, 10, 11, 12, 13]
    sa = agent.sad.get(1)
    assert sa is not None and sa.ivdb == 14


def test_ivdb_is_per_sa() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    add_sa(agent, OUT, SPI + 1, PEER4, seq=50)
    frames = [offload_frame(SPI, 0, b"a"), offload_frame(SPI + 1, 0, b"b")] * 2
    ivs = [open_encrypted(f, KEY128).iv for f in agent.from_host(frames).to_wire]
    assert ivs == [1, 50, 2, 51]


def test_seq_tlv_start_value() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4, seq=1000)
    assert _seqs(agent, [0, 999, 1000, 0]) == [1000, 1001, 1002, 1003]


def test_exhaustion_without_esn() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4, seq=MAX32 - 1)
    assert _seqs(agent, [0, 0]) == [MAX32 - 1, MAX32]
    _dropped(agent, offload_frame(SPI, 0, b"data"), DropReason.SEQ_EXHAUSTED)
    _dropped(agent, offload_frame(SPI, 0, b"data"), DropReason.SEQ_EXHAUSTED)
    # a stack that writes a number past the limit cannot get it out either
    _dropped(agent, offload_frame(SPI, 1 << 32, b"data"), DropReason.SEQ_EXHAUSTED)
    sa = agent.sad.get(1)
    assert sa is not None and sa.packets == 2


def test_exhaustion_with_esn() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4, esn=True, seq=MAX64 - 1)
    assert _seqs(agent, [0, 0], esn=True) == [MAX64 - 1, MAX64]
    _dropped(agent, offload_frame(SPI, 0, b"data"), DropReason.SEQ_EXHAUSTED)


def test_esn_crosses_2_32_with_the_high_bits_in_the_aad() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4, esn=True, seq=MAX32)
    out = agent.from_host([offload_frame(SPI, 0, b"data")] * 2)
    first, second = (open_encrypted(f, KEY128, esn=True) for f in out.to_wire)
    assert (first.seq_lo, first.iv) == (MAX32, MAX32)
    assert (second.seq_lo, second.iv) == (0, 1 << 32)


def test_naive_design_uses_the_stack_iv() -> None:
    agent = IpsecAgent(AgentConfig(ivdb=False))
    add_sa(agent, OUT, SPI, PEER4)
    assert _seqs(agent, [5, 5, 9, 2]) == [5, 5, 9, 2]


# -- lifetimes ----------------------------------------------------------------------------------


def test_lifetime_packets_on_tx() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4, lifetime_packets=2)
    assert _seqs(agent, [0, 0]) == [1, 2]
    _dropped(agent, offload_frame(SPI, 0, b"data"), DropReason.SA_EXPIRED)
    sa = agent.sad.get(1)
    assert sa is not None and sa.errors[4] == 1


def test_lifetime_bytes_on_tx() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4, lifetime_bytes=10)
    assert _seqs(agent, [0, 0, 0]) == [1, 2, 3]  # 4, 8, 12 bytes: the third crosses
    _dropped(agent, offload_frame(SPI, 0, b"data"), DropReason.SA_EXPIRED)


def test_removed_sa_stops_encryption() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    assert _seqs(agent, [0]) == [1]
    assert request(agent, Opcode.REMOVE_SA, sa_index_tlv(1)).status == 0
    _dropped(agent, offload_frame(SPI, 0, b"data"), DropReason.NO_OUTBOUND_SA)
    # re-added: starts over at 1 unless the SEQ TLV says otherwise
    add_sa(agent, OUT, SPI, PEER4, seq=2)
    assert _seqs(agent, [0]) == [2]


def test_broadcast_without_local_addresses_goes_to_the_wire_only() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    out = agent.from_host([offload_frame(SPI, 0, b"data", dst_mac=b"\xff" * 6)])
    assert len(out.to_wire) == 1
    assert out.to_host == []
    assert agent.counters.paths[Path.HAIRPIN] == 0


# -- SAs that carried traffic: what the compiled fast path sees -------------------------------


_TPID_CASES = {
    "802.1Q": ((VLAN_Q,), [(VlanTag(0x88A8, VLAN_Q.tci),)]),
    "802.1ad": ((VlanTag(0x88A8, 100),), [(VLAN_Q,)]),
    "Q-in-Q": (
        (VLAN_OUTER, VLAN_INNER),
        [
            (VlanTag(0x8100, VLAN_OUTER.tci), VLAN_INNER),
            (VLAN_OUTER, VlanTag(0x88A8, VLAN_INNER.tci)),
        ],
    ),
}


@pytest.mark.parametrize("vlans, others", _TPID_CASES.values(), ids=_TPID_CASES.keys())
def test_a_domain_sa_that_carried_traffic_takes_only_its_tpids(
    vlans: tuple[VlanTag, ...], others: list[tuple[VlanTag, ...]]
) -> None:
    """The TPID is part of the domain (spec 5), also once the SA carries traffic (the fast path
    takes an SA's frames once its cipher exists): the same VIDs under other TPIDs are never
    encrypted with it."""
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4, local_mac=VF_MAC, vlans=vlans)
    l3 = 14 + 4 * len(vlans)
    for iv in (1, 2):  # the first makes the cipher, on the reference path
        frame = offload_frame(SPI, iv, b"mine", src_mac=VF_MAC, vlans=vlans)
        assert open_encrypted(_one_wire_frame(agent, frame), KEY128, l3=l3).iv == iv
    for other in others:
        frame = offload_frame(SPI, 9, b"other TPID", src_mac=VF_MAC, vlans=other)
        _dropped(agent, frame, DropReason.NO_OUTBOUND_SA)
    frame = offload_frame(SPI, 3, b"mine again", src_mac=VF_MAC, vlans=vlans)
    assert open_encrypted(_one_wire_frame(agent, frame), KEY128, l3=l3).iv == 3
    assert [sa.packets for sa in agent.sad] == [3]


_META_TAG = struct.pack(">HI", 0x88B5, tx_word(True, PROTO_UDP, 18, 5))
_CUT_AT_A_TAG = {
    "tpid only": b"\x81\x00",
    "tpid and half a tci": b"\x81\x00\x00",
    "one tag": b"\x81\x00\x00\x64",
    "one tag, half an ethertype": b"\x81\x00\x00\x64\x08",
    "two tags": b"\x88\xa8\x00\x07\x81\x00\x00\xc8",
    "two tags, half an ethertype": b"\x88\xa8\x00\x07\x81\x00\x00\xc8\x08",
    "two tags, tpid of a third": b"\x88\xa8\x00\x07\x81\x00\x00\xc8\x81\x00",
}


@pytest.mark.parametrize("tags", _CUT_AT_A_TAG.values(), ids=_CUT_AT_A_TAG.keys())
def test_a_tagged_frame_cut_at_a_vlan_tag_is_a_counted_drop(tags: bytes) -> None:
    """Host frames cut at the end of a VLAN tag after the metadata tag, or inside the
    EtherType after it: the compiled parser reads each EtherType only where the frame holds it
    (a bound off by two there reads past the frame, which `make sanitize` runs to see)."""
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, PEER4)
    assert len(_one_wire_frame(agent, offload_frame(SPI, 1, b"warm"))) > 0
    frame = PEER_MAC + HOST_MAC + _META_TAG + tags
    out = agent.from_host([offload_frame(SPI, 2, b"a"), frame, offload_frame(SPI, 3, b"b")])
    assert len(out.to_wire) == 2 and out.to_host == []
    assert {r: n for r, n in agent.counters.drops.items() if n} == {DropReason.MALFORMED_FRAME: 1}
