"""Shared fixtures. Helpers live in ``tools.py`` next to this file."""

from __future__ import annotations

import pytest

from tools import require_tool


@pytest.fixture
def tshark() -> str:
    """The path of tshark; skips the test if it is missing (fails under CI, see tools.py)."""
    return require_tool("tshark")
