"""The wire observer (sim/observer.py): each invariant of spec section 9 it checks fails when
the wire breaks it, and a clean run through resets reports nothing.

The breaking cases are built honestly: frames sealed here with an SA's key and put into a
capture, a replay through a window that is off, a config reply to a VF's MAC, the deck's naive
IVDB; and a known defect (TSO, then a PF reset) is compared with what the capture shows,
counted here with scapy rather than asserted."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from ipsec_offload.crypto.esp import esp_seal
from ipsec_offload.crypto.gcm import EspAead
from ipsec_offload.errors import UsageError
from ipsec_offload.host.stack import HostStack
from ipsec_offload.host.xfrm import XfrmState
from ipsec_offload.nic.nic import SwitchMode
from ipsec_offload.sim import observer as observer_module
from ipsec_offload.sim.observer import (
    ESP_LINKS,
    CraftedConfigObeyed,
    NonceReuse,
    ReplayDelivered,
    WireObserver,
)
from ipsec_offload.sim.runner import prepare
from ipsec_offload.sim.scenario import builtin_scenario
from ipsec_offload.sim.testbed import SaBundle, Testbed
from ipsec_offload.wire.config import ConfigMessage, ConfigStatus, Opcode, build_config
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet
from ipsec_offload.wire.ip import IpProto, IPv4Header, build_ipv4
from ipsec_offload.wire.metadata import RxMetadata, build_rx_metadata
from ipsec_offload.wire.packet import find_esp

HOST_MAC, PEER_MAC, VM_MAC = "02:00:00:00:01:00", "02:00:00:00:02:00", "02:00:00:00:03:00"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def pair(**secure: object) -> tuple[Testbed, HostStack, HostStack, SaBundle]:
    """A PF host and a remote peer with one SA pair, offloaded on the host's side."""
    bed = Testbed()
    host = bed.add_pf_host("host", HOST_MAC, ipv4="192.0.2.1")
    peer = bed.add_peer("peer", PEER_MAC, ipv4="192.0.2.2")
    return bed, host, peer, bed.secure(host, peer, **secure)  # type: ignore[arg-type]


def send(bed: Testbed, source: HostStack, to: HostStack, *data: bytes) -> None:
    for payload in data:
        source.send_udp(to.addresses[4], 1000, 53, payload, bed.now)
    bed.settle(source)


RECEIVED_AS_ESP = {Ether, Dot1Q, Dot1AD, IP, IPv6}
"""The layers before ESP in a frame a receiver takes as ESP (a frame behind a metadata tag,
which scapy reads when the project's layers are loaded, is not one)."""


def reuse_on_the_wire(bed: Testbed) -> int:
    """Second and further ciphertexts under one (SA, IV) on agent-to-wire, read with scapy."""
    sealed: dict[tuple[str, str, int, bytes], set[bytes]] = {}
    for record in bed.captures["agent-to-wire"].records:
        packet = Ether(record.frame)
        layers = packet.layers()
        if ESP in layers and set(layers[: layers.index(ESP)]) <= RECEIVED_AS_ESP:
            esp = packet[ESP]
            ip = esp.underlayer  # IP or IPv6
            key = (ip.src, ip.dst, esp.spi, bytes(esp.data[:8]))
            sealed.setdefault(key, set()).add(bytes(esp.data[8:]))
    return sum(len(ciphertexts) - 1 for ciphertexts in sealed.values())


# -- no nonce twice ---------------------------------------------------------------------------


def sealed(bed: Testbed, state: XfrmState, seq: int, payload: bytes, spi: int = 0) -> bytes:
    """A frame sealed here under `state`'s key with number `seq` (and another SPI if `spi`)."""
    key = bed.sa_keys[state.src, state.dst, state.spi]
    aead = EspAead(key.algorithm, key.key_material)
    esp = esp_seal(aead, spi or state.spi, seq, key.esn, payload, IpProto.UDP)
    ip = build_ipv4(IPv4Header(state.src, state.dst, IpProto.ESP, 20 + len(esp)))
    return build_ethernet(EthernetHeader(mac(PEER_MAC), mac(HOST_MAC), EtherType.IPV4)) + ip + esp


def test_two_ciphertexts_under_one_key_and_iv_are_a_reuse_and_copies_are_not() -> None:
    bed, _, _, bundle = pair()
    watch = WireObserver(bed)
    out = bundle.a_out
    first, second = sealed(bed, out, 7, b"one"), sealed(bed, out, 7, b"two")
    forged = first[:-1] + bytes((first[-1] ^ 1,))  # its ICV does not verify
    unknown = sealed(bed, out, 7, b"one", spi=0x9999)
    bed.captures["agent-to-wire"].add_burst(1_000_000_000, [first, first, forged, unknown])
    assert watch.check() == []  # a copy is the same encryption
    bed.captures["agent-hairpin"].add_burst(2_000_000_000, [second])
    assert watch.check() == [NonceReuse(2.0, "agent-hairpin", out.src, out.dst, out.spi, 7)]
    assert watch.check() == []  # found once
    summary = watch.summary()
    assert (summary.esp_frames, summary.pairs, summary.nonce_reuse) == (3, 1, 1)
    assert (summary.unverified, summary.unknown_sa, summary.attacker_frames) == (1, 1, 0)
    assert "192.0.2.1 -> 192.0.2.2 SPI 0x00001001: IV 0x7 seals a second" in str(
        watch.violations[0]
    )
    with pytest.raises(AssertionError, match="1 violation\\(s\\) of spec section 9"):
        watch.assert_clean()


def test_an_attackers_frames_are_not_the_encryptors() -> None:
    bed, host, peer, bundle = pair()
    watch = WireObserver(bed)
    send(bed, peer, host, b"from the peer")
    (own,) = bed.wire_frames_to(host)
    esp = find_esp(own)
    assert esp is not None
    bed.wire_inject([sealed(bed, bundle.b_out, esp.iv, b"the attacker's")])
    watch.assert_clean()
    assert (watch.summary().attacker_frames, watch.summary().esp_frames) == (1, 1)


def test_reuse_after_a_tso_send_and_a_pf_reset_is_what_the_wire_shows() -> None:
    """The host's counter reserves one number per TSO send while the agent numbers each
    segment; a PF reset re-adds the SA without its counter. Whatever the model does about it,
    the observer reports the reuse the capture holds."""
    bed, host, peer, _ = pair()
    watch = WireObserver(bed)
    data = bytes(range(256)) * 20
    host.send_tcp(peer.addresses[4], 40000, 80, data, bed.now, mss=1000)
    bed.settle(host)
    watch.check()
    bed.reset_pf()
    for i in range(4):
        send(bed, host, peer, b"after the reset %d" % i)
        watch.check()
    reuse = [v for v in watch.violations if isinstance(v, NonceReuse)]
    assert watch.summary().nonce_reuse == len(reuse) == reuse_on_the_wire(bed)
    assert all(v.link == "agent-to-wire" for v in reuse)
    assert not [v for v in watch.violations if not isinstance(v, NonceReuse)]


def test_the_decks_naive_ivdb_reuses_nonces_and_its_default_scenario_does_not() -> None:
    """The default scenario's untrusted VF forges an offload frame naming the host's first SA
    and number: carried as data, it does not verify and is no reuse."""
    for naive in ((), ("ivdb",)):
        run = prepare(*builtin_scenario("default"), naive=naive)
        watch = WireObserver(run.bed)
        run.run()
        watch.check()
        summary = watch.summary()
        assert summary.esp_frames > 100 and summary.unverified == 1
        assert summary.nonce_reuse == len(watch.violations) == reuse_on_the_wire(run.bed)
        assert (summary.nonce_reuse > 0) == bool(naive)


# -- no replay delivered ----------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, 64])
def test_a_replay_through_a_window_that_is_off_is_delivered_twice(window: int) -> None:
    bed, host, peer, _ = pair(replay_window=window)
    watch = WireObserver(bed)
    send(bed, peer, host, b"once", b"only once")
    watch.check()  # the peer's frames, before the attacker replays one
    bed.wire_inject(bed.wire_frames_to(host, last=1))
    found = watch.check()
    assert [d.payload for d in bed.delivered(host)][2:] == ([b"only once"] if not window else [])
    if window:
        assert found == []
        return
    (replay,) = found
    assert isinstance(replay, ReplayDelivered)
    assert (
        replay.host,
        replay.delivery.payload,
        replay.delivery.src,
        replay.delivery.src_port,
    ) == (
        "host",
        b"only once",
        peer.addresses[4],
        1000,
    )
    assert "host: replay delivered, UDP 192.0.2.2 port 1000 -> 192.0.2.1 port 53" in str(replay)
    assert watch.summary().deliveries == 3 and watch.summary().attacker_frames == 1


def test_deliveries_of_a_destroyed_vm_stay_checked() -> None:
    bed = Testbed()
    bed.add_pf_host("host", HOST_MAC, ipv4="192.0.2.1")
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4="192.0.2.3")
    peer = bed.add_peer("peer", PEER_MAC, ipv4="192.0.2.2")
    bed.secure(vm, peer, replay_window=0)
    watch = WireObserver(bed)
    send(bed, peer, vm, b"to the vm")
    assert watch.check() == []
    bed.wire_inject(bed.wire_frames_to(vm))
    bed.destroy_vm(vm)  # before the observer reads the replayed delivery
    assert [type(v) for v in watch.check()] == [ReplayDelivered]


# -- only the PF configures the agent ---------------------------------------------------------


def config_reply(to: bytes, opcode: Opcode) -> bytes:
    """A config reply from the agent as it is on agent-to-nic (behind an Rx metadata tag)."""
    agent = mac("02:00:00:00:00:01")
    tag = build_rx_metadata(RxMetadata(ipsec=False))
    header = EthernetHeader(to, agent, EtherType.CONFIG, metadata=tag)
    return build_ethernet(header) + build_config(ConfigMessage(opcode | Opcode.REPLY, 0xBAD, ()))


def test_a_config_reply_to_another_mac_than_the_pfs_is_a_crafted_request_obeyed() -> None:
    bed, _, _, _ = pair()
    watch = WireObserver(bed)
    assert watch.check() == []  # the PF's own transactions
    to_pf = config_reply(mac(HOST_MAC), Opcode.REMOVE_ALL_SAS)
    to_vm = config_reply(mac(VM_MAC), Opcode.REMOVE_ALL_SAS)
    bed.captures["agent-to-nic"].add_burst(3_000_000_000, [to_pf, to_vm])
    assert watch.check() == [
        CraftedConfigObeyed(3.0, mac(VM_MAC), Opcode.REMOVE_ALL_SAS, ConfigStatus.OK, 0xBAD)
    ]
    assert "answered REMOVE_ALL_SAS (txn 0xbad, status OK) to 02:00:00:00:03:00" in str(
        watch.violations[0]
    )


def replies_not_to(bed: Testbed, pf_mac: bytes) -> int:
    """Config replies on agent-to-nic to another MAC than `pf_mac`, read byte by byte."""
    count = 0
    for record in bed.captures["agent-to-nic"].records:
        frame = record.frame
        if frame[12:14] == b"\x88\xb5":  # the Rx metadata tag
            frame = frame[:12] + frame[18:]
        if frame[12:14] == b"\x88\xb6" and frame[15] & 0x80 and frame[:6] != pf_mac:
            count += 1
    return count


def test_a_trusted_vfs_crafted_config_frame_is_reported_as_the_wire_shows() -> None:
    """Spec 9.3 makes the NIC drop it; whatever the model does, the observer reports what
    agent-to-nic holds."""
    bed = Testbed()
    bed.add_pf_host("host", HOST_MAC, ipv4="192.0.2.1")
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4="192.0.2.3")
    watch = WireObserver(bed)
    agent = bed.agent.config.mac
    crafted = EthernetHeader(agent, vm.mac, EtherType.CONFIG)
    request = ConfigMessage(Opcode.REMOVE_ALL_SAS, 0xBAD, ())
    bed.inject(vm, build_ethernet(crafted) + build_config(request))
    obeyed = [v for v in watch.check() if isinstance(v, CraftedConfigObeyed)]
    assert (
        len(obeyed) == watch.summary().crafted_config_obeyed == replies_not_to(bed, mac(HOST_MAC))
    )


# -- a clean run, and reading each record once ------------------------------------------------


def test_a_clean_run_through_resets_reports_nothing_and_reads_each_record_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    def counted(frame: bytes, meta: int) -> object:
        nonlocal calls
        calls += 1
        return find_esp(frame, meta)

    monkeypatch.setattr(observer_module, "find_esp", counted)
    bed = Testbed(mode=SwitchMode.VEPA)
    host = bed.add_pf_host("host", HOST_MAC, ipv4="10.0.0.1")
    vm = bed.add_vm("vm", 0, VM_MAC, ipv4="10.0.0.3")
    peer = bed.add_peer("peer", PEER_MAC, ipv4="10.0.0.2")
    bed.secure(host, peer)
    bed.secure(vm, peer)
    bed.secure(host, vm, offload_b=True)  # east-west: hairpinned by the agent
    watch = WireObserver(bed)
    steps: list[Callable[[], None]] = [bed.reset_pf, lambda: bed.reset_vf(vm), lambda: None]
    for round_, step in enumerate(steps):
        for source, to in ((host, peer), (peer, host), (vm, peer), (peer, vm), (host, vm)):
            send(
                bed,
                source,
                to,
                b"%s to %s, round %d" % (source.name.encode(), to.name.encode(), round_),
            )
            watch.check()
        step()
        watch.check()
    bed.destroy_vm(vm)
    send(bed, host, peer, b"after the vm is gone")
    watch.assert_clean()
    summary = watch.summary()
    records = sum(len(bed.captures[link]) for link in ESP_LINKS)
    assert calls == records  # each record read once, over 20 checks
    assert summary.esp_frames == records  # every frame was ESP of a known SA
    assert summary.deliveries == 16 and len(bed.captures["agent-hairpin"]) >= 3
    assert (summary.unknown_sa, summary.unverified, summary.attacker_frames) == (0, 0, 0)


def test_the_observer_needs_the_captures() -> None:
    with pytest.raises(UsageError, match="capture=True"):
        WireObserver(Testbed(capture=False))
