"""Shared fixtures. Helpers live in ``tools.py`` next to this file."""

from __future__ import annotations

import pytest

from tools import require_fast_path, require_tool


@pytest.fixture
def tshark() -> str:
    """The path of tshark; skips the test if it is missing (fails under CI, see tools.py)."""
    return require_tool("tshark")


@pytest.fixture(params=["fast path", "reference path"])
def agent_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test twice: with the agent's compiled fast path (where the common frames go), and
    with every frame through the Python reference path (agents built without the fast path)."""
    if request.param == "fast path":
        require_fast_path()
    else:
        monkeypatch.setattr("ipsec_offload.agent.fastpath.Datapath", None)
    return str(request.param)
