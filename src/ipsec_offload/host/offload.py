"""Device offload of the stack's states: Linux's xfrm_device.c, over the xdo_dev_state_* calls
of the device (`NetDevice`, Linux's xfrmdev_ops plus transmit).

Theory of operation: a state is added to and deleted from the SAD here, and, when it is or
was to be offloaded, the device is told and its answers handled:

- `add_state(..., offload=True)` calls the device's xdo_dev_state_add, with the SEQ the add
  and every re-install the driver makes after a reset read from the state where the stack
  owns sequence numbers (`SequenceOwnership.handover`). Until the reply arrives the state is
  PENDING and traffic uses software. On 0 the state is offloaded; on -EOPNOTSUPP it stays in
  software (Linux's fallback) and traffic still flows; any other error removes the state
  (Linux's xfrm_state_add fails) and the stack reports the error. Its policies stay: what
  they select is dropped, never sent in clear, until a new state takes their place.
- A state the device lost for good (a reset, and the re-add failed) falls back to software,
  and carries on from the state's own sequence numbers and window.
- `delete_state` removes an offloaded state from the device first, and frees it when the
  device answered; the state goes with the policies that name it (as a key manager deletes
  a child SA with its policies).
- `update_stats` asks the device for an offloaded state's counters, kept in `hw_stats`.
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
    OffloadLost,
    OffloadState,
    StateAddDone,
    StateDeleteDone,
    StateExpired,
    StatsDone,
    TxOffload,
)
from ipsec_offload.errors import UsageError
from ipsec_offload.host.events import StackCounters, StackEvent, StateExpire, StateResult
from ipsec_offload.host.sad import Sad
from ipsec_offload.host.spd import Spd
from ipsec_offload.host.xfrm import Offload, SequenceOwnership, XfrmState
from ipsec_offload.wire.config import Algorithm, SaStats

_DEVICE = Offload.DEVICE


class NetDevice(Protocol):
    """What the stack needs of its device: Linux's xfrmdev_ops plus transmit."""

    hw_esp_offload: bool
    hw_tso: bool
    ifname: str

    def xmit(self, frame: bytes, offload: TxOffload | None = None, mss: int = 0) -> None: ...
    def xmit_burst(self, frames: Sequence[bytes], offload: TxOffload | None = None) -> None: ...
    def events(self) -> list[DriverEvent]: ...
    def xdo_dev_state_add(self, state: OffloadState, now: float) -> None: ...
    def xdo_dev_state_delete(self, handle: int, now: float) -> None: ...
    def xdo_dev_state_free(self, handle: int) -> None: ...
    def xdo_dev_offload_ok(self, handle: int) -> bool: ...
    def xdo_dev_state_update_stats(self, handle: int, now: float) -> None: ...


def offload_ok(device: NetDevice, state: XfrmState) -> bool:
    """Whether a send of `state` goes down for the device to encrypt."""
    return state.offload == _DEVICE and device.xdo_dev_offload_ok(state.handle)


class DeviceOffload:
    """The stack's state operations and the device's answers to them."""

    __slots__ = (
        "_counters",
        "_device",
        "_dying",
        "_events",
        "_expired",
        "_sad",
        "_sequences",
        "_spd",
        "hw_stats",
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
        self.hw_stats: dict[int, SaStats | None] = {}
        """The agent's counters of offloaded states, as update_stats last fetched them."""
        self._dying: set[int] = set()
        """States told soft-expired (Linux's x->km.dying): the key manager hears it once."""
        self._expired: set[int] = set()
        """States being deleted at their hard expiry: their policies stay."""

    # -- the stack's calls ----------------------------------------------------------------

    def add_state(self, state: XfrmState, now: float, offload: bool) -> None:
        """Install a state; with `offload`, ask the device."""
        state.add_time = now
        self._sad.add(state)
        if offload and self._device.hw_esp_offload:
            state.offload = Offload.PENDING
            handover = self._sequences.handover(state)
            self._device.xdo_dev_state_add(_offload_state(state, handover), now)
        else:
            self._events.append(StateResult(now, state.handle, "add", 0, Offload.SOFTWARE))

    def delete_state(self, handle: int, now: float) -> None:
        """Remove a state; an offloaded one is removed from the device first."""
        state = self._sad.get(handle)
        if state.offload == _DEVICE:
            self._device.xdo_dev_state_delete(handle, now)
            return
        self._forget(state)
        self._events.append(StateResult(now, handle, "delete", 0, None))

    def update_stats(self, handle: int, now: float) -> None:
        """Ask the device for an offloaded state's counters."""
        if self._sad.get(handle).offload != _DEVICE:
            raise UsageError(f"host {self._sad.name}: state {handle} is not offloaded")
        self._device.xdo_dev_state_update_stats(handle, now)

    # -- the device's answers -------------------------------------------------------------

    def added(self, event: StateAddDone, now: float) -> None:
        """xdo_dev_state_add answered."""
        state = self._sad.states.get(event.handle)
        if state is None:
            return
        state.add_rc = event.rc
        if event.rc == 0:
            state.offload = _DEVICE
        elif event.rc == -Errno.EOPNOTSUPP:
            state.offload = Offload.SOFTWARE
            self._counters.offload_fallbacks += 1
        else:
            self._sad.remove(state)  # its policies stay, and block
            self._events.append(StateResult(now, event.handle, "add", event.rc, None))
            return
        self._events.append(StateResult(now, event.handle, "add", event.rc, state.offload))

    def deleted(self, event: StateDeleteDone, now: float) -> None:
        """xdo_dev_state_delete answered: the state is freed on the device and forgotten."""
        state = self._sad.states.get(event.handle)
        if state is not None:
            self._device.xdo_dev_state_free(event.handle)
            if event.handle in self._expired:
                self._sad.remove(state)  # a hard expiry: its policies stay, and block
            else:
                self._forget(state)
        self._expired.discard(event.handle)
        self._dying.discard(event.handle)
        self._events.append(StateResult(now, event.handle, "delete", event.rc, None))

    def expired(self, event: StateExpired, now: float) -> None:
        """The agent reported a limit (spec 9): a soft one is told to the key manager once
        (a rekey request); at a hard one the state is deleted, as Linux deletes an xfrm state
        at its hard expiry, and its policies stay."""
        state = self._sad.states.get(event.handle)
        if state is None or event.handle in self._expired:
            return
        if not event.hard:
            if event.handle not in self._dying:
                self._dying.add(event.handle)
                self._events.append(StateExpire(now, event.handle, False))
            return
        self._events.append(StateExpire(now, event.handle, True))
        self._counters.hard_expiries += 1
        if state.offload == _DEVICE:
            self._expired.add(event.handle)
            self._device.xdo_dev_state_delete(event.handle, now)
            return
        self._sad.remove(state)
        self._events.append(StateResult(now, event.handle, "delete", 0, None))

    def lost(self, event: OffloadLost, now: float) -> None:
        """A reset took the state out of the agent and it could not be re-added."""
        state = self._sad.states.get(event.handle)
        if state is not None and state.offload == _DEVICE:
            state.offload = Offload.SOFTWARE
            state.add_rc = event.rc
            self._counters.offload_lost += 1
            self._events.append(StateResult(now, event.handle, "lost", event.rc, state.offload))

    def stats(self, event: StatsDone) -> None:
        """xdo_dev_state_update_stats answered."""
        self.hw_stats[event.handle] = event.stats

    def _forget(self, state: XfrmState) -> None:
        self._sad.remove(state)
        self._spd.remove_state(state.handle)


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
        handover_seq=handover,
    )
