"""The FVL NIC model: VSIs, the embedded switch, metadata insert/extract (spec sections 1, 3, 6).

Theory of operation: each PF or VF owns a VSI (a MAC, a VLAN stack, Tx/Rx rings). A Tx
descriptor's frame is checked against its VSI's MAC (anti-spoof); the NIC then inserts the
metadata tag, taking the word from the VSI's port tag if one is set (the VF cannot change it)
or else from the descriptor's L2TAG fields. The embedded switch decides where it goes:

- VEB: a frame to another VSI's address is switched inside the NIC (it never reaches the
  agent, so no offload happens: the deck's east-west problem); everything else goes to the
  agent. Broadcast and multicast go to every other VSI and to the agent.
- VEPA: every frame goes to the agent, which turns local traffic around (hairpin).

A descriptor with an MSS is one large send: the NIC cuts it into segments (TSO, see
`nic.tso`) after the anti-spoof check, and each segment then goes through the switch and gets
the tag as a frame of its own.

Frames from the agent carry the Rx metadata tag: the NIC strips it into the Rx descriptor and
delivers the frame to the VSI that owns its destination MAC and VLANs (multicast to every VSI
but the sender). The NIC is sans-IO: descriptors and frames in, frames and descriptors out.

Where the package was built with it, the compiled fast path (`nic.fastpath.TxPath`,
`_nicpath.c`) sends the common Tx descriptor: no TSO, a well-formed frame that passes
anti-spoof and goes to the agent. Every other descriptor comes back to the Python code here,
the reference path, in order (`ipsec_offload.burst.reference_items`); both give the same
frames and counters.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

from ipsec_offload.burst import reference_items
from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.nic import fastpath
from ipsec_offload.nic.admin import AdminCommand, SetPortTag
from ipsec_offload.nic.descriptors import RxDescriptor, TxDescriptor
from ipsec_offload.nic.tso import TsoDrop, tso_segment
from ipsec_offload.wire.addr import mac_to_str
from ipsec_offload.wire.ethernet import (
    EtherType,
    VlanKey,
    VlanTag,
    check_ethertype,
    ethernet_fields,
    vlan_key,
)
from ipsec_offload.wire.metadata import TxFlag

_META_TAG = struct.Struct(">HI")
_MAC_END = 12
"""Where the tags begin: after the destination and source MAC."""


class SwitchMode(IntEnum):
    """The embedded switch's mode."""

    VEB = 0
    VEPA = 1


_VEB = SwitchMode.VEB


class VsiKind(IntEnum):
    PF = 0
    VF = 1


@dataclass(slots=True)
class VsiCounters:
    """Per-VSI counters. Tx packets and bytes count frames after TSO (segments)."""

    tx_packets: int = 0
    tx_bytes: int = 0
    tx_switched: int = 0
    tx_spoofed: int = 0
    tx_malformed: int = 0
    tx_port_tagged: int = 0
    tx_ethertype_filtered: int = 0
    """Frames the VSI's Tx EtherType filter dropped (a VF's config or metadata frames)."""
    tx_offload_refused: int = 0
    """Descriptors of a port-tagged (untrusted) VSI that asked for offload, dropped: the port
    tag would replace the request and the frame, its payload not yet encrypted, would leave
    in clear (as i40e's malicious driver detection stops such a VF's descriptor)."""
    tso_sends: int = 0
    """TSO descriptors segmented."""
    tso_segments: int = 0
    """Segments they gave."""
    tso_drops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TsoDrop.__members__, 0))
    """TSO descriptors refused, by `TsoDrop` name."""
    rx_packets: int = 0
    rx_bytes: int = 0


@dataclass(slots=True)
class Vsi:
    """A virtual station interface: one PF's or VF's view of the port."""

    vsi_id: int
    kind: VsiKind
    mac: bytes
    vlans: tuple[VlanTag, ...] = ()
    port_tag: int | None = None
    """Metadata word forced onto every frame this VSI sends (untrusted VFs)."""
    anti_spoof: bool = True
    """Drop frames whose source MAC or VLAN stack is not the VSI's."""
    tx_ethertype_filter: frozenset[int] = frozenset()
    """EtherTypes dropped on Tx, before the switch (the outer one, or the one after the
    VLAN tags): the PF sets the agent's config and metadata EtherTypes on trusted VFs."""
    counters: VsiCounters = field(default_factory=VsiCounters)

    @property
    def vlan_key(self) -> VlanKey:
        return vlan_key(self.vlans)


@dataclass(slots=True)
class NicOutput:
    """What one call produced: frames toward the agent and descriptors for the VSIs' Rx rings."""

    to_agent: list[bytes] = field(default_factory=list)
    rx: list[tuple[int, RxDescriptor]] = field(default_factory=list)


@dataclass(slots=True)
class NicCounters:
    rx_malformed: int = 0
    rx_no_vsi: int = 0


_VsiAddr = tuple[bytes, tuple[tuple[int, int], ...]]


class Nic:
    """One physical port of the FVL with its VSIs and embedded switch."""

    def __init__(
        self,
        *,
        mode: SwitchMode = SwitchMode.VEB,
        max_vsis: int = 129,
        meta_ethertype: int = EtherType.META,
    ) -> None:
        self.mode = mode
        self.max_vsis = max_vsis
        self.counters = NicCounters()
        self._meta = check_ethertype(meta_ethertype, "Nic meta_ethertype")
        self._vsis: dict[int, Vsi] = {}
        self._by_addr: dict[_VsiAddr, Vsi] = {}
        self._fast: fastpath.TxPath | None = None
        if fastpath.TxPath is not None:
            self._fast = fastpath.TxPath(TxDescriptor)

    # -- configuration (the PF driver's admin queue) ------------------------------------

    def add_vsi(
        self, kind: VsiKind, mac: bytes, vlans: tuple[VlanTag, ...] = (), *, anti_spoof: bool = True
    ) -> Vsi:
        """Create a VSI with the lowest free id; UsageError if the table is full or the
        address (MAC and VLANs) is already another VSI's."""
        if len(mac) != 6:
            raise UsageError("a VSI's MAC address must be 6 bytes")
        addr = (mac, vlan_key(vlans))
        if addr in self._by_addr:
            raise UsageError(f"MAC {mac_to_str(mac)} with these VLANs already belongs to a VSI")
        free = next((i for i in range(self.max_vsis) if i not in self._vsis), None)
        if free is None:
            raise UsageError(f"all {self.max_vsis} VSIs are in use")
        vsi = Vsi(free, kind, mac, vlans, anti_spoof=anti_spoof)
        self._vsis[free] = vsi
        self._by_addr[addr] = vsi
        return vsi

    def remove_vsi(self, vsi_id: int) -> None:
        vsi = self.vsi(vsi_id)
        del self._vsis[vsi_id]
        del self._by_addr[(vsi.mac, vsi.vlan_key)]

    def vsi(self, vsi_id: int) -> Vsi:
        try:
            return self._vsis[vsi_id]
        except KeyError:
            raise UsageError(f"no VSI {vsi_id} on this NIC") from None

    @property
    def vsis(self) -> list[Vsi]:
        return [self._vsis[i] for i in sorted(self._vsis)]

    def execute(self, command: AdminCommand) -> None:
        """Carry out a command from the PF driver's admin queue."""
        if isinstance(command, SetPortTag):
            self.set_port_tag(command.vsi_id, command.word)
        else:
            self.set_tx_ethertype_filter(command.vsi_id, command.ethertypes)

    def set_tx_ethertype_filter(self, vsi_id: int, ethertypes: Iterable[int]) -> None:
        """Drop the VSI's Tx frames of these EtherTypes (none: stop filtering)."""
        self.vsi(vsi_id).tx_ethertype_filter = frozenset(
            check_ethertype(value, "a Tx EtherType filter entry") for value in ethertypes
        )

    def set_port_tag(self, vsi_id: int, word: int | None) -> None:
        """Force (or, with None, stop forcing) a metadata word on every frame the VSI sends."""
        if word is not None and not 0 <= word <= 0xFFFFFFFF:
            raise UsageError("a port tag is a 32-bit metadata word")
        self.vsi(vsi_id).port_tag = word

    # -- Tx: host to agent ----------------------------------------------------------------

    def transmit(
        self, vsi_id: int, descriptors: Iterable[TxDescriptor], now: float = 0.0
    ) -> NicOutput:
        """Process a burst of Tx descriptors posted on a VSI's ring."""
        vsi = self.vsi(vsi_id)
        out = NicOutput()
        for desc in self._reference_descriptors(vsi, descriptors, out):
            self._transmit_one(vsi, desc, out)
        return out

    def _reference_descriptors(
        self, vsi: Vsi, descriptors: Iterable[TxDescriptor], out: NicOutput
    ) -> Iterable[TxDescriptor]:
        """The descriptors of a burst that the reference path must handle, in order: with the
        fast path, it sends each run of common ones (to `out.to_agent`) and yields the others."""
        fast = self._fast
        if fast is None:
            return descriptors

        def burst(descs: list[TxDescriptor], start: int) -> int:
            veb = self.mode == _VEB
            return fast.transmit(descs, start, vsi, self._by_addr, veb, self._meta, out.to_agent)

        return reference_items(descriptors, burst)

    def _transmit_one(self, vsi: Vsi, desc: TxDescriptor, out: NicOutput) -> None:
        counters = vsi.counters
        frame = desc.frame
        try:
            dst, src, ethertype, vlans, _, _ = ethernet_fields(frame, -1)
        except ParseError:
            counters.tx_malformed += 1
            return
        vlans_key = vlan_key(vlans)
        if vsi.anti_spoof and (src != vsi.mac or vlans_key != vsi.vlan_key):
            counters.tx_spoofed += 1
            return
        if ethertype in vsi.tx_ethertype_filter:
            # spec 9 invariant 3: a VF's config or metadata frame never reaches the agent
            counters.tx_ethertype_filtered += 1
            return
        if vsi.port_tag is None:
            word = desc.l2tag
        elif desc.l2tag is not None and desc.l2tag & TxFlag.OFFLOAD:
            counters.tx_offload_refused += 1
            return
        else:
            word = vsi.port_tag
        frames = [frame]
        if desc.mss:
            segments = tso_segment(frame, word, desc.mss)
            if isinstance(segments, TsoDrop):
                counters.tso_drops[segments.name] += 1
                return
            counters.tso_sends += 1
            counters.tso_segments += len(segments)
            frames = segments
        for each in frames:
            self._switch(vsi, (dst, vlans_key), src, each, word, out)

    def _switch(
        self,
        vsi: Vsi,
        to: _VsiAddr,
        src: bytes,
        frame: bytes,
        word: int | None,
        out: NicOutput,
    ) -> None:
        """One frame from `vsi` (at `src`) to the address `to` into the switch, tagged with
        `word` toward the agent."""
        counters = vsi.counters
        counters.tx_packets += 1
        counters.tx_bytes += len(frame)
        if self.mode == _VEB:
            if to[0][0] & 1:
                self._flood(frame, None, src, out, exclude=vsi)
            else:
                target = self._by_addr.get(to)
                if target is not None and target is not vsi:
                    counters.tx_switched += 1
                    self._deliver(target, frame, None, out)
                    return
        if vsi.port_tag is not None:
            counters.tx_port_tagged += 1
        if word is not None:
            tag = _META_TAG.pack(self._meta, word)
            frame = b"".join((frame[:_MAC_END], tag, memoryview(frame)[_MAC_END:]))
        out.to_agent.append(frame)

    # -- Rx: agent to host ----------------------------------------------------------------

    def from_agent(self, frames: Iterable[bytes], now: float = 0.0) -> NicOutput:
        """Frames the agent emitted toward the host: extract the metadata, demultiplex."""
        out = NicOutput()
        for frame in frames:
            try:
                dst, src, _, vlans, metadata, _ = ethernet_fields(frame, self._meta)
            except ParseError:
                self.counters.rx_malformed += 1
                continue
            if metadata is not None:
                frame = frame[:_MAC_END] + frame[_MAC_END + _META_TAG.size :]
            if dst[0] & 1:
                self._flood(frame, metadata, src, out, exclude=None)
                continue
            target = self._by_addr.get((dst, vlan_key(vlans)))
            if target is None:
                self.counters.rx_no_vsi += 1
                continue
            self._deliver(target, frame, metadata, out)
        return out

    def _flood(
        self, frame: bytes, l2tag: int | None, src: bytes, out: NicOutput, exclude: Vsi | None
    ) -> None:
        for vsi in self.vsis:
            if vsi is not exclude and vsi.mac != src:
                self._deliver(vsi, frame, l2tag, out)

    @staticmethod
    def _deliver(vsi: Vsi, frame: bytes, l2tag: int | None, out: NicOutput) -> None:
        vsi.counters.rx_packets += 1
        vsi.counters.rx_bytes += len(frame)
        out.rx.append((vsi.vsi_id, RxDescriptor(frame, l2tag)))

    def dump(self) -> dict[str, Any]:
        """The NIC's state as plain data."""
        return {
            "mode": self.mode.name,
            "vsis": [
                {
                    "id": v.vsi_id,
                    "kind": v.kind.name,
                    "mac": mac_to_str(v.mac),
                    "vlans": [f"{t.tpid:04x}:{t.vid}" for t in v.vlans],
                    "port_tag": None if v.port_tag is None else f"0x{v.port_tag:08x}",
                    "counters": asdict(v.counters),
                }
                for v in self.vsis
            ],
            "rx_malformed": self.counters.rx_malformed,
            "rx_no_vsi": self.counters.rx_no_vsi,
        }
