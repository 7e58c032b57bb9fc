"""What the benchmark times: each workload is set up (untimed) by a `Prepare` and returns a
`Runner` that does one timed run and says how many operations it did.

Every workload checks that its party did all the work asked (no drop, no refused SA), so a
figure never measures a shortcut.
"""

from __future__ import annotations

import gc
import heapq
import random
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySa

from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.agent.counters import Path
from ipsec_offload.agent.sad import (
    Domain,
    PacketKey,
    SecurityAssociation,
    SecurityAssociationDatabase,
)
from ipsec_offload.bench.traffic import (
    HOST_IP,
    HOST_MAC,
    L2_LEN,
    PEER_IP,
    PEER_MAC,
    SPI,
    BenchError,
    Packet,
    agent_with_sa,
    check_added,
    config_frame,
    key_material,
    sa_request,
    udp_data,
)
from ipsec_offload.bench.traffic import packet as flow_packet
from ipsec_offload.host.xfrm import Offload, XfrmState
from ipsec_offload.sim.golden import replay
from ipsec_offload.sim.pcap import PcapRecord
from ipsec_offload.sim.testbed import Testbed
from ipsec_offload.wire.addr import ip_to_str, mac_to_str
from ipsec_offload.wire.config import (
    Algorithm,
    ConfigMessage,
    Direction,
    Opcode,
    Tlv,
    TlvType,
    build_config,
    encode_add_sa,
    encode_sa_index,
)
from ipsec_offload.wire.ethernet import EthernetHeader, VlanKey, build_ethernet
from ipsec_offload.wire.metadata import RxStatus

Runner = Callable[[], int]
"""One timed run of a workload; returns the operations it did."""
Prepare = Callable[[], Runner]
"""Sets a workload up, untimed, for one run."""

_CIPHERTEXT = L2_LEN + 20 + 8 + 8
"""Where the ciphertext starts in a sealed frame: Ethernet, IPv4, ESP header and IV."""


def _bursts(frames: Sequence[bytes], batch: int) -> list[list[bytes]]:
    return [list(frames[i : i + batch]) for i in range(0, len(frames), batch)]


def _same(run: Runner) -> Prepare:
    """A workload whose set-up is done once: every run uses it again."""
    return lambda: run


# -- the ceiling: the AEAD alone --------------------------------------------------------------


def bare_encrypt(algorithm: Algorithm, packets: Sequence[Packet]) -> Prepare:
    """`AESGCM.encrypt` on each packet's ESP plaintext, nonce and AAD."""
    encrypt = AESGCM(key_material(algorithm)[:-4]).encrypt
    work = [(p.nonce, p.plaintext, p.aad) for p in packets]

    def run() -> int:
        for nonce, plaintext, aad in work:
            encrypt(nonce, plaintext, aad)
        return len(work)

    return _same(run)


def bare_decrypt(
    algorithm: Algorithm, packets: Sequence[Packet], sealed: Sequence[bytes]
) -> Prepare:
    """`AESGCM.decrypt` on the ciphertext and ICV of each sealed frame."""
    decrypt = AESGCM(key_material(algorithm)[:-4]).decrypt
    work = [(p.nonce, frame[_CIPHERTEXT:], p.aad) for p, frame in zip(packets, sealed, strict=True)]

    def run() -> int:
        for nonce, ciphertext, aad in work:
            decrypt(nonce, ciphertext, aad)
        return len(work)

    return _same(run)


# -- the agent --------------------------------------------------------------------------------


def agent_tx(
    algorithm: Algorithm, packets: Sequence[Packet], batch: int, fast_path: bool = True
) -> Prepare:
    """The agent's Tx path: the host's offload frames, `batch` per `from_host` call; with
    `fast_path` False, all through the Python reference path."""
    agent = agent_with_sa(Direction.OUTBOUND, algorithm, fast_path)
    bursts = _bursts([p.offload for p in packets], batch)

    def run() -> int:
        for burst in bursts:
            if len(agent.from_host(burst).to_wire) != len(burst):
                raise BenchError("the agent dropped Tx frames")
        return len(packets)

    return _same(run)


def agent_rx(
    algorithm: Algorithm,
    primer: bytes,
    sealed: Sequence[bytes],
    batch: int,
    fast_path: bool = True,
) -> Prepare:
    """The agent's Rx path: sealed frames, `batch` per `from_wire` call (`fast_path` as in
    `agent_tx`). Each run has a fresh receiver (the sequence numbers are new to its replay
    window), whose cipher context the `primer` frame creates before the timing starts."""
    bursts = _bursts(sealed, batch)

    def prepare() -> Runner:
        agent = agent_with_sa(Direction.INBOUND, algorithm, fast_path)
        agent.from_wire([primer])

        def run() -> int:
            for burst in bursts:
                agent.from_wire(burst)
            if agent.counters.rx_status[RxStatus.OK] != len(sealed) + 1:
                raise BenchError("the agent did not decrypt every Rx frame")
            return len(sealed)

        return run

    return prepare


# -- the peer: scapy --------------------------------------------------------------------------


def scapy_sa(algorithm: Algorithm) -> ScapySa:
    """scapy's SA for the flow: AES-GCM with the same key and salt, transport mode."""
    return ScapySa(  # type: ignore[no-untyped-call]
        ESP, spi=SPI, crypt_algo="AES-GCM", crypt_key=key_material(algorithm), auth_algo="NULL"
    )


def check_scapy_agrees(algorithm: Algorithm, packet: Packet, sealed: bytes) -> None:
    """Raise BenchError unless scapy seals `packet` into the agent's frame `sealed` and opens
    that frame into the clear packet: both parties do the same work."""
    sa = scapy_sa(algorithm)
    sa.seq_num = packet.seq
    encrypted = bytes(sa.encrypt(IP(packet.ip), iv=packet.iv))  # type: ignore[no-untyped-call]
    decrypted = bytes(sa.decrypt(IP(sealed[L2_LEN:])))  # type: ignore[no-untyped-call]
    if encrypted != sealed[L2_LEN:] or decrypted != packet.ip:
        raise BenchError("scapy and the agent disagree on the flow's ESP packets")


def scapy_encrypt(algorithm: Algorithm, packets: Sequence[Packet]) -> Prepare:
    """`SecurityAssociation.encrypt` on the clear IP packets, parsed before each run (scapy's
    own form of a packet, which its calls may change): the call alone is timed."""
    sa = scapy_sa(algorithm)

    def prepare() -> Runner:
        work = [(IP(p.ip), p.iv) for p in packets]

        def run() -> int:
            for packet, iv in work:
                sa.encrypt(packet, iv=iv)  # type: ignore[no-untyped-call]
            return len(work)

        return run

    return prepare


def scapy_decrypt(algorithm: Algorithm, sealed: Sequence[bytes]) -> Prepare:
    """`SecurityAssociation.decrypt` on the sealed IP packets, parsed before each run."""
    sa = scapy_sa(algorithm)

    def prepare() -> Runner:
        work = [IP(frame[L2_LEN:]) for frame in sealed]

        def run() -> int:
            for packet in work:
                sa.decrypt(packet)  # type: ignore[no-untyped-call]
            return len(work)

        return run

    return prepare


# -- the whole simulated path -------------------------------------------------------------------


def full_path(
    algorithm: Algorithm, size: int, packets: int, batch: int, capture: bool = False
) -> Prepare:
    """UDP datagrams from a PF host over an offloaded SA to a software peer on the wire, in
    bursts of `batch` (one `HostStack.send_udp_burst` and one `Testbed.settle` each): host
    stack, PF driver, NIC, agent, wire, the peer's stack (which decrypts and delivers). A fresh
    testbed for each run, which keeps every frame of every link if `capture`."""
    data = [udp_data(size, seq) for seq in range(packets)]
    bursts = [data[i : i + batch] for i in range(0, packets, batch)]

    def prepare() -> Runner:
        bed = Testbed(capture=capture)
        host = bed.add_pf_host("host", mac_to_str(HOST_MAC), ipv4=ip_to_str(HOST_IP))
        peer = bed.add_peer("peer", mac_to_str(PEER_MAC), ipv4=ip_to_str(PEER_IP))
        bundle = bed.secure(host, peer, algorithm=algorithm, offload_a=True)
        if bundle.a_out.offload != Offload.DEVICE:
            raise BenchError("the testbed did not offload the host's SA")
        host.send_udp(PEER_IP, 1000, 2000, data[0], bed.now)  # creates the ciphers
        bed.settle(host)
        before = peer.counters.rx_delivered

        def run() -> int:
            for burst in bursts:
                host.send_udp_burst(PEER_IP, 1000, 2000, burst, bed.now)
                bed.settle(host)
            if peer.counters.rx_delivered - before != packets:
                raise BenchError("the simulated path lost packets")
            return packets

        return run

    return prepare


# -- the SAD ------------------------------------------------------------------------------------


@contextmanager
def _no_collection() -> Iterator[None]:
    """Build many objects without the cyclic collector walking them again and again."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


SadKey = tuple[int, bytes, bytes]
"""An outbound SA's SPI, destination address and domain MAC."""


def populated_sad(n: int, dst_len: int = 4) -> tuple[SecurityAssociationDatabase, list[SadKey]]:
    """A SAD of `n` outbound SAs with random SPIs, `dst_len`-byte destinations (4: IPv4, 16:
    IPv6) and domain MACs, inserted directly (not through ADD_SA frames, which would take
    minutes for a million), and their keys in random order."""
    rng = random.Random(n)
    material = key_material(Algorithm.AES_GCM_128)
    sad = SecurityAssociationDatabase(n)
    with _no_collection():
        spis = rng.sample(range(1, 1 << 32), n)
        keys = [(spi, rng.randbytes(dst_len), rng.randbytes(6)) for spi in spis]
        for spi, dst, mac in keys:
            sad.insert(
                SecurityAssociation(
                    index=sad.allocate_index(),
                    port=0,
                    direction=Direction.OUTBOUND,
                    spi=spi,
                    dst=dst,
                    src=None,
                    algorithm=Algorithm.AES_GCM_128,
                    key_material=material,
                    domain=Domain(mac, ()),
                    esn=False,
                    ivdb=1,
                    replay=None,
                    lifetime_packets=0,
                    lifetime_bytes=0,
                )
            )
    return sad, keys


def sad_lookups(
    sad: SecurityAssociationDatabase, keys: Sequence[SadKey], lookups: int, batch: int
) -> Prepare:
    """`lookups` lookups in `sad` of SAs picked at random among `keys`, each with a fresh SPI
    and address objects as a parsed packet has, `batch` per `lookup_burst` (the engine's
    lookup stage: a burst of keys to SA indexes)."""
    rng = random.Random(len(keys))
    outbound = Direction.OUTBOUND
    untagged: VlanKey = ()
    with _no_collection():
        probes: list[PacketKey] = [
            (outbound, _fresh_int(spi), bytes(bytearray(dst)), bytes(bytearray(mac)), untagged)
            for spi, dst, mac in (rng.choice(keys) for _ in range(lookups))
        ]
        bursts: list[list[PacketKey]] = [probes[i : i + batch] for i in range(0, lookups, batch)]
    lookup_burst = sad.lookup_burst
    if not all(all(lookup_burst(burst)) for burst in bursts):
        raise BenchError("a SAD lookup missed")

    def run() -> int:
        for burst in bursts:
            lookup_burst(burst)
        return lookups

    return _same(run)


def _fresh_int(value: int) -> int:
    """An int equal to `value` but a new object, as one read from a packet is."""
    return int.from_bytes(value.to_bytes(8, "big"), "big")


def dict_lookups(n: int, lookups: int) -> Prepare:
    """The floor under any SAD lookup: a plain dict of `n` int keys, looked up at random (the
    cost of reaching a random entry of a table that size in this machine's memory)."""
    rng = random.Random(n)
    with _no_collection():
        table = {key: key for key in rng.sample(range(1 << 62, 1 << 63), n)}
        keys = list(table)
        probes = [rng.choice(keys) for _ in range(lookups)]
    get = table.get

    def run() -> int:
        for key in probes:
            get(key)
        return lookups

    return _same(run)


def memory_per_sa(direction: Direction, n: int) -> float:
    """Python heap bytes per SA installed through ADD_SA frames, by tracemalloc, over `n`
    SAs. The agent keeps no replies (txn_memory 0) so that only the SAD grows; an SA that has
    carried no traffic has no cipher context."""
    agent = IpsecAgent(AgentConfig(sad_size=n, txn_memory=0))
    frames = [
        config_frame(agent, sa_request(direction, Algorithm.AES_GCM_128, SPI + i), i + 1)
        for i in range(n)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for frame in frames:
            check_added(agent.from_host([frame]).to_host)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / n


# -- the config plane ---------------------------------------------------------------------------


def config_agent(n: int) -> Prepare:
    """`n` ADD_SA requests, one per `from_host` call, to an agent alone."""

    def prepare() -> Runner:
        agent = IpsecAgent(AgentConfig(sad_size=n))
        frames = [
            config_frame(agent, sa_request(Direction.OUTBOUND, Algorithm.AES_GCM_128, SPI + i), i)
            for i in range(1, n + 1)
        ]

        def run() -> int:
            for frame in frames:
                agent.from_host([frame])
            if len(agent.sad) != n:
                raise BenchError("the agent refused ADD_SA requests")
            return n

        return run

    return prepare


def config_driver(n: int) -> Prepare:
    """`n` offloaded states added by a PF host one after the other, each waited for: the
    stack's xdo_dev_state_add, the PF driver's ADD_SA frame, the NIC, the agent, the reply
    back up to the stack."""

    def prepare() -> Runner:
        bed = Testbed(agent=AgentConfig(sad_size=n))
        host = bed.add_pf_host("host", mac_to_str(HOST_MAC), ipv4=ip_to_str(HOST_IP))
        material = key_material(Algorithm.AES_GCM_128)
        states = [
            XfrmState(
                handle,
                Direction.OUTBOUND,
                SPI + handle,
                HOST_IP,
                PEER_IP,
                Algorithm.AES_GCM_128,
                material,
            )
            for handle in range(1, n + 1)
        ]

        def run() -> int:
            for state in states:
                host.add_state(state, bed.now, offload=True)
                bed.settle(host)
            if any(state.offload != Offload.DEVICE for state in states):
                raise BenchError("the PF driver did not offload every state")
            return n

        return run

    return prepare


# -- the golden model -------------------------------------------------------------------------

GOLDEN_LIVE_PAIRS = 8
"""SA pairs the golden trace keeps installed: each block adds one and removes the oldest."""
GOLDEN_BLOCK = 40
"""Frames per block of the golden trace: 4 config frames, 18 Tx and 18 Rx data frames."""
_GOLDEN_DATA = (GOLDEN_BLOCK - 4) // 2
_ESP_SPI_AT = L2_LEN + 6 + 20
"""Where the SPI is in a Tx offload frame: Ethernet with the metadata tag, IPv4."""


@dataclass(frozen=True, slots=True)
class GoldenTrace:
    """A mixed trace of the golden model's inputs, one frame a microsecond: blocks of
    `GOLDEN_BLOCK` frames, each with 4 config frames (ADD_SA of a new SA pair, outbound and
    inbound, REMOVE_SA of the pair added `GOLDEN_LIVE_PAIRS` blocks before, or GET_SA_STATS
    of the new pair while there is none to remove: a tenth of the frames), then Tx offload
    frames on the new outbound SA and ESP frames from the wire on the new inbound SA, taking
    turns (a fresh sequence number each)."""

    host: list[PcapRecord]
    wire: list[PcapRecord]
    config: int
    tx: int
    rx: int
    pairs: int

    @property
    def frames(self) -> int:
        return len(self.host) + len(self.wire)

    def in_order(self) -> list[tuple[bool, bytes]]:
        """(from the host?, frame) in time order: what the golden model feeds the agent."""
        merged = [(r.time, 0, r.frame) for r in self.host]
        merged += [(r.time, 1, r.frame) for r in self.wire]
        merged.sort(key=lambda e: e[:2])
        return [(side == 0, frame) for _, side, frame in merged]


def _request(agent: IpsecAgent, opcode: Opcode, txn_id: int, tlvs: tuple[Tlv, ...]) -> bytes:
    header = EthernetHeader(agent.config.mac, HOST_MAC, agent.config.config_ethertype)
    return build_ethernet(header) + build_config(ConfigMessage(opcode, txn_id, tlvs))


class _AddSa:
    """ADD_SA requests of the flow's SA (`sa_request`) with any SPI: the TLVs encoded (and
    checked) once per direction, the SPI TLV replaced for each SA."""

    def __init__(self, algorithm: Algorithm) -> None:
        self._tlvs = {
            direction: encode_add_sa(sa_request(direction, algorithm))
            for direction in (Direction.OUTBOUND, Direction.INBOUND)
        }

    def frame(self, agent: IpsecAgent, direction: Direction, spi: int, txn_id: int) -> bytes:
        spi_tlv = Tlv(TlvType.SPI, spi.to_bytes(4, "big"))
        tlvs = tuple(spi_tlv if t.type == TlvType.SPI else t for t in self._tlvs[direction])
        return _request(agent, Opcode.ADD_SA, txn_id, tlvs)


def golden_trace(frames: int, size: int = 128) -> GoldenTrace:
    """The golden trace of `frames` frames (a multiple of `GOLDEN_BLOCK`), data frames of
    `size` bytes; the ESP frames from the wire sealed by an agent at the other end."""
    if frames % GOLDEN_BLOCK:
        raise BenchError(f"the golden trace has blocks of {GOLDEN_BLOCK} frames, not {frames}")
    pairs = frames // GOLDEN_BLOCK
    algorithm = Algorithm.AES_GCM_128
    agent = IpsecAgent()
    sealer = IpsecAgent(AgentConfig(sad_size=max(pairs, 1), txn_memory=0))
    template = flow_packet(size, 1, algorithm).offload
    add_sa = _AddSa(algorithm)
    host: list[PcapRecord] = []
    wire: list[PcapRecord] = []
    free: list[int] = []
    next_index = 1
    live: list[tuple[int, int]] = []
    txn = 0
    config = 0
    with _no_collection():
        for k in range(pairs):
            out_spi, in_spi = SPI + 2 * k, SPI + 2 * k + 1
            offload = bytearray(template)
            offload[_ESP_SPI_AT : _ESP_SPI_AT + 4] = out_spi.to_bytes(4, "big")
            tx = bytes(offload)
            offload[_ESP_SPI_AT : _ESP_SPI_AT + 4] = in_spi.to_bytes(4, "big")
            added = sealer.from_host([add_sa.frame(sealer, Direction.OUTBOUND, in_spi, k)])
            check_added(added.to_host)
            sealed = sealer.from_host([bytes(offload)] * _GOLDEN_DATA).to_wire
            requests = []
            indexes = []
            for direction, spi in ((Direction.OUTBOUND, out_spi), (Direction.INBOUND, in_spi)):
                txn += 1
                requests.append(add_sa.frame(agent, direction, spi, txn))
                # the agent hands out the lowest free index (SecurityAssociationDatabase)
                if free:
                    indexes.append(heapq.heappop(free))
                else:
                    indexes.append(next_index)
                    next_index += 1
            live.append((indexes[0], indexes[1]))
            if len(live) > GOLDEN_LIVE_PAIRS:
                gone = live.pop(0)
                opcode = Opcode.REMOVE_SA
                for index in gone:
                    heapq.heappush(free, index)
            else:
                gone = live[-1]
                opcode = Opcode.GET_SA_STATS
            for index in gone:
                txn += 1
                requests.append(_request(agent, opcode, txn, encode_sa_index(index)))
            time = k * GOLDEN_BLOCK
            for frame in requests:
                host.append(PcapRecord(time * 1000, frame))
                time += 1
            config += len(requests)
            for frame in sealed:
                host.append(PcapRecord(time * 1000, tx))
                wire.append(PcapRecord((time + 1) * 1000, frame))
                time += 2
    return GoldenTrace(host, wire, config, pairs * _GOLDEN_DATA, pairs * _GOLDEN_DATA, pairs)


def _check_golden(agent: IpsecAgent, trace: GoldenTrace, to_wire: int) -> None:
    """Raise BenchError unless the agent did all the trace asks."""
    counters = agent.counters
    if any(counters.drops.values()) or to_wire != trace.tx:
        raise BenchError("the golden model's agent dropped Tx frames")
    if counters.rx_status[RxStatus.OK] != trace.rx:
        raise BenchError("the golden model's agent did not decrypt every Rx frame")
    if counters.paths[Path.CONFIG_REQUEST] != trace.config:
        raise BenchError("the golden model's agent did not answer every config request")
    if len(agent.sad) != 2 * min(trace.pairs, GOLDEN_LIVE_PAIRS):
        raise BenchError("the golden model's agent refused an ADD_SA or a REMOVE_SA")


def golden_replay(trace: GoldenTrace, repeats: int = 1) -> Prepare:
    """The golden model (`sim.golden.replay`) on the trace's records, `repeats` times in a
    row, a fresh agent each time (made before the timing): the records sorted in time order,
    each fed to the agent alone, every frame it emits recorded with its time, the keys of
    every SA it added learned."""

    def prepare() -> Runner:
        agents = [
            IpsecAgent(AgentConfig(sad_size=2 * GOLDEN_LIVE_PAIRS + 2)) for _ in range(repeats)
        ]

        def run() -> int:
            for agent in agents:
                result = replay(agent, trace.host, trace.wire)
                _check_golden(agent, trace, len(result.wire_out))
                if len(result.sas) != 2 * trace.pairs:
                    raise BenchError("the golden model did not learn every SA")
                del result
            return trace.frames * repeats

        return run

    return prepare


def golden_agent_alone(trace: GoldenTrace, repeats: int = 1) -> Prepare:
    """The floor under the golden model: the same frames in the same order straight into an
    agent, one per call (`from_host` or `from_wire`), `repeats` times in a row, a fresh agent
    each time (made before the timing); no records."""
    frames = trace.in_order()

    def prepare() -> Runner:
        agents = [
            IpsecAgent(AgentConfig(sad_size=2 * GOLDEN_LIVE_PAIRS + 2)) for _ in range(repeats)
        ]

        def run() -> int:
            for agent in agents:
                from_host, from_wire = agent.from_host, agent.from_wire
                to_wire = 0
                for host_side, frame in frames:
                    if host_side:
                        to_wire += len(from_host([frame]).to_wire)
                    else:
                        from_wire([frame])
                _check_golden(agent, trace, to_wire)
            return trace.frames * repeats

        return run

    return prepare
