"""TSO with ESP offload end to end: host stack -> PF driver -> NIC (TSO) -> agent (IVDB) -> peer.

The naive design (`AgentConfig(ivdb=False)`) sends every segment of a TSO send with the one
sequence number and IV the stack wrote: the nonce is reused and the peer's replay window keeps
one segment. The deck's design (the IVDB rule, spec section 7) gives each segment a fresh
number: every segment decrypts at the peer, the numbers on the wire only grow, and the TCP
byte stream arrives whole, whatever mix of TSO and ordinary sends the host makes.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ipsec_offload.agent.agent import AgentConfig
from ipsec_offload.agent.counters import DropReason
from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.agent.sad import SecurityAssociation
from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.errors import UsageError
from ipsec_offload.host.stack import DEFAULT_MSS, Delivered, HostStack
from ipsec_offload.host.xfrm import Mode
from ipsec_offload.nic.nic import VsiCounters
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.config import Direction
from ipsec_offload.wire.ethernet import EtherType, VlanTag, parse_ethernet
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.transport import TcpFlags
from tools import scapy_sa, tshark_decode

pytestmark = pytest.mark.usefixtures("agent_path", "nic_path")

HOST_MAC, PEER_MAC = "02:00:00:00:01:00", "02:00:00:00:02:00"
SEQ_MASK = 0xFFFF_FFFF
PORT, UDP_PORT = 5001, 5000  # no dissector of tshark claims them
_ESP = struct.Struct(">IIQ")


def make_bed(
    *, ivdb: bool = True, own_sequence: bool = True
) -> tuple[Testbed, HostStack, HostStack]:
    bed = Testbed(agent=AgentConfig(ivdb=ivdb), own_sequence=own_sequence)
    host = bed.add_pf_host("host", HOST_MAC, ipv4="192.0.2.1", ipv6="2001:db8::1")
    peer = bed.add_peer("peer", PEER_MAC, ipv4="192.0.2.2", ipv6="2001:db8::2")
    return bed, host, peer


def addr(stack: HostStack, family: int) -> bytes:
    return stack.addresses[4 if family == 4 else 16]


def data_of(size: int, salt: int = 0) -> bytes:
    return bytes((i * 7 + salt) % 251 for i in range(size))


@dataclass(frozen=True)
class WireEsp:
    spi: int
    seq: int
    iv: int
    frame: bytes


def wire_esp(bed: Testbed) -> list[WireEsp]:
    """Every ESP frame the agent put on the wire, in order."""
    found = []
    for record in bed.captures["agent-to-wire"]:
        eth = parse_ethernet(record.frame)
        esp = eth.header_len + (20 if eth.ethertype == EtherType.IPV4 else 40)
        spi, seq, iv = _ESP.unpack_from(record.frame, esp)
        found.append(WireEsp(spi, seq, iv, record.frame))
    return found


def tso_counters(bed: Testbed) -> VsiCounters:
    vsi = bed.endpoint("host").vsi
    assert vsi is not None
    return bed.nic.vsi(vsi).counters


def out_sa(bed: Testbed, sas: SaBundle) -> SecurityAssociation:
    (sa,) = [
        s for s in bed.agent.sad if s.spi == sas.a_out.spi and s.direction == Direction.OUTBOUND
    ]
    return sa


def tcp_stream(delivered: list[Delivered], port: int, start: int) -> bytes:
    """The byte stream of the TCP segments to `port`, by sequence number from `start`; every
    byte must be there exactly once."""
    segments = sorted(
        ((d.tcp_seq - start) & SEQ_MASK, d.payload)
        for d in delivered
        if d.protocol == IpProto.TCP and d.dst_port == port and d.tcp_seq is not None
    )
    stream = b""
    for offset, payload in segments:
        assert offset == len(stream), f"gap or overlap at {offset}"
        stream += payload
    return stream


# -- the naive design: one number for every segment ----------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_naive_design_reuses_the_nonce_and_the_peer_keeps_one_segment(family: int) -> None:
    bed, host, peer = make_bed(ivdb=False)
    sas = bed.secure(host, peer, family=family)
    data = data_of(4 * 1000)
    host.send_tcp(addr(peer, family), 40000, PORT, data, bed.now, seq=500, mss=1000)
    bed.settle(host)

    counters = tso_counters(bed)
    assert (counters.tso_sends, counters.tso_segments) == (1, 4)
    on_wire = wire_esp(bed)
    assert len(on_wire) == 4
    # the nonce (salt || IV) is used four times under one key: the same (SA, IV) on the wire
    nonces = Counter((e.spi, e.iv) for e in on_wire)
    assert nonces == Counter({(sas.a_out.spi, 1): 4})
    assert {e.seq for e in on_wire} == {1}
    # the peer's replay window accepts the first and drops the rest
    delivered = bed.delivered(peer)
    assert [(d.tcp_seq, d.payload) for d in delivered] == [(500, data[:1000])]
    assert peer.counters.drops == {"in_replay": 3}
    assert bed.agent.counters.drops[DropReason.SEQ_EXHAUSTED] == 0


# -- the deck's design: the IVDB rule ----------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_ivdb_numbers_every_segment_and_interleaved_sends(family: int) -> None:
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer, family=family)
    dst = addr(peer, family)
    first, second = data_of(5 * 1000 + 500), data_of(3 * 1000, 3)
    nxt = host.send_tcp(dst, 40000, PORT, first, bed.now, seq=7, mss=1000)
    bed.settle(host)
    host.send_udp(dst, 40001, UDP_PORT, b"ordinary", bed.now)
    bed.settle(host)
    host.send_tcp(dst, 40000, PORT, second, bed.now, seq=nxt, mss=1000)
    bed.settle(host)
    host.send_udp(dst, 40001, UDP_PORT, data_of(2500, 9), bed.now, mss=1000)
    bed.settle(host)
    host.send_echo(dst, 1, 1, b"ping", bed.now)
    bed.settle(host)

    assert host.counters.tx_tso_sends == 3
    counters = tso_counters(bed)
    assert (counters.tso_sends, counters.tso_segments) == (3, 6 + 3 + 3)
    on_wire = wire_esp(bed)
    assert len(on_wire) == 6 + 1 + 3 + 3 + 1
    assert {e.spi for e in on_wire} == {sas.a_out.spi}
    assert [e.seq for e in on_wire] == list(range(1, len(on_wire) + 1))
    assert all(e.iv == e.seq for e in on_wire)  # spec 2: the IV is the counter
    assert out_sa(bed, sas).ivdb == len(on_wire) + 1

    delivered = bed.delivered(peer)
    assert peer.counters.drops == {}
    assert tcp_stream(delivered, PORT, 7) == first + second
    tcp = [d for d in delivered if d.protocol == IpProto.TCP]
    assert all(d.state == sas.b_in.handle for d in tcp)
    assert [d.tcp_flags for d in tcp] == [TcpFlags.ACK] * 5 + [TcpFlags.ACK | TcpFlags.PSH] + [
        TcpFlags.ACK
    ] * 2 + [TcpFlags.ACK | TcpFlags.PSH]
    udp = [d.payload for d in delivered if d.protocol == IpProto.UDP]
    big = data_of(2500, 9)
    assert udp == [b"ordinary", big[:1000], big[1000:2000], big[2000:]]
    assert len([d for d in delivered if d.protocol not in (IpProto.TCP, IpProto.UDP)]) == 1


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(
    ("size", "mss", "segments"),
    [
        pytest.param(1460, 1460, 1, id="exactly-one-mss"),
        pytest.param(1461, 1460, 2, id="one-byte-over"),
        pytest.param(65536, 1460, 45, id="64KiB"),
        pytest.param(10_000, 1001, 10, id="mss-not-multiple-of-4"),
        pytest.param(300, 1, 300, id="mss-1"),
    ],
)
def test_edge_sizes(family: int, size: int, mss: int, segments: int) -> None:
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer, family=family)
    data = data_of(size)
    host.send_tcp(addr(peer, family), 40000, PORT, data, bed.now, seq=SEQ_MASK - 100, mss=mss)
    bed.settle(host)
    on_wire = wire_esp(bed)
    assert [e.seq for e in on_wire] == list(range(1, segments + 1))
    assert tcp_stream(bed.delivered(peer), PORT, SEQ_MASK - 100) == data
    assert peer.counters.drops == {}
    # a send of one MSS or less is an ordinary send; a larger one goes down as TSO sends
    # that each fill the IP length field with whole segments
    room = 0xFFFF - (20 if family == 4 else 0) - 16 - 20
    tso_sends = 0 if size <= mss else -(-size // (room // mss * mss))
    assert host.counters.tx_tso_sends == tso_counters(bed).tso_sends == tso_sends
    assert tso_counters(bed).tso_segments == (segments if tso_sends else 0)
    assert out_sa(bed, sas).packets == segments


def test_64kib_is_two_tso_sends_each_reserving_a_number_per_segment() -> None:
    """The stack reserves one number per segment of each TSO send, as Linux's
    xfrm_replay_overflow_offload does (its IVs 1 and 45); the agent numbers the segments
    within them, so its counter is never above the stack's."""
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer)
    bed.captures["nic-to-agent"].clear()
    host.send_tcp(addr(peer, 4), 40000, PORT, data_of(65536), bed.now, mss=1460)
    bed.settle(host)
    assert host.states[sas.a_out.handle].oseq == 45
    to_agent = bed.captures["nic-to-agent"].records
    stack_ivs = [int.from_bytes(r.frame[20 + 20 + 8 : 20 + 20 + 16]) for r in to_agent]
    # 44 full segments fit one send; each segment leaves the NIC with its send's IV
    assert stack_ivs == [1] * 44 + [45]
    assert [e.iv for e in wire_esp(bed)] == list(range(1, 46))
    assert out_sa(bed, sas).ivdb == host.states[sas.a_out.handle].oseq + 1


def test_naive_hand_over_numbers_each_tso_send_once() -> None:
    """Without the stack's ownership (`--naive seq-handover`) each TSO send takes one number
    and the agent runs ahead of the stack: the state the next issue's fault reuses."""
    bed, host, peer = make_bed(own_sequence=False)
    sas = bed.secure(host, peer)
    host.send_tcp(addr(peer, 4), 40000, PORT, data_of(65536), bed.now, mss=1460)
    bed.settle(host)
    assert host.states[sas.a_out.handle].oseq == 2
    assert [e.iv for e in wire_esp(bed)] == list(range(1, 46))
    assert out_sa(bed, sas).ivdb == 46


# -- no (SA, sequence number) twice, whatever the mix -------------------------------------

_Op = tuple[str, int, int, int]

_OPS = st.tuples(
    st.sampled_from(["tcp", "udp-large", "udp", "echo"]),
    st.sampled_from([4, 6]),
    st.integers(0, 9000),
    st.integers(100, 3000),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_OPS, min_size=1, max_size=8), start=st.integers(0, SEQ_MASK))
def test_no_sequence_number_twice_across_any_mix(ops: list[_Op], start: int) -> None:
    bed, host, peer = make_bed()
    bundles = {family: bed.secure(host, peer, family=family) for family in (4, 6)}
    sent: dict[int, bytes] = {4: b"", 6: b""}
    udp_sent: list[bytes] = []
    seq = {4: start, 6: start}
    for index, (kind, family, size, mss) in enumerate(ops):
        dst = addr(peer, family)
        data = data_of(size, index)
        if kind == "tcp":
            seq[family] = host.send_tcp(dst, 40000, PORT, data, bed.now, seq=seq[family], mss=mss)
            sent[family] += data
        elif kind == "udp-large":
            host.send_udp(dst, 40001, UDP_PORT, data, bed.now, mss=mss)
            udp_sent += [data[i : i + mss] for i in range(0, len(data), mss)] or [b""]
        elif kind == "udp":
            host.send_udp(dst, 40001, UDP_PORT, data[:1400], bed.now)
            udp_sent.append(data[:1400])
        else:
            host.send_echo(dst, 9, index, data[:100], bed.now)
        bed.settle(host)

    on_wire = wire_esp(bed)
    pairs = Counter((e.spi, e.seq) for e in on_wire)
    assert all(n == 1 for n in pairs.values()), "an (SA, sequence number) left twice"
    for sas in bundles.values():
        seqs = [e.seq for e in on_wire if e.spi == sas.a_out.spi]
        assert seqs == list(range(1, len(seqs) + 1))  # strictly increasing, none skipped
    assert all(e.iv == e.seq for e in on_wire)
    delivered = bed.delivered(peer)
    assert peer.counters.drops == {}
    for family in (4, 6):
        src = addr(host, family)
        mine = [d for d in delivered if d.src == src]
        assert tcp_stream(mine, PORT, start) == sent[family]
    udp_got = Counter(d.payload for d in delivered if d.protocol == IpProto.UDP)
    assert udp_got == Counter(udp_sent)
    assert set(bed.agent.counters.drops.values()) == {0}


# -- exhaustion: a counted drop, never a wrap ---------------------------------------------


@pytest.mark.parametrize("esn", [False, True], ids=["32-bit", "esn-64-bit"])
def test_stack_drops_a_tso_send_it_has_no_numbers_for(esn: bool) -> None:
    """The stack reserves every segment's number before the send goes down: a TSO send that
    needs more numbers than are left is dropped whole (counted), never wrapped or split, and
    the numbers left still serve smaller sends up to the last."""
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer, esn=esn)
    limit = (1 << 64 if esn else 1 << 32) - 1
    host.states[sas.a_out.handle].oseq = limit - 3
    peer.states[sas.b_in.handle].replay = ReplayWindow(64, esn, limit - 3)
    host.send_tcp(addr(peer, 4), 40000, PORT, data_of(5 * 100), bed.now, mss=100)
    bed.settle(host)
    assert host.counters.drops == {"out_seq_exhausted": 1} and wire_esp(bed) == []
    for n in range(4):
        host.send_udp(addr(peer, 4), 40001, UDP_PORT, b"small %d" % n, bed.now)
        bed.settle(host)
    assert [e.iv for e in wire_esp(bed)] == [limit - 2, limit - 1, limit]
    assert host.counters.drops == {"out_seq_exhausted": 2}
    assert bed.agent.counters.drops[DropReason.SEQ_EXHAUSTED] == 0
    assert [d.payload for d in bed.delivered(peer)] == [b"small 0", b"small 1", b"small 2"]


@pytest.mark.parametrize("esn", [False, True], ids=["32-bit", "esn-64-bit"])
def test_agent_exhaustion_drops_segments_and_never_wraps(esn: bool) -> None:
    """Where the agent runs ahead of a naive stack, it drops at the end of its numbers."""
    bed, host, peer = make_bed(own_sequence=False)
    sas = bed.secure(host, peer, esn=esn)
    limit = (1 << 64 if esn else 1 << 32) - 1
    # the stack's counter near the end; the agent keeps its numbers (above its IVDB)
    host.states[sas.a_out.handle].oseq = limit - 3
    peer.states[sas.b_in.handle].replay = ReplayWindow(64, esn, limit - 3)
    data = data_of(5 * 100)
    host.send_tcp(addr(peer, 4), 40000, PORT, data, bed.now, mss=100)
    bed.settle(host)
    host.send_udp(addr(peer, 4), 40001, UDP_PORT, b"after", bed.now)
    bed.settle(host)

    on_wire = wire_esp(bed)
    assert [e.iv for e in on_wire] == [limit - 2, limit - 1, limit]
    assert [e.seq for e in on_wire] == [(limit - i) & SEQ_MASK for i in (2, 1, 0)]
    assert bed.agent.counters.drops[DropReason.SEQ_EXHAUSTED] == 2 + 1
    assert out_sa(bed, sas).ivdb > limit  # it never wrapped back to small numbers
    assert tcp_stream(bed.delivered(peer), PORT, 0) == data[:300]
    assert peer.counters.drops == {}


# -- where the stack segments itself -------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_software_esp_state_is_segmented_in_the_stack(family: int) -> None:
    bed, host, peer = make_bed()
    bed.secure(host, peer, family=family, offload_a=False)
    data = data_of(4500)
    host.send_tcp(addr(peer, family), 40000, PORT, data, bed.now, mss=1000)
    bed.settle(host)
    assert (host.counters.tx_sw_segmented, host.counters.tx_esp_software) == (1, 5)
    assert host.counters.tx_tso_sends == 0 and tso_counters(bed).tso_sends == 0
    assert [e.seq for e in wire_esp(bed)] == [1, 2, 3, 4, 5]
    assert tcp_stream(bed.delivered(peer), PORT, 0) == data


def test_tunnel_mode_is_segmented_in_the_stack_and_each_segment_offloaded() -> None:
    bed, host, peer = make_bed()
    bed.secure(host, peer, mode=Mode.TUNNEL)
    data = data_of(2500)
    host.send_tcp(addr(peer, 4), 40000, PORT, data, bed.now, mss=1000)
    bed.settle(host)
    driver = bed.endpoint("host").driver
    assert isinstance(driver, PfDriver)
    assert (host.counters.tx_sw_segmented, host.counters.tx_esp_offloaded) == (1, 3)
    assert driver.counters.tx_offloaded == 3 and tso_counters(bed).tso_sends == 0
    assert [e.seq for e in wire_esp(bed)] == [1, 2, 3]
    assert tcp_stream(bed.delivered(peer), PORT, 0) == data


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
def test_vm_on_a_qinq_vf(trusted: bool) -> None:
    """A trusted VF's TSO sends are segmented with their two VLAN tags and numbered in the VF's
    SAD domain; an untrusted VF gets no offload, so its stack segments itself."""
    bed = Testbed()
    bed.add_pf_host("pf", "02:00:00:00:00:10", ipv4="10.0.0.1")
    vlans = (VlanTag(0x88A8, 100), VlanTag(0x8100, 10))
    vm = bed.add_vm("vm", 0, "02:00:00:00:01:01", ipv4="10.0.1.100", vlans=vlans, trusted=trusted)
    peer = bed.add_peer("peer", "02:00:00:00:02:01", ipv4="10.0.1.1", vlans=vlans)
    bed.secure(vm, peer)
    data = data_of(4321)
    vm.send_tcp("10.0.1.1", 40000, PORT, data, bed.now, mss=1000)
    bed.settle(vm)
    vsi = bed.endpoint(vm).vsi
    assert vsi is not None
    counters = bed.nic.vsi(vsi).counters
    assert (counters.tso_sends, counters.tso_segments) == ((1, 5) if trusted else (0, 0))
    assert vm.counters.tx_sw_segmented == (0 if trusted else 1)
    on_wire = wire_esp(bed)
    assert [e.seq for e in on_wire] == [1, 2, 3, 4, 5]
    assert all(parse_ethernet(e.frame).vlans == vlans for e in on_wire)
    assert tcp_stream(bed.delivered(peer), PORT, 0) == data


def test_plain_tcp_both_ways_and_offloaded_receive() -> None:
    bed, host, peer = make_bed()
    data = data_of(3000)
    host.send_tcp(addr(peer, 6), 40000, PORT, data, bed.now, mss=DEFAULT_MSS)
    bed.settle(host)
    assert tcp_stream(bed.delivered(peer), PORT, 0) == data
    assert (host.counters.tx_sw_segmented, host.counters.tx_plain) == (1, 3)
    sas = bed.secure(host, peer)
    back = data_of(4000, 5)
    end = peer.send_tcp(addr(host, 4), PORT, 40000, back, bed.now, seq=10, mss=999)
    bed.settle(peer)
    assert end == 4010
    got = [d for d in bed.delivered(host) if d.protocol == IpProto.TCP]
    assert all(d.offloaded and d.state == sas.a_in.handle for d in got)
    assert tcp_stream(got, 40000, 10) == back


def test_send_tcp_returns_the_next_sequence_number_and_checks_the_mss() -> None:
    bed, host, peer = make_bed()
    dst = addr(peer, 4)
    syn = TcpFlags.SYN
    assert host.send_tcp(dst, 1, 2, b"", bed.now, seq=SEQ_MASK, flags=syn) == 0
    fin = TcpFlags.FIN | TcpFlags.ACK
    assert host.send_tcp(dst, 1, 2, b"abc", bed.now, seq=5, flags=fin, mss=0) == 9
    with pytest.raises(UsageError, match="MSS -1"):
        host.send_tcp(dst, 1, 2, b"abc", bed.now, mss=-1)
    bed.secure(host, peer)
    with pytest.raises(UsageError, match="must fit an IP packet"):
        host.send_tcp(dst, 1, 2, bytes(70000), bed.now, mss=65500)
    bed.settle(host)


# -- interop: scapy and tshark decrypt every segment ---------------------------------------


def _tso_run(family: int, esn: bool) -> tuple[Testbed, SaBundle, bytes]:
    bed, host, peer = make_bed()
    sas = bed.secure(host, peer, family=family, esn=esn)
    data = data_of(7 * 1397 + 3)
    host.send_tcp(addr(peer, family), 40000, PORT, data, bed.now, seq=1000, mss=1397)
    bed.settle(host)
    host.send_udp(addr(peer, family), 40001, UDP_PORT, b"between", bed.now)
    bed.settle(host)
    more = data_of(2 * 1397, 1)
    host.send_tcp(addr(peer, family), 40000, PORT, more, bed.now, seq=1000 + len(data), mss=1397)
    bed.settle(host)
    return bed, sas, data + more


@pytest.mark.interop
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("esn", [False, True], ids=["no-esn", "esn"])
def test_scapy_decrypts_every_segment(family: int, esn: bool) -> None:
    bed, sas, data = _tso_run(family, esn)
    sa = scapy_sa(sas.a_out.spi, sas.a_out.key_material, int(sas.a_out.algorithm), esn)
    stream: dict[int, bytes] = {}
    seqs = []
    for e in wire_esp(bed):
        eth = Ether(e.frame)
        outer = eth[IP] if family == 4 else eth[IPv6]
        inner = sa.decrypt(outer.copy())  # raises if the ICV does not verify
        seqs.append(e.seq)
        if TCP in inner:
            tcp = inner[TCP]
            stream[tcp.seq] = raw(tcp.payload)
            # scapy's own checksum over the decrypted segment (outer addresses, transport
            # mode) must be the one the NIC wrote
            probe = inner.copy()
            del probe[TCP].chksum
            assert inner.__class__(raw(probe))[TCP].chksum == tcp.chksum
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 8 + 1 + 2
    assert b"".join(stream[s] for s in sorted(stream)) == data


TSHARK_FIELDS = [
    "esp.sequence",
    "esp.iv",
    "esp.icv_good",
    "tcp.seq_raw",
    "tcp.flags",
    "tcp.checksum.status",
    "tcp.payload",
    "udp.checksum.status",
    "_ws.malformed",
]


@pytest.mark.interop
@pytest.mark.parametrize("family", [4, 6])
def test_tshark_decrypts_every_segment(tshark: str, tmp_path: Path, family: int) -> None:
    bed, _sas, data = _tso_run(family, False)
    pcap = tmp_path / "wire.pcap"
    bed.captures["agent-to-wire"].write(pcap)
    checks = ["-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]
    rows = tshark_decode(pcap, bed.esp_sa_entries(), TSHARK_FIELDS, checks)
    assert [int(r["esp.sequence"]) for r in rows] == list(range(1, 12))
    assert all(r["esp.iv"] == f"{int(r['esp.sequence']):016x}" for r in rows)
    assert all(r["esp.icv_good"] == "1" and not r["_ws.malformed"] for r in rows)
    tcp_rows = [r for r in rows if r["tcp.seq_raw"]]
    assert len(tcp_rows) == 10
    # checksum status 1 is "good": tshark checked every segment's checksum itself
    assert all(r["tcp.checksum.status"] == "1" for r in tcp_rows)
    assert [r["udp.checksum.status"] for r in rows if not r["tcp.seq_raw"]] == ["1"]
    stream = b"".join(bytes.fromhex(r["tcp.payload"]) for r in tcp_rows)
    assert stream == data
    second = 1000 + 7 * 1397 + 3  # where _tso_run's second send starts
    expected = [1000 + i * 1397 for i in range(8)] + [second, second + 1397]
    assert [int(r["tcp.seq_raw"]) for r in tcp_rows] == expected
    flags = [int(r["tcp.flags"], 16) for r in tcp_rows]
    push_ack = TcpFlags.PSH | TcpFlags.ACK
    assert flags == [TcpFlags.ACK] * 7 + [push_ack] + [TcpFlags.ACK, push_ack]
