"""The agent's Rx path (spec sections 2, 3 and 5): decryption in place, statuses, lookup."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest

from agent_frames import (
    ETH_IPV4,
    HOST_MAC,
    KEY128,
    KEY256,
    LOCAL4,
    LOCAL6,
    META,
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
    esp_packet,
    eth_header,
    hop_by_hop,
    ipv4,
    ipv6,
    rx_word,
    split_tag,
    trailer,
    tx_word,
    wire_frame,
    without_events,
)
from ipsec_offload.agent.agent import IpsecAgent
from ipsec_offload.agent.counters import DropReason, Path
from ipsec_offload.crypto.esp import esp_seal
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.wire.config import Algorithm, Direction
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.metadata import RxStatus

pytestmark = pytest.mark.usefixtures("agent_path")

IN = Direction.INBOUND
OUT = Direction.OUTBOUND
SPI = 0x11223344
MAX32 = (1 << 32) - 1

OK = RxStatus.OK
NO_SA = RxStatus.NO_SA
AUTH_FAILED = RxStatus.AUTH_FAILED
REPLAY = RxStatus.REPLAY
MALFORMED = RxStatus.MALFORMED
SA_EXPIRED = RxStatus.SA_EXPIRED


def _rx(agent: IpsecAgent, frames: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
    """Send frames from the wire: (status, SA index, frame without the tag) per frame, IPSEC=1."""
    out = agent.from_wire(frames)
    assert out.to_wire == []
    to_host = without_events(out.to_host)  # lifetime events: test_agent_events.py
    assert len(to_host) == len(frames)
    result = []
    for frame in to_host:
        word, inner = split_tag(frame)
        meta = rx_word(word)
        assert meta.ipsec
        assert meta.reserved == 0
        result.append((meta.status, meta.sa_index, inner))
    return result


def _statuses(agent: IpsecAgent, frames: Sequence[bytes]) -> list[int]:
    return [status for status, _, _ in _rx(agent, frames)]


def _pkt(seq: int, payload: bytes = b"payload", key: bytes = KEY128, **kw: object) -> bytes:
    return wire_frame(esp_packet(key, SPI, seq, payload, **kw))  # type: ignore[arg-type]


def _decrypted(esp: bytes, payload: bytes, next_header: int = PROTO_UDP, **kw: object) -> bytes:
    """The frame the host should get on OK: the same L2 and IP, ESP | IV | plaintext."""
    plain = esp[:16] + payload + trailer(len(payload), next_header)
    return wire_frame(plain, **kw)  # type: ignore[arg-type]


# -- OK ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 64, 1500])
def test_ipv4_decrypted_in_place(size: int) -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, 0x1, LOCAL4)
    index = add_sa(agent, IN, SPI, LOCAL4)
    payload = bytes((3 * i + 1) & 0xFF for i in range(size))
    esp = esp_packet(KEY128, SPI, 1, payload, 0x04)
    [(status, sa_index, frame)] = _rx(agent, [wire_frame(esp)])
    assert (status, sa_index) == (OK, 2)
    assert frame == _decrypted(esp, payload, 0x04)
    ip = frame[14:34]
    assert struct.unpack(">H", ip[2:4])[0] == len(frame) - 14
    assert checksum16(ip) == 0
    sa = agent.sad.get(index)
    assert sa is not None and (sa.packets, sa.bytes) == (1, size)
    assert agent.counters.rx_status[OK] == 1
    assert agent.counters.paths[Path.RX_ESP] == 1


def test_aes_256_and_ipv4_options() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4, key=KEY256, alg=Algorithm.AES_GCM_256)
    options = bytes((0x94, 4, 0, 0))  # router alert
    esp = esp_packet(KEY256, SPI, 1, b"with options")
    [(status, _, frame)] = _rx(agent, [wire_frame(esp, options=options)])
    assert status == OK
    assert frame == _decrypted(esp, b"with options", options=options)


@pytest.mark.parametrize("ext", [b"", hop_by_hop()], ids=["no-ext", "hop-by-hop"])
def test_ipv6_decrypted_in_place(ext: bytes) -> None:
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL6)
    esp = esp_packet(KEY128, SPI, 1, b"six", 41)
    frame = wire_frame(esp, src_ip=PEER6, dst_ip=LOCAL6, ext=ext)
    [(status, sa_index, plain)] = _rx(agent, [frame])
    assert (status, sa_index) == (OK, index)
    assert plain == _decrypted(esp, b"six", 41, src_ip=PEER6, dst_ip=LOCAL6, ext=ext)
    assert struct.unpack(">H", plain[18:20])[0] == len(plain) - 14 - 40


def test_ethernet_padding_is_removed_with_the_icv() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4)
    esp = esp_packet(KEY128, SPI, 1, b"")
    [(status, _, frame)] = _rx(agent, [wire_frame(esp) + bytes(18)])
    assert status == OK
    assert frame == _decrypted(esp, b"")


def test_package_esp_seal_interoperates() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4, esn=True, seq=(1 << 32) + 5)
    sealed = esp_seal(EspAead(Algorithm.AES_GCM_128, KEY128), SPI, (1 << 32) + 6, True, b"x", 17)
    assert sealed == esp_packet(KEY128, SPI, (1 << 32) + 6, b"x", esn=True)
    assert _statuses(agent, [wire_frame(sealed)]) == [OK]


# -- not for the agent -------------------------------------------------------------------------


def test_non_esp_frames_get_ipsec_0() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4)
    esp = esp_packet(KEY128, SPI, 1, b"frag")
    fragment = bytearray(wire_frame(esp))
    fragment[20:22] = b"\x20\x00"  # MF, offset 0
    fragment[24:26] = b"\x00\x00"
    fragment[24:26] = struct.pack(">H", checksum16(bytes(fragment[14:34])))
    frames = [
        eth_header(HOST_MAC, PEER_MAC, ETH_IPV4) + ipv4(PEER4, LOCAL4, 8, proto=17) + bytes(8),
        eth_header(HOST_MAC, PEER_MAC, 0x86DD) + ipv6(PEER6, LOCAL6, 8, 17) + bytes(8),
        eth_header(b"\xff" * 6, PEER_MAC, 0x0806) + bytes(28),
        eth_header(HOST_MAC, PEER_MAC, ETH_IPV4),
        eth_header(HOST_MAC, PEER_MAC, 0x0806) + wire_frame(esp)[14:],  # ESP bytes, not IP
        eth_header(HOST_MAC, PEER_MAC, 0x86DD) + wire_frame(esp)[14:],  # IPv4 bytes as IPv6
        bytes(fragment),
    ]
    out = agent.from_wire(frames)
    assert out.to_wire == []
    assert [split_tag(f) for f in out.to_host] == [(0, f) for f in frames]
    assert agent.counters.paths[Path.RX_NOT_ESP] == len(frames)
    sa = agent.sad.get(1)
    assert sa is not None and sa.replay is not None and sa.replay.highest == 0


def test_runt_from_the_wire_is_dropped() -> None:
    agent = IpsecAgent()
    out = agent.from_wire([bytes(13)])
    assert (out.to_host, out.to_wire) == ([], [])
    assert agent.counters.drops[DropReason.MALFORMED_FRAME] == 1


def test_forged_metadata_tag_from_the_wire_is_not_interpreted() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4)
    add_sa(agent, OUT, SPI, PEER4)
    esp = esp_packet(KEY128, SPI, 1, b"forged")
    good = wire_frame(esp)
    forged_rx = good[:12] + struct.pack(">HI", META, (1 << 31) | 7) + good[12:]
    forged_tx = good[:12] + struct.pack(">HI", META, tx_word(True, 17, 14, 5)) + good[12:]
    # a word that reads like an IPv4 header start where the IP header would be
    forged_ip = good[:12] + struct.pack(">HI", META, 0x45000000) + good[12:]
    frames = [forged_rx, forged_tx, forged_ip]
    out = agent.from_wire(frames)
    assert out.to_wire == []
    assert [split_tag(f) for f in out.to_host] == [(0, f) for f in frames]
    assert all(sa.packets == 0 for sa in agent.sad)
    # the genuine packet with seq 1 still passes: the window never moved
    assert _statuses(agent, [good]) == [OK]


# -- NO_SA ------------------------------------------------------------------------------------


def test_no_sa_passes_unchanged() -> None:
    agent = IpsecAgent()
    add_sa(agent, OUT, SPI, LOCAL4)  # outbound: not used on Rx
    add_sa(agent, IN, SPI, PEER4)  # another destination
    add_sa(agent, IN, 0x5555, LOCAL4, src=bytes((198, 51, 100, 1)))
    frames = [
        _pkt(1),
        wire_frame(esp_packet(KEY128, 0x5555, 1, b"wrong source")),
        wire_frame(esp_packet(KEY128, SPI, 1, b"v6"), src_ip=PEER6, dst_ip=LOCAL6),
    ]
    rx = _rx(agent, frames)
    assert [(s, i) for s, i, _ in rx] == [(NO_SA, 0)] * 3
    assert [f for _, _, f in rx] == frames
    assert agent.counters.rx_status[NO_SA] == 3


# -- AUTH_FAILED ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset",
    [
        34 + 4,  # sequence number (in the AAD)
        34 + 8,  # IV (in the nonce)
        34 + 16,  # first ciphertext byte
        -1,  # last ICV byte
    ],
    ids=["seq", "iv", "ciphertext", "icv"],
)
def test_auth_failed_does_not_move_the_window(offset: int) -> None:
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL4)
    genuine = _pkt(1, b"genuine packet")
    forged = bytearray(genuine)
    forged[offset] ^= 0x01
    [(status, sa_index, frame)] = _rx(agent, [bytes(forged)])
    assert (status, sa_index, frame) == (AUTH_FAILED, index, bytes(forged))
    sa = agent.sad.get(index)
    assert sa is not None and sa.replay is not None and sa.replay.highest == 0
    assert _statuses(agent, [genuine]) == [OK]
    assert sa.errors == [0, 1, 0, 0, 0]
    assert (sa.packets, sa.bytes) == (1, 14)


def test_wrong_key_is_auth_failed() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4)
    assert _statuses(agent, [_pkt(1, key=KEY128[:-1] + b"\x00")]) == [AUTH_FAILED]


# -- REPLAY -----------------------------------------------------------------------------------


def test_duplicate_is_replay_and_unchanged() -> None:
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL4)
    frame = _pkt(1)
    rx = _rx(agent, [frame, frame])
    assert [(s, i) for s, i, _ in rx] == [(OK, index), (REPLAY, index)]
    assert rx[1][2] == frame


def test_window_edges() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4)  # default window 64
    frames = [_pkt(100), _pkt(36), _pkt(37), _pkt(37), _pkt(99), _pkt(0)]
    assert _statuses(agent, frames) == [OK, REPLAY, OK, REPLAY, OK, REPLAY]


def test_reordered_packets_inside_the_window_pass() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4, replay_window=8)
    seqs = [5, 3, 4, 1, 2, 9, 8, 6, 7, 3, 1, 10]
    assert _statuses(agent, [_pkt(s) for s in seqs]) == [OK] * 9 + [REPLAY, REPLAY, OK]


def test_window_0_disables_the_check() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4, replay_window=0)
    assert _statuses(agent, [_pkt(7), _pkt(7), _pkt(2)]) == [OK, OK, OK]


def test_seq_tlv_sets_the_highest_received() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4, seq=500)
    assert _statuses(agent, [_pkt(500), _pkt(480), _pkt(501)]) == [REPLAY, REPLAY, OK]


# -- ESN --------------------------------------------------------------------------------------


def test_esn_across_the_2_32_boundary() -> None:
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL4, esn=True, seq=MAX32 - 2)
    seqs = [MAX32 - 1, MAX32, 1 << 32, (1 << 32) + 2, (1 << 32) + 1]
    frames = [_pkt(s, esn=True) for s in seqs]
    for frame, seq in zip(frames, seqs, strict=True):
        assert struct.unpack(">I", frame[38:42])[0] == seq & MAX32
    assert _statuses(agent, frames) == [OK] * 5
    sa = agent.sad.get(index)
    assert sa is not None and sa.replay is not None and sa.replay.highest == (1 << 32) + 2
    # seq_lo 0xFFFFFFFF now means 2^32-1 (inside the window): a replay
    assert _statuses(agent, [_pkt(MAX32, esn=True)]) == [REPLAY]
    # a peer that puts only 32 bits in the AAD, or guesses other high bits, fails the ICV
    assert _statuses(agent, [_pkt((1 << 32) + 3)]) == [AUTH_FAILED]
    assert _statuses(agent, [_pkt((2 << 32) + 3, esn=True)]) == [AUTH_FAILED]
    assert _statuses(agent, [_pkt((1 << 32) + 3, esn=True)]) == [OK]


def test_esn_sa_rejects_the_32_bit_aad() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4, esn=True)
    assert _statuses(agent, [_pkt(1), _pkt(1, esn=True)]) == [AUTH_FAILED, OK]


# -- MALFORMED --------------------------------------------------------------------------------


def test_malformed_lengths() -> None:
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL4)
    esp = esp_packet(KEY128, SPI, 1, b"1234567")  # 8 bytes of plaintext
    cases = [
        esp[:-1],  # not 4-aligned
        esp[:-4],  # 4 bytes of plaintext left, but the ICV is cut: 4-aligned, fails the ICV
        esp[:16] + esp[-16:],  # no ciphertext at all
        esp[:16] + esp[-15:],
        esp[:20],
        esp[:16],  # header and IV only
        esp[:10],  # header and part of the IV
    ]
    rx = _rx(agent, [wire_frame(c) for c in cases])
    assert [(s, i) for s, i, _ in rx] == [
        (MALFORMED, index),
        (AUTH_FAILED, index),
        (MALFORMED, index),
        (MALFORMED, index),
        (MALFORMED, index),
        (MALFORMED, index),
        (MALFORMED, index),
    ]
    assert [f for _, _, f in rx] == [wire_frame(c) for c in cases]
    # the window did not move: the whole packet still passes
    assert _statuses(agent, [wire_frame(esp)]) == [OK]


@pytest.mark.parametrize("esp_len", [0, 4, 7])
def test_esp_too_short_for_its_header_is_malformed(esp_len: int) -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4)
    frame = wire_frame(struct.pack(">II", SPI, 1)[:esp_len])
    [(status, sa_index, passed)] = _rx(agent, [frame])
    assert (status, sa_index, passed) == (MALFORMED, 0, frame)
    assert agent.counters.rx_status[MALFORMED] == 1


@pytest.mark.parametrize(
    "plaintext",
    [
        b"abcd\x00\x02\x02\x11",  # pad bytes 0, 2 instead of 1, 2
        b"abcd\x02\x01\x02\x11",  # pad bytes 2, 1
        b"\x01\x02\x03\x11",  # pad length 3 leaves no room (needs 3 + 2 = 5 bytes)
        b"\x00\x00\xff\x11",  # pad length 255
    ],
)
def test_bad_padding_after_a_good_icv(plaintext: bytes) -> None:
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL4)
    esp = esp_packet(KEY128, SPI, 1, b"", plaintext=plaintext)
    rx = _rx(agent, [wire_frame(esp), wire_frame(esp)])
    assert [(s, i) for s, i, _ in rx] == [(MALFORMED, index), (REPLAY, index)]
    assert rx[0][2] == wire_frame(esp)
    sa = agent.sad.get(index)
    assert sa is not None and sa.replay is not None and sa.replay.highest == 1
    assert sa.packets == 0


# -- SA_EXPIRED -------------------------------------------------------------------------------


def test_lifetime_packets() -> None:
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL4, lifetime_packets=2)
    rx = _rx(agent, [_pkt(1), _pkt(2), _pkt(3), _pkt(2)])
    assert [(s, i) for s, i, _ in rx] == [
        (OK, index),
        (OK, index),
        (SA_EXPIRED, index),
        (SA_EXPIRED, index),
    ]
    assert rx[2][2] == _pkt(3)


def test_lifetime_bytes() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4, lifetime_bytes=100)
    frames = [_pkt(1, bytes(60)), _pkt(2, bytes(39)), _pkt(3, bytes(1)), _pkt(4, bytes(1))]
    assert _statuses(agent, frames) == [OK, OK, OK, SA_EXPIRED]


def test_failures_do_not_count_against_the_lifetime() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4, lifetime_packets=1)
    forged = bytearray(_pkt(1))
    forged[-1] ^= 1
    assert _statuses(agent, [bytes(forged), _pkt(1), _pkt(2)]) == [AUTH_FAILED, OK, SA_EXPIRED]


# -- lookup by domain -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "vlans", [(), (VLAN_Q,), (VLAN_OUTER, VLAN_INNER)], ids=["untagged", "802.1Q", "Q-in-Q"]
)
def test_extended_key_matches_only_its_domain(vlans: tuple[VlanTag, ...]) -> None:
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL4, local_mac=VF_MAC, vlans=vlans)
    esp = esp_packet(KEY128, SPI, 1, b"domain")
    others: list[tuple[VlanTag, ...]] = [
        (),
        (VLAN_Q,),
        (VlanTag(0x8100, 101),),
        (VLAN_OUTER, VLAN_INNER),
        (VLAN_OUTER, VlanTag(0x8100, 201)),
        (VLAN_INNER, VLAN_OUTER),
    ]
    misses = [wire_frame(esp, dst_mac=VF_MAC, vlans=v) for v in others if v != vlans]
    misses.append(wire_frame(esp, dst_mac=HOST_MAC, vlans=vlans))
    assert _statuses(agent, misses) == [NO_SA] * len(misses)
    # priority bits do not name a VLAN
    marked = tuple(VlanTag(t.tpid, t.tci | 0xE000) for t in vlans)
    hit = wire_frame(esp, dst_mac=VF_MAC, vlans=marked)
    [(status, sa_index, frame)] = _rx(agent, [hit])
    assert (status, sa_index) == (OK, index)
    assert frame == _decrypted(esp, b"domain", dst_mac=VF_MAC, vlans=marked)


def test_naive_key_matches_any_mac_and_vlan() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4, replay_window=0)
    frames = [
        wire_frame(esp_packet(KEY128, SPI, 1, b"n"), dst_mac=mac, vlans=vlans)
        for mac in (HOST_MAC, VF_MAC, b"\xff" * 6)
        for vlans in ((), (VLAN_Q,), (VLAN_OUTER, VLAN_INNER))
    ]
    assert _statuses(agent, frames) == [OK] * len(frames)


def test_extended_key_wins_over_naive() -> None:
    agent = IpsecAgent()
    naive = add_sa(agent, IN, SPI, LOCAL4, key=KEY256, alg=Algorithm.AES_GCM_256)
    vf = add_sa(agent, IN, SPI, LOCAL4, local_mac=VF_MAC, vlans=(VLAN_Q,))
    to_vf = wire_frame(esp_packet(KEY128, SPI, 1, b"vf"), dst_mac=VF_MAC, vlans=(VLAN_Q,))
    to_pf = wire_frame(esp_packet(KEY256, SPI, 1, b"pf"))
    rx = _rx(agent, [to_vf, to_pf])
    assert [(s, i) for s, i, _ in rx] == [(OK, vf), (OK, naive)]


def test_two_domains_same_spi_have_separate_windows() -> None:
    agent = IpsecAgent()
    a = add_sa(agent, IN, SPI, LOCAL4, local_mac=VF_MAC)
    b = add_sa(agent, IN, SPI, LOCAL4, local_mac=HOST_MAC, key=KEY256, alg=Algorithm.AES_GCM_256)
    frames = [
        wire_frame(esp_packet(KEY128, SPI, 1, b"a"), dst_mac=VF_MAC),
        wire_frame(esp_packet(KEY256, SPI, 1, b"b"), dst_mac=HOST_MAC),
        wire_frame(esp_packet(KEY128, SPI, 1, b"a"), dst_mac=VF_MAC),
    ]
    rx = _rx(agent, frames)
    assert [(s, i) for s, i, _ in rx] == [(OK, a), (OK, b), (REPLAY, a)]


def test_burst_keeps_order_and_counts() -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4)
    frames = [_pkt(3), _pkt(1), _pkt(3), _pkt(2)]
    assert _statuses(agent, frames) == [OK, OK, REPLAY, OK]
    snap = agent.counters.snapshot()
    assert snap["rx_status"] == {
        "OK": 3,
        "NO_SA": 0,
        "AUTH_FAILED": 0,
        "REPLAY": 1,
        "MALFORMED": 0,
        "SA_EXPIRED": 0,
    }
    assert snap["paths"]["RX_ESP"] == 4
    assert set(snap["drops"].values()) == {0}


# -- SAs that carried traffic: what the compiled fast path sees -------------------------------
#
# The fast path takes a frame only once its SA's cipher context exists, which the reference
# path makes on the SA's first packet: a test whose SAs never carried traffic runs the
# reference path alone, whichever path the fixture names. These send a first packet on each
# SA, then the frames under test.


def _warm_esp(seq: int, payload: bytes = b"warm", **kw: object) -> bytes:
    return esp_packet(KEY128, SPI, seq, payload, **kw)  # type: ignore[arg-type]


_TPID_CASES = {
    "802.1Q": ((VlanTag(0x8100, 100),), [(VlanTag(0x88A8, 100),)]),
    "802.1ad": ((VlanTag(0x88A8, 100),), [(VlanTag(0x8100, 100),)]),
    "Q-in-Q": (
        (VLAN_OUTER, VLAN_INNER),
        [
            (VlanTag(0x8100, VLAN_OUTER.tci), VLAN_INNER),
            (VLAN_OUTER, VlanTag(0x88A8, VLAN_INNER.tci)),
            (VlanTag(0x8100, VLAN_OUTER.tci), VlanTag(0x88A8, VLAN_INNER.tci)),
            (VlanTag(0x88A8, VLAN_OUTER.tci), VlanTag(0x88A8, VLAN_INNER.tci)),
        ],
    ),
}


@pytest.mark.parametrize("vlans, others", _TPID_CASES.values(), ids=_TPID_CASES.keys())
def test_a_domain_that_carried_traffic_matches_only_its_tpids(
    vlans: tuple[VlanTag, ...], others: list[tuple[VlanTag, ...]]
) -> None:
    """The TPID is part of the domain (spec 5): a frame with the SA's VIDs under other TPIDs
    finds no SA, also once the SA carries traffic (each miss with a fresh sequence number, so
    that only the lookup can refuse it)."""
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL4, local_mac=VF_MAC, vlans=vlans)
    hits = [wire_frame(_warm_esp(seq), dst_mac=VF_MAC, vlans=vlans) for seq in (1, 2)]
    assert [(s, i) for s, i, _ in _rx(agent, hits)] == [(OK, index)] * 2
    misses = [
        wire_frame(_warm_esp(seq, b"other TPID"), dst_mac=VF_MAC, vlans=v)
        for seq, v in enumerate(others, 3)
    ]
    assert [(s, i) for s, i, _ in _rx(agent, misses)] == [(NO_SA, 0)] * len(misses)
    last = wire_frame(_warm_esp(len(others) + 3, b"again"), dst_mac=VF_MAC, vlans=vlans)
    assert [(s, i) for s, i, _ in _rx(agent, [last])] == [(OK, index)]
    sa = agent.sad.get(index)
    assert sa is not None and sa.packets == 3
    assert agent.counters.rx_status[NO_SA] == len(misses)


def _fill_sad(agent: IpsecAgent, count: int) -> None:
    """Take the SAD's indexes 1 .. count with outbound SAs to another peer (as many config
    requests would, at a fraction of the time)."""
    from ipsec_offload.agent.sad import SecurityAssociation

    other = bytes((198, 51, 100, 1))
    for spi in range(1, count + 1):
        agent.sad.insert(
            SecurityAssociation(
                index=agent.sad.allocate_index(),
                port=0,
                direction=OUT,
                spi=spi,
                dst=other,
                src=None,
                algorithm=Algorithm.AES_GCM_128,
                key_material=KEY128,
                domain=None,
                esn=False,
                ivdb=1,
                replay=None,
                lifetime_packets=0,
                lifetime_bytes=0,
            )
        )


def test_sa_index_above_16_bits_reaches_the_host() -> None:
    """SA_INDEX is 24 bits (spec 3): an SA at index 2^16 + 1 is named in full in the Rx
    metadata of every status, on the fast path's frames too."""
    from ipsec_offload.agent.agent import AgentConfig

    agent = IpsecAgent(AgentConfig(sad_size=(1 << 16) + 2))
    _fill_sad(agent, 1 << 16)
    index = add_sa(agent, IN, SPI, LOCAL4)
    assert index == (1 << 16) + 1
    forged = bytearray(_pkt(9))
    forged[-1] ^= 1
    frames = [_pkt(1), _pkt(2), _pkt(3), _pkt(2), bytes(forged)]
    rx = _rx(agent, frames)
    assert [(s, i) for s, i, _ in rx] == [
        (OK, index),
        (OK, index),
        (OK, index),
        (REPLAY, index),
        (AUTH_FAILED, index),
    ]


@pytest.mark.parametrize("pad_len", [1, 2, 3, 6])
@pytest.mark.parametrize("wrong", ["first", "last"])
def test_a_wrong_pad_byte_after_a_good_icv_on_an_sa_in_use(pad_len: int, wrong: str) -> None:
    """RFC 4303 2.4: the padding bytes are 1, 2, 3, ...; a plaintext whose first or last pad
    byte is wrong is MALFORMED, on an SA whose cipher exists (the fast path opens it)."""
    agent = IpsecAgent()
    index = add_sa(agent, IN, SPI, LOCAL4)
    assert _statuses(agent, [_pkt(1)]) == [OK]
    payload = b"x" * (4 - (pad_len + 2) % 4 if (pad_len + 2) % 4 else 4)
    pad = bytearray(range(1, pad_len + 1))
    pad[0 if wrong == "first" else -1] ^= 0x40
    plaintext = payload + bytes(pad) + bytes((pad_len, PROTO_UDP))
    assert len(plaintext) % 4 == 0
    bad = wire_frame(esp_packet(KEY128, SPI, 2, b"", plaintext=plaintext))
    good = wire_frame(esp_packet(KEY128, SPI, 3, b"", plaintext=plaintext[:-2] + b"\x00\x11"))
    rx = _rx(agent, [bad, good])
    assert [(s, i) for s, i, _ in rx] == [(MALFORMED, index), (OK, index)]
    assert rx[0][2] == bad
    sa = agent.sad.get(index)
    assert sa is not None and sa.packets == 2
    assert sa.replay is not None and sa.replay.highest == 3


# Frames cut at the end of a VLAN tag (14 + 4 per tag) or inside the EtherType after it: the
# compiled parser reads the EtherType after each tag only where the frame holds it. A bound
# off by two there reads past the frame's bytes, which only a sanitizer sees (the byte after a
# bytes object's last one is its NUL terminator, and the EtherType read is then no VLAN TPID):
# `make sanitize` runs these under AddressSanitizer.
_MAC2 = HOST_MAC + PEER_MAC
_CUT_AT_A_TAG = {
    "tpid only": _MAC2 + b"\x81\x00",
    "tpid and half a tci": _MAC2 + b"\x81\x00\x00",
    "one tag": _MAC2 + b"\x81\x00\x00\x64",
    "one tag, half an ethertype": _MAC2 + b"\x81\x00\x00\x64\x08",
    "two tags": _MAC2 + b"\x88\xa8\x00\x07\x81\x00\x00\xc8",
    "two tags, half an ethertype": _MAC2 + b"\x88\xa8\x00\x07\x81\x00\x00\xc8\x08",
    "two tags, tpid of a third": _MAC2 + b"\x88\xa8\x00\x07\x81\x00\x00\xc8\x81\x00",
}


@pytest.mark.parametrize("frame", _CUT_AT_A_TAG.values(), ids=_CUT_AT_A_TAG.keys())
def test_a_frame_cut_at_a_vlan_tag_is_a_counted_drop(frame: bytes) -> None:
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4)
    assert _statuses(agent, [_pkt(1)]) == [OK]  # the SA's cipher exists: the fast path runs
    out = agent.from_wire([_pkt(2), frame, _pkt(3)])
    assert out.to_wire == []
    assert [rx_word(split_tag(f)[0]).status for f in out.to_host] == [OK, OK]
    assert {r: n for r, n in agent.counters.drops.items() if n} == {DropReason.MALFORMED_FRAME: 1}
    assert agent.counters.paths[Path.RX_ESP] == 3


@pytest.mark.parametrize("vlans", [1, 2])
def test_a_frame_whose_header_ends_after_its_vlan_tags_is_not_esp(vlans: int) -> None:
    """The shortest frames the parser takes whole: the tags and an EtherType, no IP header."""
    agent = IpsecAgent()
    add_sa(agent, IN, SPI, LOCAL4)
    assert _statuses(agent, [_pkt(1)]) == [OK]
    frame = eth_header(HOST_MAC, PEER_MAC, ETH_IPV4, (VLAN_OUTER, VLAN_INNER)[2 - vlans :])
    out = agent.from_wire([frame, _pkt(2)])
    assert split_tag(out.to_host[0]) == (0, frame)
    assert agent.counters.paths[Path.RX_NOT_ESP] == 1
    assert not any(agent.counters.drops.values())
