"""The clean-up of a domain (driver/cleanup.py) against a scripted agent: removal, retries,
giving up, and the naive design without the ownership database."""

from __future__ import annotations

from ipsec_offload.driver.cleanup import CLEANUP_RETRIES, DomainCleanup
from ipsec_offload.driver.control import AgentControl, ConfigChannel
from ipsec_offload.driver.ownership import Ownership, OwnershipDb
from ipsec_offload.driver.pf_counters import PfCounters
from ipsec_offload.driver.ring import DriverEvent
from ipsec_offload.wire.config import (
    ConfigMessage,
    ConfigStatus,
    Opcode,
    build_config,
    decode_sa_index,
    parse_config,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet, parse_ethernet

PF_MAC = bytes.fromhex("020000000010")
AGENT_MAC = bytes.fromhex("020000000001")
VF_MAC = bytes.fromhex("020000000101")


class ScriptedAgent:
    """Answers each REMOVE_SA the PF sends with the next status of a script."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.events: list[DriverEvent] = []
        self.control = AgentControl(
            ConfigChannel(PF_MAC, AGENT_MAC), self.frames.append, self.events.append
        )

    def answer(self, status: ConfigStatus) -> int:
        """Answer the oldest request not answered yet; returns the SA index it named."""
        request = parse_config(self.frames.pop(0)[14:])
        assert request.opcode == Opcode.REMOVE_SA
        reply = ConfigMessage(Opcode.REMOVE_SA | Opcode.REPLY, request.txn_id, (), status=status)
        frame = build_ethernet(EthernetHeader(PF_MAC, AGENT_MAC, EtherType.CONFIG))
        frame += build_config(reply)
        assert self.control.receive(parse_ethernet(frame), frame, 0.0)
        return decode_sa_index(request.tlvs)


def domain(db: OwnershipDb, *indexes: int) -> list[Ownership]:
    for handle, index in enumerate(indexes):
        db.add(Ownership(index, 0, handle, VF_MAC, ()))
    return db.owned_by(0)


def test_each_removal_reports_once_when_the_agent_confirms_it() -> None:
    agent, db, counters = ScriptedAgent(), OwnershipDb(), PfCounters()
    cleanup = DomainCleanup(agent.control, db, counters, ownership_db=True)
    done: list[float] = []
    assert cleanup.clean_up(domain(db, 5, 6), 0.0, done.append) == 2
    assert len(db) == 2  # the database changes only when the agent has answered
    assert agent.answer(ConfigStatus.OK) == 5
    assert agent.answer(ConfigStatus.NOT_FOUND) == 6  # already gone: removed all the same
    assert done == [0.0, 0.0]
    assert len(db) == 0
    assert counters.cleanup_removed == 2


def test_a_refused_removal_is_retried_then_given_up_and_counted() -> None:
    agent, db, counters = ScriptedAgent(), OwnershipDb(), PfCounters()
    cleanup = DomainCleanup(agent.control, db, counters, ownership_db=True)
    done: list[float] = []
    cleanup.clean_up(domain(db, 9), 0.0, done.append)
    for _ in range(CLEANUP_RETRIES - 1):
        assert agent.answer(ConfigStatus.BAD_REQUEST) == 9
        assert done == [] and len(db) == 1
    assert agent.answer(ConfigStatus.BAD_REQUEST) == 9
    assert agent.frames == []
    assert done == [0.0]
    assert len(db) == 0
    assert (counters.cleanup_failed, counters.cleanup_removed) == (1, 0)


def test_without_the_ownership_db_the_sas_stay_as_orphans() -> None:
    agent, db, counters = ScriptedAgent(), OwnershipDb(), PfCounters()
    cleanup = DomainCleanup(agent.control, db, counters, ownership_db=False)
    done: list[float] = []
    assert cleanup.clean_up(domain(db, 1, 2, 3), 0.0, done.append) == 0
    assert agent.frames == []  # nothing asked of the agent
    assert done == []
    assert len(db) == 0
    assert counters.orphans_left == 3
