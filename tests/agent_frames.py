"""Frame builders and checkers for the IPsec Agent tests (import as ``from agent_frames import``).

The builders write the bytes with ``struct`` and ``cryptography`` directly rather than through
the package's own codecs, so that a test compares the agent against an independent reading of
spec sections 2-5: config frames, Tx offload frames (L2 | IP | ESP | IV | plaintext) and ESP
frames as a remote peer would send them.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsec_offload.agent.agent import DEFAULT_AGENT_MAC, IpsecAgent
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    ConfigMessage,
    ConfigStatus,
    Direction,
    Opcode,
    Tlv,
    TlvType,
    decode_sa_index,
    encode_add_sa,
    parse_config,
)
from ipsec_offload.wire.ethernet import VlanTag

AGENT_MAC = DEFAULT_AGENT_MAC
HOST_MAC = bytes.fromhex("021100000001")
VF_MAC = bytes.fromhex("021100000002")
PEER_MAC = bytes.fromhex("02aa00000001")
BROADCAST = b"\xff" * 6

LOCAL4 = bytes((192, 0, 2, 1))
PEER4 = bytes((192, 0, 2, 2))
LOCAL6 = bytes.fromhex("20010db8000000000000000000000001")
PEER6 = bytes.fromhex("20010db8000000000000000000000002")

KEY128 = bytes(range(1, 17)) + bytes.fromhex("cafebabe")
KEY256 = bytes(range(100, 132)) + bytes.fromhex("01020304")
OTHER_KEY128 = bytes(range(50, 66)) + bytes.fromhex("0badf00d")

META = 0x88B5
CONFIG = 0x88B6
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
PROTO_ESP = 50
PROTO_UDP = 17
ICV = 16

VLAN_Q = VlanTag(0x8100, 100)
VLAN_OUTER = VlanTag(0x88A8, 7)
VLAN_INNER = VlanTag(0x8100, 200)

_txn = itertools.count(1000)


def next_txn() -> int:
    """A txn_id not used before in this test run."""
    return next(_txn)


# -- Ethernet -------------------------------------------------------------------------------


def eth_header(
    dst: bytes,
    src: bytes,
    ethertype: int,
    vlans: Sequence[VlanTag] = (),
    meta: int | None = None,
) -> bytes:
    """dst | src | [META tag] | [VLAN tags] | EtherType."""
    parts = [dst, src]
    if meta is not None:
        parts.append(struct.pack(">HI", META, meta))
    parts.extend(struct.pack(">HH", tag.tpid, tag.tci) for tag in vlans)
    parts.append(struct.pack(">H", ethertype))
    return b"".join(parts)


def split_tag(frame: bytes) -> tuple[int, bytes]:
    """(metadata word, frame without the tag) of a frame the agent sent toward the host."""
    (ethertype, word) = struct.unpack_from(">HI", frame, 12)
    assert ethertype == META, f"no metadata tag: EtherType {ethertype:#06x}"
    return word, frame[:12] + frame[18:]


@dataclass(frozen=True)
class RxWord:
    """An Rx metadata word decoded by the tests' own reading of spec section 3."""

    ipsec: bool
    status: int
    reserved: int
    sa_index: int


def rx_word(word: int) -> RxWord:
    return RxWord(bool(word >> 31), (word >> 27) & 0xF, (word >> 24) & 0x7, word & 0xFFFFFF)


def tx_word(offload: bool, next_header: int, l3: int, esp_words: int) -> int:
    """A Tx metadata word (spec section 3)."""
    return (offload << 31) | (next_header << 16) | (l3 << 8) | esp_words


# -- config channel ---------------------------------------------------------------------------


def config_body(
    opcode: int,
    tlvs: Iterable[Tlv] = (),
    *,
    txn_id: int = 1,
    port: int = 0,
    version: int = 1,
    status: int = 0,
    flags: int = 0,
    reserved: int = 0,
) -> bytes:
    """The 12-byte config header and TLVs, packed by hand (spec section 4)."""
    body = b"".join(struct.pack(">HH", t.type, len(t.value)) + t.value for t in tlvs)
    header = struct.pack(
        ">BBBBBBIH", version, opcode, status, flags, port, reserved, txn_id, len(body)
    )
    return header + body


def config_frame(
    opcode: int,
    tlvs: Iterable[Tlv] = (),
    *,
    src: bytes = HOST_MAC,
    dst: bytes = AGENT_MAC,
    txn_id: int = 1,
    port: int = 0,
    version: int = 1,
    flags: int = 0,
    reserved: int = 0,
) -> bytes:
    """An untagged config frame to the agent."""
    body = config_body(
        opcode, tlvs, txn_id=txn_id, port=port, version=version, flags=flags, reserved=reserved
    )
    return eth_header(dst, src, CONFIG) + body


def parse_reply(frame: bytes, to: bytes = HOST_MAC) -> ConfigMessage:
    """Check the L2 framing of a config reply and parse its body."""
    word, inner = split_tag(frame)
    assert word == 0, f"reply metadata {word:#010x}, expected IPSEC=0 STATUS=OK"
    assert inner[:6] == to
    assert inner[6:12] == AGENT_MAC
    assert inner[12:14] == struct.pack(">H", CONFIG)
    reply = parse_config(inner[14:])
    assert reply.version == 1
    assert reply.is_reply
    return reply


def is_event(frame: bytes) -> bool:
    """Whether a frame the agent sent toward the host is one of its EVENT frames (spec 9):
    the config EtherType after the Rx tag, opcode 0x09 (a request, not a reply)."""
    return frame[18:20] == struct.pack(">H", CONFIG) and frame[21] == 0x09


def is_event_answer(frame: bytes) -> bool:
    """Whether a frame toward the agent is the PF's answer to an EVENT (opcode 0x89, spec 9):
    untagged, the config EtherType after the MAC addresses."""
    return frame[12:14] == struct.pack(">H", CONFIG) and frame[15] == 0x89


def without_events(frames: Iterable[bytes]) -> list[bytes]:
    """The frames but the agent's EVENT frames."""
    return [f for f in frames if not is_event(f)]


def events_of(frames: Iterable[bytes]) -> list[tuple[int, int, int | None]]:
    """(EVENT_TYPE, BOOT_ID, SA_INDEX or None) of each EVENT frame among `frames`, read by
    hand: the TLVs after the 12-byte header are EVENT_TYPE (u8), BOOT_ID (u64), [SA_INDEX]."""
    found = []
    for frame in frames:
        if not is_event(frame):
            continue
        body = frame[20:]
        tlvs = body[12:]
        assert tlvs[:4] == bytes.fromhex("00150001")
        kind = tlvs[4]
        assert tlvs[5:9] == bytes.fromhex("00160008")
        boot_id = int.from_bytes(tlvs[9:17], "big")
        index = None
        if len(tlvs) > 17:
            assert tlvs[17:21] == bytes.fromhex("00010004") and len(tlvs) == 25
            index = int.from_bytes(tlvs[21:25], "big")
        found.append((kind, boot_id, index))
    return found


def request(
    agent: IpsecAgent,
    opcode: int,
    tlvs: Iterable[Tlv] = (),
    *,
    txn_id: int | None = None,
    src: bytes = HOST_MAC,
    port: int = 0,
) -> ConfigMessage:
    """Send one request, check exactly one well-formed reply came back, return it."""
    txn = next_txn() if txn_id is None else txn_id
    out = agent.from_host([config_frame(opcode, tlvs, src=src, txn_id=txn, port=port)])
    assert out.to_wire == []
    assert len(out.to_host) == 1
    reply = parse_reply(out.to_host[0], to=src)
    assert reply.opcode == opcode | 0x80
    assert reply.txn_id == txn
    assert reply.port == port
    return reply


def sa_request(
    direction: Direction,
    spi: int,
    dst: bytes,
    key: bytes = KEY128,
    alg: Algorithm = Algorithm.AES_GCM_128,
    **fields: object,
) -> AddSaRequest:
    return AddSaRequest(direction, spi, dst, alg, key=key, **fields)  # type: ignore[arg-type]


def add_sa(
    agent: IpsecAgent,
    direction: Direction,
    spi: int,
    dst: bytes,
    key: bytes = KEY128,
    alg: Algorithm = Algorithm.AES_GCM_128,
    port: int = 0,
    **fields: object,
) -> int:
    """ADD_SA that must succeed; returns the SA index from the reply."""
    req = sa_request(direction, spi, dst, key, alg, **fields)
    reply = request(agent, Opcode.ADD_SA, encode_add_sa(req), port=port)
    assert reply.status == ConfigStatus.OK, ConfigStatus(reply.status).name
    return decode_sa_index(reply.tlvs)


def tlv_u(tlv_type: int, value: int, size: int) -> Tlv:
    return Tlv(tlv_type, value.to_bytes(size, "big"))


def sa_index_tlv(index: int) -> tuple[Tlv, ...]:
    return (tlv_u(TlvType.SA_INDEX, index, 4),)


# -- IP -----------------------------------------------------------------------------------------


def checksum16(data: bytes) -> int:
    """RFC 1071 ones' complement sum, written out word by word."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack(">H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    src: bytes, dst: bytes, payload_len: int, proto: int = PROTO_ESP, options: bytes = b""
) -> bytes:
    """An IPv4 header with a correct checksum."""
    ihl = (20 + len(options)) // 4
    total = 20 + len(options) + payload_len
    head = struct.pack(
        ">BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0x1234, 0x4000, 64, proto, 0, src, dst
    )
    head += options
    return head[:10] + struct.pack(">H", checksum16(head)) + head[12:]


def ipv6(src: bytes, dst: bytes, payload_len: int, next_header: int = PROTO_ESP) -> bytes:
    return struct.pack(">IHBB16s16s", 6 << 28, payload_len, next_header, 64, src, dst)


def hop_by_hop(next_header: int = PROTO_ESP) -> bytes:
    """An 8-byte IPv6 hop-by-hop options header (PadN only)."""
    return bytes((next_header, 0, 1, 4, 0, 0, 0, 0))


def ip_packet(
    src: bytes, dst: bytes, esp: bytes, *, ext: bytes = b"", options: bytes = b""
) -> bytes:
    """IP header(s) then `esp`: IPv4 for 4-byte addresses, else IPv6 (with `ext` first)."""
    if len(src) == 4:
        return ipv4(src, dst, len(esp), options=options) + esp
    first = 0 if ext else PROTO_ESP  # `ext` is a hop-by-hop header (type 0)
    return ipv6(src, dst, len(ext) + len(esp), first) + ext + esp


# -- ESP --------------------------------------------------------------------------------------


def trailer(payload_len: int, next_header: int) -> bytes:
    """Padding 1, 2, 3, ... then pad length and next header (RFC 4303 2.4, to 4 bytes)."""
    pad = (4 - (payload_len + 2) % 4) % 4
    return bytes(range(1, pad + 1)) + bytes((pad, next_header))


def aad(spi: int, seq: int, esn: bool) -> bytes:
    if esn:
        return struct.pack(">III", spi, seq >> 32, seq & 0xFFFFFFFF)
    return struct.pack(">II", spi, seq & 0xFFFFFFFF)


def seal(key: bytes, spi: int, seq: int, esn: bool, iv: bytes, plaintext: bytes) -> bytes:
    """ciphertext || ICV with AES-GCM (RFC 4106): nonce salt || IV."""
    return AESGCM(key[:-4]).encrypt(key[-4:] + iv, plaintext, aad(spi, seq, esn))


def unseal(key: bytes, spi: int, seq: int, esn: bool, iv: bytes, sealed: bytes) -> bytes:
    return AESGCM(key[:-4]).decrypt(key[-4:] + iv, sealed, aad(spi, seq, esn))


def esp_packet(
    key: bytes,
    spi: int,
    seq: int,
    payload: bytes,
    next_header: int = PROTO_UDP,
    *,
    esn: bool = False,
    plaintext: bytes | None = None,
) -> bytes:
    """ESP header | IV (= seq) | ciphertext | ICV; `plaintext` overrides payload || trailer."""
    iv = struct.pack(">Q", seq)
    if plaintext is None:
        plaintext = payload + trailer(len(payload), next_header)
    return struct.pack(">II", spi, seq & 0xFFFFFFFF) + iv + seal(key, spi, seq, esn, iv, plaintext)


def wire_frame(
    esp: bytes,
    *,
    src_ip: bytes = PEER4,
    dst_ip: bytes = LOCAL4,
    dst_mac: bytes = HOST_MAC,
    src_mac: bytes = PEER_MAC,
    vlans: Sequence[VlanTag] = (),
    ext: bytes = b"",
    options: bytes = b"",
) -> bytes:
    """A frame as it arrives from the wire: L2 | IP | `esp`."""
    ethertype = ETH_IPV4 if len(dst_ip) == 4 else ETH_IPV6
    return eth_header(dst_mac, src_mac, ethertype, vlans) + ip_packet(
        src_ip, dst_ip, esp, ext=ext, options=options
    )


def offload_frame(
    spi: int,
    iv: int,
    payload: bytes,
    *,
    next_header: int = PROTO_UDP,
    src_ip: bytes = LOCAL4,
    dst_ip: bytes = PEER4,
    src_mac: bytes = HOST_MAC,
    dst_mac: bytes = PEER_MAC,
    vlans: Sequence[VlanTag] = (),
    ext: bytes = b"",
    options: bytes = b"",
    stack_seq: int | None = None,
    meta: int | None = None,
) -> bytes:
    """A Tx offload frame: L2 with the metadata tag | IP | ESP (spi, seq) | IV | plaintext."""
    ethertype = ETH_IPV4 if len(dst_ip) == 4 else ETH_IPV6
    l3 = 14 + 4 * len(vlans)
    ip_len = 20 + len(options) if len(dst_ip) == 4 else 40 + len(ext)
    if meta is None:
        meta = tx_word(True, next_header, l3, ip_len // 4)
    seq = iv & 0xFFFFFFFF if stack_seq is None else stack_seq
    esp = struct.pack(">IIQ", spi, seq, iv) + payload
    return eth_header(dst_mac, src_mac, ethertype, vlans, meta) + ip_packet(
        src_ip, dst_ip, esp, ext=ext, options=options
    )


@dataclass(frozen=True)
class Opened:
    """An ESP packet the agent encrypted, taken apart and decrypted by the test."""

    l2: bytes
    ip_header: bytes
    spi: int
    seq_lo: int
    iv: int
    plaintext: bytes
    icv_len: int


def open_encrypted(
    frame: bytes, key: bytes, *, esn: bool = False, l3: int = 14, ip_header_len: int = 20
) -> Opened:
    """Decrypt a frame the agent put on the wire (the full seq is the IV, spec section 2)."""
    ip_end = l3 + ip_header_len
    spi, seq_lo, iv = struct.unpack_from(">IIQ", frame, ip_end)
    assert iv & 0xFFFFFFFF == seq_lo, "IV and ESP sequence number disagree"
    sealed = frame[ip_end + 16 :]
    plaintext = unseal(key, spi, iv, esn, frame[ip_end + 8 : ip_end + 16], sealed)
    return Opened(
        frame[:l3], frame[l3:ip_end], spi, seq_lo, iv, plaintext, len(sealed) - len(plaintext)
    )
