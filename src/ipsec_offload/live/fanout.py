"""How the live agent's workers share an interface's frames: the kernel's packet fanout and
the owner rule (docs/live.md, "Workers").

Theory of operation: with N workers, every SA belongs to one of them, its owner, worker
SPI mod N; the owner alone handles the SA's frames, so its IVDB and its replay window live in
one place. On each side (host, wire) the supervisor opens N + 1 packet sockets on the
interface and puts them in one fanout group (PACKET_FANOUT_CBPF): its own first, member 0
(`SUPERVISOR`), then worker i's, member i + 1. For every frame the kernel runs the group's
classic BPF program (`demux_program`), whose result names the one socket that gets it.

`owner` is the rule in Python, and the program is the same rule in the kernel:

- host side, a frame whose outermost tag is the metadata tag with OFFLOAD set: the SPI at the
  tag's offsets (the L3 offset, plus the tag's 6 bytes, plus 4 x the ESP offset, in the tagged
  frame); with a reserved bit set too (the agent drops it), worker 0;
- any other frame, on either side (on the host side after the metadata tag if it has one, so
  that a frame the agent turns around to a local address is opened by the owner of its SA):
  IPv4 (version 4, protocol ESP, not a fragment): the SPI after its IHL words; IPv6 (version
  6): the SPI after the fixed header when the next header is ESP, after the hop-by-hop,
  routing and destination-options headers when they lead to ESP; at most two VLAN tags before
  the IP header;
- anything else, worker 0.

The program gives the owner's socket wherever it can read the SPI. Where it cannot, it gives
member 0, the supervisor, which applies `owner` and forwards the frame to its owner: IPv6
extension headers (a classic BPF program cannot loop), a second VLAN tag (the kernel has taken
the outer one off before the fanout: the program reads the network header, after it), a
frame shorter than a load (a classic BPF program whose load falls outside the frame ends with
0). So whenever the program names a worker it names `owner`'s, and every frame reaches its
owner. Config frames (the config EtherType, untagged) go to member 0 as well: the supervisor
gives each one to every worker, in order (`is_config`). The agent's own sends are left out of
the group (PACKET_FANOUT_FLAG_IGNORE_OUTGOING), as PACKET_IGNORE_OUTGOING leaves them out of
a single socket.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Literal

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.live.packet_socket import SOL_PACKET, PacketSocket
from ipsec_offload.wire.ethernet import EtherType
from ipsec_offload.wire.ip import IpProto, ipv6_upper_layer
from ipsec_offload.wire.metadata import TxFlag

Side = Literal["host", "wire"]

SUPERVISOR = 0
"""The fanout member of the supervisor's socket; worker i's is i + 1."""
MAX_WORKERS = 64
"""The most workers a fanout group takes here (the kernel's limit is higher)."""

PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000

_META_TAG_LEN = 6
_TX_RESERVED = 0x7F00_0000
_VLAN_TPIDS = (EtherType.VLAN, EtherType.QINQ)
_IPV6_EXTENSIONS = (IpProto.HOPOPT, IpProto.ROUTING, IpProto.DSTOPTS)
_IPV6_HEADER_LEN = 40
_SPI = struct.Struct(">I")
_U16 = struct.Struct(">H")

# -- the rule in Python ---------------------------------------------------------------------


def owner(frame: bytes, side: Side, workers: int, meta_ethertype: int) -> int:
    """The worker that handles `frame` (as the agent sees it, VLAN tags in place) arriving on
    `side`: the rule of the module docstring."""
    try:
        at = 12
        if side == "host" and _U16.unpack_from(frame, 12)[0] == meta_ethertype:
            (word,) = _SPI.unpack_from(frame, 14)
            if word & TxFlag.OFFLOAD:
                if word & _TX_RESERVED:
                    return 0
                l3, esp_words = (word >> 8) & 0xFF, word & 0xFF
                return _spi_owner(frame, l3 + _META_TAG_LEN + 4 * esp_words, workers)
            at += _META_TAG_LEN
        (ethertype,) = _U16.unpack_from(frame, at)
        for _ in range(2):
            if ethertype not in _VLAN_TPIDS:
                break
            at += 4
            (ethertype,) = _U16.unpack_from(frame, at)
        return _esp_owner(frame, ethertype, at + 2, workers)
    except (IndexError, struct.error):
        return 0


def _esp_owner(frame: bytes, ethertype: int, l3: int, workers: int) -> int:
    if ethertype == EtherType.IPV4:
        version_ihl = frame[l3]
        if version_ihl >> 4 != 4 or frame[l3 + 9] != IpProto.ESP:
            return 0
        if _U16.unpack_from(frame, l3 + 6)[0] & 0x3FFF:
            return 0
        return _spi_owner(frame, l3 + 4 * (version_ihl & 0xF), workers)
    if ethertype == EtherType.IPV6 and frame[l3] >> 4 == 6:
        next_header = frame[l3 + 6]
        if next_header == IpProto.ESP:
            return _spi_owner(frame, l3 + _IPV6_HEADER_LEN, workers)
        if next_header in _IPV6_EXTENSIONS:
            try:
                protocol, offset = ipv6_upper_layer(frame, l3)
            except ParseError:
                return 0
            if protocol == IpProto.ESP:
                return _spi_owner(frame, l3 + offset, workers)
    return 0


def _spi_owner(frame: bytes, at: int, workers: int) -> int:
    if at + 4 > len(frame):
        return 0
    return int(_SPI.unpack_from(frame, at)[0] % workers)


def is_config(frame: bytes, mac: bytes, config_ethertype: int) -> bool:
    """Whether the agent takes `frame`, from the host side, as a config frame: untagged, the
    config EtherType, to the agent's MAC."""
    return (
        len(frame) >= 14 and _U16.unpack_from(frame, 12)[0] == config_ethertype and frame[:6] == mac
    )


# -- the rule as a classic BPF program -------------------------------------------------------

_LD, _LDX, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND, _MSH = 0x20, 0x40, 0xA0
_ADD, _AND, _LSH, _MOD = 0x00, 0x50, 0x60, 0x90
_JA, _JEQ, _JSET = 0x00, 0x10, 0x40
_K, _X, _A = 0x00, 0x08, 0x10
_TAX = 0x00
_SKF_AD_OFF = -0x1000
_SKF_AD_PROTOCOL = 0
_SKF_AD_VLAN_TAG_PRESENT = 48
_SKF_LL_OFF = -0x200000
_INSN = struct.Struct("=HBBI")
"""struct sock_filter: code, jt, jf, k."""


@dataclass(frozen=True, slots=True)
class _Op:
    """One instruction; `jt` and `jf` name labels (None: the next instruction)."""

    code: int
    k: int = 0
    jt: str | None = None
    jf: str | None = None


_Item = _Op | str
"""An instruction, or a label naming the next instruction."""


def _assemble(items: list[_Item]) -> bytes:
    """The program as struct sock_filter array; jumps go forward to labels."""
    labels: dict[str, int] = {}
    ops: list[_Op] = []
    for item in items:
        if isinstance(item, str):
            labels[item] = len(ops)
        else:
            ops.append(item)

    def offset(at: int, label: str | None) -> int:
        if label is None:
            return 0
        distance = labels[label] - at - 1
        assert distance >= 0, f"jump back to {label}"
        return distance

    out = []
    for at, op in enumerate(ops):
        if op.code == _JMP | _JA:
            out.append(_INSN.pack(op.code, 0, 0, offset(at, op.jt)))
        else:
            jt, jf = offset(at, op.jt), offset(at, op.jf)
            assert jt < 256 and jf < 256
            out.append(_INSN.pack(op.code, jt, jf, op.k & 0xFFFF_FFFF))
    return b"".join(out)


def _ld(size: int, at: int) -> _Op:
    return _Op(_LD | size | _ABS, at)


def _ancillary(what: int) -> _Op:
    return _Op(_LD | _W | _ABS, _SKF_AD_OFF + what)


def _jeq(value: int, jt: str | None = None, jf: str | None = None) -> _Op:
    return _Op(_JMP | _JEQ | _K, value, jt, jf)


def _goto(label: str) -> _Op:
    return _Op(_JMP | _JA, jt=label)


def _esp_rule(base: int, name: str) -> list[_Item]:
    """The IP part of the rule, the EtherType in A and the IP header at network offset
    `base`; ends at "spi" (the SPI in A), "worker0" or "supervisor"."""
    v4, v6, v6_spi = f"{name}_v4", f"{name}_v6", f"{name}_v6_spi"
    return [
        _jeq(EtherType.IPV4, v4),
        _jeq(EtherType.IPV6, v6),
        *(_jeq(tpid, "supervisor") for tpid in _VLAN_TPIDS),
        _goto("worker0"),
        v4,
        _ld(_B, base),
        _Op(_ALU | _AND | _K, 0xF0),
        _jeq(0x40, jf="worker0"),
        _ld(_B, base + 9),
        _jeq(IpProto.ESP, jf="worker0"),
        _ld(_H, base + 6),
        _Op(_JMP | _JSET | _K, 0x3FFF, "worker0"),
        _Op(_LDX | _B | _MSH, base),
        _Op(_LD | _W | _IND, base),
        _goto("spi"),
        v6,
        _ld(_B, base),
        _Op(_ALU | _AND | _K, 0xF0),
        _jeq(0x60, jf="worker0"),
        _ld(_B, base + 6),
        _jeq(IpProto.ESP, v6_spi),
        *(_jeq(header, "supervisor") for header in _IPV6_EXTENSIONS),
        _goto("worker0"),
        v6_spi,
        _ld(_W, base + _IPV6_HEADER_LEN),
        _goto("spi"),
    ]


def demux_program(side: Side, workers: int, meta_ethertype: int, config_ethertype: int) -> bytes:
    """The fanout program of `side`'s group: the member for a frame (`SUPERVISOR`, or the
    owner's index + 1). Offsets are from the network header, which the kernel has put after
    the metadata tag or the VLAN tag it took off."""
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"{workers} workers: give 1 .. {MAX_WORKERS}")
    protocol = _ancillary(_SKF_AD_PROTOCOL)
    items: list[_Item]
    if side == "wire":
        items = [protocol, *_esp_rule(0, "ip")]
    else:
        items = [
            _ancillary(_SKF_AD_VLAN_TAG_PRESENT),
            _jeq(0, jf="vlan"),
            protocol,
            _jeq(config_ethertype, "supervisor"),
            _jeq(meta_ethertype, jf="ip"),
            _ld(_W, 0),
            _Op(_JMP | _JSET | _K, TxFlag.OFFLOAD, jf="bypass"),
            _Op(_JMP | _JSET | _K, _TX_RESERVED, "worker0"),
            # X = the L3 offset + 4 x the ESP offset; the SPI is 6 bytes (the tag) further
            # on from the start of the frame
            _ld(_B, 3),
            _Op(_ALU | _LSH | _K, 2),
            _Op(_MISC | _TAX),
            _ld(_B, 2),
            _Op(_ALU | _ADD | _X),
            _Op(_MISC | _TAX),
            _Op(_LD | _W | _IND, _SKF_LL_OFF + _META_TAG_LEN),
            _goto("spi"),
            "bypass",
            _ld(_H, 4),
            *_esp_rule(_META_TAG_LEN, "inner"),
            "vlan",
            protocol,
            "ip",
            *_esp_rule(0, "ip"),
        ]
    items += [
        "spi",
        _Op(_ALU | _MOD | _K, workers),
        _Op(_ALU | _ADD | _K, 1),
        _Op(_RET | _A),
        "worker0",
        _Op(_RET | _K, 1),
        "supervisor",
        _Op(_RET | _K, SUPERVISOR),
    ]
    return _assemble(items)


# -- the group --------------------------------------------------------------------------------


def join_group(sockets: list[PacketSocket], program: bytes) -> int:
    """Put `sockets` (open on one interface) in a new fanout group, in order (member i is
    sockets[i]), then give the group `program`; returns the group's id (the kernel picks one
    no other group of the namespace has). Before the program is set every frame goes to
    member 0."""
    mode = PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_IGNORE_OUTGOING
    first, *rest = sockets
    try:
        first.setsockopt(SOL_PACKET, PACKET_FANOUT, (mode | PACKET_FANOUT_FLAG_UNIQUEID) << 16)
    except OSError as exc:
        raise UsageError(
            f"{first.ifname}: the kernel refused a packet fanout group ({exc.strerror}): the"
            " workers need one that knows PACKET_FANOUT_CBPF and"
            " PACKET_FANOUT_FLAG_IGNORE_OUTGOING; run with --workers 1"
        ) from None
    group = first.getsockopt(SOL_PACKET, PACKET_FANOUT) & 0xFFFF
    for sock in rest:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, mode << 16 | group)
    # struct sock_fprog: the length in instructions and their address (the kernel copies
    # them during the call)
    instructions = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // _INSN.size, ctypes.addressof(instructions))
    first.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, fprog)
    return group


__all__ = [
    "MAX_WORKERS",
    "SUPERVISOR",
    "Side",
    "demux_program",
    "is_config",
    "join_group",
    "owner",
]
