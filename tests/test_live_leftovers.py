"""Namespaces a killed live run left behind are removed by the next run, and only those
(`live/leftovers.py`): claims of ended owners are reaped, claims of running ones and
unreadable claims are left alone; `ipsec-offload live` killed with SIGKILL leaves its
namespaces, and the next topology removes them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ipsec_offload.live.leftovers import claim, reap, start_time
from ipsec_offload.live.topology import LiveTopology
from live_port import require_namespaces

pytestmark = pytest.mark.xdist_group("live")


def _namespaces() -> set[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


def _topology_namespaces() -> set[str]:
    """A live topology's namespaces (the bench's, on another worker, are left out)."""
    return {netns for netns in _namespaces() if netns.endswith(("-app", "-agent", "-wire"))}


def _pids(netns: str) -> list[str]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return done.stdout.split()


def _ended_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_start_time_is_the_processes_own() -> None:
    assert start_time(os.getpid()) == start_time(os.getpid())
    assert start_time(_ended_pid()) is None


def test_a_claim_lasts_while_its_block_runs(tmp_path: Path) -> None:
    with claim(["iolx-a", "iolx-b"], tmp_path) as path:
        record = json.loads(path.read_text())
        assert record == {
            "pid": os.getpid(), "start": start_time(os.getpid()), "namespaces": ["iolx-a", "iolx-b"]
        }  # fmt: skip
        assert reap(tmp_path) == []  # its owner runs: left alone
        assert path.exists()
    assert list(tmp_path.iterdir()) == []


def test_only_the_claims_of_ended_owners_are_reaped(tmp_path: Path) -> None:
    require_namespaces()
    tag = uuid.uuid4().hex[:6]
    dead, reused, alive = f"iolr{tag}-dead", f"iolr{tag}-reused", f"iolr{tag}-alive"
    for netns in (dead, reused, alive):
        subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        me = os.getpid()
        claims = {
            "dead": {"pid": _ended_pid(), "start": 1, "namespaces": [dead]},
            # this pid, but not this process: started at another time (a reused pid)
            "reused": {"pid": me, "start": (start_time(me) or 0) + 1, "namespaces": [reused]},
            "alive": {"pid": me, "start": start_time(me), "namespaces": [alive]},
        }
        for name, record in claims.items():
            (tmp_path / f"{name}.json").write_text(json.dumps(record))
        (tmp_path / "broken.json").write_text("{not json")
        assert reap(tmp_path) == [dead, reused]
        assert _namespaces() >= {alive} and not _namespaces() & {dead, reused}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["alive.json", "broken.json"]
    finally:
        for netns in (dead, reused, alive):
            subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)


def test_a_killed_live_run_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    """`ipsec-offload live` killed with SIGKILL: its processes end with it, its namespaces
    stay; the next topology's `up` removes them and says so."""
    require_namespaces()
    before = _namespaces()
    cli = str(Path(sys.executable).parent / "ipsec-offload")
    run = subprocess.Popen(
        [cli, "live", "--out", str(tmp_path / "first"), "--run", "sleep 60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(made := _topology_namespaces() - before) < 3 and time.monotonic() < deadline:
            assert run.poll() is None
            time.sleep(0.2)
        assert len(made) == 3
        time.sleep(1.0)  # its parts have started
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert made <= _namespaces()  # left behind, with no process of its in them
    deadline = time.monotonic() + 10
    while any(_pids(netns) for netns in made) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_pids(netns) for netns in made)
    with LiveTopology(tmp_path / "second") as topology:
        assert sorted(topology.reaped) == sorted(made)
        assert not made & _namespaces()
    assert not made & _namespaces()
