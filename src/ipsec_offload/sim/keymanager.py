"""The key manager: what an IKE daemon does for the testbed's hosts, with no IKE.

Theory of operation: `secure` makes a pair of SAs between two hosts (the keys from the
testbed's seeded generator, SPIs no SA of the testbed used, state handles from one counter
for every host), installs the four states and the policies naming them through the hosts'
xfrm API and waits for the port to take them; `rekey` replaces a pair make before break and
retires the old states `rekey_grace` seconds later. Fed the hosts' events (`on_events`), it
answers a soft expiry of a pair's current state with a rekey of the pair, as a config action
(one at a time, as Linux runs xfrm commands). It keeps every SA's keys (`sa_keys`) for an
observer of the wire. It reaches the port only through what the testbed hands it: the live
hosts by name, the clock, `settle` and `configure` (`Testbed.at(..., config=True)`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol

from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.errors import UsageError
from ipsec_offload.host.stack import StackEvent, StateExpire
from ipsec_offload.host.xfrm import Mode, XfrmPolicy, XfrmState, host_network
from ipsec_offload.sim.espsa import EspSaEntry
from ipsec_offload.sim.topology import Host
from ipsec_offload.wire.config import Algorithm, Direction

_SEQ_LIMIT = {False: 2**32 - 1, True: 2**64 - 1}


class SaKey(NamedTuple):
    """An SA's keys as `Testbed.sa_keys` keeps them."""

    key_material: bytes
    """Key || 4-byte salt (RFC 4106)."""
    algorithm: Algorithm
    esn: bool


@dataclass(frozen=True, slots=True)
class SaBundle:
    """The four states protecting traffic between two hosts (out and in on each side)."""

    a_out: XfrmState
    a_in: XfrmState
    b_out: XfrmState
    b_in: XfrmState


@dataclass(frozen=True, slots=True)
class _Pair:
    """What `secure` was asked for two hosts, for the rekeys of the pair."""

    a: Host
    b: Host
    size: int
    common: dict[str, Any]
    offload_a: bool
    offload_b: bool
    protocol: int | None


class Hosted(Protocol):
    """A live host as the key manager sees it (the testbed's `Endpoint`)."""

    @property
    def stack(self) -> Host: ...


class KeyManager:
    """The SAs of the testbed's hosts: made by `secure`, replaced by `rekey`."""

    def __init__(
        self,
        rng: random.Random,
        hosts: Mapping[str, Hosted],
        *,
        now: Callable[[], float],
        settle: Callable[..., None],
        configure: Callable[[float, Callable[[], None]], None],
        rekey_grace: float,
    ) -> None:
        self._rng = rng
        self._hosts = hosts
        """The live hosts by name (the testbed's, as they change)."""
        self._now = now
        self._settle = settle
        """Let the given hosts act and run the port until idle (`Testbed.settle`)."""
        self._configure = configure
        """Run a config action at a time (`Testbed.at(..., config=True)`)."""
        self.rekey_grace = rekey_grace
        """Seconds a rekeyed pair's old states stay, for what is still in flight."""
        self.rekeys = 0
        self._next_reqid = 0
        self._pairs: dict[int, tuple[_Pair, SaBundle]] = {}
        """reqid -> (what secure was asked, the pair's current SAs)."""
        self._rekeying: set[int] = set()
        """The reqids of the pairs whose rekey is under way."""
        self.sa_keys: dict[tuple[bytes, bytes, int], SaKey] = {}
        """The keys of every SA `secure` created, by (IP source, IP destination, SPI); kept
        when the hosts are gone. A later SA of the same three replaces an earlier one."""
        self._next_spi = 0x1000
        self._used_spis: set[int] = set()
        self._next_handle = 1
        self.states_made: dict[int, XfrmState] = {}
        """Every state `secure` and `rekey` made, by handle (handles are the testbed's, one
        counter for every host): what a log's handle names, also once the state is gone."""

    def secure(
        self,
        a: Host,
        b: Host,
        *,
        family: int = 4,
        mode: Mode = Mode.TRANSPORT,
        algorithm: Algorithm = Algorithm.AES_GCM_128,
        esn: bool = False,
        replay_window: int = 64,
        offload_a: bool = True,
        offload_b: bool = False,
        protocol: int | None = None,
        spis: tuple[int, int] | None = None,
        seq_start: int = 0,
        soft_lifetime_packets: int = 0,
        lifetime_packets: int = 0,
        soft_lifetime_bytes: int = 0,
        lifetime_bytes: int = 0,
    ) -> SaBundle:
        """Create, install and wait for a pair of SAs (a->b and b->a) with policies between
        a's and b's addresses of `family` (4 or 6). Keys come from the seeded generator, SPIs
        too unless `spis` (a->b, b->a) names them; offload is asked where the host's device
        has it. Every SA's keys go into `sa_keys`. The four states share a new reqid, which
        their rekeys (`rekey`) keep.

        `seq_start` starts the SAs mid-stream: both outbound states have used the numbers up
        to it (the first packet carries `seq_start` + 1) and both inbound windows have seen
        them (to let an ESN SA cross 2^32 within a few packets). The lifetimes (packets, 0:
        none) and bytes go to every state; the agent reports the limits of offloaded ones."""
        size = 4 if family == 4 else 16
        if a.addresses.get(size) is None or b.addresses.get(size) is None:
            raise UsageError(f"{a.name} and {b.name} both need an IPv{family} address")
        last = _SEQ_LIMIT[esn] - 1
        if not 0 <= seq_start <= last:
            bits = "64-bit sequence numbers (ESN)" if esn else "32-bit sequence numbers (no ESN)"
            raise UsageError(
                f"seq_start {seq_start}: with {bits} use 0 .. {last:#x}, so that the first"
                " packet's number, seq_start + 1, fits"
            )
        self._next_reqid += 1
        reqid = self._next_reqid  # the adds below run the port: another secure may come
        pair = _Pair(
            a,
            b,
            size,
            {
                "algorithm": algorithm,
                "mode": mode,
                "esn": esn,
                "replay_window": replay_window,
                "soft_lifetime_packets": soft_lifetime_packets,
                "lifetime_packets": lifetime_packets,
                "soft_lifetime_bytes": soft_lifetime_bytes,
                "lifetime_bytes": lifetime_bytes,
                "reqid": reqid,
            },
            offload_a,
            offload_b,
            protocol,
        )
        bundle = self._install(pair, spis, seq_start)
        self._pairs[reqid] = (pair, bundle)
        return bundle

    def current(self, bundle: SaBundle) -> SaBundle:
        """The SAs that protect `bundle`'s pair now: `bundle` itself, or its latest rekey."""
        pair = self._pairs.get(bundle.a_out.reqid)
        return bundle if pair is None else pair[1]

    def rekey(self, bundle: SaBundle) -> SaBundle:
        """A new pair of SAs in place of `bundle` (new SPIs and keys, the same reqid and
        settings), make before break: the new states and the policies naming them are
        installed at once, and the old states stay for `rekey_grace` seconds to take what is
        still in flight, then are deleted. As an IKE daemon answers a soft expiry."""
        reqid = bundle.a_out.reqid
        pair, current = self._pairs.get(reqid, (None, None))
        if pair is None or current is not bundle:
            raise UsageError("rekey takes the current SaBundle of a pair made by secure")
        # the adds wait for the agent, and the port runs meanwhile: a second soft expiry of
        # the pair must not start a second rekey
        self._rekeying.add(reqid)
        try:
            new = self._install(pair, None, 0)
        finally:
            self._rekeying.discard(reqid)
        self._pairs[reqid] = (pair, new)
        self.rekeys += 1

        def retire() -> None:
            for stack, state in (
                (pair.a, bundle.a_out),
                (pair.a, bundle.a_in),
                (pair.b, bundle.b_out),
                (pair.b, bundle.b_in),
            ):
                if self._hosts.get(stack.name) is not None and state.handle in stack.states:
                    stack.delete_state(state.handle, self._now())
            self._settle(pair.a, pair.b)

        self._configure(self._now() + self.rekey_grace, retire)
        return new

    def _install(self, pair: _Pair, spis: tuple[int, int] | None, seq_start: int) -> SaBundle:
        """Create and install a pair's four states and the policies naming them (a policy
        with the selector of one already there replaces it)."""
        a, b, size, common = pair.a, pair.b, pair.size, pair.common
        a_addr, b_addr = a.addresses[size], b.addresses[size]
        key_len = 16 if common["algorithm"] == Algorithm.AES_GCM_128 else 32
        ab_key = self._rng.randbytes(key_len + 4)
        ba_key = self._rng.randbytes(key_len + 4)
        ab_spi, ba_spi = spis if spis is not None else (self._spi(), self._spi())
        self._used_spis.update((ab_spi, ba_spi))
        self.sa_keys[a_addr, b_addr, ab_spi] = SaKey(ab_key, common["algorithm"], common["esn"])
        self.sa_keys[b_addr, a_addr, ba_spi] = SaKey(ba_key, common["algorithm"], common["esn"])
        new = partial(self._state, common=common, seq_start=seq_start)
        bundle = SaBundle(
            a_out=new(Direction.OUTBOUND, ab_spi, a_addr, b_addr, ab_key),
            a_in=new(Direction.INBOUND, ba_spi, b_addr, a_addr, ba_key),
            b_out=new(Direction.OUTBOUND, ba_spi, b_addr, a_addr, ba_key),
            b_in=new(Direction.INBOUND, ab_spi, a_addr, b_addr, ab_key),
        )
        for stack, out, inn, offload, peer in (
            (a, bundle.a_out, bundle.a_in, pair.offload_a, b_addr),
            (b, bundle.b_out, bundle.b_in, pair.offload_b, a_addr),
        ):
            stack.add_state(out, self._now(), offload=offload)
            stack.add_state(inn, self._now(), offload=offload)
            own = stack.addresses[size]
            stack.add_policy(
                XfrmPolicy(
                    Direction.OUTBOUND,
                    host_network(own),
                    host_network(peer),
                    out.handle,
                    pair.protocol,
                )
            )
            stack.add_policy(
                XfrmPolicy(
                    Direction.INBOUND,
                    host_network(peer),
                    host_network(own),
                    inn.handle,
                    pair.protocol,
                )
            )
            self._settle(stack)
        return bundle

    def on_events(self, events: list[StackEvent]) -> None:
        """The simulated key manager: a soft expiry of a state of a pair's current SAs asks
        for a rekey of that pair (once: a state of an older pair is already replaced)."""
        for event in events:
            if not isinstance(event, StateExpire) or event.hard:
                continue
            for _pair, bundle in self._pairs.values():
                handles = (bundle.a_out, bundle.a_in, bundle.b_out, bundle.b_in)
                if any(s.handle == event.handle for s in handles):
                    self._configure(self._now(), partial(self._rekey_current, bundle))

    def _rekey_current(self, bundle: SaBundle) -> None:
        """Rekey `bundle` unless it was rekeyed meanwhile (both its directions expire)."""
        reqid = bundle.a_out.reqid
        _pair, current = self._pairs[reqid]
        if current is bundle and reqid not in self._rekeying:
            self.rekey(bundle)

    def _spi(self) -> int:
        """The next SPI not used by any SA of this testbed."""
        self._next_spi += 1
        while self._next_spi in self._used_spis:
            self._next_spi += 1
        return self._next_spi

    def _state(
        self,
        direction: Direction,
        spi: int,
        src: bytes,
        dst: bytes,
        key: bytes,
        common: dict[str, Any],
        seq_start: int,
    ) -> XfrmState:
        handle = self._next_handle
        self._next_handle += 1
        state = XfrmState(handle, direction, spi, src, dst, key_material=key, **common)
        self.states_made[handle] = state
        if direction == Direction.OUTBOUND:
            state.oseq = seq_start
        else:
            state.replay = ReplayWindow(state.replay_window, state.esn, seq_start)
        return state

    def esp_sa_entries(self) -> list[EspSaEntry]:
        """Every SA of every host, once each, for Wireshark's esp_sa file."""
        seen: dict[tuple[bytes, bytes, int], EspSaEntry] = {}
        for ep in self._hosts.values():
            for s in ep.stack.states.values():
                seen.setdefault(
                    (s.src, s.dst, s.spi),
                    EspSaEntry(s.src, s.dst, s.spi, s.key_material, int(s.algorithm), s.esn),
                )
        return list(seen.values())
