"""Shared fixtures. Helpers live in ``tools.py`` next to this file.

Hypothesis runs under the profile named by $HYPOTHESIS_PROFILE (default "project"): no
per-example deadline (the default 200 ms flakes on a loaded machine, and the first example of
a test pays for imports and cipher contexts), and no health check for slow data generation.
A test's own ``@settings`` sets its example count. "sanitize" is the profile of ``make
sanitize``: the same, with the examples of every test that does not set its own count bounded,
so that the run under AddressSanitizer stays within its time (see the Makefile).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from ipsec_offload.sim.linux.guest import LinuxGuest
from tools import require_built, require_fast_path, require_linux_guest, require_tool

settings.register_profile("project", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("sanitize", settings.get_profile("project"), max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "project"))


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


@pytest.fixture(params=["fast path", "reference path"])
def nic_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test twice: with the NIC's compiled fast paths (the Tx path, where the common
    descriptors go and which builds the descriptors of `RingDriver.xmit_burst`, and the receive
    filter of `PlainDriver`), and with every descriptor and received frame through the Python
    reference path (NICs and plain drivers made as in a package built without them)."""
    from ipsec_offload.nic import fastpath

    if request.param == "fast path":
        require_built(fastpath.NIC_PATH_BUILT, "the NIC's compiled module (nic/_nicpath.c)")
    else:
        monkeypatch.setattr(fastpath, "TxPath", None)
        monkeypatch.setattr(fastpath, "plain_receive", None)
    return str(request.param)


@pytest.fixture(params=["host fast path", "host reference path"])
def host_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test twice: with the host stack's compiled receive path (where the common packets
    go), and with every event through the Python reference path (stacks made while it is off,
    as where the package was built without it). A plain driver's receive filter is the NIC's:
    `nic_path` runs it both ways."""
    from ipsec_offload.host import fastpath

    if request.param == "host fast path":
        require_built(fastpath.RX_PATH_BUILT, "the host stack's compiled receive path")
    else:
        monkeypatch.setattr(fastpath, "RxPath", None)
    return str(request.param)


@pytest.fixture(scope="session")
def linux_guest() -> Iterator[LinuxGuest]:
    """The Linux guest, booted once for the tests of a worker (the image is built first if
    the cache has none); the tests that use it share one xdist group, so one worker boots it."""
    require_linux_guest()
    guest = LinuxGuest.boot()
    try:
        yield guest
    finally:
        guest.close()
