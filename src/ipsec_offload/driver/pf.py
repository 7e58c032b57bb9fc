"""The PF driver: the xdo_dev_* offload calls, the config channel and the data rings.

Theory of operation: the host stack calls `xdo_dev_state_add` and friends as Linux's xfrm layer
does. Each call becomes a config frame on the Tx ring; the reply arrives on the Rx ring and
becomes an event carrying the call's return value (0 or a negative errno). The driver is
sans-IO: it queues Tx descriptors (`tx_descriptors`) and events (`events`), and wants
`handle_timer` called at `next_timer` so lost frames are retried.
The data rings are those of every driver (`ring.RingDriver`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ipsec_offload.driver.control import Completion, ConfigChannel, Errno
from ipsec_offload.driver.ring import (
    CapsDone,
    DriverEvent,
    OffloadState,
    RingDriver,
    StateAddDone,
    StateDeleteDone,
    StatsDone,
)
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.nic.descriptors import RxDescriptor, TxDescriptor
from ipsec_offload.wire.config import (
    AddSaRequest,
    Caps,
    Direction,
    Opcode,
    Tlv,
    decode_caps,
    decode_sa_index,
    decode_sa_stats,
    encode_add_sa,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, VlanTag

DEFAULT_AGENT_MAC = bytes.fromhex("020000000001")


class PfDriver(RingDriver):
    """The PF driver of one port: the only party that talks to the agent's config channel."""

    def __init__(
        self,
        mac: bytes,
        *,
        vlans: tuple[VlanTag, ...] = (),
        agent_mac: bytes = DEFAULT_AGENT_MAC,
        port: int = 0,
        timeout: float = 0.001,
        retries: int = 3,
        extended_key: bool = True,
        config_ethertype: int = EtherType.CONFIG,
    ) -> None:
        super().__init__(mac, vlans)
        self.agent_mac = agent_mac
        self.extended_key = extended_key
        """False models the naive SA key: SAs are added without the domain fields."""
        self.channel = ConfigChannel(
            mac, agent_mac, port, timeout, retries, config_ethertype=config_ethertype
        )
        self.caps: Caps | None = None
        self._txn: dict[int, int] = {}
        self._config_ethertype = config_ethertype

    # -- the xdo_dev_* operations -----------------------------------------------------------

    def probe(self, now: float) -> None:
        """Ask the agent what it can do (GET_CAPS); completes with CapsDone."""
        self._submit(Opcode.GET_CAPS, (), -1, now)

    def xdo_dev_state_add(self, state: OffloadState, now: float) -> None:
        """Offload a state; completes with StateAddDone (rc 0 or a negative errno)."""
        if state.handle in self.sa_index:
            raise UsageError(f"xfrm state {state.handle} is already offloaded")
        refusal = self._refuse(state)
        if refusal:
            self._events.append(StateAddDone(state.handle, refusal, None))
            return
        request = AddSaRequest(
            direction=state.direction,
            spi=state.spi,
            dst=state.dst,
            src=state.src,
            alg=state.algorithm,
            key=state.key_material,
            local_mac=self.mac if self.extended_key else None,
            vlans=self.vlans if self.extended_key else (),
            esn=state.esn,
            seq=state.seq,
            replay_window=state.replay_window if state.direction == Direction.INBOUND else None,
            lifetime_packets=state.lifetime_packets or None,
            lifetime_bytes=state.lifetime_bytes or None,
        )
        self._submit(Opcode.ADD_SA, encode_add_sa(request), state.handle, now)

    def _refuse(self, state: OffloadState) -> int:
        """-EOPNOTSUPP for what the agent's capabilities rule out, without asking it."""
        caps = self.caps
        if caps is None:
            return 0
        if state.algorithm not in caps.algorithms:
            return -Errno.EOPNOTSUPP
        if state.direction == Direction.INBOUND and state.replay_window > caps.max_replay_window:
            return -Errno.EOPNOTSUPP
        return 0

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        """Remove an offloaded state from the agent; completes with StateDeleteDone."""
        index = self.sa_index.get(handle)
        if index is None:
            self._events.append(StateDeleteDone(handle, -Errno.ENOENT))
            return
        self._submit(Opcode.REMOVE_SA, encode_sa_index(index), handle, now)

    def xdo_dev_state_free(self, handle: int) -> None:
        """Forget a state after its delete completed (Linux frees driver memory here)."""
        self.sa_index.pop(handle, None)

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> None:
        """Fetch the agent's counters of a state; completes with StatsDone."""
        index = self.sa_index.get(handle)
        if index is None:
            self._events.append(StatsDone(handle, -Errno.ENOENT, None))
            return
        self._submit(Opcode.GET_SA_STATS, encode_sa_index(index), handle, now)

    def _submit(self, opcode: Opcode, tlvs: tuple[Tlv, ...], handle: int, now: float) -> None:
        txn_id, frame = self.channel.submit(opcode, tlvs, now)
        self._txn[txn_id] = handle
        self._tx.append(TxDescriptor(frame))

    def _complete(self, done: Completion) -> None:
        handle = self._txn.pop(done.txn_id)
        tlvs = done.reply.tlvs if done.reply is not None and done.rc == 0 else None
        try:
            event = self._finish(done.opcode, handle, done.rc, tlvs)
        except ParseError:
            self.channel.counters.bad_replies += 1
            event = self._finish(done.opcode, handle, -Errno.EINVAL, None)
        self._events.append(event)

    def _finish(
        self, opcode: Opcode, handle: int, rc: int, tlvs: tuple[Tlv, ...] | None
    ) -> DriverEvent:
        """The event (and driver state change) for a finished transaction."""
        if opcode == Opcode.ADD_SA:
            index = None if tlvs is None else decode_sa_index(tlvs)
            if index is not None:
                self.sa_index[handle] = index
            return StateAddDone(handle, rc, index)
        if opcode == Opcode.REMOVE_SA:
            return StateDeleteDone(handle, rc)
        if opcode == Opcode.GET_SA_STATS:
            return StatsDone(handle, rc, None if tlvs is None else decode_sa_stats(tlvs))
        if tlvs is not None:
            self.caps = decode_caps(tlvs)
        return CapsDone(rc, None if tlvs is None else self.caps)

    # -- the config channel's replies ------------------------------------------------------

    def _control_frame(self, desc: RxDescriptor, eth: EthernetHeader, now: float) -> bool:
        if eth.ethertype != self._config_ethertype or eth.src != self.agent_mac:
            return False
        done = self.channel.on_reply(memoryview(desc.frame)[eth.header_len :])
        if done is not None and done.txn_id in self._txn:
            self._complete(done)
        return True

    # -- sans-IO plumbing -------------------------------------------------------------------

    def next_timer(self) -> float | None:
        return self.channel.next_deadline()

    def handle_timer(self, now: float) -> None:
        resend, done = self.channel.on_timer(now)
        self._tx.extend(TxDescriptor(frame) for frame in resend)
        for completion in done:
            self._complete(completion)

    def dump(self) -> dict[str, Any]:
        return {
            "mac": self.mac.hex(":"),
            "offloaded": dict(sorted(self.sa_index.items())),
            "pending": self.channel.pending,
            "control": asdict(self.channel.counters),
            "counters": asdict(self.counters),
        }
