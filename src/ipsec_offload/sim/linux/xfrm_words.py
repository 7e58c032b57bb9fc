"""The `ip xfrm` words a Linux peer's key manager says (`state_args`, `selector_args`, the
quiet policies) and what the guest's `ip -s xfrm state` answers (`parse_xfrm_state`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ipsec_offload.host.xfrm import Mode, XfrmPolicy, XfrmState
from ipsec_offload.wire.addr import ip_to_str
from ipsec_offload.wire.config import Direction

PRIORITY_BLOCK = 10
"""The quiet policies' priority (lower first): before the SAs' policies."""
PRIORITY_SA = 100
LINUX_MAX_REPLAY_WINDOW = 4096
"""The largest replay window Linux's xfrm takes (XFRMA_REPLAY_ESN_MAX, in bits); a larger
one asked of a Linux peer is clamped to it, as a key manager would have to."""
_ICV_BITS = 128
_AEAD = "rfc4106(gcm(aes))"
QUIET = (
    # ICMP destination unreachable (v4 type 3, v6 type 1): no answer to a closed port
    ((4,), ("proto", "1", "type", "3")),
    ((16,), ("proto", "58", "type", "1")),
    # TCP the kernel sends itself (mark 0; peerd's segments carry 1): no reset
    ((4, 16), ("proto", "6", "mark", "0", "mask", "0xffffffff")),
)
"""The quiet policies: (the address sizes they are for, their selector)."""


@dataclass(frozen=True, slots=True)
class GuestSa:
    """One SA as the guest's `ip -s xfrm state` shows it."""

    src: str
    dst: str
    spi: int
    packets: int
    bytes: int
    replay: int
    """Packets dropped as replayed."""
    replay_window: int
    """Packets dropped as outside the window."""
    failed: int
    """Packets whose ICV did not verify."""


def parse_xfrm_state(text: str) -> list[GuestSa]:
    """The SAs of `ip -s xfrm state` output, with their counters."""
    found = []
    for block in re.split(r"\n(?=src )", text.strip()):
        head = re.match(r"src (\S+) dst (\S+)", block)
        spi = re.search(r"proto esp spi 0x([0-9a-f]+)", block)
        current = re.search(r"lifetime current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)", block)
        stats = re.search(r"stats:\s*\n\s*replay-window (\d+) replay (\d+) failed (\d+)", block)
        if head is None or spi is None or current is None or stats is None:
            continue
        found.append(
            GuestSa(
                head.group(1),
                head.group(2),
                int(spi.group(1), 16),
                int(current.group(2)),
                int(current.group(1)),
                int(stats.group(2)),
                int(stats.group(1)),
                int(stats.group(3)),
            )
        )
    return found


def state_args(state: XfrmState, window: int) -> list[str]:
    """`ip xfrm state add`'s arguments for a state, with a replay window of `window`."""
    args = [
        "src", ip_to_str(state.src), "dst", ip_to_str(state.dst), "proto", "esp",
        "spi", f"0x{state.spi:08x}", "reqid", str(state.reqid),
        "mode", "tunnel" if state.mode == Mode.TUNNEL else "transport",
        "replay-window", str(window),
    ]  # fmt: skip
    if state.esn:
        args += ["flag", "esn"]
    if state.direction == Direction.OUTBOUND:
        start = state.oseq
        names = ("replay-oseq", "replay-oseq-hi")
    else:
        assert state.replay is not None
        start = state.replay.highest
        names = ("replay-seq", "replay-seq-hi")
    if start:
        args += [names[0], f"0x{start & 0xFFFFFFFF:x}"]
        if state.esn:
            args += [names[1], f"0x{start >> 32:x}"]
    args += ["aead", _AEAD, "0x" + state.key_material.hex(), str(_ICV_BITS)]
    limits = (
        ("packet-soft", state.soft_lifetime_packets),
        ("packet-hard", state.lifetime_packets),
        ("byte-soft", state.soft_lifetime_bytes),
        ("byte-hard", state.lifetime_bytes),
    )
    for word, value in limits:
        if value:
            args += ["limit", word, str(value)]
    return args


def selector_args(policy: XfrmPolicy) -> list[str]:
    args = ["src", str(policy.src), "dst", str(policy.dst)]
    if policy.protocol is not None:
        args += ["proto", str(policy.protocol)]
    return [*args, "dir", "out" if policy.direction == Direction.OUTBOUND else "in"]


def guest_sa_fields(sa: GuestSa) -> dict[str, Any]:
    """A guest SA as plain data (report.json)."""
    return {
        "src": sa.src,
        "dst": sa.dst,
        "spi": f"0x{sa.spi:08x}",
        "packets": sa.packets,
        "bytes": sa.bytes,
        "replay": sa.replay,
        "replay_window": sa.replay_window,
        "failed": sa.failed,
    }
