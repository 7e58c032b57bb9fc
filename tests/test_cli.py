"""`ipsec-offload run`: the default scenario from the command line (README, "Using the
command line"): its summary, the files it writes, report.json, and determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ipsec_offload.cli.main import main
from ipsec_offload.sim.pcap import read_pcap
from ipsec_offload.wire.ethernet import parse_ethernet
from ipsec_offload.wire.metadata import RxStatus, parse_rx_metadata

README = Path(__file__).resolve().parent.parent / "README.md"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", *args])


def readme_outputs() -> list[str]:
    """The file names in README's table of what `run` writes to DIR."""
    lines = README.read_text().splitlines()
    start = lines.index("| file | what |")
    names: list[str] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        first_column = line.split("|")[1]
        names += re.findall(r"`([^`]+)`", first_column)
    return names


def host_rows(output: str) -> dict[tuple[str, str], list[str]]:
    """The summary's 'SAs as the hosts hold them' rows of host `host`: (sa, dir) -> rest."""
    rows = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 7 and fields[1] == "host" and fields[3].startswith("0x"):
            rows[(fields[0], fields[2])] = fields[3:]
    return rows


def xfrm_blocks(path: Path) -> list[tuple[str, bool, int]]:
    """An `ip -s xfrm state` file's states: (SPI, offloaded to a device, packets)."""
    blocks = re.split(r"^(?=src )", path.read_text(), flags=re.MULTILINE)[1:]
    return [
        (
            re.findall(r"spi (0x[0-9a-f]{8})\(", block)[0],
            "crypto offload parameters: dev ens1f0 " in block,
            int(re.findall(r"(\d+)\(packets\)\n", block)[0]),
        )
        for block in blocks
    ]


def test_run_basic_writes_the_documented_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("basic", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.exception is None

    # the summary names each SA with where it runs and the xdo_dev_state_add result
    assert host_rows(result.output) == {
        ("ipv4-transport", "outbound"): ["0x00001001", "DEVICE", "0", "25"],
        ("ipv4-transport", "inbound"): ["0x00001002", "DEVICE", "0", "25"],
        ("ipv6-tunnel", "outbound"): ["0x00001003", "DEVICE", "0", "15"],
        ("ipv6-tunnel", "inbound"): ["0x00001004", "SOFTWARE", "-EOPNOTSUPP", "15"],
    }
    assert "Agent SAD at the end: 3 of 4096 entries" in result.output
    assert "Agent drops: none" in result.output
    assert str(out) in result.output

    documented = readme_outputs()
    assert len(documented) == 10
    assert {"host-link.pcap", "wire-link.pcap", "esp_sa", "xfrm-HOST.txt"} <= set(documented)
    # one xfrm-HOST.txt per live host: here the PF's host and the peer
    names = [n for n in documented if "HOST" not in n] + ["xfrm-host.txt", "xfrm-peer.txt"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        if name.endswith(".pcap"):
            # This port is in VEB mode: nothing is turned around.
            assert bool(read_pcap(out / name)) == (name != "agent-hairpin.pcap"), name
    link = {
        name: len(read_pcap(out / f"{name}.pcap"))
        for name in ("nic-to-agent", "agent-to-nic", "wire-to-agent", "agent-to-wire")
    }
    assert len(read_pcap(out / "host-link.pcap")) == link["nic-to-agent"] + link["agent-to-nic"]
    assert len(read_pcap(out / "wire-link.pcap")) == link["wire-to-agent"] + link["agent-to-wire"]

    report = json.loads((out / "report.json").read_text())
    assert report["outputs"] == sorted(names)
    # each host's states, newest first, offloaded where the summary says DEVICE, with the
    # packets it counts
    packets = {(row["host"], row["spi"]): row["packets"] for row in report["sas"]}
    for host, spis, offloaded in (
        ("host", (0x1004, 0x1003, 0x1002, 0x1001), (False, True, True, True)),
        ("peer", (0x1003, 0x1004, 0x1001, 0x1002), (False, False, False, False)),
    ):
        assert xfrm_blocks(out / f"xfrm-{host}.txt") == [
            (f"0x{spi:08x}", device, packets[host, f"0x{spi:08x}"])
            for spi, device in zip(spis, offloaded, strict=True)
        ]
    counters = report["agent"]["counters"]
    # the host sends 20 + 5 (IPv4) and 10 + 5 (IPv6 echo replies) frames over offloaded SAs
    assert counters["paths"]["TX_ENCRYPTED"] == 40 == link["agent-to-wire"]
    assert counters["paths"]["RX_ESP"] == 40 == link["wire-to-agent"]
    # IPv4 inbound is offloaded (20 datagrams + 5 echo replies); IPv6 inbound is software
    assert counters["rx_status"]["OK"] == 25
    assert counters["rx_status"]["NO_SA"] == 15
    assert sum(counters["rx_status"].values()) == 40
    assert not any(counters["drops"].values())
    # GET_CAPS, three ADD_SA, and the PF's periodic GET_CAPS one second in
    assert counters["paths"]["CONFIG_REQUEST"] == 5
    assert report["agent"]["sad_used"] == 3
    assert [sa["packets"] for sa in report["agent"]["sas"]] == [25, 25, 15]
    assert all(flow["complete"] for flow in report["flows"].values())
    assert sum(f["delivered"] for f in report["flows"].values()) == 70
    assert [c["outcome"] for c in report["challenges"]] == ["not exercised"] * 5
    assert [c["outcome"] for c in report["invariants"]] == [
        "held",
        "not exercised",
        "held",
        "not exercised",
    ]


CHALLENGES = [
    "False match across SAD domains",
    "Abandoned SAs",
    "Malicious VF",
    "East-west VM traffic",
    "TSO sequence numbers (IVDB)",
]


def test_default_run_tells_every_challenge_held(tmp_path: Path) -> None:
    result = run("--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["challenge"] for c in report["challenges"]] == CHALLENGES
    assert [c["outcome"] for c in report["challenges"]] == ["held"] * 5
    assert [c["outcome"] for c in report["invariants"]] == [
        "held",
        "not exercised",
        "held",
        "not exercised",
    ]
    for i, name in enumerate(CHALLENGES + INVARIANTS, 1):
        assert f"{i}. {name}" in result.output
    assert all(flow["complete"] for flow in report["flows"].values())
    assert report["agent"]["counters"]["paths"]["HAIRPIN"] == 30
    assert "Control-plane timeline" in result.output
    # `ip -s xfrm state` of the hosts still running: vm3 was destroyed
    hosts = ["host", "peer1", "peer2", "remote", "vm1", "vm2", "vm3b", "vm4"]
    assert [f"xfrm-{host}.txt" for host in hosts] == [
        name for name in report["outputs"] if name.startswith("xfrm-")
    ]


def test_run_xfrm_prints_every_live_hosts_states_after_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    plain = run("basic", "--out", str(out))
    assert plain.exit_code == 0, plain.output
    assert "$ ip -s xfrm state" not in plain.output
    listed = run("basic", "--out", str(out), "--xfrm")
    assert listed.exit_code == 0, listed.output
    host, peer = ((out / f"xfrm-{name}.txt").read_text() for name in ("host", "peer"))
    assert host.startswith("src 2001:db8::2 dst 2001:db8::1\n\tproto esp spi 0x00001004")
    assert listed.output == (
        f"{plain.output}\nhost$ ip -s xfrm state\n{host}\npeer$ ip -s xfrm state\n{peer}"
    )


INVARIANTS = [
    "No nonce twice",
    "No replay accepted",
    "One view of the SAD",
    "Rekey (make before break)",
]


def failed_lines(report: dict[str, list[dict[str, str]]]) -> set[str]:
    lines = report["challenges"] + report["invariants"]
    return {c["challenge"] for c in lines if c["outcome"] == "FAILED"}


@pytest.mark.parametrize(
    ("scenario", "switch", "broken"),
    [
        ("default", "sa-key", {"False match across SAD domains"}),
        # the orphans are in the agent, and in no host's view of it
        ("default", "ownership-db", {"Abandoned SAs", "One view of the SAD"}),
        # The crafted REMOVE_ALL_SAS also takes the TSO flow's SA away mid-stream, and every
        # host still believes its SAs offloaded.
        (
            "default",
            "port-tag",
            {"Malicious VF", "TSO sequence numbers (IVDB)", "One view of the SAD"},
        ),
        ("default", "hairpin", {"East-west VM traffic"}),
        ("default", "ivdb", {"TSO sequence numbers (IVDB)", "No nonce twice"}),
        # the default story has no trusted VF's crafted config, nor TSO before a reset
        ("default", "vf-filter", set()),
        ("default", "seq-handover", set()),
        (
            "faults",
            "seq-handover",
            {"TSO sequence numbers (IVDB)", "No nonce twice", "No replay accepted"},
        ),
        # vm2's crafted REMOVE_ALL_SAS takes vm3's SAs; the agent, not given the PF's MAC,
        # sends no AGENT_STARTED at its restart, but the PF's GET_CAPS a second in finds the
        # new BOOT_ID and vm3 re-adds: one view again at the end
        ("faults", "vf-filter", {"Malicious VF"}),
        # the agent's restart goes unnoticed: vm3 believes its SAs offloaded, the SAD is empty
        ("faults", "resync", {"One view of the SAD"}),
        ("default", "resync", set()),
        ("faults", "ivdb", {"TSO sequence numbers (IVDB)", "No nonce twice"}),
    ],
)
def test_each_naive_switch_shows_its_failure(
    tmp_path: Path, scenario: str, switch: str, broken: set[str]
) -> None:
    result = run(scenario, "--naive", switch, "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["naive"] == [switch]
    assert failed_lines(report) == broken
    assert f"(naive: {switch})" in result.output


def test_faults_run_holds_every_line_with_its_numbers(tmp_path: Path) -> None:
    """The built-in `faults` story (docs/tutorial.md): every line held, from the wire."""
    result = run("faults", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert failed_lines(report) == set()
    lines = {c["challenge"]: c["observed"] for c in report["challenges"] + report["invariants"]}
    assert "dropped by its Tx EtherType filter: 2" in lines["Malicious VF"]
    assert "reused: 0" in lines["TSO sequence numbers (IVDB)"]
    assert "used twice: 0" in lines["No nonce twice"]
    assert "replayed: 5; payloads delivered twice: 0" in lines["No replay accepted"]
    assert "agent SAD 2, held as offloaded by the hosts 2" in lines["One view of the SAD"]
    assert "soft expiries: 1; rekeys: 1; hard expiries: 0" in lines["Rekey (make before break)"]
    assert all(flow["complete"] for flow in report["flows"].values())
    # the agent refused the five replayed frames itself (Rx status REPLAY toward vm1); its
    # counters in report.json are the restarted agent's, so read the host link
    statuses = [rx_status(r.frame) for r in read_pcap(tmp_path / "out" / "agent-to-nic.pcap")]
    assert statuses.count(RxStatus.REPLAY) == 5
    assert report["link_drops"]["nic-to-agent"] == 24
    lost = [e for e in report["timeline"] if e["what"].startswith("lost state")]
    assert len(lost) == 6  # both states of the PF host, vm1 and vm2 fell back to software


def rx_status(frame: bytes) -> RxStatus | None:
    """The Rx STATUS of a frame the agent sent toward the host (None: not ESP it looked up)."""
    metadata = parse_ethernet(frame).metadata
    rx = None if metadata is None else parse_rx_metadata(metadata)
    return rx.status if rx is not None and rx.ipsec else None


def test_naive_seq_handover_reuses_nonces_in_the_faults_run(tmp_path: Path) -> None:
    result = run("faults", "--naive", "seq-handover", "--out", str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    lines = {c["challenge"]: c["observed"] for c in report["invariants"]}
    assert "used twice: 34" in lines["No nonce twice"], result.output
    assert "payloads delivered twice: 5" in lines["No replay accepted"]


def test_naive_sa_key_fails_as_the_deck_predicts(tmp_path: Path) -> None:
    result = run("--naive", "sa-key", "--out", str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    observed = report["challenges"][0]["observed"]
    assert "10 of 20 delivered" in observed and "AUTH_FAILED 10" in observed
    assert report["agent"]["counters"]["rx_status"]["AUTH_FAILED"] == 10
    assert "any (naive key)" in result.output


def test_unknown_naive_switch_is_refused() -> None:
    result = run("--naive", "everything")
    assert result.exit_code == 2
    assert "Invalid value for '--naive'" in result.output


def test_run_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        result = run("--out", str(out))
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert sum(name.endswith(".pcap") for name in names) == 7
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # and again into the same folder: the captures and keys are rewritten identically
    result = run("--out", str(first))
    assert result.exit_code == 0, result.output
    for name in names:
        if name.endswith(".pcap") or name == "esp_sa":
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_run_defaults_to_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run()
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "wire-link.pcap").is_file()
    assert (tmp_path / "out" / "report.json").is_file()


def test_run_into_a_file_is_a_clean_error(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("a file, not a folder\n")
    result = run("--out", str(occupied))
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert str(occupied) in result.output


def test_run_into_an_impossible_folder_is_a_clean_error(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("a file, not a folder\n")
    target = occupied / "out"
    result = run("--out", str(target))
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert str(target) in result.output


def test_a_progress_bar_once_a_run_takes_more_than_a_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipsec_offload.cli.progress import Progress

    quick = run("basic", "--out", str(tmp_path / "quick"))
    assert "simulating" not in quick.stderr  # a quick run shows none
    monkeypatch.setattr(Progress, "DELAY", 0.0)
    slow = run("basic", "--out", str(tmp_path / "slow"))
    assert slow.exit_code == 0, slow.output
    assert "simulating" in slow.stderr
    assert "simulating" not in slow.stdout  # the summary stays clean for pipes


def test_a_text_output_that_cannot_be_replaced_is_a_clean_error_and_leaves_no_scrap(
    tmp_path: Path,
) -> None:
    """The text outputs go into a new file renamed over the old one: a folder in the way of
    report.json stops the run with its name, and no half-written file stays behind."""
    out = tmp_path / "out"
    (out / "report.json").mkdir(parents=True)
    result = run("basic", "--out", str(out))
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert f"{out / 'report.json'}: cannot write" in result.output
    assert (out / "xfrm-host.txt").read_text().startswith("src 2001:db8::2 dst 2001:db8::1\n")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_strict_run_exits_1_on_a_failed_check_or_an_incomplete_flow(tmp_path: Path) -> None:
    held = run("basic", "--strict", "--out", str(tmp_path / "held"))
    assert held.exit_code == 0, held.output
    failed = run("default", "--naive", "sa-key", "--strict", "--out", str(tmp_path / "failed"))
    assert failed.exit_code == 1
    last = failed.output.splitlines()[-1]
    assert last.startswith("Error: --strict: FAILED: False match across SAD domains")
    assert "incomplete flows: peer2->vm2" in last
    assert (tmp_path / "failed" / "report.json").exists()  # the outputs are written first
    lenient = run("default", "--naive", "sa-key", "--out", str(tmp_path / "lenient"))
    assert lenient.exit_code == 0


def test_bench_refuses_an_out_file_in_a_missing_folder_before_it_measures(
    tmp_path: Path,
) -> None:
    target = tmp_path / "nodir" / "b.json"
    result = CliRunner().invoke(main, ["bench", "--quick", "--out", str(target)])
    assert result.exit_code == 1
    assert result.output == f"Error: {target}: the folder {target.parent} does not exist\n"


def test_flows_count_sends_and_the_packets_they_make(tmp_path: Path) -> None:
    """A TSO (or TCP) send leaves as MSS-sized segments: the summary sets the packets the
    sends made beside the packets delivered, not the sends."""
    result = run("--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    line = next(li for li in result.output.splitlines() if "host->remote tcp/v4#9" in li)
    assert line.split()[2:] == ["3", "45", "45", "0", "yes"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    flow = report["flows"]["host->remote tcp/v4#9"]
    assert (flow["sends"], flow["sent"], flow["delivered"]) == (3, 45, 45)
    assert "by agent: of the delivered packets, those the agent decrypted" in result.output


def test_the_timeline_names_each_state_by_its_sa_direction_and_spi(tmp_path: Path) -> None:
    result = run("basic", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "host           add state 1 (ipv4-transport out SPI 0x00001001): 0 (device)" in (
        result.output
    )
    assert "add state 6 (ipv6-tunnel in SPI 0x00001004): -EOPNOTSUPP (software)" in result.output


def test_abandoned_sas_count_what_a_vf_removed_itself(tmp_path: Path) -> None:
    """In `faults` vm1's driver reloads and removes its two SAs itself (DEL_SAS, all) before
    its RESET: the PF's clean-up finds none left."""
    result = run("faults", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    line = next(li for li in result.output.splitlines() if "2. Abandoned SAs" in li)
    assert "SAs removed by the PF's clean-up: 0, by the VFs' own DEL_SAS: 2;" in line
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["pf"]["pf"]["vf_bulk_removed"] == 2
