"""The SAD (spec section 5): index allocation, capacity, extended and naive keys."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_frames import HOST_MAC, KEY128, LOCAL4, PEER4, VF_MAC, add_sa, request, sa_index_tlv
from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.agent.sad import (
    Domain,
    SadFull,
    SecurityAssociation,
    SecurityAssociationDatabase,
)
from ipsec_offload.wire.config import Algorithm, ConfigStatus, Direction, Opcode
from tools import require_fast_path

IN = Direction.INBOUND
OUT = Direction.OUTBOUND
DOMAIN = Domain(VF_MAC, ((0x8100, 100),))


def _sa(
    index: int,
    spi: int,
    domain: Domain | None = None,
    direction: Direction = IN,
    dst: bytes = LOCAL4,
    **kw: int,
) -> SecurityAssociation:
    return SecurityAssociation(
        index=index,
        port=0,
        direction=direction,
        spi=spi,
        dst=dst,
        src=None,
        algorithm=Algorithm.AES_GCM_128,
        key_material=KEY128,
        domain=domain,
        esn=False,
        ivdb=1,
        replay=ReplayWindow(64, False) if direction == IN else None,
        lifetime_packets=kw.get("lifetime_packets", 0),
        lifetime_bytes=kw.get("lifetime_bytes", 0),
    )


def _add(sad: SecurityAssociationDatabase, spi: int, domain: Domain | None = None) -> int:
    index = sad.allocate_index()
    sad.insert(_sa(index, spi, domain))
    return index


def test_indexes_lowest_first_and_reused() -> None:
    sad = SecurityAssociationDatabase(10)
    assert [_add(sad, spi) for spi in range(1, 9)] == list(range(1, 9))
    for index in (5, 2, 8):
        removed = sad.remove(index)
        assert removed is not None and removed.index == index
    assert sad.remove(5) is None
    assert [_add(sad, spi) for spi in (20, 21, 22, 23)] == [2, 5, 8, 9]
    assert [sa.index for sa in sad] == list(range(1, 10))
    assert len(sad) == 9


def test_capacity() -> None:
    sad = SecurityAssociationDatabase(3)
    for spi in (1, 2, 3):
        _add(sad, spi)
    with pytest.raises(SadFull):
        sad.allocate_index()
    sad.remove(2)
    assert sad.allocate_index() == 2
    # allocate does not reserve: asking twice gives the same index
    assert sad.allocate_index() == 2
    _add(sad, 4)
    with pytest.raises(SadFull):
        sad.allocate_index()


def test_insert_needs_an_allocated_index() -> None:
    sad = SecurityAssociationDatabase(4)
    with pytest.raises(ValueError):
        sad.insert(_sa(3, 1))
    assert len(sad) == 0


def test_lookup_extended_then_naive() -> None:
    sad = SecurityAssociationDatabase(8)
    naive = _add(sad, 0x10)
    extended = _add(sad, 0x10, DOMAIN)
    only_ext = _add(sad, 0x20, DOMAIN)

    def find(spi: int, mac: bytes, vlans: tuple[tuple[int, int], ...]) -> int | None:
        sa = sad.lookup(IN, spi, LOCAL4, mac, vlans)
        return None if sa is None else sa.index

    assert find(0x10, VF_MAC, ((0x8100, 100),)) == extended
    assert find(0x10, VF_MAC, ()) == naive
    assert find(0x10, bytes(6), ((0x8100, 100),)) == naive
    assert find(0x20, VF_MAC, ((0x8100, 100),)) == only_ext
    assert find(0x20, VF_MAC, ((0x88A8, 100),)) is None
    assert find(0x20, VF_MAC, ((0x8100, 100), (0x8100, 1))) is None
    assert sad.lookup(OUT, 0x10, LOCAL4, VF_MAC, ()) is None
    assert sad.lookup(IN, 0x10, PEER4, VF_MAC, ()) is None
    assert sad.contains_key((IN, 0x10, LOCAL4, DOMAIN))
    sad.remove(extended)
    assert find(0x10, VF_MAC, ((0x8100, 100),)) == naive
    assert not sad.contains_key((IN, 0x10, LOCAL4, DOMAIN))


def test_many_sas_all_found() -> None:
    sad = SecurityAssociationDatabase(5000)
    for spi in range(1, 5001):
        domain = Domain(spi.to_bytes(6, "big"), ((0x8100, spi % 4096),)) if spi % 2 else None
        _add(sad, spi, domain)
    with pytest.raises(SadFull):
        sad.allocate_index()
    for spi in range(1, 5001):
        mac = spi.to_bytes(6, "big") if spi % 2 else b"\xff" * 6
        sa = sad.lookup(IN, spi, LOCAL4, mac, ((0x8100, spi % 4096),))
        assert sa is not None and sa.spi == spi and sa.index == spi


def test_expired() -> None:
    sa = _sa(1, 1, lifetime_packets=2, lifetime_bytes=100)
    assert not sa.expired()
    sa.packets = 2
    assert sa.expired()
    sa.packets, sa.bytes = 0, 100
    assert sa.expired()
    unlimited = _sa(1, 1)
    unlimited.packets = unlimited.bytes = 1 << 62
    assert not unlimited.expired()


def test_aead_is_created_once() -> None:
    sa = _sa(1, 1)
    assert sa.aead is sa.aead


def test_agent_sad_capacity_and_reuse_through_config() -> None:
    agent = IpsecAgent(AgentConfig(sad_size=3))
    assert [add_sa(agent, IN, spi, LOCAL4) for spi in (1, 2, 3)] == [1, 2, 3]
    assert request(agent, Opcode.REMOVE_SA, sa_index_tlv(2)).status == ConfigStatus.OK
    assert add_sa(agent, OUT, 9, PEER4) == 2
    assert agent.dump()["sad_used"] == 3
    full = request(agent, Opcode.REMOVE_SA, sa_index_tlv(4))
    assert full.status == ConfigStatus.NOT_FOUND


# -- the SAD table the compiled fast path looks packets up in ---------------------------------

_SPIS = st.integers(1, 6)
QINQ = Domain(VF_MAC, ((0x88A8, 7), (0x8100, 100)))
QINQ_OTHER = Domain(VF_MAC, ((0x88A8, 7), (0x8100, 101)))
IPV6_ZERO, IPV6_ONE = bytes(16), bytes(15) + b"\x01"
_DOMAINS = st.sampled_from([None, Domain(VF_MAC, ()), DOMAIN, Domain(VF_MAC, ((0x88A8, 7),)), QINQ])
_DSTS = st.sampled_from([LOCAL4, PEER4, IPV6_ZERO, IPV6_ONE])


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["add", "remove", "remove"]), _SPIS, _DOMAINS, _DSTS),
        max_size=60,
    ),
    capacity=st.integers(1, 12),
)
def test_table_agrees_with_the_dict(
    ops: list[tuple[str, int, Domain | None, bytes]], capacity: int
) -> None:
    """Random adds and removes in a small SAD (long probe runs, wrap-around, deletions that
    shift runs back), with narrow keys (IPv4, at most one VLAN) and wide ones (IPv6 or two
    VLANs) side by side: the table finds exactly what the dict finds, one key or a burst."""
    require_fast_path()
    sad = SecurityAssociationDatabase(capacity)
    table = sad.table
    assert table is not None
    for op, spi, domain, dst in ops:
        sa = next((s for s in sad if s.key == (IN, spi, dst, domain)), None)
        if op == "add" and sa is None and len(sad) < capacity:
            sad.insert(_sa(sad.allocate_index(), spi, domain, dst=dst))
        elif op == "remove" and sa is not None:
            sad.remove(sa.index)
        assert len(table) == len(sad)
        probes = [
            (IN, spi, dst, mac, vlans)
            for spi in range(1, 7)
            for dst in (LOCAL4, PEER4, IPV6_ZERO, IPV6_ONE)
            for mac, vlans in (
                (VF_MAC, ()),
                (VF_MAC, DOMAIN.vlans),
                (VF_MAC, QINQ.vlans),
                (VF_MAC, QINQ_OTHER.vlans),
                (VF_MAC, ((0x88A8, 100),)),  # DOMAIN's VID under the other TPID
                (VF_MAC, ((0x8100, 7), (0x8100, 100))),  # QINQ's VIDs, outer TPID 802.1Q
                (HOST_MAC, ()),
            )
        ]
        expected = [sad.lookup(*probe) for probe in probes]
        assert table.lookup_burst(probes) == [0 if sa is None else sa.index for sa in expected]
        for sa in sad:
            assert table.get(_flat(sa)) is sa


def _flat(sa: SecurityAssociation) -> tuple[object, ...]:
    if sa.domain is None:
        return (sa.direction, sa.spi, sa.dst)
    return (sa.direction, sa.spi, sa.dst, sa.domain.mac, sa.domain.vlans)


def test_table_refuses_bad_keys_and_duplicates() -> None:
    require_fast_path()
    sad = SecurityAssociationDatabase(4)
    table = sad.table
    assert table is not None
    sad.insert(_sa(1, 0x10))
    with pytest.raises(KeyError):
        table.insert((IN, 0x10, LOCAL4), _sa(2, 0x10), 2)
    with pytest.raises(KeyError):
        table.remove((IN, 0x11, LOCAL4))
    for bad in [(IN, 0x10), (IN, 0x10, b"abc"), (IN, 1 << 32, LOCAL4), (IN, 1, LOCAL4, b"m", ())]:
        with pytest.raises((TypeError, OverflowError)):
            table.get(bad)
    assert table.get((IN, 0x10, LOCAL4)) is sad.get(1)


@pytest.mark.parametrize("dst", [LOCAL4, IPV6_ZERO], ids=["narrow", "wide"])
def test_table_full_then_half_removed(dst: bytes) -> None:
    """A full table of 4,096 SAs (runs that cross lines), half of them removed in random
    order, then added back under other SPIs: after each step every key finds its SA and no
    removed key finds any."""
    require_fast_path()
    from ipsec_offload.agent.fastpath import SadTable

    assert SadTable is not None
    rng = random.Random(dst)
    capacity = 4096
    table = SadTable(capacity)
    live = {(IN, spi, dst): spi for spi in rng.sample(range(1, 1 << 32), capacity)}
    for index, key in enumerate(live, 1):
        table.insert(key, index, index)
    removed = rng.sample(sorted(live), capacity // 2)
    indexes = {key: index for index, key in enumerate(live, 1)}
    for key in removed:
        table.remove(key)
    fresh = [(IN, spi, dst) for spi in rng.sample(range(1, 1 << 32), capacity // 2)]
    for key in removed:
        indexes.pop(key)
    free = sorted(set(range(1, capacity + 1)) - set(indexes.values()))
    for key, index in zip(fresh, free, strict=True):
        if key in indexes:
            continue
        table.insert(key, index, index)
        indexes[key] = index
    assert len(table) == len(indexes)
    for key, index in indexes.items():
        assert table.get(key) == index
    assert all(table.get(key) is None for key in removed if key not in indexes)
    probes = [(IN, key[1], dst, VF_MAC, ()) for key in list(indexes) + removed]
    expected = list(indexes.values()) + [indexes.get(key, 0) for key in removed]
    assert table.lookup_burst(probes) == expected


def test_table_takes_only_free_indexes_of_its_capacity() -> None:
    """The table holds its SAs by SA index, as the SAD's entries: an index outside 1 ..
    capacity, or one in use, is refused and changes nothing."""
    require_fast_path()
    sad = SecurityAssociationDatabase(4)
    table = sad.table
    assert table is not None
    sad.insert(_sa(1, 0x10))
    for index in (0, 1, 5):
        with pytest.raises(ValueError, match=r"not a free index of 1 \.\. 4"):
            table.insert((IN, 0x20, LOCAL4), _sa(index, 0x20), index)
    assert len(table) == 1
    assert table.get((IN, 0x20, LOCAL4)) is None
    assert table.lookup_burst([(IN, 0x10, LOCAL4, VF_MAC, ()), (IN, 0x20, LOCAL4, VF_MAC, ())]) == [
        1,
        0,
    ]


def test_table_not_initialised() -> None:
    """A table made without its capacity says so instead of crashing."""
    require_fast_path()
    from ipsec_offload.agent.fastpath import SadTable

    assert SadTable is not None
    table = SadTable.__new__(SadTable)
    for call in (
        lambda: table.get((IN, 0x10, LOCAL4)),
        lambda: table.remove((IN, 0x10, LOCAL4)),
        lambda: table.insert((IN, 0x10, LOCAL4), _sa(1, 0x10), 1),
        lambda: table.lookup_burst([]),
    ):
        with pytest.raises(ValueError, match="not initialised"):
            call()
    assert len(table) == 0


def test_lookup_burst_without_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the fast path is not built the SAD has no table, and a burst is looked up in the
    dict: the same indexes."""
    burst = [(IN, spi, LOCAL4, VF_MAC, DOMAIN.vlans) for spi in (0x10, 0x11, 0x12, 0x13)]

    def indexes() -> list[int]:
        sad = SecurityAssociationDatabase(8)
        _add(sad, 0x10, DOMAIN)
        _add(sad, 0x11)
        _add(sad, 0x13, Domain(VF_MAC, ()))
        return sad.lookup_burst(burst)

    with_table = indexes()
    monkeypatch.setattr("ipsec_offload.agent.sad.SadTable", None)
    assert SecurityAssociationDatabase(8).table is None
    assert indexes() == with_table == [1, 2, 0, 0]
