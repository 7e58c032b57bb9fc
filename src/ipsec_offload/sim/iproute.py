"""What iproute2's `ip -s xfrm state` prints on a simulated host: the stack's states, read as
`ip` reads the kernel's, in iproute2's layout.

The layout is iproute2's `ip/ipxfrm.c` (`xfrm_state_info_print` and the helpers it calls:
`xfrm_id_info_print`, `xfrm_xfrma_print`, `xfrm_selector_print`, `xfrm_lifetime_print`,
`xfrm_stats_print`) with `-s` (show_stats) and the `mode crypto|packet` of the offload line
(iproute2 6.2), for states without Linux 6.10's SA direction attribute, which this stack never
sets. One block per state, newest first, as the kernel's dump walks its list of states
(`__xfrm_state_insert` adds at the head)::

    src 192.0.2.1 dst 192.0.2.2
    \tproto esp spi 0x00001001(4097) reqid 1(0x00000001) mode transport
    \treplay-window 32 seq 0x00000000 flag  (0x00000000)
    \taead rfc4106(gcm(aes)) 0x<key || salt> (160 bits) 128
    \tanti-replay context: seq 0x0, oseq 0x19, bitmap 0x00000000
    \tcrypto offload parameters: dev ens1f0 dir out mode crypto
    \tsel src 0.0.0.0/0 dst 0.0.0.0/0 uid 0
    \tlifetime config:
    \t  limit: soft (INF)(bytes), hard (INF)(bytes)
    \t  limit: soft (INF)(packets), hard (INF)(packets)
    \t  expire add: soft 0(sec), hard 0(sec)
    \t  expire use: soft 0(sec), hard 0(sec)
    \tlifetime current:
    \t  3000(bytes), 25(packets)
    \t  add 1970-01-01 00:00:00 use -
    \tstats:
    \t  replay-window 0 replay 0 failed 0

What each line reads from the `XfrmState`, and where the model has to decide:

- The states are as `ip xfrm state add ... replay-window W [flag esn]` makes them: with ESN or
  W above 32 (the 32-bit bitmap of struct xfrm_replay_state) iproute2 hands the kernel the ESN
  replay attribute and a replay-window of 0, and the state shows the "anti-replay esn context"
  block; otherwise the replay-window is W and the state shows the one-line "anti-replay
  context". Their km seq (the "seq" after replay-window) is 0 and ESN is their only flag.
- The key is printed, as `ip xfrm state` prints it: key || salt, the key material the kernel
  holds for rfc4106(gcm(aes)), with its length in bits and the 128-bit ICV.
- The replay context gives inbound the window's top (seq, seq-hi) and outbound the last number
  used (oseq, oseq-hi). The bitmap has the window's bits of the numbers that exist (1 and
  up), so a new window shows none as Linux's does, though this stack's window counts
  everything below its top as received. The one-word bitmap has the top at bit 0, as Linux's
  xfrm_replay_state; the ESN words are Linux's ring, number s at bit (s - 1) mod W, printed
  from the last word down, eight to a line, each followed by a space as iproute2 prints it.
- The offload line is printed for a state the device holds (`Offload.DEVICE`) only: not for a
  state in software, nor for one whose add the device has not answered yet.
- States have no selector of their own (the stack's policies name their state): they show
  the zero selector of their family, as a state added without `sel`.
- A limit of 0 (none) is "(INF)". The add time is simulated time as a date counted from
  1970-01-01 00:00:00 UTC, the time base of the run's pcaps, in whole seconds as the kernel
  keeps it, printed in UTC (iproute2 prints local time); it is a date even at time 0, where
  iproute2 would print "-" for a time never set. The stack does not record a state's first
  use: "use" is "-", as iproute2 prints for a state never used.
- The stats are the state's own error counters (`XfrmStats`), the device's included once
  `update_stats` merged them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.crypto.gcm import ICV_LEN
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Offload, XfrmState
from ipsec_offload.wire.addr import ip_to_str
from ipsec_offload.wire.config import Direction

__all__ = ["format_xfrm_state", "xfrm_state_text"]

_PREFIX = "\t"
"""What iproute2 puts before every line of a state but the first."""
_LEGACY_WINDOW = 32
"""The largest window struct xfrm_replay_state's bitmap holds."""
_ESN_FLAG = 0x80
"""XFRM_STATE_ESN, the one flag the states carry."""
_MASK32 = 0xFFFF_FFFF
_WORDS_PER_LINE = 8
_ZERO = {4: "0.0.0.0", 16: "::"}


def xfrm_state_text(stack: HostStack) -> str:
    """What `ip -s xfrm state` prints on `stack`'s host: its states, newest first ("" when
    it has none)."""
    ifname = stack.device.ifname
    return "".join(format_xfrm_state(state, ifname) for state in reversed(stack.states.values()))


def format_xfrm_state(state: XfrmState, ifname: str) -> str:
    """One state as `ip -s xfrm state` prints it, newline-terminated; `ifname` is the device
    an offloaded state is on."""
    spi, reqid = state.spi, state.reqid
    esn_layout = state.esn or state.replay_window > _LEGACY_WINDOW
    flags = _ESN_FLAG if state.esn else 0
    mode = state.mode.name.lower()
    lines = [
        f"src {ip_to_str(state.src)} dst {ip_to_str(state.dst)}",
        f"proto esp spi 0x{spi:08x}({spi}) reqid {reqid}(0x{reqid:08x}) mode {mode}",
        f"replay-window {0 if esn_layout else state.replay_window} seq 0x00000000"
        f" flag {'esn' if state.esn else ''} (0x{flags:08b})",
        f"aead rfc4106(gcm(aes)) 0x{state.key_material.hex()}"
        f" ({len(state.key_material) * 8} bits) {ICV_LEN * 8}",
        *(_esn_context(state) if esn_layout else _context(state)),
    ]
    if state.offload == Offload.DEVICE:
        way = "in" if state.direction == Direction.INBOUND else "out"
        lines.append(
            f"crypto offload parameters: dev {ifname} dir {way}"
            f" mode {state.offload_type.name.lower()}"
        )
    zero = _ZERO[len(state.dst)]
    added = datetime.fromtimestamp(int(state.add_time), UTC).strftime("%Y-%m-%d %H:%M:%S")
    stats = state.stats
    lines += [
        f"sel src {zero}/0 dst {zero}/0 uid 0",
        "lifetime config:",
        f"  limit: soft {_limit(state.soft_lifetime_bytes)}(bytes),"
        f" hard {_limit(state.lifetime_bytes)}(bytes)",
        f"  limit: soft {_limit(state.soft_lifetime_packets)}(packets),"
        f" hard {_limit(state.lifetime_packets)}(packets)",
        "  expire add: soft 0(sec), hard 0(sec)",
        "  expire use: soft 0(sec), hard 0(sec)",
        "lifetime current:",
        f"  {state.bytes}(bytes), {state.packets}(packets)",
        f"  add {added} use -",
        "stats:",
        f"  replay-window {stats.replay_window} replay {stats.replay}"
        f" failed {stats.integrity_failed}",
    ]
    return "".join(f"{_PREFIX if i else ''}{line}\n" for i, line in enumerate(lines))


def _limit(value: int) -> str:
    """A lifetime limit as iproute2 prints it: XFRM_INF, here 0 (none), is "(INF)"."""
    return str(value) if value else "(INF)"


def _received(window: ReplayWindow | None) -> tuple[int, int]:
    """(T, bits): the top of an inbound window (0 outbound) and its bits of the numbers that
    exist, bit i set when T - i was received."""
    if window is None:
        return 0, 0
    top = window.highest
    return top, window.bitmap & ((1 << min(window.size, top)) - 1)


def _context(state: XfrmState) -> list[str]:
    """The XFRMA_REPLAY_VAL line: struct xfrm_replay_state, the top at bit 0."""
    top, bits = _received(state.replay)
    return [f"anti-replay context: seq 0x{top:x}, oseq 0x{state.oseq:x}, bitmap 0x{bits:08x}"]


def _esn_context(state: XfrmState) -> list[str]:
    """The XFRMA_REPLAY_ESN_VAL lines: struct xfrm_replay_state_esn, its bitmap words."""
    top, bits = _received(state.replay)
    size = state.replay_window
    words = (size + 31) // 32
    ring = _ring(top, bits, size)
    values = [(ring >> (32 * i)) & _MASK32 for i in reversed(range(words))]
    oseq = state.oseq
    return [
        "anti-replay esn context:",
        f" seq-hi 0x{top >> 32:x}, seq 0x{top & _MASK32:x},"
        f" oseq-hi 0x{oseq >> 32:x}, oseq 0x{oseq & _MASK32:x}",
        f" replay_window {size}, bitmap-length {words}",
        *(
            " " + "".join(f"{value:08x} " for value in values[i : i + _WORDS_PER_LINE])
            for i in range(0, words, _WORDS_PER_LINE)
        ),
    ]


def _ring(top: int, bits: int, size: int) -> int:
    """The window's `bits` (bit i: number `top` - i) as Linux's ring of `size` bits keeps them
    (xfrm_replay_advance_esn): number s at bit (s - 1) mod `size`."""
    count = min(size, top)
    if not count:
        return 0
    # reversed, bit j is number top - count + 1 + j, whose place is (top - count + j) mod size
    reversed_bits = int(format(bits, f"0{count}b")[::-1], 2)
    shift = (top - count) % size
    return ((reversed_bits << shift) | (reversed_bits >> (size - shift))) & ((1 << size) - 1)
