"""The benchmark's traffic: one UDP flow over IPv4 transport-mode ESP, in every form a
measured party takes it.

A frame of size N is the clear frame the host's application traffic makes: Ethernet (14),
IPv4 (20), UDP (8) and N - 42 bytes of data. Sealed, it becomes what the agent puts on the
wire: the same frame with ESP header, IV, trailer and ICV around the UDP segment. Every party
gets the same packets: the agent Tx offload frames (the metadata tag and the ESP header and
IV the stack writes), the agent Rx the sealed frames, the bare AEAD the ESP plaintext (UDP
segment and trailer) with its nonce and AAD, scapy the IP packets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ipsec_offload.agent.agent import AgentConfig, IpsecAgent
from ipsec_offload.errors import IpsecOffloadError
from ipsec_offload.wire.config import (
    AddSaRequest,
    Algorithm,
    ConfigMessage,
    ConfigStatus,
    Direction,
    Opcode,
    build_config,
    encode_add_sa,
    parse_config,
)
from ipsec_offload.wire.esp import ESP_HEADER_LEN, ESP_IV_LEN, build_esp_trailer
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet, parse_ethernet
from ipsec_offload.wire.ip import IpProto, IPv4Header, build_ipv4
from ipsec_offload.wire.metadata import TxMetadata, build_tx_metadata
from ipsec_offload.wire.transport import UdpHeader, build_udp

HOST_MAC = bytes.fromhex("020000000100")
PEER_MAC = bytes.fromhex("020000000200")
HOST_IP = bytes((192, 0, 2, 1))
PEER_IP = bytes((192, 0, 2, 2))
SPI = 0x1001
L2_LEN = 14
"""The flow's Ethernet header (untagged; the Tx offload frames add the metadata tag)."""
HEADERS_LEN = L2_LEN + 20 + 8
"""Ethernet, IPv4 and UDP headers: a frame of N bytes carries N - 42 bytes of data."""

_ESP = struct.Struct(">II")
_IV = struct.Struct(">Q")
_RAMP = bytes(range(256))
_KEY_BYTE = {Algorithm.AES_GCM_128: 0x11, Algorithm.AES_GCM_256: 0x22}


class BenchError(IpsecOffloadError):
    """A measured party did not do the work asked (a drop, a refused SA): no figure."""


def key_material(algorithm: Algorithm) -> bytes:
    """A fixed key || salt for `algorithm`."""
    return bytes([_KEY_BYTE[algorithm]]) * algorithm.key_length + b"salt"


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet of the flow, as each party sees it."""

    seq: int
    ip: bytes
    """The clear IP packet (IPv4 header and UDP segment)."""
    offload: bytes
    """The host's Tx offload frame: metadata tag, IPv4, ESP header and IV, UDP segment."""
    nonce: bytes
    """Salt and IV (RFC 4106)."""
    plaintext: bytes
    """The ESP plaintext: UDP segment and trailer."""
    aad: bytes
    """SPI and sequence number (no ESN)."""

    @property
    def iv(self) -> bytes:
        """The explicit IV: the sequence number (spec section 2)."""
        return self.nonce[-8:]


def udp_data(size: int, seq: int) -> bytes:
    """The UDP data of packet `seq` in a frame of `size` bytes: a byte ramp starting at `seq`,
    so that no two neighbouring packets are the same."""
    if size < HEADERS_LEN:
        raise BenchError(f"a frame of {size} bytes cannot hold Ethernet, IPv4 and UDP")
    length = size - HEADERS_LEN
    start = seq % 256
    return (_RAMP * (length // 256 + 2))[start : start + length]


def packet(size: int, seq: int, algorithm: Algorithm, spi: int = SPI) -> Packet:
    """Packet `seq` (1, 2, ...: the ESP sequence number and IV it gets) of `size` bytes, of
    the SA `spi`."""
    udp = build_udp(UdpHeader(1000, 2000), udp_data(size, seq), HOST_IP, PEER_IP)
    clear_ip = build_ipv4(IPv4Header(HOST_IP, PEER_IP, IpProto.UDP, 20 + len(udp)))
    esp_len = ESP_HEADER_LEN + ESP_IV_LEN + len(udp)
    esp_ip = build_ipv4(IPv4Header(HOST_IP, PEER_IP, IpProto.ESP, 20 + esp_len))
    word = build_tx_metadata(TxMetadata(True, IpProto.UDP, L2_LEN, 20 // 4))
    l2 = build_ethernet(EthernetHeader(PEER_MAC, HOST_MAC, EtherType.IPV4, metadata=word))
    iv = _IV.pack(seq)
    return Packet(
        seq=seq,
        ip=clear_ip + udp,
        offload=l2 + esp_ip + _ESP.pack(spi, seq) + iv + udp,
        nonce=key_material(algorithm)[-4:] + iv,
        plaintext=udp + build_esp_trailer(len(udp), IpProto.UDP),
        aad=_ESP.pack(spi, seq),
    )


def config_frame(agent: IpsecAgent, request: AddSaRequest, txn_id: int) -> bytes:
    """An ADD_SA request frame from the host to `agent`."""
    header = EthernetHeader(agent.config.mac, HOST_MAC, agent.config.config_ethertype)
    message = ConfigMessage(Opcode.ADD_SA, txn_id, encode_add_sa(request))
    return build_ethernet(header) + build_config(message)


def check_added(reply: list[bytes]) -> None:
    """Raise BenchError unless `reply` is one ADD_SA reply with status OK."""
    if len(reply) != 1:
        raise BenchError(f"ADD_SA gave {len(reply)} replies")
    status = parse_config(reply[0][parse_ethernet(reply[0]).header_len :]).status
    if status != ConfigStatus.OK:
        raise BenchError(f"ADD_SA refused: {ConfigStatus(status).name}")


def sa_request(direction: Direction, algorithm: Algorithm, spi: int = SPI) -> AddSaRequest:
    """The flow's SA as the PF driver adds it: extended key, the host side's MAC."""
    outbound = direction == Direction.OUTBOUND
    return AddSaRequest(
        direction=direction,
        spi=spi,
        dst=PEER_IP,
        alg=algorithm,
        key=key_material(algorithm),
        src=HOST_IP,
        local_mac=HOST_MAC if outbound else PEER_MAC,
    )


def agent_with_sa(direction: Direction, algorithm: Algorithm, fast_path: bool = True) -> IpsecAgent:
    """An agent holding the flow's SA in `direction`: outbound for the host's side, inbound
    for the peer's (an agent at the other end of the wire); `fast_path` as in AgentConfig."""
    agent = IpsecAgent(AgentConfig(fast_path=fast_path))
    check_added(agent.from_host([config_frame(agent, sa_request(direction, algorithm), 1)]).to_host)
    return agent
