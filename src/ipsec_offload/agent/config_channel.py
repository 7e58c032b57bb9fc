"""The agent's config channel (spec sections 4 and 9): requests, replies, events.

Theory of operation: a config frame from the host side (untagged, the config EtherType, to
the agent's MAC, from the PF's MAC where the agent was given it) is a request: its header is
read, a repeated txn_id from the same source gets the remembered reply again (a bounded
memory of `txn_memory` replies, oldest forgotten first), and otherwise the request is
validated and executed by its opcode's handler; every request gets a reply with a status. A
frame with the reply bit set is no request: an EVENT reply (0x89) completes the pending
event of its txn_id (`events.EventChannel`), or is left alone when that txn_id is another
agent's (`events.TxnSpace`); any other is dropped and counted (CONFIG_NOT_REQUEST).

The handlers change the SAD and the hairpin table that the data path reads; LIST_SAS
(spec 9) reads the SAD back a frame at a time, with a cursor.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ipsec_offload.agent.counters import AgentCounters, DropReason, Path
from ipsec_offload.agent.events import EventChannel, TxnSpace
from ipsec_offload.agent.replay import ReplayWindow
from ipsec_offload.agent.sad import (
    Domain,
    SadFull,
    SecurityAssociation,
    SecurityAssociationDatabase,
)
from ipsec_offload.crypto.keywrap import unwrap_key
from ipsec_offload.errors import KeyUnwrapError, ParseError
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    Caps,
    ConfigMessage,
    ConfigStatus,
    Direction,
    Opcode,
    SaEntry,
    SaStats,
    Tlv,
    build_config,
    decode_add_sa,
    decode_list_sas_request,
    decode_local_addr,
    decode_sa_index,
    encode_caps,
    encode_count,
    encode_list_sas_reply,
    encode_sa_index,
    encode_sa_stats,
    pack_list_sas_reply,
    parse_config,
    parse_config_header,
)
from ipsec_offload.wire.ethernet import EthernetHeader, build_ethernet, vlan_key

if TYPE_CHECKING:
    from ipsec_offload.agent.agent import AgentConfig

_SEQ_LIMIT = {False: (1 << 32) - 1, True: (1 << 64) - 1}
_U64_MAX = (1 << 64) - 1
_EVENT_REPLY = Opcode.EVENT | Opcode.REPLY

_Result = tuple[ConfigStatus, tuple[Tlv, ...]]
_Handler = Callable[["ConfigChannel", ConfigMessage], _Result]


class ConfigChannel:
    """Requests from the host side, their replies (remembered by txn_id), and the events."""

    def __init__(
        self,
        config: AgentConfig,
        sad: SecurityAssociationDatabase,
        local_addrs: set[Domain],
        counters: AgentCounters,
        tag: bytes,
        txns: TxnSpace | None = None,
    ) -> None:
        self.config = config
        self.sad = sad
        self.local_addrs = local_addrs
        self.counters = counters
        self.replies: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self.on_add: Callable[[SecurityAssociation], None] | None = None
        """Called with each SA an ADD_SA adds, as it is added (sans-IO: the caller decides
        what to do with it; the golden model learns the keys file's SAs from it)."""
        self._tag = tag
        self.events = EventChannel(
            mac=config.mac,
            pf_mac=config.pf_mac,
            boot_id=config.boot_id,
            config_ethertype=config.config_ethertype,
            tag=tag,
            slots=config.event_slots,
            counters=counters.events,
            txns=txns,
        )

    def frame(self, frame: bytes, src: bytes, l2_len: int, to_host: list[bytes]) -> None:
        """A config frame from the PF (its source already checked): answer it on `to_host`."""
        body = memoryview(frame)[l2_len:]
        try:
            header = parse_config_header(body)
        except ParseError:
            self.counters.drops[DropReason.CONFIG_MALFORMED] += 1
            return
        if header.is_reply:
            if header.opcode == _EVENT_REPLY and (
                self.events.acknowledge(header.txn_id) or not self.events.txns.mine(header.txn_id)
            ):
                # an answer to one of its events, or to another agent's (TxnSpace)
                return
            self.counters.drops[DropReason.CONFIG_NOT_REQUEST] += 1
            return
        self.events.last_source = src
        cache_key = (src, header.txn_id)
        cached = self.replies.get(cache_key)
        if cached is not None:
            self.counters.paths[Path.CONFIG_RETRANSMIT] += 1
            to_host.append(cached)
            return
        self.counters.paths[Path.CONFIG_REQUEST] += 1
        status, tlvs = self._execute(body, header)
        reply = ConfigMessage(
            opcode=header.opcode | Opcode.REPLY,
            txn_id=header.txn_id,
            tlvs=tlvs,
            status=status,
            port=header.port,
        )
        eth = build_ethernet(
            EthernetHeader(dst=src, src=self.config.mac, ethertype=self.config.config_ethertype)
        )
        reply_frame = eth[:12] + self._tag + eth[12:] + build_config(reply)
        self.replies[cache_key] = reply_frame
        if len(self.replies) > self.config.txn_memory:
            self.replies.popitem(last=False)
        to_host.append(reply_frame)

    def _execute(self, body: memoryview, header: ConfigMessage) -> _Result:
        if header.version != 1:
            return ConfigStatus.BAD_VERSION, ()
        try:
            request = parse_config(body)
        except ParseError:
            return ConfigStatus.BAD_REQUEST, ()
        handler = _HANDLERS.get(request.opcode)
        if handler is None:
            return ConfigStatus.UNSUPPORTED, ()
        if request.port >= self.config.ports:
            return ConfigStatus.BAD_REQUEST, ()
        try:
            return handler(self, request)
        except ParseError:
            return ConfigStatus.BAD_REQUEST, ()

    # -- the handlers, one per opcode -----------------------------------------------------

    def _add_sa(self, msg: ConfigMessage) -> _Result:
        req = decode_add_sa(msg.tlvs)
        if req.local_mac is None and req.vlans:
            return ConfigStatus.BAD_REQUEST, ()
        window = (
            self.config.default_replay_window if req.replay_window is None else req.replay_window
        )
        if window > self.config.max_replay_window:
            return ConfigStatus.UNSUPPORTED, ()
        outbound = req.direction == Direction.OUTBOUND
        limit = _SEQ_LIMIT[req.esn]
        if req.seq is not None and not (1 if outbound else 0) <= req.seq <= limit:
            # spec 4 SEQ: outbound the next counter (1 ..), inbound the highest received (0 ..)
            return ConfigStatus.BAD_REQUEST, ()
        key_material = self._key_material(req)
        if key_material is None:
            return ConfigStatus.KEY_UNWRAP_FAILED, ()
        domain = None if req.local_mac is None else Domain(req.local_mac, vlan_key(req.vlans))
        if self.sad.contains_key((req.direction, req.spi, req.dst, domain)):
            return ConfigStatus.EXISTS, ()
        try:
            index = self.sad.allocate_index()
        except SadFull:
            return ConfigStatus.NO_SPACE, ()
        sa = SecurityAssociation(
            index=index,
            port=msg.port,
            direction=req.direction,
            spi=req.spi,
            dst=req.dst,
            src=req.src,
            algorithm=req.alg,
            key_material=key_material,
            domain=domain,
            esn=req.esn,
            ivdb=(1 if req.seq is None else req.seq) if outbound else 0,
            replay=None
            if outbound
            else ReplayWindow(window, req.esn, 0 if req.seq is None else req.seq),
            lifetime_packets=req.lifetime_packets or 0,
            lifetime_bytes=req.lifetime_bytes or 0,
            # a soft limit above the hard one is accepted, as Linux does: it never fires
            soft_lifetime_packets=req.soft_lifetime_packets or 0,
            soft_lifetime_bytes=req.soft_lifetime_bytes or 0,
        )
        self.sad.insert(sa)
        if self.on_add is not None:
            self.on_add(sa)
        return ConfigStatus.OK, encode_sa_index(index)

    def _key_material(self, req: AddSaRequest) -> bytes | None:
        """The SA's key || salt, unwrapped when it came wrapped; None if unwrapping failed."""
        if req.key is not None:
            return req.key
        assert req.wrapped_key is not None and req.kek_id is not None
        kek = self.config.keks.get(req.kek_id)
        if kek is None:
            return None
        try:
            material = unwrap_key(kek, req.wrapped_key)
        except KeyUnwrapError:
            return None
        return material if len(material) == req.alg.key_length + 4 else None

    def _remove_sa(self, msg: ConfigMessage) -> _Result:
        sa = self.sad.get(decode_sa_index(msg.tlvs))
        if sa is None or sa.port != msg.port:
            return ConfigStatus.NOT_FOUND, ()
        self.sad.remove(sa.index)
        return ConfigStatus.OK, ()

    def _remove_all_sas(self, msg: ConfigMessage) -> _Result:
        if msg.tlvs:
            return ConfigStatus.BAD_REQUEST, ()
        doomed = [sa.index for sa in self.sad if sa.port == msg.port]
        for index in doomed:
            self.sad.remove(index)
        return ConfigStatus.OK, encode_count(len(doomed))

    def _add_local_addr(self, msg: ConfigMessage) -> _Result:
        addr = decode_local_addr(msg.tlvs)
        domain = Domain(addr.mac, vlan_key(addr.vlans))
        if domain in self.local_addrs:
            return ConfigStatus.EXISTS, ()
        if len(self.local_addrs) >= self.config.hairpin_size:
            return ConfigStatus.NO_SPACE, ()
        self.local_addrs.add(domain)
        return ConfigStatus.OK, ()

    def _remove_local_addr(self, msg: ConfigMessage) -> _Result:
        addr = decode_local_addr(msg.tlvs)
        domain = Domain(addr.mac, vlan_key(addr.vlans))
        if domain not in self.local_addrs:
            return ConfigStatus.NOT_FOUND, ()
        self.local_addrs.discard(domain)
        return ConfigStatus.OK, ()

    def _get_sa_stats(self, msg: ConfigMessage) -> _Result:
        sa = self.sad.get(decode_sa_index(msg.tlvs))
        if sa is None or sa.port != msg.port:
            return ConfigStatus.NOT_FOUND, ()
        stats = SaStats(sa.packets, sa.bytes, (*sa.errors,))  # type: ignore[arg-type]
        return ConfigStatus.OK, encode_sa_stats(stats)

    def _get_caps(self, msg: ConfigMessage) -> _Result:
        if msg.tlvs:
            return ConfigStatus.BAD_REQUEST, ()
        caps = Caps(
            tuple(Algorithm),
            self.config.sad_size,
            self.config.max_replay_window,
            self.config.boot_id,
        )
        return ConfigStatus.OK, encode_caps(caps)

    def _list_sas(self, msg: ConfigMessage) -> _Result:
        """spec 9: the port's SAs from the cursor on, of the domain if one is named (an SA
        added without a domain, naive key, is listed only when none is), as many as fit."""
        req = decode_list_sas_request(msg.tlvs)
        domain = None if req.local_mac is None else Domain(req.local_mac, vlan_key(req.vlans))
        cursor = req.cursor or 0

        def entries() -> Iterator[SaEntry]:
            for sa in self.sad:
                if sa.index < cursor or sa.port != msg.port:
                    continue
                if domain is not None and sa.domain != domain:
                    continue
                yield sa_entry(sa)

        return ConfigStatus.OK, encode_list_sas_reply(pack_list_sas_reply(entries()))


def sa_entry(sa: SecurityAssociation) -> SaEntry:
    """The SA as LIST_SAS names it: outbound the next sequence number (its IVDB counter, at
    most 2^64-1), inbound the highest accepted."""
    seq = min(sa.ivdb, _U64_MAX) if sa.replay is None else sa.replay.highest
    return SaEntry(sa.index, sa.direction, sa.spi, sa.dst, seq)


_HANDLERS: dict[int, _Handler] = {
    Opcode.ADD_SA: ConfigChannel._add_sa,
    Opcode.REMOVE_SA: ConfigChannel._remove_sa,
    Opcode.REMOVE_ALL_SAS: ConfigChannel._remove_all_sas,
    Opcode.ADD_LOCAL_ADDR: ConfigChannel._add_local_addr,
    Opcode.REMOVE_LOCAL_ADDR: ConfigChannel._remove_local_addr,
    Opcode.GET_SA_STATS: ConfigChannel._get_sa_stats,
    Opcode.GET_CAPS: ConfigChannel._get_caps,
    Opcode.LIST_SAS: ConfigChannel._list_sas,
}

__all__ = ["ConfigChannel", "sa_entry"]
