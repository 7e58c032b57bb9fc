"""A plain NIC driver without ESP offload: what the remote peer (software ESP) runs on."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from ipsec_offload.burst import reference_items
from ipsec_offload.driver.ring import (
    DriverEvent,
    ExtAck,
    NetdevFeature,
    OffloadState,
    PacketReceived,
    TxOffload,
)
from ipsec_offload.errors import UsageError
from ipsec_offload.nic import fastpath
from ipsec_offload.wire.config import SaStats

ETHERNET_HEADER_LEN = 14
"""Destination and source MAC and an EtherType: a shorter frame is a runt."""


@dataclass(slots=True)
class PlainCounters:
    """What a plain driver drops on receive, by reason (its MAC filter's misses are not drops:
    the frames are someone else's)."""

    rx_runt: int = 0
    """Frames shorter than an Ethernet header (14 bytes), empty ones included: the NIC has no
    destination address to filter them by."""


class PlainDriver:
    """Frames in and out as they are; the xdo_dev_* calls are refused (no NETIF_F_HW_ESP)."""

    features = NetdevFeature(0)
    ifname = "eth0"
    """The interface's name, as `ip` shows it."""

    def __init__(self, mac: bytes) -> None:
        self.mac = mac
        self._tx: list[bytes] = []
        self._events: list[DriverEvent] = []
        self._fast_receive = fastpath.plain_receive
        self.counters = PlainCounters()

    def xmit(self, frame: bytes, offload: TxOffload | None = None, mss: int = 0) -> None:
        if offload is not None or mss:
            raise UsageError("this device has no ESP offload nor TSO; send without them")
        self._tx.append(frame)

    def xmit_burst(self, frames: Sequence[bytes], offload: TxOffload | None = None) -> None:
        """Queue frames for the wire, as `xmit` does each."""
        if offload is not None:
            raise UsageError("this device has no ESP offload; send without it")
        self._tx.extend(frames)

    def receive(self, frames: Iterable[bytes], now: float) -> None:
        """Frames from the wire: keep those for this MAC, broadcast and multicast (the
        NIC's compiled receive filter, `nic.fastpath.plain_receive`, where there is one, keeps
        the common ones); a runt (shorter than an Ethernet header) is a counted drop."""
        fast = self._fast_receive
        burst = None if fast is None else partial(fast, self.mac, self._events, PacketReceived)
        for frame in reference_items(frames, burst):
            if len(frame) < ETHERNET_HEADER_LEN:
                self.counters.rx_runt += 1
            elif frame[:6] == self.mac or frame[0] & 1:
                self._events.append(PacketReceived(frame, None))

    def take_frames(self) -> list[bytes]:
        """Take the frames queued for the wire."""
        tx, self._tx = self._tx, []
        return tx

    def events(self) -> list[DriverEvent]:
        events, self._events = self._events, []
        return events

    def xdo_dev_state_add(self, state: OffloadState, extack: ExtAck, now: float) -> int:
        raise _no_offload()

    def xdo_dev_state_delete(self, handle: int, now: float) -> None:
        raise _no_offload()

    def xdo_dev_state_free(self, handle: int, now: float) -> None:
        raise _no_offload()

    def xdo_dev_offload_ok(self, handle: int, l3: bytes) -> bool:
        return False

    def xdo_dev_state_update_stats(self, handle: int, now: float) -> SaStats | None:
        raise _no_offload()

    def xdo_dev_state_advance_esn(self, handle: int, esn: int, now: float) -> None:
        raise _no_offload()


def _no_offload() -> UsageError:
    return UsageError("this device has no ESP offload (no NETIF_F_HW_ESP): add states without")
