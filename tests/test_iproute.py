"""`sim.iproute`: a host's states in the layout of iproute2's `ip -s xfrm state`, checked line by
line against texts written by hand from iproute2's format strings (ip/ipxfrm.c) and Linux's
replay state (struct xfrm_replay_state, the ring of struct xfrm_replay_state_esn)."""

from __future__ import annotations

from typing import Any

import pytest

from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.host.xfrm import Mode, Offload, OffloadType, XfrmState, XfrmStats
from ipsec_offload.sim.iproute import format_xfrm_state, xfrm_state_text
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.addr import ip_from_str
from ipsec_offload.wire.config import Algorithm, Direction

V4_A, V4_B = ip_from_str("192.0.2.1"), ip_from_str("192.0.2.2")
V6_A, V6_B = ip_from_str("2001:db8::1"), ip_from_str("2001:db8::2")
KEY_128 = bytes(range(20))  # key || salt of AES-GCM-128
KEY_256 = bytes(range(0x40, 0x64))  # key || salt of AES-GCM-256

LIFETIMES = [
    "\tlifetime config:",
    "\t  limit: soft (INF)(bytes), hard (INF)(bytes)",
    "\t  limit: soft (INF)(packets), hard (INF)(packets)",
    "\t  expire add: soft 0(sec), hard 0(sec)",
    "\t  expire use: soft 0(sec), hard 0(sec)",
]
"""The lifetime configuration of a state without limits."""


def state(direction: Direction, spi: int, src: bytes, dst: bytes, **fields: Any) -> XfrmState:
    """A state with handle `spi`, of AES-GCM-128 with KEY_128 unless `fields` say otherwise."""
    fields.setdefault("algorithm", Algorithm.AES_GCM_128)
    fields.setdefault("key_material", KEY_128)
    return XfrmState(spi, direction, spi, src, dst, **fields)


def lines(sa: XfrmState, ifname: str = "ens1f0") -> list[str]:
    text = format_xfrm_state(sa, ifname)
    assert text.endswith("\n")
    return text.split("\n")[:-1]


def received(window: ReplayWindow, *numbers: int) -> ReplayWindow:
    """`window` after packets with these full sequence numbers verified."""
    for seq in numbers:
        assert window.check(seq & 0xFFFF_FFFF) == seq
        window.accept(seq)
    return window


def test_transport_ipv4_outbound_in_software() -> None:
    """Window 32 fits struct xfrm_replay_state: one context line, the window in the header."""
    sa = state(
        Direction.OUTBOUND,
        0x1001,
        V4_A,
        V4_B,
        replay_window=32,
        reqid=7,
        soft_lifetime_packets=8,
        lifetime_packets=10,
        lifetime_bytes=100_000,
        oseq=5,
        packets=5,
        bytes=500,
        add_time=3661.9,
    )
    assert lines(sa) == [
        "src 192.0.2.1 dst 192.0.2.2",
        "\tproto esp spi 0x00001001(4097) reqid 7(0x00000007) mode transport",
        "\treplay-window 32 seq 0x00000000 flag  (0x00000000)",
        "\taead rfc4106(gcm(aes)) 0x000102030405060708090a0b0c0d0e0f10111213 (160 bits) 128",
        "\tanti-replay context: seq 0x0, oseq 0x5, bitmap 0x00000000",
        "\tsel src 0.0.0.0/0 dst 0.0.0.0/0 uid 0",
        "\tlifetime config:",
        "\t  limit: soft (INF)(bytes), hard 100000(bytes)",
        "\t  limit: soft 8(packets), hard 10(packets)",
        "\t  expire add: soft 0(sec), hard 0(sec)",
        "\t  expire use: soft 0(sec), hard 0(sec)",
        "\tlifetime current:",
        "\t  500(bytes), 5(packets)",
        "\t  add 1970-01-01 01:01:01 use -",
        "\tstats:",
        "\t  replay-window 0 replay 0 failed 0",
    ]


def test_transport_ipv4_inbound_offloaded_with_a_gap_and_drops() -> None:
    """1, 2, 3 and 5 received: Linux's bitmap has the top (5) at bit 0, 4 missing at bit 1."""
    window = received(ReplayWindow(32, esn=False), 1, 2, 3, 5)
    sa = state(
        Direction.INBOUND,
        0x1002,
        V4_B,
        V4_A,
        replay_window=32,
        reqid=7,
        offload=Offload.DEVICE,
        packets=4,
        bytes=400,
        add_time=1.0,
        stats=XfrmStats(replay_window=3, replay=1, integrity_failed=2),
        replay=window,
    )
    assert lines(sa) == [
        "src 192.0.2.2 dst 192.0.2.1",
        "\tproto esp spi 0x00001002(4098) reqid 7(0x00000007) mode transport",
        "\treplay-window 32 seq 0x00000000 flag  (0x00000000)",
        "\taead rfc4106(gcm(aes)) 0x000102030405060708090a0b0c0d0e0f10111213 (160 bits) 128",
        "\tanti-replay context: seq 0x5, oseq 0x0, bitmap 0x0000001d",
        "\tcrypto offload parameters: dev ens1f0 dir in mode crypto",
        "\tsel src 0.0.0.0/0 dst 0.0.0.0/0 uid 0",
        *LIFETIMES,
        "\tlifetime current:",
        "\t  400(bytes), 4(packets)",
        "\t  add 1970-01-01 00:00:01 use -",
        "\tstats:",
        "\t  replay-window 3 replay 1 failed 2",
    ]


def test_tunnel_ipv6_outbound_offloaded() -> None:
    """A window of 64 needs the ESN replay attribute even without ESN: replay-window 0 in the
    header, the window and its two (empty, outbound) words in the esn context."""
    sa = state(
        Direction.OUTBOUND,
        0x1003,
        V6_A,
        V6_B,
        algorithm=Algorithm.AES_GCM_256,
        key_material=KEY_256,
        mode=Mode.TUNNEL,
        reqid=2,
        offload=Offload.DEVICE,
        oseq=10,
        packets=10,
        bytes=1234,
        add_time=0.5,
    )
    assert lines(sa, "eth0") == [
        "src 2001:db8::1 dst 2001:db8::2",
        "\tproto esp spi 0x00001003(4099) reqid 2(0x00000002) mode tunnel",
        "\treplay-window 0 seq 0x00000000 flag  (0x00000000)",
        "\taead rfc4106(gcm(aes)) 0x404142434445464748494a4b4c4d4e4f"
        "505152535455565758595a5b5c5d5e5f60616263 (288 bits) 128",
        "\tanti-replay esn context:",
        "\t seq-hi 0x0, seq 0x0, oseq-hi 0x0, oseq 0xa",
        "\t replay_window 64, bitmap-length 2",
        "\t 00000000 00000000 ",
        "\tcrypto offload parameters: dev eth0 dir out mode crypto",
        "\tsel src ::/0 dst ::/0 uid 0",
        *LIFETIMES,
        "\tlifetime current:",
        "\t  1234(bytes), 10(packets)",
        "\t  add 1970-01-01 00:00:00 use -",
        "\tstats:",
        "\t  replay-window 0 replay 0 failed 0",
    ]


def test_esn_inbound_after_traffic_across_2_to_the_32() -> None:
    """Handed over at 0xfffffffe, then 0x1_00000001 and 0x1_00000003 arrive. Linux's ring
    keeps number s at bit (s - 1) mod 64: 0x1_00000003 at bit 2, 0x1_00000001 at bit 0,
    0xfffffffe down to 0xffffffc4 (counted received at the hand-over) at bits 61 down to 3;
    0x1_00000002 (bit 1), 0x1_00000000 (bit 63) and 0xffffffff (bit 62) are missing."""
    window = received(ReplayWindow(64, esn=True, highest=0xFFFF_FFFE), 0x1_0000_0001, 0x1_0000_0003)
    sa = state(
        Direction.INBOUND,
        0x1004,
        V6_B,
        V6_A,
        mode=Mode.TUNNEL,
        esn=True,
        reqid=2,
        packets=2,
        bytes=200,
        add_time=86400.0,
        replay=window,
    )
    assert lines(sa) == [
        "src 2001:db8::2 dst 2001:db8::1",
        "\tproto esp spi 0x00001004(4100) reqid 2(0x00000002) mode tunnel",
        "\treplay-window 0 seq 0x00000000 flag esn (0x10000000)",
        "\taead rfc4106(gcm(aes)) 0x000102030405060708090a0b0c0d0e0f10111213 (160 bits) 128",
        "\tanti-replay esn context:",
        "\t seq-hi 0x1, seq 0x3, oseq-hi 0x0, oseq 0x0",
        "\t replay_window 64, bitmap-length 2",
        "\t 3fffffff fffffffd ",
        "\tsel src ::/0 dst ::/0 uid 0",
        *LIFETIMES,
        "\tlifetime current:",
        "\t  200(bytes), 2(packets)",
        "\t  add 1970-01-02 00:00:00 use -",
        "\tstats:",
        "\t  replay-window 0 replay 0 failed 0",
    ]


def replay_lines(sa: XfrmState) -> list[str]:
    """The lines of `sa`'s anti-replay context."""
    text = lines(sa)
    start = next(i for i, line in enumerate(text) if "anti-replay" in line)
    end = next(i for i, line in enumerate(text) if line.startswith("\tsel "))
    return text[start:end]


def inbound(**fields: Any) -> XfrmState:
    return state(Direction.INBOUND, 0x2001, V4_B, V4_A, **fields)


def test_a_new_window_shows_no_number_received() -> None:
    """The stack's window counts everything below its top as received; of a new one, nothing
    exists below 1: Linux's empty bitmaps."""
    assert replay_lines(inbound(replay_window=32)) == [
        "\tanti-replay context: seq 0x0, oseq 0x0, bitmap 0x00000000"
    ]
    assert replay_lines(inbound(replay_window=4096, esn=True)) == [
        "\tanti-replay esn context:",
        "\t seq-hi 0x0, seq 0x0, oseq-hi 0x0, oseq 0x0",
        "\t replay_window 4096, bitmap-length 128",
        *["\t " + "00000000 " * 8] * 16,
    ]


def test_esn_words_wrap_eight_to_a_line_from_the_last() -> None:
    """A window of 300 bits has 10 words: the last (bmp[9]) first, eight to a line; numbers
    1 to 40 sit at bits 0 to 39, in bmp[0] and bmp[1]."""
    window = received(ReplayWindow(300, esn=True), *range(1, 41))
    assert replay_lines(inbound(replay_window=300, esn=True, replay=window)) == [
        "\tanti-replay esn context:",
        "\t seq-hi 0x0, seq 0x28, oseq-hi 0x0, oseq 0x0",
        "\t replay_window 300, bitmap-length 10",
        "\t " + "00000000 " * 8,
        "\t 000000ff ffffffff ",
    ]


def test_an_esn_window_of_0_has_no_words() -> None:
    """Replay checks off (RFC 4303 3.4.3): the top still moves, the bitmap is empty."""
    window = received(ReplayWindow(0, esn=True), 7)
    assert replay_lines(inbound(replay_window=0, esn=True, replay=window)) == [
        "\tanti-replay esn context:",
        "\t seq-hi 0x0, seq 0x7, oseq-hi 0x0, oseq 0x0",
        "\t replay_window 0, bitmap-length 0",
    ]


@pytest.mark.parametrize(
    ("offload", "offload_type", "shown"),
    [
        (Offload.SOFTWARE, OffloadType.CRYPTO, None),
        (Offload.PENDING, OffloadType.CRYPTO, None),
        (
            Offload.DEVICE,
            OffloadType.CRYPTO,
            "\tcrypto offload parameters: dev vf0 dir in mode crypto",
        ),
        (
            Offload.DEVICE,
            OffloadType.PACKET,
            "\tcrypto offload parameters: dev vf0 dir in mode packet",
        ),
    ],
)
def test_the_offload_line_is_for_a_state_the_device_holds(
    offload: Offload, offload_type: OffloadType, shown: str | None
) -> None:
    """Software, or added to the device without its answer yet: no device holds it."""
    text = lines(inbound(offload=offload, offload_type=offload_type), "vf0")
    offloaded = [line for line in text if "offload" in line]
    assert offloaded == ([] if shown is None else [shown])


def test_a_host_lists_its_states_newest_first_with_its_device() -> None:
    """As the kernel's dump walks its list (each state added at its head); a VF's interface
    is eth0 in its VM, the PF's ens1f0; a remote peer offloads nothing."""
    bed = Testbed()
    pf = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1")
    vm = bed.add_vm("vm", 1, "02:00:00:00:01:01", ipv4="192.0.2.3")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    assert xfrm_state_text(peer) == ""
    first = bed.secure(pf, peer, spis=(0x100, 0x101))
    second = bed.secure(vm, peer, spis=(0x200, 0x201))
    assert all(s.offload == Offload.DEVICE for s in (first.a_out, first.a_in, second.a_out))

    def heads(text: str) -> list[str]:
        return [line for line in text.splitlines() if "proto esp" in line or "offload" in line]

    assert heads(xfrm_state_text(pf)) == [
        "\tproto esp spi 0x00000101(257) reqid 1(0x00000001) mode transport",
        "\tcrypto offload parameters: dev ens1f0 dir in mode crypto",
        "\tproto esp spi 0x00000100(256) reqid 1(0x00000001) mode transport",
        "\tcrypto offload parameters: dev ens1f0 dir out mode crypto",
    ]
    assert heads(xfrm_state_text(vm)) == [
        "\tproto esp spi 0x00000201(513) reqid 2(0x00000002) mode transport",
        "\tcrypto offload parameters: dev eth0 dir in mode crypto",
        "\tproto esp spi 0x00000200(512) reqid 2(0x00000002) mode transport",
        "\tcrypto offload parameters: dev eth0 dir out mode crypto",
    ]
    assert heads(xfrm_state_text(peer)) == [
        "\tproto esp spi 0x00000200(512) reqid 2(0x00000002) mode transport",
        "\tproto esp spi 0x00000201(513) reqid 2(0x00000002) mode transport",
        "\tproto esp spi 0x00000100(256) reqid 1(0x00000001) mode transport",
        "\tproto esp spi 0x00000101(257) reqid 1(0x00000001) mode transport",
    ]
    text = xfrm_state_text(pf)
    assert text == "".join(format_xfrm_state(s, "ens1f0") for s in (first.a_in, first.a_out))
