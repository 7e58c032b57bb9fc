"""Hairpin (spec section 6, VEPA): frames to a registered local address turn around."""

from __future__ import annotations

import struct

import pytest

from agent_frames import (
    BROADCAST,
    ETH_IPV4,
    HOST_MAC,
    KEY128,
    KEY256,
    LOCAL4,
    PEER4,
    PEER_MAC,
    PROTO_UDP,
    VF_MAC,
    VLAN_Q,
    add_sa,
    checksum16,
    esp_packet,
    eth_header,
    offload_frame,
    open_encrypted,
    request,
    rx_word,
    split_tag,
    trailer,
    tx_word,
    wire_frame,
)
from ipsec_offload.agent.agent import IpsecAgent
from ipsec_offload.agent.counters import DropReason, Path
from ipsec_offload.wire.config import (
    Algorithm,
    ConfigStatus,
    Direction,
    LocalAddr,
    Opcode,
    encode_local_addr,
)
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.metadata import RxStatus

pytestmark = pytest.mark.usefixtures("agent_path")

IN = Direction.INBOUND
OUT = Direction.OUTBOUND
SPI = 0x00C0FFEE
VF_IP = bytes((192, 0, 2, 50))


def _agent_with_vf(*, inbound: bool = True) -> tuple[IpsecAgent, int]:
    """PF (HOST_MAC) and VF (VF_MAC) on VLAN 100; the VF is registered as a local address."""
    agent = IpsecAgent()
    reply = request(agent, Opcode.ADD_LOCAL_ADDR, encode_local_addr(LocalAddr(VF_MAC, (VLAN_Q,))))
    assert reply.status == ConfigStatus.OK
    add_sa(agent, OUT, SPI, VF_IP, local_mac=HOST_MAC, vlans=(VLAN_Q,))
    index = 0
    if inbound:
        index = add_sa(agent, IN, SPI, VF_IP, local_mac=VF_MAC, vlans=(VLAN_Q,))
    return agent, index


def _to_vf(payload: bytes, vlans: tuple[VlanTag, ...] = (VLAN_Q,)) -> bytes:
    return offload_frame(
        SPI, 0, payload, src_mac=HOST_MAC, dst_mac=VF_MAC, vlans=vlans, src_ip=LOCAL4, dst_ip=VF_IP
    )


def test_offloaded_frame_to_a_local_address_comes_back_decrypted() -> None:
    agent, index = _agent_with_vf()
    out = agent.from_host([_to_vf(b"east-west")])
    assert out.to_wire == []
    assert len(out.to_host) == 1
    word, frame = split_tag(out.to_host[0])
    meta = rx_word(word)
    assert (meta.ipsec, meta.status, meta.sa_index) == (True, RxStatus.OK, index)
    assert frame[:18] == eth_header(VF_MAC, HOST_MAC, ETH_IPV4, (VLAN_Q,))
    ip = frame[18:38]
    assert checksum16(ip) == 0
    assert struct.unpack(">H", ip[2:4])[0] == len(frame) - 18
    spi, seq, iv = struct.unpack(">IIQ", frame[38:54])
    assert (spi, seq, iv) == (SPI, 1, 1)
    assert frame[54:] == b"east-west" + trailer(9, PROTO_UDP)
    paths = agent.counters.paths
    assert (paths[Path.HAIRPIN], paths[Path.TX_ENCRYPTED], paths[Path.RX_ESP]) == (1, 1, 1)
    assert [(sa.packets, sa.bytes) for sa in agent.sad] == [(1, 9), (1, 9)]


def test_hairpin_without_an_inbound_sa_is_no_sa_and_still_encrypted() -> None:
    agent, _ = _agent_with_vf(inbound=False)
    out = agent.from_host([_to_vf(b"software will do it")])
    assert out.to_wire == []
    word, frame = split_tag(out.to_host[0])
    meta = rx_word(word)
    assert (meta.ipsec, meta.status, meta.sa_index) == (True, RxStatus.NO_SA, 0)
    opened = open_encrypted(frame, KEY128, l3=18)
    assert opened.plaintext == b"software will do it" + trailer(19, PROTO_UDP)


def test_inbound_sa_of_another_domain_is_not_used() -> None:
    agent, _ = _agent_with_vf(inbound=False)
    add_sa(agent, IN, SPI, VF_IP, local_mac=VF_MAC)  # no VLAN: another domain
    out = agent.from_host([_to_vf(b"x")])
    assert rx_word(split_tag(out.to_host[0])[0]).status == RxStatus.NO_SA


def test_other_vlan_or_mac_goes_to_the_wire() -> None:
    agent, _ = _agent_with_vf()
    add_sa(agent, OUT, SPI, VF_IP)  # naive: encrypts in any domain
    other_vlan = _to_vf(b"a", vlans=(VlanTag(0x8100, 101),))
    untagged = _to_vf(b"b", vlans=())
    remote = offload_frame(SPI, 0, b"c", src_mac=HOST_MAC, dst_mac=PEER_MAC, dst_ip=VF_IP)
    out = agent.from_host([other_vlan, untagged, remote])
    assert out.to_host == []
    assert len(out.to_wire) == 3
    assert agent.counters.paths[Path.HAIRPIN] == 0


def test_broadcast_goes_to_both_sides() -> None:
    agent, _ = _agent_with_vf()
    arp = eth_header(BROADCAST, HOST_MAC, 0x0806, (VLAN_Q,)) + bytes(28)
    tagged = eth_header(BROADCAST, HOST_MAC, 0x0806, (VLAN_Q,), meta=0) + bytes(28)
    multicast = bytes.fromhex("01005e000001") + arp[6:]
    out = agent.from_host([arp, tagged, multicast])
    assert out.to_wire == [arp, arp, multicast]
    assert [split_tag(f) for f in out.to_host] == [(0, arp), (0, arp), (0, multicast)]
    assert agent.counters.paths[Path.HAIRPIN] == 3


def test_bypassed_software_esp_to_a_local_address_is_decrypted() -> None:
    agent, index = _agent_with_vf()
    esp = esp_packet(KEY128, SPI, 7, b"sw")
    plain = wire_frame(esp, src_ip=LOCAL4, dst_ip=VF_IP, dst_mac=VF_MAC, src_mac=HOST_MAC)
    plain = plain[:12] + struct.pack(">HH", 0x8100, 100) + plain[12:]
    bypass = plain[:12] + struct.pack(">HI", 0x88B5, tx_word(False, 0, 0, 0)) + plain[12:]
    out = agent.from_host([bypass])
    assert out.to_wire == []
    word, frame = split_tag(out.to_host[0])
    assert rx_word(word) == rx_word((1 << 31) | index)
    assert frame[54:] == b"sw" + trailer(2, PROTO_UDP)


def test_remove_local_addr_stops_the_hairpin() -> None:
    agent, _ = _agent_with_vf()
    addr = encode_local_addr(LocalAddr(VF_MAC, (VLAN_Q,)))
    assert request(agent, Opcode.REMOVE_LOCAL_ADDR, addr).status == ConfigStatus.OK
    out = agent.from_host([_to_vf(b"now remote")])
    assert out.to_host == []
    assert open_encrypted(out.to_wire[0], KEY128, l3=18).iv == 1


def test_dropped_tx_frame_goes_nowhere() -> None:
    agent, _ = _agent_with_vf()
    frame = offload_frame(
        SPI + 1, 0, b"x", src_mac=HOST_MAC, dst_mac=VF_MAC, vlans=(VLAN_Q,), dst_ip=VF_IP
    )
    out = agent.from_host([frame])
    assert (out.to_host, out.to_wire) == ([], [])
    assert agent.counters.drops[DropReason.NO_OUTBOUND_SA] == 1
    assert agent.counters.paths[Path.HAIRPIN] == 0


def test_mixed_burst_keeps_per_side_order() -> None:
    agent, index = _agent_with_vf()
    add_sa(agent, OUT, 0x77, PEER4, key=KEY256, alg=Algorithm.AES_GCM_256)
    remote = offload_frame(0x77, 0, b"r1")
    out = agent.from_host([_to_vf(b"l1"), remote, _to_vf(b"l2"), remote])
    assert [open_encrypted(f, KEY256).iv for f in out.to_wire] == [1, 2]
    seqs = [struct.unpack(">I", split_tag(f)[1][42:46])[0] for f in out.to_host]
    assert seqs == [1, 2]
    assert {rx_word(split_tag(f)[0]).sa_index for f in out.to_host} == {index}
