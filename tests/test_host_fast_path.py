"""The host stack's compiled receive path (host/_rxpath.c) against the Python reference path.

The frames are built with the project's own sealing code (`esp_seal`), checked once against
scapy's SecurityAssociation. Two stacks with the same states, one made with the compiled paths
and one without, take the same bursts and must end with the same events, counters and state.
The stacks' PlainDriver keeps its frames with the NIC's compiled receive filter
(nic/_nicpath.c, tested on its own in test_nic_fast_path.py), or without it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.crypto.esp import esp_seal, explicit_iv
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.driver.plain import PlainDriver
from ipsec_offload.driver.ring import PacketReceived
from ipsec_offload.host import fastpath
from ipsec_offload.host.stack import Delivered, HostStack
from ipsec_offload.host.xfrm import Mode, XfrmPolicy, XfrmState
from ipsec_offload.nic import fastpath as nic_fastpath
from ipsec_offload.wire.config import Algorithm, Direction
from ipsec_offload.wire.esp import esp_header
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag, build_ethernet
from ipsec_offload.wire.ip import IpProto, IPv6Header, build_ipv6, ipv4_header
from ipsec_offload.wire.metadata import RxMetadata, RxStatus
from ipsec_offload.wire.transport import (
    TcpHeader,
    UdpHeader,
    build_tcp,
    build_udp,
    transport_checksum,
)
from tools import require_built, scapy_encrypt, scapy_sa

HOST_MAC = bytes.fromhex("020000000002")
PEER_MAC = bytes.fromhex("020000000001")
HOST4, PEER4 = bytes([192, 0, 2, 2]), bytes([192, 0, 2, 1])
OTHER4 = bytes([198, 51, 100, 7])
HOST6 = ipaddress.ip_address("2001:db8::2").packed
PEER6 = ipaddress.ip_address("2001:db8::1").packed
KEY = bytes(range(20))
KEY256 = bytes(range(100, 136))


@dataclass(frozen=True)
class Sa:
    """An inbound state of the stacks under test, and how to send through it."""

    handle: int
    spi: int
    src: bytes
    dst: bytes
    key: bytes = KEY
    algorithm: Algorithm = Algorithm.AES_GCM_128
    mode: Mode = Mode.TRANSPORT
    esn: bool = False
    window: int = 64
    first: int = 1
    """The first sequence number sent: the window starts just below it."""

    def state(self) -> XfrmState:
        state = XfrmState(
            self.handle,
            Direction.INBOUND,
            self.spi,
            self.src,
            self.dst,
            self.algorithm,
            self.key,
            mode=self.mode,
            replay_window=self.window,
            esn=self.esn,
        )
        state.replay = ReplayWindow(self.window, self.esn, self.first - 1)
        return state


SAS = (
    Sa(1, 0x1001, PEER4, HOST4),
    Sa(2, 0x1002, PEER6, HOST6, KEY256, Algorithm.AES_GCM_256, esn=True, window=32, first=1 << 32),
    Sa(3, 0x1003, OTHER4, HOST4, mode=Mode.TUNNEL),
    Sa(4, 0x1004, OTHER4, HOST4, window=200),
    Sa(6, 0x1006, PEER4, HOST4),
    Sa(7, 0x1007, PEER4, OTHER4),
    Sa(5, 0x1005, PEER6, HOST6, esn=True, window=8, first=(1 << 32) - 20),
)
SA = {sa.handle: sa for sa in SAS}
QINQ, VLAN = VlanTag(EtherType.QINQ, 7), VlanTag(EtherType.VLAN, 5)
POLICY = XfrmPolicy(
    Direction.INBOUND, ipaddress.ip_network("192.0.2.1/32"), ipaddress.ip_network("192.0.2.2/32"), 1
)
"""UDP from PEER4 to HOST4 must come through state 1 (state 6's packets break it; state 7 is
for an address the host does not have)."""


@pytest.fixture(autouse=True)
def _built() -> None:
    require_built(fastpath.RX_PATH_BUILT, "the host stack's compiled receive path")


def make_stack(fast: bool, monkeypatch: pytest.MonkeyPatch) -> HostStack:
    """A stack with the states of SAS and POLICY, made with or without the compiled path."""
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(fastpath, "RxPath", None)
            patch.setattr(nic_fastpath, "plain_receive", None)  # the PlainDriver's filter
        stack = HostStack(
            "host", PlainDriver(HOST_MAC), HOST_MAC, ipv4="192.0.2.2", ipv6="2001:db8::2"
        )
    for sa in SAS:
        stack.add_state(sa.state(), 0.0)
    stack.add_policy(POLICY)
    assert stack.states[7].aead  # a frame never makes it: the host does not have its address
    stack.events()
    return stack


# -- frames -------------------------------------------------------------------------------------


def ip_packet(src: bytes, dst: bytes, protocol: int, body: bytes) -> bytes:
    if len(src) == 4:
        return ipv4_header(src, dst, protocol, 20 + len(body), 7) + body
    return build_ipv6(IPv6Header(src, dst, protocol, len(body))) + body


def ether(packet: bytes, vlans: tuple[VlanTag, ...] = ()) -> bytes:
    ethertype = EtherType.IPV4 if packet[0] >> 4 == 4 else EtherType.IPV6
    return build_ethernet(EthernetHeader(HOST_MAC, PEER_MAC, ethertype, vlans)) + packet


def udp(src: bytes, dst: bytes, payload: bytes) -> bytes:
    return build_udp(UdpHeader(4000, 53), payload, src, dst)


def esp(sa: Sa, seq: int, inner: bytes, next_header: int, *, bad_pad: bool = False) -> bytes:
    """ESP header || IV || ciphertext || ICV of `inner` through `sa`."""
    aead = EspAead(sa.algorithm, sa.key)
    if not bad_pad:
        return esp_seal(aead, sa.spi, seq, sa.esn, inner, next_header)
    iv = explicit_iv(seq)
    plaintext = inner + bytes([1, 3, 2, next_header])  # pad length 2, pad bytes 1, 3
    return esp_header(sa.spi, seq & 0xFFFFFFFF) + iv + aead.seal(sa.spi, seq, sa.esn, iv, plaintext)


def esp_frame(sa: Sa, seq: int, payload: bytes, **kwargs: bool) -> bytes:
    """A UDP datagram through `sa` (in tunnel mode, inside an inner IPv4 packet)."""
    if sa.mode == Mode.TUNNEL:
        inner = ip_packet(sa.src, sa.dst, IpProto.UDP, udp(sa.src, sa.dst, payload))
        body = esp(sa, seq, inner, IpProto.IPIP, **kwargs)
    else:
        body = esp(sa, seq, udp(sa.src, sa.dst, payload), IpProto.UDP, **kwargs)
    return ether(ip_packet(sa.src, sa.dst, IpProto.ESP, body))


def flip(frame: bytes, at: int) -> bytes:
    return frame[:at] + bytes([frame[at] ^ 0x01]) + frame[at + 1 :]


# -- comparing the two paths -------------------------------------------------------------------


def snapshot(stack: HostStack) -> object:
    """What the receive path may change: counters and each state's count and replay window."""
    states = []
    for handle, state in sorted(stack.states.items()):
        assert state.replay is not None
        states.append(
            (handle, state.packets, state.bytes, state.replay.highest, state.replay.bitmap)
        )
    return (stack.counters, states)


Event = tuple[bytes | bytearray, RxMetadata | None]


def run(stack: HostStack, burst: list[Event], now: float) -> list[object]:
    """Hand `burst` to the stack as its device would (the frames without metadata through
    PlainDriver.receive) and poll; the stack's events. Whatever the frames are, neither the
    driver nor the stack raises (bad bytes are a counted drop): an exception fails the test,
    on either path, even where both paths raise it alike."""
    driver = stack.device
    assert isinstance(driver, PlainDriver)
    plain: list[bytes] = []
    for frame, rx in burst:
        if rx is None:
            plain.append(frame)  # type: ignore[arg-type]
            continue
        driver.receive(plain, now)
        plain = []
        driver._events.append(PacketReceived(frame, rx))  # as a PF or VF driver does
    driver.receive(plain, now)
    stack.poll(now)
    return list(stack.events())


def same(burst: list[Event], fast: HostStack, reference: HostStack, now: float) -> list[object]:
    got = run(fast, burst, now)
    assert got == run(reference, burst, now)
    assert snapshot(fast) == snapshot(reference)
    assert _driver_counters(fast) == _driver_counters(reference)
    return got


def _driver_counters(stack: HostStack) -> object:
    driver = stack.device
    assert isinstance(driver, PlainDriver)
    return driver.counters


Choose = Callable[[int, int], int]
"""Picks an int from lo..hi: hypothesis's draw, or a fixed choice."""


class Sender:
    """The traffic the tests send: each kind of frame the stack can meet, in order per state."""

    KINDS = (
        "valid",
        "replay",
        "older",
        "jump",
        "forged",
        "bad_pad",
        "truncated",
        "mutated",
        "short_esp",
        "wrong_spi",
        "not_for_us",
        "other_mac",
        "multicast",
        "plain_udp",
        "bad_checksum",
        "esp_bad_checksum",
        "esp_bad_length",
        "udp_in_any_mode",
        "tcp",
        "vlan",
        "rx_plain",
        "rx_offloaded",
        "rx_no_sa",
        "bytearray",
    )

    def __init__(self) -> None:
        self.next = {sa.handle: sa.first for sa in SAS}
        self.sent: dict[int, list[int]] = {sa.handle: [] for sa in SAS}

    def seq(self, sa: Sa, kind: str, choose: Choose) -> int:
        sent = self.sent[sa.handle]
        if kind == "replay" and sent:
            return sent[choose(0, len(sent) - 1)]
        if kind == "older":
            return max(1, self.next[sa.handle] - choose(1, 100))
        if kind == "jump":
            self.next[sa.handle] += choose(1, 400)
        seq = self.next[sa.handle]
        self.next[sa.handle] += 1
        sent.append(seq)
        return seq

    def event(self, kind: str, sa: Sa, payload: bytes, choose: Choose) -> Event:
        valid = kind not in ("wrong_spi", "not_for_us", "plain_udp", "bad_checksum")
        seq = self.seq(sa, kind, choose) if valid else 1
        frame = esp_frame(sa, seq, payload, bad_pad=kind == "bad_pad")
        rx: RxMetadata | None = None
        if kind == "forged":
            frame = flip(frame, len(frame) - 1)
        elif kind == "truncated":
            frame = frame[: choose(0, len(frame) - 1)]
        elif kind == "mutated":  # bytes of the headers changed (to a TPID's, often), maybe cut
            mutated = bytearray(frame)
            for _ in range(choose(1, 3)):
                at = choose(0, min(len(mutated), 60) - 1)
                mutated[at] = (0x81, 0x00, 0x88, 0xA8, 0x08, 0x86, 0xDD, 0x32, 0xFF)[choose(0, 8)]
            frame = bytes(mutated[: len(mutated) - choose(0, len(mutated))])
        elif kind == "short_esp":
            frame = ether(ip_packet(sa.src, sa.dst, IpProto.ESP, frame[-choose(8, 33) :]))
        elif kind == "wrong_spi":
            frame = esp_frame(Sa(9, 0x999, sa.src, sa.dst), 1, payload)
        elif kind == "not_for_us":
            frame = esp_frame(Sa(1, 0x1001, PEER4, OTHER4), 1, payload)
        elif kind == "other_mac":
            frame = bytes.fromhex("02aabbccddee") + frame[6:]
        elif kind == "multicast":
            frame = bytes.fromhex("01005e000001") + frame[6:]
        elif kind in ("plain_udp", "bad_checksum"):
            segment = udp(sa.src, sa.dst, payload)
            if kind == "bad_checksum":
                segment = flip(segment, 6)
            frame = ether(ip_packet(sa.src, sa.dst, IpProto.UDP, segment))
        elif kind in ("esp_bad_checksum", "esp_bad_length", "udp_in_any_mode"):
            segment = udp(sa.src, sa.dst, payload)
            if kind == "esp_bad_checksum":
                segment = flip(segment, 6)
            elif kind == "esp_bad_length":  # one more than there is, the checksum right
                length = (len(segment) + 1).to_bytes(2)
                segment = segment[:4] + length + bytes(2) + segment[8:]
                checksum = transport_checksum(sa.src, sa.dst, IpProto.UDP, segment)
                segment = segment[:6] + checksum.to_bytes(2) + segment[8:]
            frame = ether(ip_packet(sa.src, sa.dst, IpProto.ESP, esp(sa, seq, segment, 17)))
        elif kind == "tcp":
            segment = build_tcp(TcpHeader(80, 81, 1, 0), payload, sa.src, sa.dst)
            frame = ether(ip_packet(sa.src, sa.dst, IpProto.ESP, esp(sa, seq, segment, 6)))
        elif kind == "vlan":  # more than two tags is malformed
            frame = frame[:12] + bytes.fromhex("81000005") * choose(1, 3) + frame[12:]
        elif kind == "rx_plain":
            rx = RxMetadata(False, RxStatus.OK)
        elif kind == "rx_offloaded":
            rx = RxMetadata(True, RxStatus.OK, 3)
        elif kind == "rx_no_sa":
            rx = RxMetadata(True, RxStatus.NO_SA)
        elif kind == "bytearray":
            return bytearray(frame), None
        return frame, rx


@st.composite
def bursts(draw: st.DrawFn, sender: Sender) -> list[Event]:
    """A burst of mostly valid frames and some of every other kind."""

    def choose(lo: int, hi: int) -> int:
        return draw(st.integers(lo, hi))

    kinds = st.one_of(st.just("valid"), st.sampled_from(Sender.KINDS))
    payloads = st.one_of(st.binary(max_size=40), st.binary(min_size=1000, max_size=1400))
    return [
        sender.event(draw(kinds), draw(st.sampled_from(SAS)), draw(payloads), choose)
        for _ in range(draw(st.integers(0, 12)))
    ]


@settings(
    max_examples=int(os.environ.get("FAST_PATH_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data())
def test_both_paths_agree_on_random_bursts(data: st.DataObject) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, reference = make_stack(True, monkeypatch), make_stack(False, monkeypatch)
    sender = Sender()
    for now in range(data.draw(st.integers(1, 4))):
        same(data.draw(bursts(sender)), fast, reference, float(now))


def test_every_kind_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kind of frame through each state, after a valid packet made every cipher."""
    fast, reference = make_stack(True, monkeypatch), make_stack(False, monkeypatch)
    sender = Sender()

    def low(lo: int, hi: int) -> int:
        return lo

    same([sender.event("valid", sa, b"warm", low) for sa in SAS], fast, reference, 0.0)
    for now, kind in enumerate(Sender.KINDS):
        burst = [sender.event(kind, sa, b"%s %d" % (kind.encode(), now), low) for sa in SAS]
        burst += [sender.event("valid", sa, b"then", low) for sa in SAS]
        same(burst, fast, reference, float(now))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("length", [8, 12, 15, 16])
def test_an_esp_packet_too_short_for_its_iv_is_a_counted_drop(
    fast: bool, length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = make_stack(fast, monkeypatch)
    sa = SAS[0]
    body = esp_header(sa.spi, 1) + bytes(length - 8)
    events = run(stack, [(ether(ip_packet(sa.src, sa.dst, IpProto.ESP, body)), None)], 0.0)
    assert events == []
    # 16 bytes hold the IV but no ICV: the ICV check fails, as any forgery's does
    reason = "in_auth_failed" if length == 16 else "esp_malformed"
    assert stack.counters.drops == {reason: 1}


@pytest.mark.parametrize("fast", [True, False])
def test_a_runt_is_a_counted_drop_of_the_driver(
    fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame shorter than an Ethernet header (empty included) has no destination address
    for the NIC to filter by: PlainDriver drops and counts it (it raised IndexError on an
    empty one); from 14 bytes on the stack judges the frame."""
    stack = make_stack(fast, monkeypatch)
    frame = esp_frame(SAS[0], 1, b"whole")
    runts = [b"", frame[:1], frame[:6], frame[:13]]
    events = run(stack, [(f, None) for f in [*runts, frame[:14], frame]], 0.0)
    assert [type(e) for e in events] == [Delivered]
    driver = stack.device
    assert isinstance(driver, PlainDriver)
    assert driver.counters.rx_runt == len(runts)
    assert stack.counters.drops == {"malformed": 1}


_TAGS = bytes.fromhex("88a80007 81000005".replace(" ", ""))
_CUT_AT_A_TAG = {
    "tpid only": _TAGS[:2],
    "one tag": _TAGS[4:],
    "one tag, half an ethertype": _TAGS[4:] + b"\x08",
    "two tags": _TAGS,
    "two tags, half an ethertype": _TAGS + b"\x08",
    "two tags, tpid of a third": _TAGS + b"\x81\x00",
}


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("tags", _CUT_AT_A_TAG.values(), ids=_CUT_AT_A_TAG.keys())
def test_a_frame_cut_at_a_vlan_tag_is_a_counted_drop(
    fast: bool, tags: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames cut at the end of a VLAN tag or inside the EtherType after it, between two
    packets the compiled path takes: the stack counts each malformed (the compiled parser
    reads each EtherType only where the frame holds it; a bound off by two there reads past the
    frame, which `make sanitize` runs to see)."""
    stack = make_stack(fast, monkeypatch)
    sa = SAS[0]
    cut = HOST_MAC + PEER_MAC + tags
    burst = [esp_frame(sa, 1, b"one"), esp_frame(sa, 2, b"two"), cut, esp_frame(sa, 3, b"three")]
    events = run(stack, [(frame, None) for frame in burst], 0.0)
    assert [e.payload for e in events if isinstance(e, Delivered)] == [b"one", b"two", b"three"]
    assert stack.counters.drops == {"malformed": 1}


# -- routing -----------------------------------------------------------------------------------


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HostStack, list[bytes]]]:
    """A fast stack whose every state has its cipher and its replay window 40 above its start
    (one packet each went through Python; with ESN, the fast path takes a window that lies
    within one 2^32 subspace), and the frames its Python path (`_input`) takes from then on."""
    stack = make_stack(True, monkeypatch)
    for sa in SAS:
        run(stack, [(esp_frame(sa, sa.first + 39, b"first"), None)], 0.0)
    taken: list[bytes] = []
    python_input = stack._input

    def spy(frame: bytes, rx: RxMetadata | None, now: float) -> None:
        taken.append(frame)
        python_input(frame, rx, now)

    monkeypatch.setattr(stack, "_input", spy)
    yield stack, taken


@pytest.mark.parametrize(
    "make",
    [
        lambda: (esp_frame(SA[1], 41, b"x" * 1400), None),
        lambda: (esp_frame(SA[2], (1 << 32) + 40, b"v6" * 100), None),
        lambda: (esp_frame(SA[1], 41, b""), None),
        lambda: (esp_frame(SA[1], 41, b"plain metadata"), RxMetadata(False)),
        lambda: (esp_frame(SA[1], 41, b"the agent has no SA"), RxMetadata(True, RxStatus.NO_SA)),
        lambda: (esp_frame(SA[4], 41, b"no policy for it"), None),
        lambda: (ether(esp_frame(SA[1], 41, b"tagged")[14:], (QINQ, VLAN)), None),
    ],
    ids=["ipv4", "ipv6-esn", "empty", "rx-not-ipsec", "rx-no-sa", "no-policy", "two-vlans"],
)
def test_the_common_frame_takes_the_fast_path(
    spied: tuple[HostStack, list[bytes]], make: object
) -> None:
    stack, taken = spied
    frame, rx = make()  # type: ignore[operator]
    events = run(stack, [(frame, rx)], 5.0)
    assert taken == []
    assert len(events) == 1 and isinstance(events[0], Delivered)
    assert events[0].time == 5.0 and events[0].protocol == IpProto.UDP


@pytest.mark.parametrize(
    "make",
    [
        lambda: esp_frame(SA[1], 40, b"replayed"),
        lambda: flip(esp_frame(SA[1], 41, b"forged"), -1),
        lambda: esp_frame(SA[1], 41, b"pad", bad_pad=True),
        lambda: esp_frame(SA[3], 41, b"tunnel mode"),
        lambda: esp_frame(SA[6], 41, b"the policy names state 1"),
        lambda: esp_frame(SA[7], 41, b"a state for an address the host has not"),
        lambda: esp_frame(Sa(9, 0x999, PEER4, HOST4), 1, b"wrong SPI"),
        lambda: ether(ip_packet(PEER4, HOST4, IpProto.UDP, udp(PEER4, HOST4, b"clear"))),
        lambda: ether(ip_packet(PEER4, HOST4, IpProto.ESP, esp(SA[1], 41, b"bad", 17))),
        lambda: esp_frame(Sa(1, 0x1001, PEER4, OTHER4), 41, b"not for us"),
        lambda: ether(
            ip_packet(
                PEER4,
                HOST4,
                IpProto.ESP,
                esp(SA[1], 41, build_tcp(TcpHeader(1, 2, 3, 4), b"tcp", PEER4, HOST4), 6),
            )
        ),
    ],
    ids=[
        "replay",
        "forged",
        "bad-padding",
        "tunnel",
        "policy",
        "state-not-for-us",
        "wrong-spi",
        "clear-udp",
        "bad-udp",
        "not-for-us",
        "tcp",
    ],
)
def test_unusual_frames_take_the_python_path(
    spied: tuple[HostStack, list[bytes]], make: object
) -> None:
    stack, taken = spied
    frame = make()  # type: ignore[operator]
    run(stack, [(frame, None)], 5.0)
    assert taken == [frame]


def test_after_an_unusual_frame_the_rest_of_the_burst_goes_fast(
    spied: tuple[HostStack, list[bytes]],
) -> None:
    stack, taken = spied
    replayed = esp_frame(SA[1], 40, b"again")
    burst = [esp_frame(SA[1], seq, b"%d" % seq) for seq in (41, 42)]
    burst += [replayed] + [esp_frame(SA[1], seq, b"%d" % seq) for seq in (43, 44)]
    events = run(stack, [(frame, None) for frame in burst], 1.0)
    assert taken == [replayed]
    assert [e.payload for e in events if isinstance(e, Delivered)] == [b"41", b"42", b"43", b"44"]
    assert stack.counters.drops["in_replay"] == 1


def test_policy_verdicts_are_per_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """States 1 and 6 carry the same addresses; the policy admits only state 1's packets."""
    fast, reference = make_stack(True, monkeypatch), make_stack(False, monkeypatch)
    warm = [(esp_frame(SA[h], 1, b"warm"), None) for h in (1, 6)]
    burst = [(esp_frame(SA[h], seq, b"%d" % seq), None) for seq in (2, 3) for h in (1, 6)]
    same(warm, fast, reference, 0.0)
    assert len(same(burst, fast, reference, 1.0)) == 2
    assert fast.counters.drops["in_policy_violation"] == 3


def test_a_state_without_its_cipher_goes_to_python_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference path makes a state's cipher on its first packet; then the fast path."""
    stack = make_stack(True, monkeypatch)
    taken: list[bytes] = []
    python_input = stack._input
    monkeypatch.setattr(
        stack, "_input", lambda f, rx, now: (taken.append(f), python_input(f, rx, now))
    )
    frames = [esp_frame(SA[1], seq, b"p") for seq in (1, 2, 3)]
    events = run(stack, [(frame, None) for frame in frames], 0.0)
    assert taken == frames[:1] and len(events) == 3


def test_a_policy_change_between_bursts_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path asks the policies again in each call: a new policy takes effect at once."""
    fast, reference = make_stack(True, monkeypatch), make_stack(False, monkeypatch)
    sa = SA[4]  # no policy selects its traffic yet
    assert len(same([(esp_frame(sa, 1, b"a"), None)], fast, reference, 0.0)) == 1
    assert len(same([(esp_frame(sa, 2, b"b"), None)], fast, reference, 1.0)) == 1
    for stack in (fast, reference):
        stack.add_policy(
            XfrmPolicy(
                Direction.INBOUND,
                ipaddress.ip_network("198.51.100.0/24"),
                ipaddress.ip_network("0.0.0.0/0"),
                1,
                IpProto.UDP,
            )
        )
    assert same([(esp_frame(sa, 3, b"c"), None)], fast, reference, 2.0) == []
    assert fast.counters.drops == {"in_policy_violation": 1}
    for stack in (fast, reference):
        stack.policies.clear()
    assert len(same([(esp_frame(sa, 4, b"d"), None)], fast, reference, 3.0)) == 1


def test_the_events_are_the_dataclasses_the_python_path_makes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, reference = make_stack(True, monkeypatch), make_stack(False, monkeypatch)
    burst = [(esp_frame(SA[1], seq, b"payload %d" % seq), None) for seq in range(1, 4)]
    events = same(burst, fast, reference, 7.5)
    delivered = events[-1]
    assert type(delivered) is Delivered
    assert delivered == Delivered(7.5, 17, PEER4, HOST4, 4000, 53, b"payload 3", 1, False)
    assert hash(delivered) == hash(
        Delivered(7.5, 17, PEER4, HOST4, 4000, 53, b"payload 3", 1, False)
    )
    with pytest.raises(AttributeError):
        delivered.payload = b""  # type: ignore[misc]
    received = PacketReceived(burst[0][0], None)
    driver = PlainDriver(HOST_MAC)
    driver.receive([burst[0][0]], 0.0)
    assert driver.events() == [received]


@pytest.mark.interop
def test_the_frames_are_those_scapy_seals(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' frames against scapy's ESP (an independent implementation of RFC 4106)."""
    sa = SA[1]
    payload = b"independent" * 9
    ours = esp_frame(sa, 5, payload)
    inner = IP(src="192.0.2.1", dst="192.0.2.2", id=7, flags="DF") / UDP(sport=4000, dport=53)
    theirs = scapy_encrypt(scapy_sa(sa.spi, sa.key, 1), inner / payload, 5, explicit_iv(5))
    assert ours[14:] == bytes(theirs)
    stack = make_stack(True, monkeypatch)
    events = run(stack, [(esp_frame(sa, 1, b"warm"), None), (ours, None)], 0.0)
    assert [e.payload for e in events if isinstance(e, Delivered)] == [b"warm", payload]
