"""The benchmark runs and reports every figure; the batch interface gives the bytes of
frame-at-a-time; the data path's tuple codecs give the bytes of the object codecs.

No test here times anything: figures depend on the machine (docs/performance.md).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_frames import (
    AGENT_MAC,
    CONFIG,
    HOST_MAC,
    KEY128,
    LOCAL4,
    LOCAL6,
    PEER4,
    PEER6,
    PEER_MAC,
    VF_MAC,
    VLAN_Q,
    add_sa,
    config_body,
    esp_packet,
    eth_header,
    hop_by_hop,
    offload_frame,
    tx_word,
    wire_frame,
)
from ipsec_offload.agent.agent import AgentOutput, IpsecAgent
from ipsec_offload.bench.cli import bench
from ipsec_offload.bench.live import cannot_run
from ipsec_offload.bench.run import QUICK
from ipsec_offload.errors import ParseError
from ipsec_offload.nic.descriptors import TxDescriptor
from ipsec_offload.nic.nic import Nic, NicOutput, SwitchMode, VsiKind
from ipsec_offload.wire.config import Direction, LocalAddr, Opcode, encode_local_addr
from ipsec_offload.wire.esp import esp_trailer_fields, parse_esp_trailer
from ipsec_offload.wire.ethernet import ethernet_fields, parse_ethernet
from ipsec_offload.wire.ip import (
    IPv4Header,
    IPv6Header,
    build_ipv4,
    build_ipv6,
    ipv4_fields,
    ipv4_with_length,
    ipv6_with_length,
    parse_ipv4,
    parse_ipv6,
)
from ipsec_offload.wire.metadata import (
    RxMetadata,
    RxStatus,
    build_rx_metadata,
    parse_tx_metadata,
    rx_metadata_word,
    tx_metadata_fields,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPI = 0x2000

# -- the benchmark ------------------------------------------------------------------------------

DATAPATH = (
    "bare_encrypt",
    "bare_decrypt",
    "scapy_encrypt",
    "scapy_decrypt",
    "agent_tx",
    "agent_rx",
    "reference_tx",
    "reference_rx",
    "full_path",
    "full_path_captured",
)


def test_quick_run_writes_every_figure_with_its_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(bench, ["--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    figures = {f["id"]: f for f in report["figures"]}
    small, large = QUICK.sad_sizes
    golden_small, golden_large = QUICK.golden_frames
    expected = [
        f"{name}/{algorithm.name.lower()}/{size}"
        for name in DATAPATH
        for algorithm in QUICK.algorithms
        for size in QUICK.sizes
    ] + [
        f"sad_lookup/{small}",
        f"sad_lookup/{large}",
        f"sad_lookup/{large}/active_{small}",
        f"sad_lookup/ipv6/{small}",
        f"sad_lookup/ipv6/{large}",
        f"sad_lookup/ipv6/{large}/active_{small}",
        f"dict_lookup/{small}",
        f"dict_lookup/{large}",
        "sa_memory_budget",
        "sa_memory/outbound",
        "sa_memory/inbound",
        "config/agent",
        "config/pf_driver",
        f"golden/agent_alone/{golden_small}",
        f"golden/replay/{golden_small}",
        f"golden/replay/{golden_large}",
        f"golden/cost/{golden_small}",
        f"golden/cost/{golden_large}",
    ]
    if cannot_run() is None:  # root, namespaces, the compiled packet I/O: the live figures
        expected += [
            f"{name}/aes_gcm_128/{size}"
            for name in (
                "live_in_process",
                "live_forwarder",
                "live_agent",
                "live_one_worker",
                "live_two_workers",
            )
            for size in QUICK.live_sizes
        ]
        assert report["notes"] == []
    else:
        assert report["notes"] == [f"live figures not measured: {cannot_run()}"]
    assert sorted(figures) == sorted(expected)
    for figure in figures.values():
        assert figure["value"] > 0, figure["id"]
        assert figure["baseline"] == (not figure["ratios"])
        for ratio in figure["ratios"]:
            baseline = figures[ratio["baseline"]]
            assert baseline["baseline"], f"{figure['id']} is compared with a non-baseline"
            assert ratio["value"] > 0
            assert (ratio["target"] is None) == (ratio["met"] is None)
    # each measured figure says how it compares, and the targets are all there
    measured = [f for f in figures.values() if not f["baseline"]]
    assert all(f["ratios"] for f in measured)
    targeted = {f["id"].split("/")[0] for f in measured if any(r["target"] for r in f["ratios"])}
    live = {"live_agent", "live_two_workers"} if cannot_run() is None else set()
    assert targeted == {
        "agent_tx", "agent_rx", "full_path", "sad_lookup", "sa_memory", "golden", *live
    }  # fmt: skip
    cost = figures[f"golden/cost/{golden_large}"]
    assert [(r["baseline"], r["target"]) for r in cost["ratios"]] == [
        (f"golden/cost/{golden_small}", "<= 1.3")
    ]
    for algorithm in QUICK.algorithms:
        tx = figures[f"agent_tx/{algorithm.name.lower()}/1400"]
        assert [r["target"] for r in tx["ratios"]] == [">= 0.5", ">= 100"]
        assert tx["gbps"] > 0
    assert report["machine"]["cpus"] and report["machine"]["python"]
    assert report["machine"]["fast paths"].startswith(("all compiled", "not built: "))
    for figure in figures.values():
        assert figure["what"] in result.output
    assert "targets met" in result.output


def test_markdown_table(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        bench, ["--quick", "--markdown", "--out", str(tmp_path / "bench.json")]
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| figure | size |")
    assert len({row.count("|") for row in rows}) == 1


# -- the batch interface: a burst gives what its frames give one at a time ----------------------


def _agent() -> IpsecAgent:
    """An agent with SAs both ways, a VLAN domain, and a local address (hairpin)."""
    agent = IpsecAgent()
    add_sa(agent, Direction.OUTBOUND, SPI, PEER4, local_mac=HOST_MAC)
    add_sa(agent, Direction.OUTBOUND, SPI, PEER6, local_mac=HOST_MAC, vlans=(VLAN_Q,))
    add_sa(agent, Direction.OUTBOUND, SPI, LOCAL4, local_mac=HOST_MAC)
    add_sa(agent, Direction.INBOUND, SPI, LOCAL4, local_mac=HOST_MAC, replay_window=4)
    add_sa(agent, Direction.INBOUND, SPI, LOCAL6, local_mac=HOST_MAC, vlans=(VLAN_Q,))
    add_sa(agent, Direction.INBOUND, SPI, LOCAL4, local_mac=VF_MAC)
    agent.from_host(
        [
            eth_header(AGENT_MAC, HOST_MAC, CONFIG)
            + config_body(Opcode.ADD_LOCAL_ADDR, encode_local_addr(LocalAddr(VF_MAC)), txn_id=7)
        ]
    )
    return agent


_HOST_FRAMES = [
    offload_frame(SPI, 0, b"a" * 30),
    offload_frame(SPI, 0, b"b" * 1000),
    offload_frame(SPI, 0, b"c" * 7, src_ip=LOCAL6, dst_ip=PEER6, vlans=(VLAN_Q,)),
    offload_frame(SPI, 9, b"stack's IV ahead of the IVDB"),
    offload_frame(SPI, 0, b"to the vf", dst_mac=VF_MAC, dst_ip=LOCAL4),  # hairpin
    offload_frame(SPI + 1, 0, b"no SA"),
    offload_frame(SPI, 0, b"reserved bits", meta=tx_word(True, 17, 14, 5) | 0x0100_0000),
    offload_frame(SPI, 0, b"bypass", meta=tx_word(False, 0, 0, 0)),
    eth_header(PEER_MAC, HOST_MAC, 0x0800) + b"untagged",
    eth_header(AGENT_MAC, HOST_MAC, CONFIG) + config_body(Opcode.GET_CAPS, (), txn_id=9),
    b"\x01\x02\x03",
]
_WIRE_FRAMES = [
    *(wire_frame(esp_packet(KEY128, SPI, seq, bytes(seq * 3))) for seq in (1, 2, 5, 3)),
    wire_frame(esp_packet(KEY128, SPI, 2, b"replayed")),
    wire_frame(esp_packet(KEY128, SPI, 1, b"vlan"), src_ip=PEER6, dst_ip=LOCAL6, vlans=(VLAN_Q,)),
    wire_frame(esp_packet(KEY128, SPI, 1, b"vf"), dst_mac=VF_MAC),
    wire_frame(esp_packet(KEY128, SPI, 1, b"ext"), src_ip=PEER6, dst_ip=LOCAL6, ext=hop_by_hop()),
    wire_frame(esp_packet(KEY128, SPI + 1, 1, b"no SA")),
    wire_frame(esp_packet(KEY128, SPI, 9, b"forged")[:-1] + b"\x00"),
    eth_header(HOST_MAC, PEER_MAC, 0x0800) + b"not ESP",
    eth_header(HOST_MAC, PEER_MAC, CONFIG) + b"config from the wire",
]


def _joined(outputs: list[AgentOutput]) -> AgentOutput:
    return AgentOutput(
        [f for o in outputs for f in o.to_host],
        [f for o in outputs for f in o.to_wire],
        [f for o in outputs for f in o.hairpin],
    )


def test_agent_burst_is_frame_at_a_time() -> None:
    burst, single = _agent(), _agent()
    assert burst.from_host(_HOST_FRAMES) == _joined([single.from_host([f]) for f in _HOST_FRAMES])
    assert burst.from_wire(_WIRE_FRAMES) == _joined([single.from_wire([f]) for f in _WIRE_FRAMES])
    assert burst.dump() == single.dump()
    # every path was taken: encrypted, hairpin, bypass, decrypted, replay, forged
    paths = burst.dump()["counters"]
    assert paths["paths"]["HAIRPIN"] == 1 and paths["paths"]["TX_BYPASS"] == 1
    assert paths["rx_status"]["REPLAY"] and paths["rx_status"]["AUTH_FAILED"] == 1


@PROPERTY
@given(
    st.lists(st.integers(0, len(_HOST_FRAMES) - 1), max_size=30),
    st.lists(st.integers(0, len(_WIRE_FRAMES) - 1), max_size=30),
    st.integers(1, 8),
)
def test_agent_bursts_of_any_size_are_frame_at_a_time(
    host: list[int], wire: list[int], burst_size: int
) -> None:
    bursts, single = _agent(), _agent()
    host_frames = [_HOST_FRAMES[i] for i in host]
    wire_frames = [_WIRE_FRAMES[i] for i in wire]
    for frames, burst_call, single_call in (
        (host_frames, bursts.from_host, single.from_host),
        (wire_frames, bursts.from_wire, single.from_wire),
    ):
        chunks = [frames[i : i + burst_size] for i in range(0, len(frames), burst_size)]
        assert _joined([burst_call(c) for c in chunks]) == _joined(
            [single_call([f]) for f in frames]
        )
    assert bursts.dump() == single.dump()


def _nic() -> Nic:
    nic = Nic(mode=SwitchMode.VEB)
    nic.add_vsi(VsiKind.PF, HOST_MAC)
    nic.add_vsi(VsiKind.VF, VF_MAC, (VLAN_Q,))
    return nic


def _joined_nic(outputs: list[NicOutput]) -> NicOutput:
    return NicOutput(
        [f for o in outputs for f in o.to_agent],
        [d for o in outputs for d in o.rx],
    )


def test_nic_burst_is_frame_at_a_time() -> None:
    descriptors = [
        TxDescriptor(
            eth_header(PEER_MAC, HOST_MAC, 0x0800) + b"to the agent", tx_word(True, 17, 14, 5)
        ),
        TxDescriptor(eth_header(VF_MAC, HOST_MAC, 0x0800) + b"plain, untagged"),
        TxDescriptor(eth_header(b"\xff" * 6, HOST_MAC, 0x0806) + b"broadcast"),
        TxDescriptor(eth_header(PEER_MAC, VF_MAC, 0x0800) + b"spoofed"),
        TxDescriptor(b"short"),
    ]
    burst, single = _nic(), _nic()
    assert burst.transmit(0, descriptors) == _joined_nic(
        [single.transmit(0, [d]) for d in descriptors]
    )
    from_agent = [
        eth_header(HOST_MAC, AGENT_MAC, 0x0800, meta=0x8000_0001) + b"decrypted",
        eth_header(VF_MAC, PEER_MAC, 0x0800, (VLAN_Q,), meta=0) + b"to the vf",
        eth_header(b"\xff" * 6, PEER_MAC, 0x0806, meta=0) + b"broadcast",
        eth_header(PEER_MAC, AGENT_MAC, 0x0800) + b"no VSI",
        b"bad",
    ]
    assert burst.from_agent(from_agent) == _joined_nic([single.from_agent([f]) for f in from_agent])
    assert burst.dump() == single.dump()


# -- the data path's tuple codecs give what the object codecs give --------------------------------


@PROPERTY
@given(st.binary(max_size=40), st.sampled_from([0x88B5, -1]))
def test_ethernet_fields_are_parse_ethernet(buf: bytes, meta: int) -> None:
    try:
        header = parse_ethernet(buf, meta)
    except ParseError as error:
        try:
            ethernet_fields(buf, meta)
        except ParseError as again:
            assert (again.what, again.offset) == (error.what, error.offset)
            return
        raise AssertionError("ethernet_fields accepted what parse_ethernet refused") from None
    dst, src, ethertype, vlans, metadata, header_len = ethernet_fields(buf, meta)
    assert (dst, src, ethertype, vlans, metadata) == (
        header.dst,
        header.src,
        header.ethertype,
        header.vlans,
        header.metadata,
    )
    assert header_len == header.header_len


_IPV4_HEADERS = st.builds(
    IPv4Header,
    src=st.binary(min_size=4, max_size=4),
    dst=st.binary(min_size=4, max_size=4),
    protocol=st.integers(0, 255),
    total_length=st.integers(60, 120),
    identification=st.integers(0, 0xFFFF),
    ttl=st.integers(0, 255),
    tos=st.integers(0, 255),
    flags_fragment=st.integers(0, 0xFFFF),
    options=st.integers(0, 10).map(lambda words: bytes(range(words * 4))),
)


@PROPERTY
@given(_IPV4_HEADERS, st.integers(0, 0xFFFF))
def test_ipv4_with_length_is_build_ipv4_of_the_parsed_header(
    header: IPv4Header, total_length: int
) -> None:
    raw = build_ipv4(header)
    length = max(total_length, header.header_len)
    packet = raw + bytes(header.total_length - header.header_len)
    expected = build_ipv4(replace(parse_ipv4(packet), total_length=length))
    assert ipv4_with_length(raw, length) == expected
    assert ipv4_fields(packet)[2] == header.total_length


@PROPERTY
@given(
    st.builds(
        IPv6Header,
        src=st.binary(min_size=16, max_size=16),
        dst=st.binary(min_size=16, max_size=16),
        next_header=st.integers(0, 255),
        payload_length=st.just(0),
        hop_limit=st.integers(0, 255),
        traffic_class=st.integers(0, 255),
        flow_label=st.integers(0, 0xFFFFF),
    ),
    st.binary(max_size=24),
    st.integers(0, 0xFFFF),
)
def test_ipv6_with_length_is_build_ipv6_of_the_parsed_header(
    header: IPv6Header, extension: bytes, payload_length: int
) -> None:
    raw = build_ipv6(replace(header, payload_length=len(extension))) + extension
    expected = build_ipv6(replace(parse_ipv6(raw), payload_length=payload_length)) + extension
    assert ipv6_with_length(raw, payload_length) == expected


@PROPERTY
@given(st.integers(0, 0xFFFFFFFF))
def test_metadata_words(word: int) -> None:
    try:
        meta = parse_tx_metadata(word)
    except ParseError:
        try:
            tx_metadata_fields(word)
        except ParseError:
            return
        raise AssertionError("tx_metadata_fields accepted reserved bits") from None
    assert tx_metadata_fields(word) == (
        meta.offload,
        meta.next_header,
        meta.l3_offset,
        meta.esp_offset,
    )
    status = RxStatus(word % len(RxStatus))
    index = word & 0xFFFFFF
    for ipsec in (False, True):
        assert rx_metadata_word(ipsec, status, index) == build_rx_metadata(
            RxMetadata(ipsec, status, index)
        )


@PROPERTY
@given(st.binary(max_size=12))
def test_esp_trailer_fields_are_parse_esp_trailer(plaintext: bytes) -> None:
    try:
        trailer, payload_len = parse_esp_trailer(plaintext)
    except ParseError as error:
        try:
            esp_trailer_fields(plaintext)
        except ParseError as again:
            assert (again.what, again.offset) == (error.what, error.offset)
            return
        raise AssertionError("esp_trailer_fields accepted a bad trailer") from None
    assert esp_trailer_fields(plaintext) == (trailer.pad_length, trailer.next_header, payload_len)
