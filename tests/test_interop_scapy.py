"""Interop with scapy's ESP: the agent's wire frames decrypt with scapy, and frames scapy
encrypts decrypt in the agent.

Outbound: a PF host sends over an offloaded SA in a Testbed run; every frame the agent puts on
the wire is decrypted by scapy's SecurityAssociation (AES-GCM, RFC 4106), independently of the
project's crypto, and must give back what the host's application sent, with the sequence
number and IV the spec prescribes and the RFC 4303 trailer. Inbound: scapy encrypts for the
agent's inbound SA; the agent must hand the frame to the host side with Rx metadata IPSEC=1
STATUS=OK and the plaintext in place, byte for byte as spec section 3 describes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Mode, Offload, XfrmState
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.config import Algorithm, Direction
from ipsec_offload.wire.ethernet import EtherType, parse_ethernet
from ipsec_offload.wire.metadata import RxStatus, parse_rx_metadata
from tools import ether_frame, scapy_encrypt, scapy_sa

pytestmark = pytest.mark.interop

HOST_MAC, PEER_MAC = "02:00:00:00:01:00", "02:00:00:00:02:00"
HOST_V4, PEER_V4 = "192.0.2.1", "192.0.2.2"
HOST_V6, PEER_V6 = "2001:db8::1", "2001:db8::2"
ICV_LEN = 16
IV_LEN = 8
IPPROTO_IPIP, IPPROTO_UDP, IPPROTO_IPV6, IPPROTO_ESP = 4, 17, 41, 50


@dataclass(frozen=True)
class Case:
    family: int
    mode: Mode
    algorithm: Algorithm
    esn: bool

    @property
    def host_ip(self) -> str:
        return HOST_V4 if self.family == 4 else HOST_V6

    @property
    def peer_ip(self) -> str:
        return PEER_V4 if self.family == 4 else PEER_V6

    def ip(self, src: str, dst: str) -> Packet:
        return IP(src=src, dst=dst) if self.family == 4 else IPv6(src=src, dst=dst)

    @property
    def tunnel_nh(self) -> int:
        return IPPROTO_IPIP if self.family == 4 else IPPROTO_IPV6


CASES = {
    "ipv4-transport-gcm128": Case(4, Mode.TRANSPORT, Algorithm.AES_GCM_128, False),
    "ipv6-transport-gcm128": Case(6, Mode.TRANSPORT, Algorithm.AES_GCM_128, False),
    "ipv4-tunnel-gcm128": Case(4, Mode.TUNNEL, Algorithm.AES_GCM_128, False),
    "ipv6-tunnel-gcm256-esn": Case(6, Mode.TUNNEL, Algorithm.AES_GCM_256, True),
    "ipv4-transport-gcm256-esn": Case(4, Mode.TRANSPORT, Algorithm.AES_GCM_256, True),
}

# UDP payloads of 0..7 bytes give every pad length 0..3 in both modes, twice.
PAYLOADS = tuple(bytes(range(0x41, 0x41 + n)) for n in range(8))


def make_bed(case: Case) -> tuple[Testbed, HostStack, HostStack, SaBundle]:
    bed = Testbed()
    host = bed.add_pf_host("host", HOST_MAC, ipv4=HOST_V4, ipv6=HOST_V6)
    peer = bed.add_peer("peer", PEER_MAC, ipv4=PEER_V4, ipv6=PEER_V6)
    bundle = bed.secure(
        host,
        peer,
        family=case.family,
        mode=case.mode,
        algorithm=case.algorithm,
        esn=case.esn,
        offload_a=True,
    )
    assert bundle.a_out.offload == Offload.DEVICE
    assert bundle.a_in.offload == Offload.DEVICE
    return bed, host, peer, bundle


def sa_for(state: XfrmState, case: Case) -> SecurityAssociation:
    """scapy's SA for `state`; in tunnel mode with the state's addresses as tunnel header."""
    tunnel = None
    if case.mode == Mode.TUNNEL:
        tunnel = case.ip(_text(state.src), _text(state.dst))
    return scapy_sa(state.spi, state.key_material, int(case.algorithm), case.esn, tunnel)


def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def outer_ip(frame: bytes) -> Packet:
    eth = Ether(frame)
    return eth[IP] if eth.type == EtherType.IPV4 else eth[IPv6]


def check_outer_header(frame: bytes, src: str, dst: str) -> None:
    """The outer IP header: ESP, addresses, the length fixed, the IPv4 checksum right."""
    eth = Ether(frame)
    assert (eth.dst, eth.src) == (PEER_MAC, HOST_MAC)
    if eth.type == EtherType.IPV4:
        ip = eth[IP]
        assert ip.proto == IPPROTO_ESP
        assert ip.len == len(frame) - 14
        assert checksum(frame[14 : 14 + 4 * ip.ihl]) == 0
    else:
        assert eth.type == EtherType.IPV6
        ip = eth[IPv6]
        assert ip.nh == IPPROTO_ESP
        assert ip.plen == len(frame) - 14 - 40
    assert (ip.src, ip.dst) == (src, dst)


def decrypt_trailer(sa: SecurityAssociation, ip: Packet, esn_high: int) -> Packet:
    """scapy's _ESPPlain of an ESP packet: iv, data, padding, padlen and nh."""
    return sa.crypt_algo.decrypt(sa, ip[ESP], sa.crypt_key, ICV_LEN, sa.esn_en, esn_high)


# -- outbound: the agent encrypts, scapy decrypts -----------------------------------------


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_agent_wire_frames_decrypt_with_scapy(case: Case) -> None:
    bed, host, peer, bundle = make_bed(case)
    sent = bed.captures["agent-to-wire"]
    sent.clear()
    peer_addr = ipaddress.ip_address(case.peer_ip).packed
    for i, payload in enumerate(PAYLOADS):
        host.send_udp(peer_addr, 40000 + i, 5000, payload, bed.now)
        bed.settle(host)

    frames = [r.frame for r in sent.records]
    assert len(frames) == len(PAYLOADS)
    sa = sa_for(bundle.a_out, case)
    for i, (frame, payload) in enumerate(zip(frames, PAYLOADS, strict=True)):
        seq = i + 1
        check_outer_header(frame, case.host_ip, case.peer_ip)
        ip = outer_ip(frame)
        esp = ip[ESP]
        assert (esp.spi, esp.seq) == (bundle.a_out.spi, seq)
        # spec 2: the explicit IV is the SA's 64-bit packet counter
        assert raw(esp)[8:16] == struct.pack(">Q", seq)

        plain = decrypt_trailer(sa, ip.copy(), 0)
        assert plain.padding == bytes(range(1, plain.padlen + 1))
        assert (len(plain.data) + plain.padlen + 2) % 4 == 0
        assert plain.padlen < 4  # the minimum padding that aligns to 4 bytes
        assert len(raw(esp)) == 8 + IV_LEN + len(plain.data) + plain.padlen + 2 + ICV_LEN

        decrypted = sa.decrypt(ip.copy())
        if case.mode == Mode.TRANSPORT:
            assert plain.nh == IPPROTO_UDP
            assert (decrypted.src, decrypted.dst) == (case.host_ip, case.peer_ip)
            udp = decrypted[UDP]
        else:
            assert plain.nh == case.tunnel_nh
            inner = decrypted
            assert isinstance(inner, IP if case.family == 4 else IPv6)
            assert (inner.src, inner.dst) == (case.host_ip, case.peer_ip)
            udp = inner[UDP]
        assert (udp.sport, udp.dport) == (40000 + i, 5000)
        assert raw(udp.payload) == payload

    # the peer (software ESP) got them too: the frames are what the host's stack meant
    assert [d.payload for d in bed.delivered(peer)] == list(PAYLOADS)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_scapy_rejects_tampered_agent_frame(case: Case) -> None:
    """A control: scapy does check the ICV, so the decryptions above mean something."""
    bed, host, _peer, bundle = make_bed(case)
    host.send_udp(ipaddress.ip_address(case.peer_ip).packed, 1, 2, b"tamper", bed.now)
    bed.settle(host)
    (record,) = bed.captures["agent-to-wire"].records
    frame = bytearray(record.frame)
    sa = sa_for(bundle.a_out, case)
    assert raw(sa.decrypt(outer_ip(bytes(frame)))[UDP].payload) == b"tamper"
    frame[-ICV_LEN - 1] ^= 0x01
    with pytest.raises(IPSecIntegrityError):
        sa.decrypt(outer_ip(bytes(frame)))
    if case.esn:
        # with ESN the AAD is SPI || seq_hi || seq_lo: the 8-byte AAD must not verify
        plain_sa = scapy_sa(bundle.a_out.spi, bundle.a_out.key_material, int(case.algorithm))
        if case.mode == Mode.TUNNEL:
            plain_sa.tunnel_header = case.ip(case.host_ip, case.peer_ip)
        with pytest.raises(IPSecIntegrityError):
            plain_sa.decrypt(outer_ip(record.frame))


@pytest.mark.parametrize("mode", [Mode.TRANSPORT, Mode.TUNNEL], ids=["transport", "tunnel"])
def test_esn_across_the_2_32_boundary(mode: Mode) -> None:
    """An outbound ESN SA whose counter crosses 2^32: the ESP header carries the low 32 bits,
    the IV all 64, and the AAD the high bits (scapy decrypts with seq_hi = 1 after the wrap).

    XfrmState has no start value for the counter, so the test moves the stack's last used
    sequence number (`oseq`) and, for the peer's software SA, its replay window: the agent
    keeps the stack's numbers because they are above its IVDB (spec 7).
    """
    case = Case(6, mode, Algorithm.AES_GCM_256, True)
    bed, host, peer, bundle = make_bed(case)
    start = 2**32 - 3
    bundle.a_out.oseq = start
    bundle.b_in.replay = ReplayWindow(bundle.b_in.replay_window, True, start)
    sent = bed.captures["agent-to-wire"]
    sent.clear()
    payloads = [b"esn-%d" % i for i in range(5)]
    for i, payload in enumerate(payloads):
        host.send_udp(ipaddress.ip_address(PEER_V6).packed, 41000 + i, 5000, payload, bed.now)
        bed.settle(host)

    frames = [r.frame for r in sent.records]
    assert len(frames) == len(payloads)
    sa = sa_for(bundle.a_out, case)
    lows, highs = [], []
    for frame, payload in zip(frames, payloads, strict=True):
        ip = outer_ip(frame)
        esp = ip[ESP]
        full = int.from_bytes(raw(esp)[8:16], "big")
        lows.append(esp.seq)
        highs.append(full >> 32)
        assert esp.seq == full & 0xFFFFFFFF
        sa.esn = full >> 32
        assert raw(sa.decrypt(ip.copy())[UDP].payload) == payload
    assert lows == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2]
    assert highs == [0, 0, 1, 1, 1]
    # with seq_hi 0 the frames after the wrap must not verify: the high bits are in the AAD
    sa.esn = 0
    with pytest.raises(IPSecIntegrityError):
        sa.decrypt(outer_ip(frames[2]))
    assert [d.payload for d in bed.delivered(peer)] == payloads


# -- inbound: scapy encrypts, the agent decrypts ------------------------------------------


def inner_packet(case: Case, i: int, payload: bytes) -> Packet:
    return case.ip(case.peer_ip, case.host_ip) / UDP(sport=6000 + i, dport=7000) / Raw(payload)


def expected_decrypted(
    frame: bytes, encrypted: Packet, case: Case, plaintext: bytes, word: int
) -> bytes:
    """Spec 3: the frame with the Rx tag after the source MAC, the IP length shortened by the
    ICV (IPv4 checksum recomputed), ESP header and IV kept, the plaintext with its padding,
    pad length and next header in place of the ciphertext, the ICV removed."""
    header = encrypted.copy()
    header.remove_payload()
    if case.family == 4:
        header.len = encrypted.len - ICV_LEN
        del header.chksum
    else:
        header.plen = encrypted.plen - ICV_LEN
    tag = struct.pack(">HI", EtherType.META, word)
    esp_and_iv = raw(encrypted[ESP])[: 8 + IV_LEN]
    return frame[:12] + tag + frame[12:14] + raw(header) + esp_and_iv + plaintext


def rfc4303_plaintext(inner: bytes, next_header: int) -> bytes:
    padlen = -(len(inner) + 2) % 4
    return inner + bytes(range(1, padlen + 1)) + bytes((padlen, next_header))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_scapy_frames_decrypt_in_the_agent(case: Case) -> None:
    bed, _host, _peer, bundle = make_bed(case)
    (agent_sa,) = [
        sa
        for sa in bed.agent.sad
        if sa.direction == Direction.INBOUND and sa.spi == bundle.a_in.spi
    ]
    sa = sa_for(bundle.b_out, case)
    frames, encrypted, plaintexts = [], [], []
    for i, payload in enumerate(PAYLOADS[:4]):
        inner = inner_packet(case, i, payload)
        iv = bytes.fromhex("a5a5a5a5") + struct.pack(">I", 0x100 + i)  # any IV will do
        enc = scapy_encrypt(sa, inner.copy(), i + 1, iv)
        encrypted.append(enc)
        frames.append(ether_frame(enc, src=PEER_MAC, dst=HOST_MAC))
        if case.mode == Mode.TRANSPORT:
            ihl = 20 if case.family == 4 else 40
            plaintexts.append(rfc4303_plaintext(raw(inner)[ihl:], IPPROTO_UDP))
        else:
            plaintexts.append(rfc4303_plaintext(raw(inner), case.tunnel_nh))

    out = bed.agent.from_wire(frames)
    assert out.to_wire == []
    assert len(out.to_host) == len(frames)
    for frame, enc, plaintext, result in zip(
        frames, encrypted, plaintexts, out.to_host, strict=True
    ):
        eth = parse_ethernet(result)
        assert eth.metadata is not None
        rx = parse_rx_metadata(eth.metadata)
        assert (rx.ipsec, rx.status, rx.sa_index) == (True, RxStatus.OK, agent_sa.index)
        assert (eth.dst, eth.src) == (frame[:6], frame[6:12])
        assert eth.ethertype == (EtherType.IPV4 if case.family == 4 else EtherType.IPV6)
        assert result == expected_decrypted(frame, enc, case, plaintext, eth.metadata)
    assert agent_sa.packets == len(frames)
    assert bed.agent.counters.rx_status[RxStatus.OK] == len(frames)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_scapy_frames_through_the_testbed(case: Case) -> None:
    """The same frames put on the wire by the peer's plain driver reach the host's
    application, decrypted by the agent (offloaded), through NIC, PF driver and stack."""
    bed, host, peer, bundle = make_bed(case)
    sa = sa_for(bundle.b_out, case)
    for i, payload in enumerate(PAYLOADS):
        enc = scapy_encrypt(sa, inner_packet(case, i, payload), i + 1, struct.pack(">Q", i + 1))
        peer.device.xmit(ether_frame(enc, src=PEER_MAC, dst=HOST_MAC))
    bed.settle(peer)
    delivered = bed.delivered(host)
    assert [d.payload for d in delivered] == list(PAYLOADS)
    assert [(d.src_port, d.dst_port) for d in delivered] == [
        (6000 + i, 7000) for i in range(len(PAYLOADS))
    ]
    assert all(d.offloaded and d.state == bundle.a_in.handle for d in delivered)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tampered_scapy_frame_is_auth_failed(case: Case) -> None:
    bed, _host, _peer, bundle = make_bed(case)
    sa = sa_for(bundle.b_out, case)
    enc = scapy_encrypt(sa, inner_packet(case, 0, b"forged"), 1, bytes(8))
    frame = bytearray(ether_frame(enc, src=PEER_MAC, dst=HOST_MAC))
    frame[-1] ^= 0x80  # last ICV byte
    (result,) = bed.agent.from_wire([bytes(frame)]).to_host
    eth = parse_ethernet(result)
    assert eth.metadata is not None
    rx = parse_rx_metadata(eth.metadata)
    assert (rx.ipsec, rx.status) == (True, RxStatus.AUTH_FAILED)
    # passed unchanged apart from the tag
    assert result[:12] + result[18:] == bytes(frame)
    # and the window did not move: the genuine frame with the same number still passes
    (genuine,) = bed.agent.from_wire([ether_frame(enc, src=PEER_MAC, dst=HOST_MAC)]).to_host
    meta = parse_ethernet(genuine).metadata
    assert meta is not None
    assert parse_rx_metadata(meta).status == RxStatus.OK
