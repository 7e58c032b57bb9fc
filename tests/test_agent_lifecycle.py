"""The agent's start, timers and restart in the golden model and the testbed (spec 9).

- The golden model starts the agent at the first record, fires its timers due at or before
  each record's time before the record (stamped with the timer's time) and the rest after the
  last record.
- The testbed starts the agent when the first frame reaches it, drives its timers in the
  event loop, and `restart_agent` gives a fresh agent (empty SAD, new BOOT_ID) that announces
  itself; the golden model fed a run's inputs reproduces its outputs with events and resends.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent_frames import HOST_MAC, config_frame, events_of, is_event, is_event_answer
from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.agent.counters import DropReason, EventCounter
from ipsec_offload.cli.main import main
from ipsec_offload.host.stack import HostStack
from ipsec_offload.sim.golden import replay
from ipsec_offload.sim.observer import WireObserver
from ipsec_offload.sim.pcap import PcapRecord, read_pcap, write_pcap
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.config import Direction, Opcode, decode_caps, parse_config
from ipsec_offload.wire.ethernet import EtherType

pytestmark = pytest.mark.usefixtures("agent_path")

BOOT = 77
AGENT_STARTED = 1


def _agent() -> IpsecAgent:
    return IpsecAgent(AgentConfig(pf_mac=HOST_MAC, boot_id=BOOT))


def _caps(txn_id: int) -> bytes:
    return config_frame(Opcode.GET_CAPS, (), txn_id=txn_id)


def _ack(txn_id: int) -> bytes:
    return config_frame(0x89, (), txn_id=txn_id)


def _times(records: list[PcapRecord]) -> list[tuple[float, bool]]:
    return [(round(r.time, 9), is_event(r.frame)) for r in records]


def test_golden_resends_unanswered_events_after_the_last_record() -> None:
    result = replay(_agent(), [PcapRecord.at(1.0, _caps(5))], [])
    assert _times(result.host_out) == [(1.0, True), (1.0, False)] + [
        (1.0 + n / 100, True) for n in range(1, 6)
    ]
    assert events_of([result.host_out[0].frame]) == [(AGENT_STARTED, BOOT, None)]
    assert len({r.frame for r in result.host_out if is_event(r.frame)}) == 1


def test_golden_fires_timers_before_a_record_of_the_same_time() -> None:
    records = [
        PcapRecord.at(1.0, _caps(5)),
        PcapRecord.at(1.02, _caps(6)),
        PcapRecord.at(1.025, _ack(1)),
    ]
    result = replay(_agent(), records, [])
    assert _times(result.host_out) == [
        (1.0, True),
        (1.0, False),
        (1.01, True),
        (1.02, True),  # the timer due at 1.02 before the record at 1.02
        (1.02, False),
    ]


def test_golden_without_records_starts_no_agent() -> None:
    agent = _agent()
    result = replay(agent, [], [])
    assert result.host_out == [] and agent.counters.events[EventCounter.RAISED] == 0


PF_MAC = "02:00:00:00:01:00"


def _bed() -> tuple[Testbed, HostStack, HostStack]:
    bed = Testbed(agent=AgentConfig(pf_mac=bytes.fromhex(PF_MAC.replace(":", ""))))
    host = bed.add_pf_host("host", PF_MAC, ipv4="192.0.2.1")
    peer = bed.add_peer("peer", "02:00:00:00:02:00", ipv4="192.0.2.2")
    bed.secure(host, peer, family=4)
    for i in range(3):
        host.send_udp(peer.addresses[4], 1000 + i, 53, b"x" * i, bed.now)
        bed.settle(host)
    assert bed.next_event_time is not None  # settle leaves the agent's resends queued
    bed.run()  # and run fires them
    return bed, host, peer


def test_testbed_starts_the_agent_at_its_first_frame_and_golden_reproduces_it() -> None:
    bed, _host, _peer = _bed()
    caps = bed.captures
    first_in = caps["nic-to-agent"].records[0]
    out = caps["agent-to-nic"].records
    # AGENT_STARTED to the PF's MAC before the first reply; the PF answers it (0x89, the same
    # txn_id), so it is sent once and never resent
    assert out[0].time == first_in.time and is_event(out[0].frame)
    assert sum(is_event(r.frame) for r in out) == 1
    answers = [r for r in caps["nic-to-agent"].records if is_event_answer(r.frame)]
    assert len(answers) == 1 and answers[0].time > out[0].time
    counters = bed.agent.counters.events
    assert (counters[EventCounter.ACKNOWLEDGED], counters[EventCounter.GIVEN_UP]) == (1, 0)
    result = replay(
        IpsecAgent(bed.agent.config), caps["nic-to-agent"].records, caps["wire-to-agent"].records
    )
    assert result.host_out == list(out)
    assert result.wire_out == list(caps["agent-to-wire"].records)


def test_testbed_draws_boot_ids_from_its_seed() -> None:
    a, b, c = Testbed(seed=5), Testbed(seed=5), Testbed(seed=6)
    assert a.agent.config.boot_id == b.agent.config.boot_id != c.agent.config.boot_id


def test_restart_agent() -> None:
    bed, host, peer = _bed()
    old = bed.agent
    assert len(old.sad) == 2
    before = len(bed.captures["agent-to-nic"])
    t_restart = bed.now
    bed.restart_agent()
    bed.run()
    agent = bed.agent
    assert agent is not old and bed.agent_restarts == 1  # its SAD lost, then re-filled
    assert agent.config.boot_id != old.config.boot_id
    assert agent.config == replace(old.config, boot_id=agent.config.boot_id)
    new = bed.captures["agent-to-nic"].records[before:]
    events = [r for r in new if is_event(r.frame)]
    assert [round(r.time - t_restart, 9) for r in events] == [0.0]  # answered: no resend
    assert events_of([events[0].frame]) == [(AGENT_STARTED, agent.config.boot_id, None)]
    assert agent.counters.events[EventCounter.ACKNOWLEDGED] == 1
    # GET_CAPS tells the new BOOT_ID
    pf = bytes.fromhex(PF_MAC.replace(":", ""))
    out = agent.from_host([config_frame(Opcode.GET_CAPS, (), src=pf, txn_id=9)], bed.now)
    reply = parse_config(out.to_host[0][20:])
    assert decode_caps(reply.tlvs).boot_id == agent.config.boot_id
    # the PF heard AGENT_STARTED and re-installed its two SAs, the outbound one with the
    # stack's next number (3 datagrams sent): traffic goes on, offloaded, numbered on
    assert len(agent.sad) == 2 and bed.pf is not None and bed.pf.pf_counters.agent_restarts == 1
    outbound = next(sa for sa in agent.sad if sa.direction == Direction.OUTBOUND)
    assert outbound.ivdb == 4
    host.send_udp(peer.addresses[4], 2000, 53, b"after", bed.now)
    bed.settle(host)
    assert bed.delivered(peer)[-1].payload == b"after"
    assert agent.counters.drops[DropReason.NO_OUTBOUND_SA] == 0
    assert WireObserver(bed).check() == []


_CONFIG = EtherType.CONFIG.to_bytes(2, "big")


def _get_caps_times(bed: Testbed, since: int) -> list[float]:
    """When the PF asked GET_CAPS (nic-to-agent records from `since` on)."""
    records = bed.captures["nic-to-agent"].records[since:]
    return [
        r.time
        for r in records
        if r.frame[12:14] == _CONFIG and parse_config(r.frame[14:]).opcode == Opcode.GET_CAPS
    ]


def test_a_restart_whose_agent_started_is_lost_is_found_by_the_next_get_caps() -> None:
    bed, host, peer = _bed()
    pf = bed.pf
    assert pf is not None and pf.resync.caps_interval == 1.0  # the driver's default
    # the periodic probe leaves run() and settle(): only run(until=...) fires it
    assert bed.next_event_time == 1.0 and not pf.waiting
    before = len(bed.captures["nic-to-agent"])
    bed.lose("agent-to-nic", 6, is_event)  # AGENT_STARTED and its 5 resends
    t_restart = bed.now
    bed.restart_agent()
    bed.run()
    assert bed.faults == [] and bed.agent.counters.events[EventCounter.GIVEN_UP] == 1
    assert len(bed.agent.sad) == 0 and pf.pf_counters.agent_restarts == 0
    # meanwhile the host still offloads: its datagram is dropped by the agent, not sent clear
    host.send_udp(peer.addresses[4], 2000, 53, b"lost", bed.now)
    bed.settle(host)
    assert bed.agent.counters.drops[DropReason.NO_OUTBOUND_SA] == 1
    bed.run(until=2.5)
    # arrivals (1 us of link): the probe at 1 s finds the new BOOT_ID; the PF re-installs
    # and asks the new agent's caps at once; the next probe a second later
    assert [round(t, 6) for t in _get_caps_times(bed, before)] == [1.000001, 1.000003, 2.000001]
    assert pf.pf_counters.agent_restarts == pf.pf_counters.restarts_by_caps == 1
    assert len(bed.agent.sad) == 2 and t_restart < 1.0
    host.send_udp(peer.addresses[4], 2000, 53, b"after", bed.now)
    bed.settle(host)
    assert [d.payload for d in bed.delivered(peer)][-1] == b"after"
    assert WireObserver(bed).check() == []


def test_golden_command_boot_id(tmp_path: Path) -> None:
    host_in, ho, wo = tmp_path / "in.pcap", tmp_path / "HO.pcap", tmp_path / "WO.pcap"
    write_pcap(host_in, [PcapRecord.at(1.0, _caps(5))])
    args = ["agent", "--host-in", host_in, "--host-out", ho, "--wire-out", wo]
    for given, expected in ((None, 1), ("18446744073709551615", (1 << 64) - 1)):
        extra = [] if given is None else ["--boot-id", given]
        result = CliRunner().invoke(main, [str(a) for a in [*args, *extra]])
        assert result.exit_code == 0, result.output
        (reply,) = read_pcap(ho)
        assert decode_caps(parse_config(reply.frame[20:]).tlvs).boot_id == expected
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--boot-id", "-1"]])
    assert result.exit_code != 0
    assert "--boot-id -1" in result.output and "Traceback" not in result.output
