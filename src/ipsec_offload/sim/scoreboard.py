"""The scoreboard: two captures of one link compared frame by frame and field by field.

A bench runs the golden model (`ipsec-offload agent`) on the frames its RTL was fed and
compares what the model emitted (EXPECTED) with what the RTL emitted (ACTUAL):
`ipsec-offload compare`, docs/bench.md. This module is the comparing, sans-IO: two sequences
of pcap records in, a :class:`Comparison` out; :func:`format_comparison` and
:func:`comparison_json` render one for people and for machines.

Alignment. Frames are compared by their bytes. Identical frames are lined up with a
patience/histogram diff (`align`): the common prefix and suffix, then the frames that occur
once on each side as anchors (their longest increasing run), or, where no frame is unique, the
rarest frame's occurrences, recursively between the anchors; O(n log n) on real traces. A
frame left over on both sides with the same bytes is REORDERED. The other leftovers between two
anchors are paired in order for a field-by-field diff (MISMATCHED); when one side has more of
them, the ESP (SPI, sequence number) and config (opcode, txn_id) of the frames choose which
pair first, and the frames left unpaired are MISSING (only in EXPECTED) or EXTRA (only in
ACTUAL). Timestamps are compared only when asked (`timestamps`): an RTL's timing differs.

Decoding. Each frame of a mismatched pair is decoded with the project's codecs (`wire/`):
Ethernet and its metadata tag (Tx or Rx layout), VLAN tags, config frames (header fields and
TLVs by type), IPv4 and IPv6, UDP, TCP and ICMP echo, ESP (SPI, sequence number, IV,
ciphertext, ICV) and, with the SAs' keys (`EspKeys`), the decrypted payload (`crypto.esp`'s
`esp_open`), its trailer and the headers inside. The fields of both frames are compared by
name; byte strings by their first differing offset. A layer that does not parse is a field
(`ipv4.error`, ...) and the rest of the frame bytes (`payload`); where one frame stops
decoding (or decrypting) and the other goes on, that one field is the finding, not every field
after it. Bytes that no field shows still count: the frames' first differing byte (`frame`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import Any

from ipsec_offload.crypto.esp import esp_open, explicit_iv
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.errors import AuthenticationError, ParseError
from ipsec_offload.sim.clock import NS_PER_S
from ipsec_offload.sim.espsa import EspSaEntry
from ipsec_offload.sim.pcap import PcapRecord
from ipsec_offload.wire.addr import mac_to_str
from ipsec_offload.wire.config import (
    CONFIG_HEADER_LEN,
    CONFIG_VERSION,
    TLV_HEADER_LEN,
    Algorithm,
    ConfigStatus,
    Direction,
    EventType,
    Opcode,
    Tlv,
    TlvType,
    decode_add_sa,
    decode_caps,
    decode_count,
    decode_empty,
    decode_event,
    decode_list_sas_reply,
    decode_list_sas_request,
    decode_local_addr,
    decode_sa_entry,
    decode_sa_index,
    decode_sa_stats,
    parse_config,
    parse_config_header,
)
from ipsec_offload.wire.esp import ESP_TRAILER_LEN, ICV_LEN, esp_trailer_fields
from ipsec_offload.wire.ethernet import EtherType, ethernet_fields
from ipsec_offload.wire.ip import (
    IPV6_HEADER_LEN,
    IpProto,
    Ipv4Flags,
    internet_checksum,
    ipv4_fields,
    ipv6_fields,
    ipv6_upper_layer,
)
from ipsec_offload.wire.metadata import RxStatus, parse_rx_metadata, parse_tx_metadata
from ipsec_offload.wire.packet import find_esp
from ipsec_offload.wire.transport import (
    parse_icmp_echo,
    parse_tcp,
    parse_udp,
    verify_transport_checksum,
)

__all__ = [
    "Comparison",
    "DecodedFrame",
    "EspKeys",
    "FieldDiff",
    "Finding",
    "FindingKind",
    "MetaLayout",
    "align",
    "compare",
    "comparison_json",
    "decode_frame",
    "format_comparison",
]


class FindingKind(IntEnum):
    """What is wrong with a frame."""

    MISMATCHED = 1
    """In both captures at corresponding places, with different bytes (or timestamps)."""
    MISSING = 2
    """In EXPECTED only."""
    EXTRA = 3
    """In ACTUAL only."""
    REORDERED = 4
    """In both with the same bytes, at places that do not correspond."""


class MetaLayout(IntEnum):
    """How to read a metadata tag's word: host-to-agent (TX), agent-to-host (RX), or guessed
    from the frame (AUTO, the rules of `interop.scapy_layers.guess_meta_direction`, which the
    Wireshark dissector shares)."""

    AUTO = 0
    TX = 1
    RX = 2


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One field that differs: its name (`eth.dst`, `esp.seq`, ...) and both values as text;
    for a byte string, `offset` is its first differing byte and the values show the bytes from
    there. A field one frame lacks reads ``(absent)``."""

    field: str
    expected: str
    actual: str
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One frame that is not as expected. Frame numbers count from 1 in each file, as
    Wireshark's do (None: the frame is not in that file). `summary` describes the expected
    frame (the actual one for EXTRA); `actual_summary` the actual frame of a MISMATCHED pair."""

    kind: FindingKind
    expected_frame: int | None
    actual_frame: int | None
    summary: str
    actual_summary: str = ""
    fields: tuple[FieldDiff, ...] = ()


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of comparing two captures.

    The counts cover every frame: each expected frame is equal, mismatched, missing or
    reordered; each actual frame equal, mismatched, extra or reordered. `findings` holds the
    first findings in EXPECTED's order (at most the `detail` asked for), `total_findings`
    counts them all. `field_counts` says in how many mismatched pairs each field differs (of
    the pairs decoded; all of them unless `fields_of_all` was False), most frequent first."""

    expected_frames: int
    actual_frames: int
    equal: int
    mismatched: int
    missing: int
    extra: int
    reordered: int
    findings: tuple[Finding, ...]
    total_findings: int
    field_counts: tuple[tuple[str, int], ...] = ()

    @property
    def same(self) -> bool:
        """True when every frame is equal (and in place)."""
        return self.total_findings == 0


# -- keys -------------------------------------------------------------------------------------


class EspKeys:
    """The SAs of an esp_sa file, found as Wireshark finds them: by SPI, destination and
    source address (an entry without a source matches any)."""

    __slots__ = ("_sas",)

    def __init__(self, entries: Iterable[EspSaEntry]) -> None:
        self._sas: dict[tuple[int, bytes], list[tuple[bytes | None, EspAead, bool]]] = {}
        for entry in entries:
            aead = EspAead(entry.algorithm, entry.key_material)
            self._sas.setdefault((entry.spi, entry.dst), []).append((entry.src, aead, entry.esn))

    def find(self, spi: int, dst: bytes, src: bytes) -> tuple[EspAead, bool] | None:
        """The AEAD and ESN flag of the SA of an ESP packet, or None."""
        for sa_src, aead, esn in self._sas.get((spi, dst), ()):
            if sa_src is None or sa_src == src:
                return aead, esn
        return None

    def __len__(self) -> int:
        return sum(len(sas) for sas in self._sas.values())


# -- alignment --------------------------------------------------------------------------------


def align(a: Sequence[Hashable], b: Sequence[Hashable]) -> list[tuple[int, int]]:
    """Pairs (i, j) with a[i] == b[j], increasing in both i and j: a long common subsequence.

    Patience diff with a histogram fallback: strip the common prefix and suffix; take the
    items that occur once in each side as anchors, keep their longest run increasing on both
    sides; where no item is unique on both sides, the rarest common item's occurrences, in
    order, are the anchors; recurse between anchors. Not always the longest subsequence, but
    O(n log n) on traces where most frames differ from each other.
    """
    matches: list[tuple[int, int]] = []
    stack = [(0, len(a), 0, len(b))]
    while stack:
        alo, ahi, blo, bhi = stack.pop()
        while alo < ahi and blo < bhi and a[alo] == b[blo]:
            matches.append((alo, blo))
            alo += 1
            blo += 1
        while alo < ahi and blo < bhi and a[ahi - 1] == b[bhi - 1]:
            ahi -= 1
            bhi -= 1
            matches.append((ahi, bhi))
        if alo == ahi or blo == bhi:
            continue
        anchors = _anchors(a, alo, ahi, b, blo, bhi)
        prev_a, prev_b = alo, blo
        for i, j in anchors:
            matches.append((i, j))
            if i > prev_a and j > prev_b:
                stack.append((prev_a, i, prev_b, j))
            prev_a, prev_b = i + 1, j + 1
        if anchors and ahi > prev_a and bhi > prev_b:
            stack.append((prev_a, ahi, prev_b, bhi))
    matches.sort()
    return matches


def _anchors(
    a: Sequence[Hashable], alo: int, ahi: int, b: Sequence[Hashable], blo: int, bhi: int
) -> list[tuple[int, int]]:
    """Anchor pairs for `align` in a[alo:ahi] and b[blo:bhi], increasing on both sides."""
    count_a = Counter(a[alo:ahi])
    count_b = Counter(b[blo:bhi])
    common = count_a.keys() & count_b.keys()
    if not common:
        return []
    unique = {item for item in common if count_a[item] == 1 and count_b[item] == 1}
    if not unique:
        # histogram fallback: the rarest common item, its k-th occurrences paired
        first: dict[Hashable, int] = {}
        for i in range(alo, ahi):
            first.setdefault(a[i], i)
        rarest = min(common, key=lambda item: (max(count_a[item], count_b[item]), first[item]))
        ia = [i for i in range(alo, ahi) if a[i] == rarest]
        ib = [j for j in range(blo, bhi) if b[j] == rarest]
        return list(zip(ia, ib, strict=False))
    where_b = {b[j]: j for j in range(blo, bhi) if b[j] in unique}
    pairs = [(i, where_b[a[i]]) for i in range(alo, ahi) if a[i] in unique]
    return _longest_increasing(pairs)


def _longest_increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest run of `pairs` (increasing in the first item) increasing in the second
    (patience sorting, O(n log n))."""
    tails: list[int] = []  # the smallest j ending a run of each length
    tail_at: list[int] = []  # index in pairs of that run's last pair
    back = [-1] * len(pairs)
    for k, (_, j) in enumerate(pairs):
        n = bisect_left(tails, j)
        if n == len(tails):
            tails.append(j)
            tail_at.append(k)
        else:
            tails[n] = j
            tail_at[n] = k
        back[k] = tail_at[n - 1] if n else -1
    run: list[tuple[int, int]] = []
    k = tail_at[-1] if tail_at else -1
    while k >= 0:
        run.append(pairs[k])
        k = back[k]
    run.reverse()
    return run


# -- decoding ---------------------------------------------------------------------------------

_Value = str | bytes
_INNER = "esp.inner."
"""The prefix of the fields of what ESP protects."""


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A frame as the scoreboard compares it: named fields in frame order (text, or bytes for
    byte strings), a one-line summary and the metadata layout it was read with."""

    fields: dict[str, _Value]
    summary: str
    layout: MetaLayout


class _Decoder:
    """Collects the fields and summary of one frame."""

    __slots__ = ("fields", "keys", "layout", "meta_ethertype", "plain_esp", "summary")

    def __init__(self, keys: EspKeys | None, layout: MetaLayout, meta_ethertype: int) -> None:
        self.fields: dict[str, _Value] = {}
        self.summary: list[str] = []
        self.keys = keys
        self.layout = layout
        self.meta_ethertype = meta_ethertype
        # set by the metadata when ESP holds plaintext: with its trailer (-1, Rx status OK)
        # or without it (the next header, Tx OFFLOAD)
        self.plain_esp: int | None = None

    def add(self, name: str, value: _Value) -> None:
        self.fields[name] = value

    def error(self, name: str, exc: ParseError) -> None:
        self.fields[name] = f"does not parse: {exc}"
        self.summary.append(f"{exc.layer} does not parse")


@lru_cache(maxsize=4096)
def _name(enum: type[IntEnum], value: int) -> str:
    try:
        return f"{enum(value).name} ({value})"
    except ValueError:
        return str(value)


@lru_cache(maxsize=4096)
def _ethertype(value: int) -> str:
    try:
        return f"{EtherType(value).name} (0x{value:04x})"
    except ValueError:
        return f"0x{value:04x}"


@lru_cache(maxsize=4096)
def _addr(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


@lru_cache(maxsize=4096)
def _mac(mac: bytes) -> str:
    return mac_to_str(mac)


def decode_frame(
    frame: bytes,
    *,
    keys: EspKeys | None = None,
    meta: MetaLayout = MetaLayout.AUTO,
    meta_ethertype: int = EtherType.META,
) -> DecodedFrame:
    """The fields of `frame` (see the module's docstring); never raises for bad bytes: a
    layer that does not parse is a field ``LAYER.error`` and the rest of the frame the field
    ``payload``."""
    d = _Decoder(keys, meta, meta_ethertype)
    d.add("frame.length", str(len(frame)))
    try:
        dst, src, ethertype, vlans, metadata, l3 = ethernet_fields(frame, meta_ethertype)
    except ParseError as exc:
        d.error("eth.error", exc)
        d.add("payload", frame)
        return _done(d, frame)
    d.add("eth.dst", _mac(dst))
    d.add("eth.src", _mac(src))
    if metadata is not None:
        _metadata(d, metadata, frame)
    for n, tag in enumerate(vlans):
        prefix = f"eth.vlan[{n}]."
        d.add(prefix + "tpid", f"0x{tag.tpid:04x}")
        d.add(prefix + "pcp", str(tag.pcp))
        d.add(prefix + "dei", str(int(tag.dei)))
        d.add(prefix + "vid", str(tag.vid))
    d.add("eth.type", _ethertype(ethertype))
    if vlans:
        d.summary.append("VLAN " + ".".join(str(tag.vid) for tag in vlans))
    if ethertype == EtherType.CONFIG:
        _config(d, memoryview(frame)[l3:])
    elif ethertype in (EtherType.IPV4, EtherType.IPV6):
        end = _ip_packet(d, "", ethertype == EtherType.IPV4, frame, l3, frame)
        if end is not None and end < len(frame):
            d.add("eth.padding", frame[end:])
    else:
        d.summary.append(_ethertype(ethertype))
        d.add("payload", frame[l3:])
    return _done(d, frame)


def describer(link: str, meta_ethertype: int = EtherType.META) -> Callable[[bytes], str]:
    """The one-line summary of each frame of a link direction (a pcapng packet's comment):
    the agent's output toward the NIC carries Rx metadata, its input from the NIC Tx
    metadata."""
    layout = {"agent-to-nic": MetaLayout.RX, "nic-to-agent": MetaLayout.TX}.get(
        link, MetaLayout.AUTO
    )

    def summary(frame: bytes) -> str:
        return decode_frame(frame, meta=layout, meta_ethertype=meta_ethertype).summary

    return summary


def _done(d: _Decoder, frame: bytes) -> DecodedFrame:
    d.summary.append(f"{len(frame)} bytes")
    return DecodedFrame(d.fields, ", ".join(d.summary), d.layout)


def _metadata(d: _Decoder, word: int, frame: bytes) -> None:
    d.add("meta.word", f"0x{word:08x}")
    if d.layout == MetaLayout.AUTO:
        from ipsec_offload.interop.scapy_layers import guess_meta_direction

        guess = guess_meta_direction(frame[14:])
        d.layout = MetaLayout.RX if guess == "rx" else MetaLayout.TX
    try:
        if d.layout == MetaLayout.TX:
            tx = parse_tx_metadata(word)
            d.add("meta.offload", str(int(tx.offload)))
            d.add("meta.next_header", _name(IpProto, tx.next_header))
            d.add("meta.l3_offset", str(tx.l3_offset))
            d.add("meta.esp_offset", str(tx.esp_offset))
            d.summary.append("Tx meta offload" if tx.offload else "Tx meta")
            if tx.offload:
                d.plain_esp = tx.next_header
        else:
            rx = parse_rx_metadata(word)
            d.add("meta.ipsec", str(int(rx.ipsec)))
            d.add("meta.status", rx.status.name)
            d.add("meta.sa_index", str(rx.sa_index))
            d.summary.append(
                f"Rx meta {rx.status.name} SA {rx.sa_index}" if rx.ipsec else "Rx meta"
            )
            if rx.ipsec and rx.status == RxStatus.OK:
                d.plain_esp = -1
    except ParseError as exc:
        d.error("meta.error", exc)


# config frames

_BODY_DECODERS: dict[tuple[int, bool], Callable[[Iterable[Tlv]], object]] = {
    (Opcode.ADD_SA, False): decode_add_sa,
    (Opcode.ADD_SA, True): decode_sa_index,
    (Opcode.REMOVE_SA, False): decode_sa_index,
    (Opcode.REMOVE_SA, True): decode_empty,
    (Opcode.REMOVE_ALL_SAS, False): decode_empty,
    (Opcode.REMOVE_ALL_SAS, True): decode_count,
    (Opcode.ADD_LOCAL_ADDR, False): decode_local_addr,
    (Opcode.ADD_LOCAL_ADDR, True): decode_empty,
    (Opcode.REMOVE_LOCAL_ADDR, False): decode_local_addr,
    (Opcode.REMOVE_LOCAL_ADDR, True): decode_empty,
    (Opcode.GET_SA_STATS, False): decode_sa_index,
    (Opcode.GET_SA_STATS, True): decode_sa_stats,
    (Opcode.GET_CAPS, False): decode_empty,
    (Opcode.GET_CAPS, True): decode_caps,
    (Opcode.LIST_SAS, False): decode_list_sas_request,
    (Opcode.LIST_SAS, True): decode_list_sas_reply,
    (Opcode.EVENT, False): decode_event,
    (Opcode.EVENT, True): decode_empty,
}
"""The body decoder of each request and (status OK) reply; an error reply has no TLVs."""

_UINT_TLVS: dict[int, type[IntEnum] | None] = {
    TlvType.SA_INDEX: None,
    TlvType.DIR: Direction,
    TlvType.ALG: Algorithm,
    TlvType.ESN: None,
    TlvType.REPLAY_WINDOW: None,
    TlvType.LIFETIME_PACKETS: None,
    TlvType.LIFETIME_BYTES: None,
    TlvType.COUNT: None,
    TlvType.KEK_ID: None,
    TlvType.SEQ: None,
    TlvType.EVENT_TYPE: EventType,
    TlvType.BOOT_ID: None,
    TlvType.SOFT_LIFETIME_PACKETS: None,
    TlvType.SOFT_LIFETIME_BYTES: None,
}
_REPEATABLE_TLVS = frozenset((TlvType.VLAN, TlvType.SA_ENTRY))


@lru_cache(maxsize=4096)
def _opcode(opcode: int) -> str:
    base = opcode & ~Opcode.REPLY & 0xFF
    try:
        name = Opcode(base).name
    except ValueError:
        name = f"0x{base:02x}"
    return f"{name} reply" if opcode & Opcode.REPLY else name


def _config(d: _Decoder, body: memoryview) -> None:
    try:
        header = parse_config_header(body)
    except ParseError as exc:
        d.error("config.error", exc)
        d.add("payload", bytes(body))
        return
    d.add("config.version", str(header.version))
    d.add("config.opcode", f"{_opcode(header.opcode)} (0x{header.opcode:02x})")
    d.add("config.status", _name(ConfigStatus, header.status))
    d.add("config.flags", f"0x{header.flags:02x}")
    d.add("config.port", str(header.port))
    d.add("config.txn_id", str(header.txn_id))
    summary = f"config {_opcode(header.opcode)} txn {header.txn_id}"
    if header.is_reply:
        summary += f" {_name(ConfigStatus, header.status).split()[0]}"
    d.summary.append(summary)
    if header.version != CONFIG_VERSION:
        d.add("payload", bytes(body[CONFIG_HEADER_LEN:]))
        return
    try:
        msg = parse_config(body)
    except ParseError as exc:
        d.error("config.error", exc)
        d.add("payload", bytes(body[CONFIG_HEADER_LEN:]))
        return
    d.add("config.tlvs", " ".join(_tlv_type(tlv.type) for tlv in msg.tlvs) or "(none)")
    seen: Counter[int] = Counter()
    for tlv in msg.tlvs:
        n = seen[tlv.type]
        seen[tlv.type] += 1
        name = f"config.tlv.{_tlv_type(tlv.type)}"
        if tlv.type in _REPEATABLE_TLVS:
            name += f"[{n}]"
        elif n:
            name += f"#{n + 1}"
        d.add(name, _tlv_value(tlv))
    decoder = _BODY_DECODERS.get((header.base_opcode, header.is_reply))
    if header.is_reply and header.status != ConfigStatus.OK:
        decoder = decode_empty
    if decoder is not None:
        try:
            decoder(msg.tlvs)
        except ParseError as exc:
            d.add("config.body", f"invalid: {exc.what}")
        else:
            d.add("config.body", "valid")
    end = CONFIG_HEADER_LEN + sum(TLV_HEADER_LEN + len(tlv.value) for tlv in msg.tlvs)
    if end < len(body):
        d.add("config.padding", bytes(body[end:]))


@lru_cache(maxsize=4096)
def _tlv_type(value: int) -> str:
    try:
        return TlvType(value).name
    except ValueError:
        return f"0x{value:04x}"


def _tlv_value(tlv: Tlv) -> _Value:
    """A TLV's value as text where its type has a decoding, else its bytes."""
    value = tlv.value
    kind = tlv.type
    if kind in _UINT_TLVS and len(value) in (1, 2, 4, 8):
        number = int.from_bytes(value, "big")
        enum = _UINT_TLVS[kind]
        return _name(enum, number) if enum is not None else str(number)
    if kind == TlvType.SPI and len(value) == 4:
        return f"0x{int.from_bytes(value, 'big'):08x}"
    if kind in (TlvType.DST_ADDR, TlvType.SRC_ADDR) and len(value) in (4, 16):
        return _addr(value)
    if kind == TlvType.LOCAL_MAC and len(value) == 6:
        return _mac(value)
    if kind == TlvType.VLAN and len(value) == 4:
        return f"tpid 0x{value[:2].hex()} tci 0x{value[2:].hex()}"
    try:
        if kind == TlvType.SA_ENTRY:
            entry = decode_sa_entry(value)
            return (
                f"index {entry.sa_index} {entry.direction.name} SPI 0x{entry.spi:08x}"
                f" dst {_addr(entry.dst)} seq {entry.seq}"
            )
        if kind == TlvType.STATS:
            stats = decode_sa_stats((tlv,))
            return f"packets {stats.packets} bytes {stats.bytes} errors {list(stats.errors)}"
        if kind == TlvType.CAPS:
            caps = decode_caps((tlv,))
            names = ",".join(alg.name for alg in caps.algorithms)
            return f"algorithms {names} sad_size {caps.sad_size} window {caps.max_replay_window}"
    except (ParseError, ValueError):
        pass
    return value


# IP and above


def _ip_packet(
    d: _Decoder, prefix: str, v4: bool, buf: bytes, offset: int, frame: bytes | None
) -> int | None:
    """Decode the IPv4 or IPv6 packet at `offset` of `buf` and what it carries (ESP when
    `frame` is the whole frame, i.e. not inside ESP already); its end offset, or None."""
    if v4:
        return _ipv4(d, prefix, buf, offset, frame)
    return _ipv6(d, prefix, buf, offset, frame)


def _label(prefix: str) -> str:
    return "inner " if prefix else ""


def _ipv4(d: _Decoder, prefix: str, buf: bytes, offset: int, frame: bytes | None) -> int | None:
    p = prefix + "ipv4."
    try:
        hl, tos, total, ident, frag, ttl, proto, checksum, src, dst = ipv4_fields(
            buf, offset, verify_checksum=False
        )
    except ParseError as exc:
        d.error(p + "error", exc)
        d.add(prefix + "payload", buf[offset:])
        return None
    header = buf[offset : offset + hl]
    d.add(p + "header_length", str(hl))
    d.add(p + "tos", f"0x{tos:02x}")
    d.add(p + "total_length", str(total))
    d.add(p + "id", f"0x{ident:04x}")
    d.add(p + "flags", _ipv4_flags(frag & _FLAG_BITS))
    d.add(p + "fragment_offset", str(frag & 0x1FFF))
    d.add(p + "ttl", str(ttl))
    d.add(p + "protocol", _name(IpProto, proto))
    if internet_checksum(header) == 0:
        d.add(p + "checksum", f"0x{checksum:04x} (correct)")
    else:
        right = internet_checksum(header[:10] + b"\0\0" + header[12:])
        d.add(p + "checksum", f"0x{checksum:04x} (wrong, should be 0x{right:04x})")
    d.add(p + "src", _addr(src))
    d.add(p + "dst", _addr(dst))
    if hl > 20:
        d.add(p + "options", header[20:])
    d.summary.append(f"{_label(prefix)}IPv4 {_addr(src)} > {_addr(dst)}")
    end = offset + total
    if frag & 0x3FFF:
        d.summary.append("fragment")
        d.add(prefix + "payload", buf[offset + hl : end])
    else:
        _upper(d, prefix, proto, src, dst, buf, offset + hl, end, frame)
    return end


@lru_cache(maxsize=4096)
def _ipv4_flags(frag: int) -> str:
    return "|".join(flag.name or "" for flag in Ipv4Flags if frag & flag) or "none"


_FLAG_BITS = int(Ipv4Flags.RESERVED | Ipv4Flags.DF | Ipv4Flags.MF)


def _ipv6(d: _Decoder, prefix: str, buf: bytes, offset: int, frame: bytes | None) -> int | None:
    p = prefix + "ipv6."
    try:
        word, payload_length, next_header, hop_limit, src, dst = ipv6_fields(buf, offset)
    except ParseError as exc:
        d.error(p + "error", exc)
        d.add(prefix + "payload", buf[offset:])
        return None
    d.add(p + "traffic_class", f"0x{(word >> 20) & 0xFF:02x}")
    d.add(p + "flow_label", f"0x{word & 0xFFFFF:05x}")
    d.add(p + "payload_length", str(payload_length))
    d.add(p + "next_header", _name(IpProto, next_header))
    d.add(p + "hop_limit", str(hop_limit))
    d.add(p + "src", _addr(src))
    d.add(p + "dst", _addr(dst))
    d.summary.append(f"{_label(prefix)}IPv6 {_addr(src)} > {_addr(dst)}")
    end = offset + IPV6_HEADER_LEN + payload_length
    try:
        proto, upper = ipv6_upper_layer(buf, offset)
    except ParseError as exc:
        d.error(p + "error", exc)
        d.add(prefix + "payload", buf[offset + IPV6_HEADER_LEN : end])
        return end
    if upper > IPV6_HEADER_LEN:
        d.add(p + "extension_headers", buf[offset + IPV6_HEADER_LEN : offset + upper])
    if proto == IpProto.FRAGMENT:
        d.summary.append("fragment")
        d.add(prefix + "payload", buf[offset + upper : end])
    else:
        _upper(d, prefix, proto, src, dst, buf, offset + upper, end, frame)
    return end


def _upper(
    d: _Decoder,
    prefix: str,
    proto: int,
    src: bytes,
    dst: bytes,
    buf: bytes,
    start: int,
    end: int,
    frame: bytes | None,
) -> None:
    """What an IP packet carries, from `start` to `end` of `buf`."""
    if proto == IpProto.ESP and frame is not None:
        _esp(d, frame)
        return
    segment = buf[start:end]
    header: Any
    try:
        if proto == IpProto.UDP:
            layer, header = "udp", parse_udp(segment)
            size = 8
        elif proto == IpProto.TCP:
            layer, header = "tcp", parse_tcp(segment)
            size = header.header_len
        elif proto in (IpProto.ICMP, IpProto.ICMPV6):
            layer, header = "icmp", parse_icmp_echo(segment)
            size = 8
        elif proto in (IpProto.IPIP, IpProto.IPV6):
            _ip_packet(d, prefix + "inner.", proto == IpProto.IPIP, segment, 0, None)
            return
        else:
            d.add(prefix + "payload", segment)
            return
    except ParseError as exc:
        d.error(f"{prefix}{exc.layer}.error", exc)
        d.add(prefix + "payload", segment)
        return
    p = f"{prefix}{layer}."
    for field in dataclasses.fields(header):
        name = field.name
        value = getattr(header, name)
        if name == "checksum":
            right = verify_transport_checksum(src, dst, proto, segment)
            d.add(p + name, f"0x{value:04x} ({'correct' if right else 'wrong'})")
        elif isinstance(value, bytes):
            d.add(p + name, value)
        else:
            d.add(p + name, str(int(value)))
    if layer == "icmp":
        d.summary.append(f"ICMP type {header.type} seq {header.seq}")
    else:
        d.summary.append(f"{layer.upper()} {header.src_port} > {header.dst_port}")
    d.add(prefix + "payload", segment[size:])


def _esp(d: _Decoder, frame: bytes) -> None:
    esp = find_esp(frame, d.meta_ethertype)
    if esp is None:
        d.add("esp.error", "the IP packet is too short for the ESP header and IV")
        return
    d.add("esp.spi", f"0x{esp.spi:08x}")
    d.add("esp.seq", str(esp.seq))
    d.add("esp.iv", f"0x{esp.iv:016x}")
    d.summary.append(f"ESP SPI 0x{esp.spi:08x} seq {esp.seq}")
    sealed = esp.sealed
    if d.plain_esp is not None:
        # spec 3 and wire-format 5: a frame for offload carries the payload only (Tx OFFLOAD,
        # whose next header the metadata gives); one the agent decrypted (Rx status OK) keeps
        # the plaintext and its trailer but not the ICV
        if d.plain_esp < 0:
            _plaintext(d, esp.src, esp.dst, sealed)
        else:
            _inner(d, esp.src, esp.dst, d.plain_esp, sealed, len(sealed))
        return
    if len(sealed) < ICV_LEN:
        d.add("esp.error", f"{len(sealed)} bytes after the IV cannot hold the 16-byte ICV")
        d.add("esp.sealed", sealed)
        return
    d.add("esp.ciphertext", sealed[:-ICV_LEN])
    d.add("esp.icv", sealed[-ICV_LEN:])
    if d.keys is None:
        return
    found = d.keys.find(esp.spi, esp.dst, esp.src)
    if found is None:
        d.add("esp.decrypt", f"no key for SPI 0x{esp.spi:08x} to {_addr(esp.dst)}")
        return
    aead, esn = found
    seq = (esp.iv & ~0xFFFF_FFFF) | esp.seq if esn else esp.seq
    iv = explicit_iv(esp.iv)
    try:
        plaintext, _, _ = esp_open(aead, esp.spi, seq, esn, iv, sealed)
    except AuthenticationError:
        d.add("esp.decrypt", "ICV does not verify")
        d.summary.append("does not decrypt")
        return
    except ParseError:  # the trailer is wrong: _plaintext says how
        plaintext = aead.open(esp.spi, seq, esn, iv, sealed)
    d.add("esp.decrypt", "ok")
    _plaintext(d, esp.src, esp.dst, plaintext)


def _plaintext(d: _Decoder, src: bytes, dst: bytes, plaintext: bytes) -> None:
    """The decrypted ESP payload with its trailer (RFC 4303 2.4)."""
    try:
        pad_length, next_header, payload_len = esp_trailer_fields(plaintext)
        d.add("esp.trailer", "valid")
    except ParseError as exc:
        d.add("esp.trailer", f"invalid: {exc.what}")
        if len(plaintext) < ESP_TRAILER_LEN:
            d.add("esp.plaintext", plaintext)
            return
        pad_length, next_header = plaintext[-2], plaintext[-1]
        payload_len = max(0, len(plaintext) - ESP_TRAILER_LEN - pad_length)
    d.add("esp.pad_length", str(pad_length))
    d.add("esp.next_header", _name(IpProto, next_header))
    d.add("esp.padding", plaintext[payload_len : len(plaintext) - ESP_TRAILER_LEN])
    _inner(d, src, dst, next_header, plaintext, payload_len)


def _inner(
    d: _Decoder, src: bytes, dst: bytes, next_header: int, plaintext: bytes, end: int
) -> None:
    """What ESP protects: an IP packet (tunnel mode) or a transport header and payload."""
    if next_header in (IpProto.IPIP, IpProto.IPV6):
        _ip_packet(d, _INNER, next_header == IpProto.IPIP, plaintext[:end], 0, None)
    else:
        _upper(d, _INNER, next_header, src, dst, plaintext, 0, end, None)


# -- comparing --------------------------------------------------------------------------------

_WINDOW = 8
_SHORT = 16


def _first_difference(e: bytes, a: bytes) -> int:
    n = min(len(e), len(a))
    if e[:n] == a[:n]:
        return n
    lo, hi = 0, n  # the first difference is in [lo, hi)
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if e[lo:mid] == a[lo:mid]:
            lo = mid
        else:
            hi = mid
    return next(k for k in range(lo, hi) if e[k] != a[k])


def _show_bytes(data: bytes, offset: int) -> str:
    if len(data) <= _SHORT:
        return f"{data.hex()} ({len(data)} bytes)" if data else "(0 bytes)"
    if offset >= len(data):
        return f"{len(data)} bytes, ends before byte {offset}"
    return f"{len(data)} bytes, [{offset}:] {data[offset : offset + _WINDOW].hex()}"


_ABSENT = "(absent)"


def _diff_fields(expected: dict[str, _Value], actual: dict[str, _Value]) -> list[FieldDiff]:
    """The fields that differ, in frame order. Where one frame stops decoding (a layer that
    does not parse, ESP that does not decrypt) and the other goes on, that one field says
    so: the fields only the other frame has from that layer on are left out."""
    hidden = _hidden(expected, actual) | _hidden(actual, expected)
    diffs: list[FieldDiff] = []
    for name, e in expected.items():
        a = actual.get(name)
        if a is None:
            if name not in hidden:
                diffs.append(_diff_one(name, e, None))
        elif a != e:
            diffs.append(_diff_one(name, e, a))
    for name, a in actual.items():
        if name not in expected and name not in hidden:
            diffs.append(_diff_one(name, None, a))
    return diffs


def _hidden(stopped: dict[str, _Value], other: dict[str, _Value]) -> set[str]:
    """Fields that only one frame has because `stopped` stopped decoding where `other` did
    not: `other`'s from the layer that stopped on, and `stopped`'s fallback bytes."""
    hidden: set[str] = set()
    for name, value in stopped.items():
        if not (name.endswith(".error") or (name == "esp.decrypt" and value != "ok")):
            continue
        if other.get(name) == value:
            continue
        names = list(other)
        layer = name.rsplit(".", 1)[0] + "."
        if name in other:
            start = names.index(name) + 1
        else:
            start = next((k for k, n in enumerate(names) if n.startswith(layer)), len(names))
        hidden.update(n for n in names[start:] if n not in stopped)
        after = list(stopped)
        hidden.update(n for n in after[after.index(name) + 1 :] if n not in other)
    return hidden


def _diff_one(name: str, e: _Value | None, a: _Value | None) -> FieldDiff:
    if isinstance(e, bytes) and isinstance(a, bytes):
        offset = _first_difference(e, a)
        return FieldDiff(name, _show_bytes(e, offset), _show_bytes(a, offset), offset)
    return FieldDiff(name, _text(e), _text(a))


def _text(value: _Value | None) -> str:
    if value is None:
        return _ABSENT
    if isinstance(value, bytes):
        return _show_bytes(value, 0)
    return value


def _time(ns: int) -> str:
    return f"{ns // NS_PER_S}.{ns % NS_PER_S:09d} s"


def _pair_key(frame: bytes, meta_ethertype: int) -> Hashable:
    """What names a frame when pairing leftovers: ESP (SPI, sequence number) or config
    (opcode, txn_id); None for other frames."""
    try:
        _, _, ethertype, _, _, l3 = ethernet_fields(frame, meta_ethertype)
        if ethertype == EtherType.CONFIG:
            header = parse_config_header(memoryview(frame)[l3:])
            return ("config", header.opcode, header.txn_id)
    except ParseError:
        return None
    esp = find_esp(frame, meta_ethertype)
    return None if esp is None else ("esp", esp.spi, esp.seq)


@dataclass(slots=True)
class _Event:
    order: tuple[int, int]
    kind: FindingKind
    i: int | None
    j: int | None


def compare(
    expected: Sequence[PcapRecord],
    actual: Sequence[PcapRecord],
    *,
    keys: EspKeys | None = None,
    meta: MetaLayout = MetaLayout.AUTO,
    meta_ethertype: int = EtherType.META,
    timestamps: bool = False,
    detail: int | None = 10,
    fields_of_all: bool = True,
) -> Comparison:
    """Compare two captures of one link (see the module's docstring).

    `keys` decrypts ESP; `meta` says how to read metadata tags (AUTO: guessed from each
    expected frame, and the actual frame it is compared with read the same way);
    `timestamps` makes a different timestamp a mismatch; `detail` is how many findings to
    describe (None: all); `fields_of_all` decodes every mismatched pair for `field_counts`
    (False: only the described ones).
    """
    ids: dict[bytes, int] = {}
    a = [ids.setdefault(r.frame, len(ids)) for r in expected]
    b = [ids.setdefault(r.frame, len(ids)) for r in actual]
    del ids
    matches = align(a, b)
    done_a = bytearray(len(a))
    done_b = bytearray(len(b))
    events: list[_Event] = []
    equal = 0
    for i, j in matches:
        done_a[i] = done_b[j] = 1
        if timestamps and expected[i].time_ns != actual[j].time_ns:
            events.append(_Event((2 * i, j), FindingKind.MISMATCHED, i, j))
        else:
            equal += 1
    # the same bytes, left over on both sides: reordered
    waiting: dict[int, deque[int]] = {}
    for j in range(len(b)):
        if not done_b[j]:
            waiting.setdefault(b[j], deque()).append(j)
    if waiting:
        for i in range(len(a)):
            queue = waiting.get(a[i]) if not done_a[i] else None
            if queue:
                j = queue.popleft()
                done_a[i] = done_b[j] = 1
                events.append(_Event((2 * i, j), FindingKind.REORDERED, i, j))
    # the rest, between consecutive matches: paired, missing or extra
    prev_i = prev_j = -1
    for i, j in [*matches, (len(a), len(b))]:
        gap_a = [x for x in range(prev_i + 1, i) if not done_a[x]]
        gap_b = [y for y in range(prev_j + 1, j) if not done_b[y]]
        if gap_a or gap_b:
            _pair_gap(gap_a, gap_b, expected, actual, meta_ethertype, prev_i + 1, events)
        prev_i, prev_j = i, j
    events.sort(key=lambda event: event.order)
    counts = Counter(event.kind for event in events)
    limit = len(events) if detail is None else detail
    field_counts: Counter[str] = Counter()
    findings: list[Finding] = []

    def decode(frame: bytes, layout: MetaLayout) -> DecodedFrame:
        return decode_frame(frame, keys=keys, meta=layout, meta_ethertype=meta_ethertype)

    for n, event in enumerate(events):
        described = n < limit
        if event.kind == FindingKind.MISMATCHED:
            if not (described or fields_of_all):
                continue
            assert event.i is not None and event.j is not None
            exp, act = expected[event.i], actual[event.j]
            de = decode(exp.frame, meta)
            da = decode(act.frame, de.layout)
            diffs = _diff_fields(de.fields, da.fields) if exp.frame != act.frame else []
            if exp.frame != act.frame and not diffs:
                offset = _first_difference(exp.frame, act.frame)
                shown = _show_bytes(exp.frame, offset), _show_bytes(act.frame, offset)
                diffs.append(FieldDiff("frame", *shown, offset))
            t_exp, t_act = exp.time_ns, act.time_ns
            if timestamps and t_exp != t_act:
                diffs.insert(0, FieldDiff("time", _time(t_exp), _time(t_act)))
            field_counts.update(diff.field for diff in diffs)
            if described:
                findings.append(
                    Finding(
                        event.kind,
                        event.i + 1,
                        event.j + 1,
                        de.summary,
                        da.summary,
                        tuple(diffs),
                    )
                )
        elif described:
            record = expected[event.i] if event.i is not None else actual[event.j or 0]
            summary = decode(record.frame, meta).summary
            findings.append(
                Finding(
                    event.kind,
                    None if event.i is None else event.i + 1,
                    None if event.j is None else event.j + 1,
                    summary,
                )
            )
    return Comparison(
        expected_frames=len(a),
        actual_frames=len(b),
        equal=equal,
        mismatched=counts[FindingKind.MISMATCHED],
        missing=counts[FindingKind.MISSING],
        extra=counts[FindingKind.EXTRA],
        reordered=counts[FindingKind.REORDERED],
        findings=tuple(findings),
        total_findings=len(events),
        field_counts=tuple(sorted(field_counts.items(), key=lambda item: (-item[1], item[0]))),
    )


def _pair_gap(
    gap_a: list[int],
    gap_b: list[int],
    expected: Sequence[PcapRecord],
    actual: Sequence[PcapRecord],
    meta_ethertype: int,
    start: int,
    events: list[_Event],
) -> None:
    """Pair the leftovers between two matches: in order when both sides have as many; else
    by their ESP or config keys first, then in order; the unpaired are missing or extra."""
    if len(gap_a) == len(gap_b):
        _zip_gap(gap_a, gap_b, start, events)
        return
    keys_a: list[Hashable] = [
        _pair_key(expected[i].frame, meta_ethertype) or ("a", i) for i in gap_a
    ]
    keys_b: list[Hashable] = [_pair_key(actual[j].frame, meta_ethertype) or ("b", j) for j in gap_b]
    prev_x = prev_y = -1
    for x, y in [*align(keys_a, keys_b), (len(gap_a), len(gap_b))]:
        sub_a = gap_a[prev_x + 1 : x]
        start_here = gap_a[prev_x] + 1 if prev_x >= 0 else start
        _zip_gap(sub_a, gap_b[prev_y + 1 : y], start_here, events)
        if x < len(gap_a):
            events.append(
                _Event((2 * gap_a[x], gap_b[y]), FindingKind.MISMATCHED, gap_a[x], gap_b[y])
            )
        prev_x, prev_y = x, y


def _zip_gap(gap_a: list[int], gap_b: list[int], start: int, events: list[_Event]) -> None:
    for i, j in zip(gap_a, gap_b, strict=False):
        events.append(_Event((2 * i, j), FindingKind.MISMATCHED, i, j))
    for i in gap_a[len(gap_b) :]:
        events.append(_Event((2 * i, -1), FindingKind.MISSING, i, None))
    # extra frames sort right after the last expected frame of their gap
    before = 2 * gap_a[-1] + 1 if gap_a else 2 * start - 1
    for j in gap_b[len(gap_a) :]:
        events.append(_Event((before, j), FindingKind.EXTRA, None, j))


# -- rendering --------------------------------------------------------------------------------

_KIND_NAMES = {
    FindingKind.MISMATCHED: "mismatched",
    FindingKind.MISSING: "missing",
    FindingKind.EXTRA: "extra",
    FindingKind.REORDERED: "reordered",
}


def _counts(result: Comparison) -> dict[str, int]:
    return {
        "equal": result.equal,
        "mismatched": result.mismatched,
        "missing": result.missing,
        "extra": result.extra,
        "reordered": result.reordered,
    }


def format_comparison(name: str, expected: str, actual: str, result: Comparison) -> str:
    """The human report of one comparison: counts, the fields that differ most, and each
    described finding with its differing fields."""
    lines = [
        f"{name}: {'EQUAL' if result.same else 'DIFFERENT'}",
        f"  expected {expected} ({result.expected_frames} frames)",
        f"  actual   {actual} ({result.actual_frames} frames)",
        "  " + ", ".join(f"{key} {value}" for key, value in _counts(result).items()),
    ]
    if result.field_counts:
        top = ", ".join(f"{field} {count}" for field, count in result.field_counts[:8])
        more = len(result.field_counts) - 8
        lines.append(
            f"  fields that differ (pairs): {top}" + (f", {more} more" if more > 0 else "")
        )
    for finding in result.findings:
        lines.append("")
        lines.extend(_finding_lines(finding))
    hidden = result.total_findings - len(result.findings)
    if hidden:
        lines.append("")
        findings = "finding" if hidden == 1 else "findings"
        lines.append(f"  ... {hidden} more {findings} not shown (--max N, 0 for all)")
    return "\n".join(lines)


def _frame_ref(number: int | None) -> str:
    return "-" if number is None else f"#{number}"


def _finding_lines(finding: Finding) -> Iterator[str]:
    kind = finding.kind
    refs = (
        f"expected {_frame_ref(finding.expected_frame)}, actual {_frame_ref(finding.actual_frame)}"
    )
    yield f"  {_KIND_NAMES[kind].upper()} {refs}: {finding.summary}"
    if kind == FindingKind.MISMATCHED and finding.actual_summary != finding.summary:
        yield f"    actual frame: {finding.actual_summary}"
    width = max((len(diff.field) for diff in finding.fields), default=0)
    for diff in finding.fields:
        where = "" if diff.offset is None else f" (first difference at byte {diff.offset})"
        yield f"    {diff.field:<{width}}  expected {diff.expected}{where}"
        yield f"    {'':<{width}}  actual   {diff.actual}"


def comparison_json(name: str, expected: str, actual: str, result: Comparison) -> dict[str, Any]:
    """One comparison for `compare --json` (the keys are documented in docs/bench.md)."""
    return {
        "name": name,
        "expected": {"file": expected, "frames": result.expected_frames},
        "actual": {"file": actual, "frames": result.actual_frames},
        "equal": result.same,
        "counts": _counts(result),
        "field_counts": dict(result.field_counts),
        "findings": [
            {
                "kind": _KIND_NAMES[finding.kind],
                "expected_frame": finding.expected_frame,
                "actual_frame": finding.actual_frame,
                "summary": finding.summary,
                "actual_summary": finding.actual_summary or None,
                "fields": [
                    {
                        "field": diff.field,
                        "expected": diff.expected,
                        "actual": diff.actual,
                        "offset": diff.offset,
                    }
                    for diff in finding.fields
                ],
            }
            for finding in result.findings
        ],
        "findings_total": result.total_findings,
    }
