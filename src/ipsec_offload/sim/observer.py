"""The wire observer: spec section 9's invariants checked from what the links carried.

Theory of operation: every component counts what it did, but an invariant of section 9 is a
statement about the wire, so the observer reads only the testbed's captures, what the hosts
delivered and the keys the testbed created (`Testbed.sa_keys`), never a component's counters
or state. Each `check` reads what appeared since the previous one (a capture from where it
stopped, a host's event log likewise), so that calling it after every step of a long
campaign costs what the step added.

- No nonce twice (9.1). Every ESP frame an encryptor sent, whichever side: agent-to-wire (the
  agent's and the hosts' software ESP), wire-to-agent (the peers') and the agent-hairpin tap
  (frames the agent turned around). (IP source, IP destination, SPI) names the SA's key; the
  frame must verify under it (its ICV, with the IV as the full sequence number), so only
  what was really encrypted with the key counts. The nonce is salt || IV (RFC 4106), so
  (key material, IV) names it, and the observer keeps the distinct ciphertexts (a digest of
  ciphertext || ICV) seen under each: a second, different one is a reuse. A byte-identical
  copy (a duplicate on a link, a replay) is the same encryption, not a reuse. Frames an
  attacker injected (`Testbed.wire_injections`), ESP frames of no known SA and frames that do
  not verify (forged) are skipped and counted. An attacker's replay has the bytes of the frame
  it replays: a check made before the replay reads that frame as its sender's, one made only
  after it skips both (so check after every step). An SA whose source, destination and SPI
  a later one reuses (in another domain) is known by the later key only: its frames do not
  verify and are counted so.
- No replay delivered (9.2). A delivery is (receiving host, protocol, addresses, ports,
  payload, TCP sequence number); the same one twice, live hosts and destroyed ones alike, is a
  replay delivered. Traffic checked this way must carry unique payloads.
- Only the PF configures the agent (9.3). A config reply on agent-to-nic addressed to any MAC
  but the PF driver's means the agent obeyed a request the PF did not send.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from hashlib import blake2b

from ipsec_offload.crypto.esp import explicit_iv
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.errors import AuthenticationError, ParseError, UsageError
from ipsec_offload.host.stack import Delivered
from ipsec_offload.sim.pcap import PcapRecord
from ipsec_offload.sim.testbed import Endpoint, SaKey, Testbed
from ipsec_offload.wire.addr import ip_to_str, mac_to_str
from ipsec_offload.wire.config import ConfigStatus, Opcode, parse_config_header
from ipsec_offload.wire.ethernet import ethernet_fields
from ipsec_offload.wire.ip import IpProto
from ipsec_offload.wire.packet import EspFrame, find_esp

__all__ = [
    "ESP_LINKS",
    "CraftedConfigObeyed",
    "NonceReuse",
    "ObserverSummary",
    "ReplayDelivered",
    "Violation",
    "WireObserver",
]

ESP_LINKS = ("agent-to-wire", "wire-to-agent", "agent-hairpin")
"""The captures whose ESP frames were sent by an encryptor (the agent, a host, a peer)."""
_ATTACKED_LINK = "wire-to-agent"
_CONFIG_LINK = "agent-to-nic"
_SHOWN = 5
"""How many violations `assert_clean` lists."""
_DIGEST_SIZE = 16
_SEQ_HI = ~0xFFFF_FFFF


def _name(kind: type[IntEnum], value: int) -> str:
    try:
        return kind(value).name
    except ValueError:
        return str(value)


@dataclass(frozen=True, slots=True)
class NonceReuse:
    """A second, different ciphertext under one (key, IV): spec 9.1 broken."""

    time: float
    link: str
    src: bytes
    dst: bytes
    spi: int
    iv: int

    def __str__(self) -> str:
        return (
            f"{self.time:.6f}s {self.link}: nonce reused by SA {ip_to_str(self.src)} ->"
            f" {ip_to_str(self.dst)} SPI {self.spi:#010x}: IV {self.iv:#x} seals a second,"
            " different ciphertext under the same key"
        )


@dataclass(frozen=True, slots=True)
class ReplayDelivered:
    """A delivery a host had made before, made again: spec 9.2 broken."""

    host: str
    delivery: Delivered
    """The second delivery (its time, addresses, ports, payload)."""

    def __str__(self) -> str:
        d = self.delivery
        tcp = "" if d.tcp_seq is None else f" TCP seq {d.tcp_seq}"
        return (
            f"{d.time:.6f}s {self.host}: replay delivered, {_name(IpProto, d.protocol)}"
            f" {ip_to_str(d.src)} port {d.src_port} -> {ip_to_str(d.dst)} port"
            f" {d.dst_port}{tcp}: the same {len(d.payload)}-byte payload"
            f" {d.payload[:16]!r} a second time"
        )


@dataclass(frozen=True, slots=True)
class CraftedConfigObeyed:
    """A config reply from the agent to a MAC other than the PF's: spec 9.3 broken."""

    time: float
    dst_mac: bytes
    opcode: int
    """The request's opcode (the reply bit cleared)."""
    status: int
    txn_id: int

    def __str__(self) -> str:
        return (
            f"{self.time:.6f}s {_CONFIG_LINK}: crafted config obeyed, the agent answered"
            f" {_name(Opcode, self.opcode)} (txn {self.txn_id:#x}, status"
            f" {_name(ConfigStatus, self.status)}) to {mac_to_str(self.dst_mac)}, not the PF"
        )


Violation = NonceReuse | ReplayDelivered | CraftedConfigObeyed


@dataclass(frozen=True, slots=True)
class ObserverSummary:
    """What a `WireObserver` has checked so far."""

    esp_frames: int
    """ESP frames checked: of a known SA, verified under its key."""
    pairs: int
    """Distinct (key, IV) pairs, nonces, seen."""
    nonce_reuse: int
    unknown_sa: int
    """ESP frames of no SA in `Testbed.sa_keys` (skipped)."""
    unverified: int
    """ESP frames of a known SA that do not verify under its key: forged (skipped)."""
    attacker_frames: int
    """Frames an attacker injected on the wire (skipped)."""
    deliveries: int
    replays_delivered: int
    crafted_config_obeyed: int

    def __str__(self) -> str:
        return (
            f"{self.esp_frames} ESP frames checked, {self.pairs} nonces, {self.nonce_reuse}"
            f" reused; skipped: {self.unknown_sa} of no known SA, {self.unverified} not"
            f" verifying, {self.attacker_frames} from the attacker; {self.deliveries}"
            f" deliveries, {self.replays_delivered} replays delivered;"
            f" {self.crafted_config_obeyed} crafted config requests obeyed"
        )


class WireObserver:
    """Checks spec section 9's invariants on a testbed's captures and deliveries (see the
    module docstring). Call `check` as often as wanted; `violations` keeps all it found."""

    def __init__(self, bed: Testbed) -> None:
        if not bed.capture:
            raise UsageError(
                "the observer reads the testbed's captures: make the Testbed with capture=True"
            )
        self.bed = bed
        self.violations: list[Violation] = []
        config = bed.agent.config
        self._meta = config.meta_ethertype
        self._config = config.config_ethertype
        self._read = dict.fromkeys((*ESP_LINKS, _CONFIG_LINK), 0)
        self._injections_read = 0
        self._injected: set[bytes] = set()
        self._aeads: dict[bytes, EspAead] = {}
        self._esn_high: dict[tuple[bytes, bytes, int], int] = {}
        """The high half of the sequence number of the last verified frame of each ESN SA."""
        self._ciphertexts: dict[tuple[bytes, int], set[bytes]] = {}
        self._logs: dict[int, tuple[Endpoint, int]] = {}
        """Per host (by the id of its endpoint, which the tuple keeps alive): how many of
        its events were read."""
        self._deliveries: set[tuple[str, int, bytes, bytes, int, int, bytes, int | None]] = set()
        self._esp_frames = self._unknown_sa = self._unverified = self._attacker = 0
        self._delivery_count = 0

    def check(self) -> list[Violation]:
        """Read what the links carried and the hosts delivered since the last check; return
        the violations found in it (`violations` keeps them too)."""
        found: list[Violation] = []
        injections = self.bed.wire_injections
        self._injected.update(injections[self._injections_read :])
        self._injections_read = len(injections)
        for link in ESP_LINKS:
            for record in self._new_records(link):
                self._esp_frame(link, record, found)
        for record in self._new_records(_CONFIG_LINK):
            self._config_reply(record, found)
        for ep in (*self.bed.retired.values(), *self.bed.endpoints.values()):
            self._new_deliveries(ep, found)
        self.violations += found
        return found

    def summary(self) -> ObserverSummary:
        """The counts of what the checks so far read and found."""
        found = self.violations
        return ObserverSummary(
            esp_frames=self._esp_frames,
            pairs=len(self._ciphertexts),
            nonce_reuse=sum(isinstance(v, NonceReuse) for v in found),
            unknown_sa=self._unknown_sa,
            unverified=self._unverified,
            attacker_frames=self._attacker,
            deliveries=self._delivery_count,
            replays_delivered=sum(isinstance(v, ReplayDelivered) for v in found),
            crafted_config_obeyed=sum(isinstance(v, CraftedConfigObeyed) for v in found),
        )

    def assert_clean(self) -> None:
        """Check what is new; raise AssertionError listing the first violations if there is
        any so far."""
        self.check()
        if not self.violations:
            return
        count = len(self.violations)
        lines = [str(v) for v in self.violations[:_SHOWN]]
        if count > _SHOWN:
            lines.append(f"... and {count - _SHOWN} more")
        listed = "\n  ".join(lines)
        raise AssertionError(
            f"{count} violation(s) of spec section 9 on the wire:\n  {listed}\n{self.summary()}"
        )

    # -- reading --------------------------------------------------------------------------

    def _new_records(self, link: str) -> list[PcapRecord]:
        records = self.bed.captures[link].since(self._read[link])
        self._read[link] += len(records)
        return records

    def _esp_frame(self, link: str, record: PcapRecord, found: list[Violation]) -> None:
        if link == _ATTACKED_LINK and record.frame in self._injected:
            self._attacker += 1
            return
        esp = find_esp(record.frame, self._meta)
        if esp is None:
            return
        sa = self.bed.sa_keys.get((esp.src, esp.dst, esp.spi))
        if sa is None:
            self._unknown_sa += 1
            return
        if not self._verifies(sa, esp):
            self._unverified += 1
            return
        self._esp_frames += 1
        digest = blake2b(esp.sealed, digest_size=_DIGEST_SIZE).digest()
        seen = self._ciphertexts.setdefault((sa.key_material, esp.iv), set())
        if digest in seen:
            return
        seen.add(digest)
        if len(seen) > 1:
            found.append(NonceReuse(record.time, link, esp.src, esp.dst, esp.spi, esp.iv))

    def _verifies(self, sa: SaKey, esp: EspFrame) -> bool:
        """Does the frame's ICV verify under the SA's key, the IV's high half and the ESP
        header's low half being the sequence number (spec section 2)? A sender whose IV is
        not its sequence number (Linux's seqiv) leaves an ESN SA's high half unsaid: the
        SA's last verified high half, or the next, is tried then (from 0)."""
        aead = self._aeads.get(sa.key_material)
        if aead is None:
            aead = self._aeads[sa.key_material] = EspAead(sa.algorithm, sa.key_material)
        candidates = [esp.iv & _SEQ_HI | esp.seq]
        key = (esp.src, esp.dst, esp.spi)
        if sa.esn:
            high = self._esn_high.get(key, 0)
            candidates += [high << 32 | esp.seq, (high + 1) << 32 | esp.seq]
        for seq in candidates:
            try:
                aead.open(esp.spi, seq, sa.esn, explicit_iv(esp.iv), esp.sealed)
            except AuthenticationError:
                continue
            if sa.esn:
                self._esn_high[key] = seq >> 32
            return True
        return False

    def _config_reply(self, record: PcapRecord, found: list[Violation]) -> None:
        frame = record.frame
        try:
            dst, _, ethertype, _, _, l2_len = ethernet_fields(frame, self._meta)
            if ethertype != self._config:
                return
            message = parse_config_header(memoryview(frame)[l2_len:])
        except ParseError:
            return
        pf = self.bed.pf
        if message.is_reply and (pf is None or dst != pf.mac):
            opcode = message.base_opcode
            found.append(
                CraftedConfigObeyed(record.time, dst, opcode, message.status, message.txn_id)
            )

    def _new_deliveries(self, ep: Endpoint, found: list[Violation]) -> None:
        known = self._logs.get(id(ep))
        start = 0 if known is None else known[1]
        log = ep.log
        name = ep.stack.name
        for event in log[start:]:
            if not isinstance(event, Delivered):
                continue
            self._delivery_count += 1
            delivery = (
                name,
                event.protocol,
                event.src,
                event.dst,
                event.src_port,
                event.dst_port,
                blake2b(event.payload, digest_size=_DIGEST_SIZE).digest(),
                event.tcp_seq,
            )
            if delivery not in self._deliveries:
                self._deliveries.add(delivery)
                continue
            found.append(ReplayDelivered(name, event))
        self._logs[id(ep)] = (ep, len(log))
