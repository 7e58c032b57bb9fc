"""scapy layers for the agent's metadata tag and config frames (spec sections 3, 4 and 9).

Importing this module binds the layers to scapy's ``Ether``:

- EtherType 0x88B5, the metadata tag: :class:`IpsecOffloadMeta`, which is one of two views of
  the same 6 bytes (``u32 word || next EtherType``): :class:`IpsecOffloadTxMeta` (host side to
  agent: ``offload``, ``reserved``, ``next_header``, ``l3_offset``, ``esp_offset``) and
  :class:`IpsecOffloadRxMeta` (agent to host side: ``ipsec``, ``status``, ``reserved``,
  ``sa_index``). Both are subclasses of ``IpsecOffloadMeta``, so ``pkt[IpsecOffloadMeta]``
  finds either. After the word, the ``type`` field picks the next layer like Ether's
  ``type`` does (``Dot1Q``, ``Dot1AD``, ``IP``, ``IPv6``, ``IpsecOffloadConfig``, ...).
- EtherType 0x88B6, config frames: :class:`IpsecOffloadConfig` (the 12-byte header) with a
  ``tlvs`` list of TLV packets: one class per TLV type (:class:`TlvSpi`, :class:`TlvKey`, ...,
  spec 1.1's :class:`TlvSaEntry`, :class:`TlvEventType`, :class:`TlvBootId`, ...) and
  :class:`IpsecOffloadTlv`, the generic ``type | length | value`` TLV, used for unknown types
  and for values of the wrong length.

The bytes of a metadata word do not say whether it is Tx or Rx metadata. When dissecting,
the view is chosen by :func:`parse_frame` (``direction="tx"``, ``"rx"`` or ``"auto"``), by
the :func:`meta_direction` context manager, or, by default, by the heuristic of
:func:`guess_meta_direction`. When building, ``IpsecOffloadMeta(**fields)`` gives the Rx view
if any Rx-only field (``ipsec``, ``status``, ``sa_index``) is named, else the Tx view; or use
the two classes directly. ``meta.as_tx()`` / ``meta.as_rx()`` re-read a tag in the other view.

Example, an ADD_SA request and the agent's reply::

    frame = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:10") / IpsecOffloadConfig(
        opcode=1, txn_id=5, tlvs=[TlvDir(dir=0), TlvSpi(spi=0x1234), TlvDstAddr(addr="10.0.0.2"),
                                  TlvAlg(alg=1), TlvKey(key=bytes(20))])
    reply = parse_frame(agent_output_bytes, "rx")
    reply[IpsecOffloadRxMeta].status, reply[IpsecOffloadConfig].status, reply[TlvSaIndex].sa_index

Offsets left as ``None`` in a Tx tag are filled in when the frame is built: ``l3_offset``
from the VLAN tags that follow, ``esp_offset`` from the IPv4/IPv6 header in front of the ESP
header (0 when there is none, and both 0 when ``offload`` is 0).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Literal

from scapy.fields import (
    AnyField,
    BitEnumField,
    BitField,
    ByteEnumField,
    ByteField,
    FieldLenField,
    FieldListField,
    IntField,
    LongField,
    MACField,
    PacketListField,
    ShortEnumField,
    ShortField,
    StrLenField,
    XByteField,
    XIntField,
    XLongField,
    XShortEnumField,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers, bind_top_down

__all__ = [
    "ALGORITHMS",
    "CONFIG_ETHERTYPE",
    "CONFIG_STATUS",
    "EVENT_TYPES",
    "META_ETHERTYPE",
    "OPCODES",
    "RX_STATUS",
    "TLV_TYPES",
    "IpsecOffloadConfig",
    "IpsecOffloadMeta",
    "IpsecOffloadRxMeta",
    "IpsecOffloadTlv",
    "IpsecOffloadTxMeta",
    "MetaDirection",
    "TlvAlg",
    "TlvBootId",
    "TlvCaps",
    "TlvCount",
    "TlvDir",
    "TlvDstAddr",
    "TlvEsn",
    "TlvEventType",
    "TlvKekId",
    "TlvKey",
    "TlvLifetimeBytes",
    "TlvLifetimePackets",
    "TlvLocalMac",
    "TlvReplayWindow",
    "TlvSaEntry",
    "TlvSaIndex",
    "TlvSeq",
    "TlvSoftLifetimeBytes",
    "TlvSoftLifetimePackets",
    "TlvSpi",
    "TlvSrcAddr",
    "TlvStats",
    "TlvVlan",
    "TlvWrappedKey",
    "guess_meta_direction",
    "meta_direction",
    "parse_frame",
]

META_ETHERTYPE = 0x88B5
CONFIG_ETHERTYPE = 0x88B6
_VLAN_TPIDS = (0x8100, 0x88A8)
_IPV4, _IPV6 = 0x0800, 0x86DD
_ESP = 50
_IPV6_EXTENSIONS = (0, 43, 60)
_REPLY = 0x80
_EVENT = 0x09

RX_STATUS = {0: "OK", 1: "NO_SA", 2: "AUTH_FAILED", 3: "REPLAY", 4: "MALFORMED", 5: "SA_EXPIRED"}
OPCODES = {
    0x01: "ADD_SA",
    0x02: "REMOVE_SA",
    0x03: "REMOVE_ALL_SAS",
    0x04: "ADD_LOCAL_ADDR",
    0x05: "REMOVE_LOCAL_ADDR",
    0x06: "GET_SA_STATS",
    0x07: "GET_CAPS",
    0x08: "LIST_SAS",
    0x09: "EVENT",
}
_OPCODE_NAMES = {**OPCODES, **{code | _REPLY: f"{name}_REPLY" for code, name in OPCODES.items()}}
CONFIG_STATUS = {
    0: "OK",
    1: "BAD_REQUEST",
    2: "UNSUPPORTED",
    3: "NO_SPACE",
    4: "EXISTS",
    5: "NOT_FOUND",
    6: "KEY_UNWRAP_FAILED",
    7: "BAD_VERSION",
}
TLV_TYPES = {
    0x0001: "SA_INDEX",
    0x0002: "DIR",
    0x0003: "SPI",
    0x0004: "DST_ADDR",
    0x0005: "SRC_ADDR",
    0x0006: "ALG",
    0x0007: "KEY",
    0x0008: "WRAPPED_KEY",
    0x0009: "LOCAL_MAC",
    0x000A: "VLAN",
    0x000B: "ESN",
    0x000C: "REPLAY_WINDOW",
    0x000D: "LIFETIME_PACKETS",
    0x000E: "LIFETIME_BYTES",
    0x000F: "COUNT",
    0x0010: "STATS",
    0x0011: "CAPS",
    0x0012: "KEK_ID",
    0x0013: "SEQ",
    0x0014: "SA_ENTRY",
    0x0015: "EVENT_TYPE",
    0x0016: "BOOT_ID",
    0x0017: "SOFT_LIFETIME_PACKETS",
    0x0018: "SOFT_LIFETIME_BYTES",
}
EVENT_TYPES = {1: "AGENT_STARTED", 2: "SOFT_EXPIRE", 3: "HARD_EXPIRE", 4: "SEQ_SOFT_LIMIT"}
ALGORITHMS = {1: "AES-GCM-128", 2: "AES-GCM-256"}
_SA_DIRECTIONS = {0: "inbound", 1: "outbound"}
_TPIDS = {0x8100: "802.1Q", 0x88A8: "802.1ad"}
_IP_PROTOCOLS = {0: "hopopt", 1: "icmp", 4: "ipv4", 6: "tcp", 17: "udp", 41: "ipv6", 50: "esp"}
_IP_PROTOCOLS.update({58: "icmpv6", 59: "ipv6-nonxt"})
_ETHER_TYPES = {
    0x0800: "IPv4",
    0x0806: "ARP",
    0x8100: "n_802_1Q",
    0x86DD: "IPv6",
    0x88A8: "n_802_1AD",
    META_ETHERTYPE: "IPSEC_OFFLOAD_META",
    CONFIG_ETHERTYPE: "IPSEC_OFFLOAD_CONFIG",
}

# -- metadata tag -----------------------------------------------------------------------------

MetaDirection = Literal["auto", "tx", "rx"]
_DIRECTION: ContextVar[MetaDirection] = ContextVar("ipsec_offload_meta_direction", default="auto")


@contextmanager
def meta_direction(direction: MetaDirection) -> Iterator[None]:
    """Within the block, dissect metadata tags as ``"tx"``, ``"rx"`` or ``"auto"``."""
    if direction not in ("auto", "tx", "rx"):
        raise ValueError(f"direction must be 'auto', 'tx' or 'rx', not {direction!r}")
    token = _DIRECTION.set(direction)
    try:
        yield
    finally:
        _DIRECTION.reset(token)


def parse_frame(frame: bytes, direction: MetaDirection = "auto") -> Any:
    """``Ether(frame)``, with a metadata tag read as Tx or Rx metadata (or guessed)."""
    with meta_direction(direction):
        return Ether(bytes(frame))


def _l3_after(ethertype: int, after: bytes) -> tuple[int, int] | None:
    """(offset in ``after``, EtherType) of the L3 header behind 0-2 VLAN tags, or None."""
    offset = 0
    for _ in range(2):
        if ethertype not in _VLAN_TPIDS:
            break
        if len(after) < offset + 4:
            return None
        (ethertype,) = struct.unpack_from("!H", after, offset + 2)
        offset += 4
    return offset, ethertype


def _esp_words(ethertype: int, ip: bytes) -> int:
    """4-byte words from the start of the IP header ``ip`` to its ESP header (0: none)."""
    if ethertype == _IPV4 and len(ip) >= 20 and ip[0] >> 4 == 4:
        return ip[0] & 0x0F if ip[9] == _ESP else 0
    if ethertype == _IPV6 and len(ip) >= 40 and ip[0] >> 4 == 6:
        next_header, offset = ip[6], 40
        while next_header in _IPV6_EXTENSIONS and len(ip) >= offset + 2:
            next_header, offset = ip[offset], offset + (ip[offset + 1] + 1) * 8
        return offset // 4 if next_header == _ESP and offset % 4 == 0 else 0
    return 0


def guess_meta_direction(tag: bytes) -> Literal["tx", "rx"]:
    """Tx or Rx metadata, from the bytes after the tag's EtherType (word, then the rest).

    Rules in order: Tx reserved bits (30-24) set: ``rx`` if the word is a valid Rx word,
    else ``tx`` (the agent only emits valid Rx words); bit 31 set: ``tx`` if L3_OFFSET is the
    L2 header length of the frame with the tag removed and an IP header of the EtherType's
    version starts there, else ``rx``; bit 31 clear and other bits set: ``tx`` (the agent
    writes an all-zero word for frames that are not ESP); an all-zero word: ``rx`` if a
    config frame the agent sends follows (a reply, or an EVENT request), else ``tx`` (the PF's
    requests and EVENT replies, and anything else). The Wireshark dissector applies the same
    rules (and one more, the agent's source MAC, that a tag alone cannot see).
    """
    if len(tag) < 4:
        return "tx"
    (word,) = struct.unpack_from("!I", tag)
    if word & 0x7F00_0000:
        rx_valid = (word >> 27) & 0xF <= 5 and not word & 0x0700_0000
        return "rx" if rx_valid else "tx"
    located = _l3_after(struct.unpack_from("!H", tag, 4)[0], tag[6:]) if len(tag) >= 6 else None
    if word & 0x8000_0000:
        if located is None:
            return "rx"
        offset, ethertype = located
        version = {_IPV4: 4, _IPV6: 6}.get(ethertype)
        ip = tag[6 + offset :]
        matches = (word >> 8) & 0xFF == 14 + offset and bool(ip) and ip[0] >> 4 == version
        return "tx" if matches else "rx"
    if word:
        return "tx"
    if located is not None:
        offset, ethertype = located
        body = tag[6 + offset :]
        if ethertype == CONFIG_ETHERTYPE and len(body) >= 2:
            # the agent sends replies and EVENT requests, the PF requests and EVENT replies
            is_reply = bool(body[1] & _REPLY)
            is_event = (body[1] & ~_REPLY) == _EVENT
            return "rx" if is_reply != is_event else "tx"
    return "tx"


def _tx_fields() -> list[AnyField]:
    return [
        BitField("offload", 0, 1),
        BitField("reserved", 0, 7),
        ByteEnumField("next_header", 0, _IP_PROTOCOLS),
        ByteField("l3_offset", None),
        ByteField("esp_offset", None),
        XShortEnumField("type", 0, _ETHER_TYPES),
    ]


class IpsecOffloadMeta(Packet):
    """The metadata tag (``u32 word || EtherType``); instances are its Tx or Rx view."""

    name = "IPsec offload metadata"
    match_subclass = True
    # the ``type`` field chooses the next layer as Ether's does
    aliastypes: ClassVar[list[type[Packet]]] = [Ether]
    # dispatch_hook always returns one of the two views; the layout here is the Tx one
    fields_desc: ClassVar[list[AnyField]] = _tx_fields()

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Any]:
        if _pkt is None:
            rx_only = {"ipsec", "status", "sa_index"}
            return IpsecOffloadRxMeta if rx_only & kargs.keys() else IpsecOffloadTxMeta
        direction = _DIRECTION.get()
        if direction == "auto":
            direction = guess_meta_direction(bytes(_pkt))
        return IpsecOffloadRxMeta if direction == "rx" else IpsecOffloadTxMeta

    @property
    def word(self) -> int:
        """The 32-bit metadata word."""
        value: int = struct.unpack("!I", bytes(self)[:4])[0]
        return value

    def as_tx(self) -> IpsecOffloadTxMeta:
        """This tag, and what follows it, read as Tx metadata."""
        return IpsecOffloadTxMeta(bytes(self))

    def as_rx(self) -> IpsecOffloadRxMeta:
        """This tag, and what follows it, read as Rx metadata."""
        return IpsecOffloadRxMeta(bytes(self))


class IpsecOffloadTxMeta(IpsecOffloadMeta):
    """Tx metadata (host side to agent): OFFLOAD, reserved, NEXT_HEADER, L3_OFFSET, ESP_OFFSET."""

    name = "IPsec offload Tx metadata"
    fields_desc: ClassVar[list[AnyField]] = _tx_fields()

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.l3_offset is None or self.esp_offset is None:
            l3, esp = 0, 0
            located = _l3_after(self.type, pay) if self.offload else None
            if located is not None:
                offset, ethertype = located
                l3 = 14 + offset
                esp = _esp_words(ethertype, pay[offset:])
            if self.l3_offset is None:
                pkt = pkt[:2] + bytes((l3 & 0xFF,)) + pkt[3:]
            if self.esp_offset is None:
                pkt = pkt[:3] + bytes((esp & 0xFF,)) + pkt[4:]
        return pkt + pay

    def mysummary(self) -> str:
        if self.offload:
            return self.sprintf("Tx OFFLOAD nh=%next_header% l3=%l3_offset% esp=%esp_offset% words")
        return "Tx bypass"


class IpsecOffloadRxMeta(IpsecOffloadMeta):
    """Rx metadata (agent to host side): IPSEC, STATUS, reserved, SA_INDEX."""

    name = "IPsec offload Rx metadata"
    fields_desc: ClassVar[list[AnyField]] = [
        BitField("ipsec", 0, 1),
        BitEnumField("status", 0, 4, RX_STATUS),
        BitField("reserved", 0, 3),
        BitField("sa_index", 0, 24),
        XShortEnumField("type", 0, _ETHER_TYPES),
    ]

    def mysummary(self) -> str:
        if self.ipsec:
            return self.sprintf("Rx %status% sa_index=%sa_index%")
        return "Rx not ESP"


# -- config TLVs ------------------------------------------------------------------------------


class _IpAddrField(StrLenField):
    """An IPv4 (4 bytes) or IPv6 (16 bytes) address; text in, text out, bytes kept as bytes."""

    def __init__(self, name: str, default: Any, length_from: Any) -> None:
        super().__init__(name, b"", length_from=length_from)
        self.default = default

    def h2i(self, pkt: Any, x: Any) -> Any:
        return x

    def any2i(self, pkt: Any, x: Any) -> Any:
        return x

    def i2m(self, pkt: Any, x: Any) -> bytes:
        if x is None:
            return b""
        if isinstance(x, bytes):
            return x
        return ipaddress.ip_address(x).packed

    def m2i(self, pkt: Any, x: bytes) -> Any:
        if len(x) in (4, 16):
            return str(ipaddress.ip_address(x))
        return x

    def i2len(self, pkt: Any, x: Any) -> int:
        return len(self.i2m(pkt, x))

    def i2repr(self, pkt: Any, x: Any) -> str:
        return repr(x) if isinstance(x, bytes) else str(x)


def _value_length(pkt: Any) -> int:
    length: int = pkt.length
    return length


class IpsecOffloadTlv(Packet):
    """A config TLV, ``type u16 | length u16 | value``; dissects to the class of its type."""

    name = "IPsec offload TLV"
    match_subclass = True
    fields_desc: ClassVar[list[AnyField]] = [
        ShortEnumField("type", 0, TLV_TYPES),
        FieldLenField("length", None, length_of="value", fmt="!H"),
        StrLenField("value", b"", length_from=_value_length),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Any]:
        if _pkt is None or len(_pkt) < 4:
            return cls
        tlv_type, length = struct.unpack_from("!HH", _pkt)
        typed = _TLV_CLASSES.get(tlv_type)
        if typed is None or len(_pkt) < 4 + length or not typed.valid_length(_pkt[4 : 4 + length]):
            return cls
        return typed

    @classmethod
    def valid_length(cls, value: bytes) -> bool:
        """Whether ``value`` has a length this TLV type allows."""
        return True

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s

    def mysummary(self) -> str:
        return self.sprintf("TLV %type%")


class _TypedTlv(IpsecOffloadTlv):
    """A TLV with its value decoded into fields; ``length`` is filled in when built."""

    lengths: tuple[int, ...] = ()

    @classmethod
    def valid_length(cls, value: bytes) -> bool:
        return len(value) in cls.lengths

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None:
            pkt = pkt[:2] + struct.pack("!H", len(pkt) - 4) + pkt[4:]
        return pkt + pay


def _header(tlv_type: int) -> list[Any]:
    return [ShortEnumField("type", tlv_type, TLV_TYPES), ShortField("length", None)]


class TlvSaIndex(_TypedTlv):
    name = "TLV SA_INDEX"
    lengths = (4,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x0001), IntField("sa_index", 0)]


class TlvDir(_TypedTlv):
    name = "TLV DIR"
    lengths = (1,)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0002),
        ByteEnumField("dir", 0, _SA_DIRECTIONS),
    ]


class TlvSpi(_TypedTlv):
    name = "TLV SPI"
    lengths = (4,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x0003), XIntField("spi", 0)]


class TlvDstAddr(_TypedTlv):
    name = "TLV DST_ADDR"
    lengths = (4, 16)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0004),
        _IpAddrField("addr", "0.0.0.0", length_from=_value_length),
    ]


class TlvSrcAddr(_TypedTlv):
    name = "TLV SRC_ADDR"
    lengths = (4, 16)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0005),
        _IpAddrField("addr", "0.0.0.0", length_from=_value_length),
    ]


class TlvAlg(_TypedTlv):
    name = "TLV ALG"
    lengths = (1,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x0006), ByteEnumField("alg", 1, ALGORITHMS)]


class TlvKey(_TypedTlv):
    """Key material: the AES key, then the 4-byte salt (``aes_key`` and ``salt`` split it)."""

    name = "TLV KEY"
    lengths = (20, 36)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0007),
        StrLenField("key", b"", length_from=_value_length),
    ]

    @property
    def aes_key(self) -> bytes:
        key: bytes = self.key
        return key[:-4]

    @property
    def salt(self) -> bytes:
        key: bytes = self.key
        return key[-4:]


class TlvWrappedKey(_TypedTlv):
    name = "TLV WRAPPED_KEY"
    lengths = (32, 48)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0008),
        StrLenField("wrapped_key", b"", length_from=_value_length),
    ]


class TlvLocalMac(_TypedTlv):
    name = "TLV LOCAL_MAC"
    lengths = (6,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x0009), MACField("mac", "00:00:00:00:00:00")]


class TlvVlan(_TypedTlv):
    """One VLAN tag: TPID, then the TCI as priority, DEI and VID (``tci`` gives all 16 bits)."""

    name = "TLV VLAN"
    lengths = (4,)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x000A),
        XShortEnumField("tpid", 0x8100, _TPIDS),
        BitField("pcp", 0, 3),
        BitField("dei", 0, 1),
        BitField("vid", 0, 12),
    ]

    @property
    def tci(self) -> int:
        tci: int = self.pcp << 13 | self.dei << 12 | self.vid
        return tci


class TlvEsn(_TypedTlv):
    name = "TLV ESN"
    lengths = (0,)
    fields_desc: ClassVar[list[AnyField]] = _header(0x000B)


class TlvReplayWindow(_TypedTlv):
    name = "TLV REPLAY_WINDOW"
    lengths = (4,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x000C), IntField("replay_window", 0)]


class TlvLifetimePackets(_TypedTlv):
    name = "TLV LIFETIME_PACKETS"
    lengths = (8,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x000D), LongField("lifetime_packets", 0)]


class TlvLifetimeBytes(_TypedTlv):
    name = "TLV LIFETIME_BYTES"
    lengths = (8,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x000E), LongField("lifetime_bytes", 0)]


class TlvCount(_TypedTlv):
    name = "TLV COUNT"
    lengths = (4,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x000F), IntField("count", 0)]


class TlvStats(_TypedTlv):
    """GET_SA_STATS reply: packets, bytes, then errors per Rx STATUS NO_SA..SA_EXPIRED."""

    name = "TLV STATS"
    lengths = (56,)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0010),
        LongField("packets", 0),
        LongField("bytes", 0),
        LongField("no_sa", 0),
        LongField("auth_failed", 0),
        LongField("replay", 0),
        LongField("malformed", 0),
        LongField("sa_expired", 0),
    ]


def _alg_count(pkt: Any) -> int:
    count: int = pkt.alg_count
    return count


class TlvCaps(_TypedTlv):
    """GET_CAPS reply: the algorithm ids, the SAD size and the largest replay window."""

    name = "TLV CAPS"
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0011),
        FieldLenField("alg_count", None, count_of="algorithms", fmt="B"),
        FieldListField(
            "algorithms", [], ByteEnumField("alg", 0, ALGORITHMS), count_from=_alg_count
        ),
        IntField("sad_size", 0),
        IntField("max_replay_window", 0),
    ]

    @classmethod
    def valid_length(cls, value: bytes) -> bool:
        return len(value) >= 9 and len(value) == 9 + value[0]


class TlvKekId(_TypedTlv):
    name = "TLV KEK_ID"
    lengths = (4,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x0012), IntField("kek_id", 0)]


class TlvSeq(_TypedTlv):
    name = "TLV SEQ"
    lengths = (8,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x0013), LongField("seq", 0)]


def _addr_len(pkt: Any) -> int:
    length: int = pkt.addr_len
    return length


class TlvSaEntry(_TypedTlv):
    """One SA of a LIST_SAS reply: SA index, direction, SPI, destination address and SEQ
    (outbound: the next number; inbound: the highest accepted). ``addr_len`` is filled in
    from ``dst`` when built."""

    name = "TLV SA_ENTRY"
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0014),
        IntField("sa_index", 0),
        ByteEnumField("dir", 0, _SA_DIRECTIONS),
        XIntField("spi", 0),
        FieldLenField("addr_len", None, length_of="dst", fmt="B"),
        _IpAddrField("dst", "0.0.0.0", length_from=_addr_len),
        LongField("seq", 0),
    ]

    @classmethod
    def valid_length(cls, value: bytes) -> bool:
        # spec 9: 22 or 34 bytes, and the address length byte says which
        return len(value) in (22, 34) and value[9] == len(value) - 18


class TlvEventType(_TypedTlv):
    name = "TLV EVENT_TYPE"
    lengths = (1,)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0015),
        ByteEnumField("event_type", 1, EVENT_TYPES),
    ]


class TlvBootId(_TypedTlv):
    name = "TLV BOOT_ID"
    lengths = (8,)
    fields_desc: ClassVar[list[AnyField]] = [*_header(0x0016), XLongField("boot_id", 0)]


class TlvSoftLifetimePackets(_TypedTlv):
    name = "TLV SOFT_LIFETIME_PACKETS"
    lengths = (8,)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0017),
        LongField("soft_lifetime_packets", 0),
    ]


class TlvSoftLifetimeBytes(_TypedTlv):
    name = "TLV SOFT_LIFETIME_BYTES"
    lengths = (8,)
    fields_desc: ClassVar[list[AnyField]] = [
        *_header(0x0018),
        LongField("soft_lifetime_bytes", 0),
    ]


_TLV_CLASSES: dict[int, type[_TypedTlv]] = {
    0x0001: TlvSaIndex,
    0x0002: TlvDir,
    0x0003: TlvSpi,
    0x0004: TlvDstAddr,
    0x0005: TlvSrcAddr,
    0x0006: TlvAlg,
    0x0007: TlvKey,
    0x0008: TlvWrappedKey,
    0x0009: TlvLocalMac,
    0x000A: TlvVlan,
    0x000B: TlvEsn,
    0x000C: TlvReplayWindow,
    0x000D: TlvLifetimePackets,
    0x000E: TlvLifetimeBytes,
    0x000F: TlvCount,
    0x0010: TlvStats,
    0x0011: TlvCaps,
    0x0012: TlvKekId,
    0x0013: TlvSeq,
    0x0014: TlvSaEntry,
    0x0015: TlvEventType,
    0x0016: TlvBootId,
    0x0017: TlvSoftLifetimePackets,
    0x0018: TlvSoftLifetimeBytes,
}

# -- config header ----------------------------------------------------------------------------


def _tlv_bytes(pkt: Any) -> int:
    # spec 4: only version 1 defines the body
    length: int = pkt.tlv_length if pkt.version == 1 else 0
    return length


class IpsecOffloadConfig(Packet):
    """A config request or reply: the 12-byte header, then ``tlvs``.

    ``tlv_length`` is filled in when built. Bytes after ``tlv_length`` are Ethernet padding
    (a ``Padding`` layer); with a version other than 1 the body is left undecoded (``Raw``).
    """

    name = "IPsec offload config"
    fields_desc: ClassVar[list[AnyField]] = [
        ByteField("version", 1),
        ByteEnumField("opcode", 0x01, _OPCODE_NAMES),
        ByteEnumField("status", 0, CONFIG_STATUS),
        XByteField("flags", 0),
        ByteField("port", 0),
        XByteField("reserved", 0),
        IntField("txn_id", 0),
        FieldLenField("tlv_length", None, length_of="tlvs", fmt="!H"),
        PacketListField("tlvs", [], IpsecOffloadTlv, length_from=_tlv_bytes),
    ]

    @property
    def is_reply(self) -> bool:
        """True when the opcode has the reply bit (0x80)."""
        return bool(self.opcode & _REPLY)

    @property
    def base_opcode(self) -> int:
        """The opcode without the reply bit."""
        opcode: int = self.opcode & ~_REPLY & 0xFF
        return opcode

    def tlv(self, tlv_type: int | type[IpsecOffloadTlv]) -> Any:
        """The first TLV of a type (a number or a TLV class), or None."""
        for tlv in self.tlvs:
            if tlv_type == tlv.type or (isinstance(tlv_type, type) and isinstance(tlv, tlv_type)):
                return tlv
        return None

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        if self.version == 1:
            return b"", s
        return s, b""

    def hashret(self) -> bytes:
        return struct.pack("!I", self.txn_id)

    def answers(self, other: Any) -> bool:
        return (
            isinstance(other, IpsecOffloadConfig)
            and self.is_reply
            and not other.is_reply
            and self.base_opcode == other.base_opcode
            and self.txn_id == other.txn_id
        )

    def mysummary(self) -> str:
        name = OPCODES.get(self.base_opcode, f"opcode {self.base_opcode:#04x}")
        if self.is_reply:
            status = CONFIG_STATUS.get(self.status, str(self.status))
            return f"{name} reply txn {self.txn_id} {status}"
        return f"{name} request txn {self.txn_id}"


# -- bindings ---------------------------------------------------------------------------------

bind_layers(Ether, IpsecOffloadMeta, type=META_ETHERTYPE)
bind_top_down(Ether, IpsecOffloadTxMeta, type=META_ETHERTYPE)
bind_top_down(Ether, IpsecOffloadRxMeta, type=META_ETHERTYPE)
bind_layers(Ether, IpsecOffloadConfig, type=CONFIG_ETHERTYPE)
