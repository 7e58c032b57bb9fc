"""Device offload of the stack's states: Linux's xfrm_device.c, over the device's
xfrmdev_ops (`NetDevice`: the xdo_dev_state_* calls plus transmit and the features).

Theory of operation: a state is added to and deleted from the SAD here, and, when it is or
was to be offloaded, the device is called with Linux's contract:

- `add_state(..., offload=True)` on a device with NETIF_F_HW_ESP calls xdo_dev_state_add,
  which returns once the agent answered or the config channel gave up (the driver's `wait`
  runs the port meanwhile). The state is in the SAD, PENDING and served in software, during
  the call (Linux inserts it after; see docs/linux-mapping.md). The SEQ the add and every
  re-install the driver makes after a reset carry is read from the state where the stack owns
  sequence numbers (`SequenceOwnership.handover`). Linux's rule for the result
  (xfrm_dev_state_add): 0 offloads the state; -EOPNOTSUPP of a crypto offload falls back to
  software and traffic still flows; any other error, and any error of a packet offload, fails
  the add: the state is removed and the outcome carries the errno and the driver's extack
  message. Its policies stay: what they select is dropped, never sent in clear, until a new
  state takes their place.
- A state the device lost for good (a reset, and the re-add failed) falls back to software,
  and carries on from the state's own sequence numbers and window.
- `delete_state` calls xdo_dev_state_delete, which returns nothing (Linux may call it in
  atomic context), removes the state with the policies that name it (as a key manager deletes
  a child SA with its policies), then xdo_dev_state_free, which waits for the device.
- `update_stats` calls xdo_dev_state_update_stats and merges what the device counted and the
  stack could not see (frames the agent dropped as replays or for a bad ICV) into the state's
  `stats`, as deltas since the previous read; the lifetime counters (`packets`, `bytes`) stay
  the stack's own, which a crypto offload keeps in Linux too.
- An expiry the agent reports (`StateExpired`, spec 9) is Linux's: a soft one (a soft limit,
  or 2^31 sequence numbers used) is told to the key manager once per state (`StateExpire`,
  a rekey request); at a hard one the state is deleted from the device and the SAD, and its
  policies stay, dropping what they select until a new state takes over.

Each outcome is a `StateResult` event. `offload_ok` is the per-packet question of the ESP
output (Linux's xfrm_dev_offload_ok): may a send of this state go down for offload?
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ipsec_offload.driver.control import Errno
from ipsec_offload.driver.ring import (
    DriverEvent,
    ExtAck,
    NetdevFeature,
    OffloadLost,
    OffloadState,
    OffloadType,
    StateAddDone,
    StateExpired,
    TxOffload,
)
from ipsec_offload.errors import UsageError
from ipsec_offload.host.events import StackCounters, StackEvent, StateExpire, StateResult
from ipsec_offload.host.sad import Sad
from ipsec_offload.host.spd import Spd
from ipsec_offload.host.xfrm import Offload, SequenceOwnership, XfrmState
from ipsec_offload.wire.config import Algorithm, SaStats
from ipsec_offload.wire.ip import IpProto, IPv4Header, IPv6Header, build_ipv4, build_ipv6
from ipsec_offload.wire.metadata import RxStatus

_DEVICE = Offload.DEVICE
_L3_SENT = {
    4: build_ipv4(IPv4Header(bytes(4), bytes(4), IpProto.ESP, 20)),
    16: build_ipv6(IPv6Header(bytes(16), bytes(16), IpProto.ESP, 0)),
}
"""The shape of the outer IP header this stack's ESP packets leave with, by address length:
what `xdo_dev_offload_ok` inspects."""
_REPLAY = RxStatus.REPLAY - 1
_AUTH_FAILED = RxStatus.AUTH_FAILED - 1
"""Where those Rx statuses' counts sit in `SaStats.errors` (one per status 1..5)."""


class NetDevice(Protocol):
    """What the stack needs of its device: Linux's xfrmdev_ops, transmit and features."""

    features: NetdevFeature
    ifname: str

    def xmit(self, frame: bytes, offload: TxOffload | None = None, mss: int = 0) -> None: ...
    def xmit_burst(self, frames: Sequence[bytes], offload: TxOffload | None = None) -> None: ...
    def events(self) -> list[DriverEvent]: ...
    def xdo_dev_state_add(self, state: OffloadState, extack: ExtAck, now: float) -> int: ...
    def xdo_dev_state_delete(self, handle: int, now: float) -> None: ...
    def xdo_dev_state_free(self, handle: int, now: float) -> None: ...
    def xdo_dev_offload_ok(self, handle: int, l3: bytes) -> bool: ...
    def xdo_dev_state_update_stats(self, handle: int, now: float) -> SaStats | None: ...
    def xdo_dev_state_advance_esn(self, handle: int, esn: int, now: float) -> None: ...


def offload_ok(device: NetDevice, state: XfrmState) -> bool:
    """Whether a send of `state` goes down for the device to encrypt (asked per packet, with
    the IP header it leaves with: this stack sends no IPv4 options and no IPv6 extension
    headers)."""
    return state.offload == _DEVICE and device.xdo_dev_offload_ok(
        state.handle, _L3_SENT[len(state.dst)]
    )


class DeviceOffload:
    """The stack's state operations and the device's answers to them."""

    __slots__ = (
        "_counters",
        "_device",
        "_dying",
        "_events",
        "_hw_seen",
        "_sad",
        "_sequences",
        "_spd",
    )

    def __init__(
        self,
        device: NetDevice,
        sad: Sad,
        spd: Spd,
        sequences: SequenceOwnership,
        counters: StackCounters,
        events: list[StackEvent],
    ) -> None:
        self._device = device
        self._sad = sad
        self._spd = spd
        self._sequences = sequences
        self._counters = counters
        self._events = events
        self._hw_seen: dict[int, tuple[int, int]] = {}
        """The device's (replay, ICV failure) counts of a state at the previous read."""
        self._dying: set[int] = set()
        """States told soft-expired (Linux's x->km.dying): the key manager hears it once."""

    # -- the stack's calls ----------------------------------------------------------------

    def add_state(self, state: XfrmState, now: float, offload: bool) -> None:
        """Install a state; with `offload`, on a device that offers it, ask the device."""
        state.add_time = now
        self._sad.add(state)
        if not (offload and NetdevFeature.HW_ESP in self._device.features):
            self._events.append(StateResult(now, state.handle, "add", 0, Offload.SOFTWARE))
            return
        state.offload = Offload.PENDING
        extack = ExtAck()
        handover = self._sequences.handover(state)
        rc = self._device.xdo_dev_state_add(_offload_state(state, handover), extack, now)
        state.add_rc = rc
        if rc == 0:
            state.offload = _DEVICE
        elif rc == -Errno.EOPNOTSUPP and state.offload_type == OffloadType.CRYPTO:
            state.offload = Offload.SOFTWARE  # Linux's fallback
            self._counters.offload_fallbacks += 1
        else:
            self._sad.remove(state)  # its policies stay, and block
            extack.set_weak("Device failed to offload this state")
            self._events.append(StateResult(now, state.handle, "add", rc, None, extack.msg))
            return
        self._events.append(
            StateResult(now, state.handle, "add", rc, state.offload, extack.msg if rc else None)
        )

    def delete_state(self, handle: int, now: float) -> None:
        """Remove a state and the policies that name it."""
        self._remove(self._sad.get(handle), now, keep_policies=False)

    def _remove(self, state: XfrmState, now: float, *, keep_policies: bool) -> None:
        """Remove a state, from the device first when it is offloaded; with `keep_policies`
        (a hard expiry) its policies stay and drop what they select."""
        handle = state.handle
        offloaded = state.offload == _DEVICE
        if offloaded:
            self._device.xdo_dev_state_delete(handle, now)
        self._sad.remove(state)
        if not keep_policies:
            self._spd.remove_state(handle)
        if offloaded:
            self._device.xdo_dev_state_free(handle, now)
        self._dying.discard(handle)
        self._hw_seen.pop(handle, None)
        self._events.append(StateResult(now, handle, "delete", 0, None))

    def update_stats(self, handle: int, now: float) -> None:
        """Merge the device's counters of an offloaded state into its `stats`."""
        state = self._sad.get(handle)
        if state.offload != _DEVICE:
            raise UsageError(f"host {self._sad.name}: state {handle} is not offloaded")
        hw = self._device.xdo_dev_state_update_stats(handle, now)
        if hw is None:
            return
        counts = (hw.errors[_REPLAY], hw.errors[_AUTH_FAILED])
        seen = self._hw_seen.get(handle, (0, 0))
        # a counter below the previous read was reset (the agent lost the SA, and it was
        # re-installed): all it holds is new
        replay, failed = (c - (s if c >= s else 0) for c, s in zip(counts, seen, strict=True))
        state.stats.replay += replay
        state.stats.integrity_failed += failed
        self._hw_seen[handle] = counts

    def advance_esn(self, state: XfrmState, esn: int, now: float) -> None:
        """An offloaded inbound ESN state's window entered a new 2^32 subspace (Linux calls
        xdo_dev_state_advance_esn from xfrm_replay_advance_esn)."""
        self._device.xdo_dev_state_advance_esn(state.handle, esn, now)

    # -- the device's answers -------------------------------------------------------------

    def added(self, event: StateAddDone, now: float) -> None:
        """The driver re-installed an offloaded state (after a reset or a restart)."""
        state = self._sad.states.get(event.handle)
        if state is not None:
            self._events.append(StateResult(now, event.handle, "add", event.rc, state.offload))

    def expired(self, event: StateExpired, now: float) -> None:
        """The agent reported a limit (spec 9): a soft one is told to the key manager once
        (a rekey request); at a hard one the state is deleted, as Linux deletes an xfrm state
        at its hard expiry, and its policies stay."""
        state = self._sad.states.get(event.handle)
        if state is None:
            return
        if not event.hard:
            if event.handle not in self._dying:
                self._dying.add(event.handle)
                self._events.append(StateExpire(now, event.handle, False))
            return
        self._events.append(StateExpire(now, event.handle, True))
        self._counters.hard_expiries += 1
        self._remove(state, now, keep_policies=True)

    def lost(self, event: OffloadLost, now: float) -> None:
        """A reset took the state out of the agent and it could not be re-added."""
        state = self._sad.states.get(event.handle)
        if state is not None and state.offload == _DEVICE:
            state.offload = Offload.SOFTWARE
            state.add_rc = event.rc
            self._counters.offload_lost += 1
            self._events.append(StateResult(now, event.handle, "lost", event.rc, state.offload))


def _offload_state(state: XfrmState, handover: Callable[[], int | None] | None) -> OffloadState:
    return OffloadState(
        handle=state.handle,
        direction=state.direction,
        spi=state.spi,
        dst=state.dst,
        src=state.src,
        algorithm=Algorithm(state.algorithm),
        key_material=state.key_material,
        esn=state.esn,
        replay_window=state.replay_window,
        lifetime_packets=state.lifetime_packets,
        lifetime_bytes=state.lifetime_bytes,
        soft_lifetime_packets=state.soft_lifetime_packets,
        soft_lifetime_bytes=state.soft_lifetime_bytes,
        offload_type=state.offload_type,
        handover_seq=handover,
    )
