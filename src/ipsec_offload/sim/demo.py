"""The built-in default run: a PF host and a remote peer over offloaded SAs.

- IPv4, transport mode, AES-GCM-128: offloaded in both directions.
- IPv6, tunnel mode, AES-GCM-256 with ESN, replay window 8192: the outbound SA is offloaded;
  the inbound one is refused by the driver (the agent's window is at most 4096, so
  xdo_dev_state_add returns -EOPNOTSUPP) and the stack carries it in software.
- UDP both ways on both families, and pings both ways.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipsec_offload.driver.pf import PfDriver
from ipsec_offload.errors import UsageError
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import Mode
from ipsec_offload.sim.espsa import write_esp_sa
from ipsec_offload.sim.pcap import PcapRecord, write_pcap
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.addr import ip_to_str
from ipsec_offload.wire.config import Algorithm


@dataclass(frozen=True, slots=True)
class Flow:
    """Traffic the demo sends: `count` datagrams or pings from `src` to `dst`."""

    src: str
    dst: str
    kind: str
    family: int
    count: int


FLOWS = (
    Flow("host", "peer", "udp", 4, 20),
    Flow("peer", "host", "udp", 4, 20),
    Flow("host", "peer", "ping", 4, 5),
    Flow("host", "peer", "udp", 6, 10),
    Flow("peer", "host", "udp", 6, 10),
    Flow("peer", "host", "ping", 6, 5),
)


def build() -> tuple[Testbed, dict[str, SaBundle]]:
    """The demo's testbed with its SAs installed."""
    bed = Testbed()
    host = bed.add_pf_host("host", "02:00:00:00:01:00", ipv4="192.0.2.1", ipv6="2001:db8::1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2", ipv6="2001:db8::2")
    bundles = {
        "ipv4-transport": bed.secure(host, peer, family=4),
        "ipv6-tunnel": bed.secure(
            host,
            peer,
            family=6,
            mode=Mode.TUNNEL,
            algorithm=Algorithm.AES_GCM_256,
            esn=True,
            replay_window=8192,
        ),
    }
    return bed, bundles


def send_flows(bed: Testbed) -> dict[str, int]:
    """Send every flow; returns how many packets each host's applications sent."""
    sent: dict[str, int] = {}
    for flow in FLOWS:
        src = bed.endpoint(flow.src).stack
        dst = bed.endpoint(flow.dst).stack
        dst_addr = dst.addresses[4 if flow.family == 4 else 16]
        for i in range(flow.count):
            payload = f"{flow.kind} {flow.src}->{flow.dst} v{flow.family} #{i} ".encode() * (
                1 + i % 7
            )
            if flow.kind == "udp":
                src.send_udp(dst_addr, 40000 + i, 5000 + flow.family, payload, bed.now)
            else:
                src.send_echo(dst_addr, 0x1D, i + 1, payload, bed.now)
            bed.settle(src)
        sent[flow.src] = sent.get(flow.src, 0) + flow.count
    return sent


def run_demo(out: Path | None) -> dict[str, Any]:
    """Run the default scenario; write pcaps and the esp_sa file to `out`; return a report."""
    bed, bundles = build()
    send_flows(bed)
    report = report_of(bed, bundles)
    if out is not None:
        write_outputs(bed, out, report)
    return report


LINK_FILES = {
    "host-link": ("nic-to-agent", "agent-to-nic"),
    "wire-link": ("wire-to-agent", "agent-to-wire"),
}
"""The pcaps of whole links: (first direction, second direction)."""


def write_outputs(bed: Testbed, out: Path, report: dict[str, Any]) -> None:
    """Link captures (each link both ways, and each direction alone), the keys file and
    report.json, whose "outputs" lists every file written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    written = []
    for link, sink in bed.captures.items():
        sink.write(out / f"{link}.pcap")
        written.append(f"{link}.pcap")
    for name, (first, second) in LINK_FILES.items():
        write_pcap(out / f"{name}.pcap", merged(bed, first, second))
        written.append(f"{name}.pcap")
    write_esp_sa(out / "esp_sa", bed.esp_sa_entries())
    written += ["esp_sa", "report.json"]
    report["outputs"] = sorted(written)
    try:
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise UsageError(f"{out / 'report.json'}: cannot write ({exc.strerror})") from None


def merged(bed: Testbed, first: str, second: str) -> list[PcapRecord]:
    """Two directions of a link in time order (on a tie, `first` before `second`)."""
    records = [*bed.captures[first].records, *bed.captures[second].records]
    return sorted(records, key=lambda r: r.time)


def report_of(bed: Testbed, bundles: dict[str, SaBundle]) -> dict[str, Any]:
    """What was configured, packets per SA and status, drops by reason."""
    agent = bed.agent.dump()
    hosts = {name: ep.stack for name, ep in bed.endpoints.items()}
    host_driver = bed.endpoint("host").driver
    assert isinstance(host_driver, PfDriver)
    return {
        "sas": [
            _sa_row(hosts["host"], name, direction, state.handle)
            for name, bundle in bundles.items()
            for direction, state in (("out", bundle.a_out), ("in", bundle.a_in))
        ],
        "agent": agent,
        "hosts": {name: stack.dump() for name, stack in hosts.items()},
        "delivered": {name: len(bed.delivered(stack)) for name, stack in hosts.items()},
        "delivered_offloaded": {
            name: sum(d.offloaded for d in bed.delivered(stack)) for name, stack in hosts.items()
        },
        "link_drops": dict(bed.link_drops),
        "driver": host_driver.dump(),
    }


def _sa_row(host: HostStack, name: str, direction: str, handle: int) -> dict[str, Any]:
    state = host.states[handle]
    return {
        "name": f"{name}/{direction}",
        "spi": f"0x{state.spi:08x}",
        "src": ip_to_str(state.src),
        "dst": ip_to_str(state.dst),
        "algorithm": state.algorithm.name,
        "mode": state.mode.name,
        "esn": state.esn,
        "offload": state.offload.name,
        "add_rc": state.add_rc,
        "packets": state.packets,
    }


def format_summary(report: dict[str, Any], out: Path | None) -> str:
    """The few lines a person reads after `make demo`."""
    lines = ["Configured SAs on host (PF):"]
    lines.append(
        f"  {'SA':<22}{'SPI':<12}{'alg':<13}{'mode':<11}{'offload':<10}{'rc':>5}{'pkts':>7}"
    )
    for row in report["sas"]:
        lines.append(
            f"  {row['name']:<22}{row['spi']:<12}{row['algorithm']:<13}{row['mode']:<11}"
            f"{row['offload']:<10}{row['add_rc']:>5}{row['packets']:>7}"
        )
    agent = report["agent"]
    lines.append(f"Agent SAD: {agent['sad_used']} of {agent['sad_size']} entries")
    lines.append(f"  {'idx':<5}{'dir':<10}{'SPI':<12}{'dst':<16}{'pkts':>6}{'bytes':>8}  errors")
    for sa in agent["sas"]:
        errors = ", ".join(f"{k}={v}" for k, v in sa["errors"].items() if v) or "-"
        lines.append(
            f"  {sa['index']:<5}{sa['direction']:<10}{sa['spi']:<12}{sa['dst']:<16}"
            f"{sa['packets']:>6}{sa['bytes']:>8}  {errors}"
        )
    counters = agent["counters"]
    rx = ", ".join(f"{k}={v}" for k, v in counters["rx_status"].items() if v) or "none"
    drops = ", ".join(f"{k}={v}" for k, v in counters["drops"].items() if v) or "none"
    lines.append(f"Agent Rx status: {rx}")
    lines.append(f"Agent drops by reason: {drops}")
    for name, host in report["hosts"].items():
        c = host["counters"]
        host_drops = ", ".join(f"{k}={v}" for k, v in c["drops"].items()) or "none"
        lines.append(
            f"{name}: delivered {report['delivered'][name]} "
            f"({report['delivered_offloaded'][name]} decrypted by the agent), "
            f"sent ESP offloaded {c['tx_esp_offloaded']}, software {c['tx_esp_software']}; "
            f"drops: {host_drops}"
        )
    if out is not None:
        lines.append(f"Wrote pcaps and the esp_sa keys file to {out}/")
    return "\n".join(lines)
