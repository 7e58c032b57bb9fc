"""A config client on a real interface: sends the agent's config frames (spec section 4) and
waits for the replies, with retries (docs/live.md). A second user of the wire format beside
the PF driver, written from the codecs alone.

A request is resent, with the same transaction id, when no reply came within `timeout`; the
agent answers a repeated id from its reply cache (spec 4), so a resent ADD_SA adds nothing
twice. After `retries` resends the request fails, saying so. EVENT frames that arrive are
answered (an empty EVENT reply, status OK) as the PF driver answers them, and kept.
"""

from __future__ import annotations

import itertools
import os
import select
import time
from dataclasses import dataclass, field

from ipsec_offload.agent.agent import DEFAULT_AGENT_MAC
from ipsec_offload.errors import IpsecOffloadError, ParseError, UsageError
from ipsec_offload.live.agent import interface_mac
from ipsec_offload.live.packet_socket import PacketSocket
from ipsec_offload.wire.addr import mac_to_str
from ipsec_offload.wire.config import (
    ConfigMessage,
    ConfigStatus,
    Event,
    Opcode,
    Tlv,
    build_config,
    decode_event,
    parse_config,
)
from ipsec_offload.wire.ethernet import EthernetHeader, EtherType, build_ethernet, parse_ethernet


class ConfigTimeout(IpsecOffloadError):
    """The agent did not answer a request, resends included."""


@dataclass(slots=True)
class ConfigClient:
    """Config requests over one interface to the agent at `agent_mac`."""

    dev: str
    agent_mac: bytes = DEFAULT_AGENT_MAC
    timeout: float = 0.5
    retries: int = 3
    port: int = 0
    events: list[Event] = field(default_factory=list)
    """EVENT frames the agent sent while the client listened (answered)."""
    resends: int = 0
    _socket: PacketSocket | None = None
    _mac: bytes = b""
    _ids: itertools.count[int] = field(
        default_factory=lambda: itertools.count(int.from_bytes(os.urandom(2)) or 1)
    )

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.retries < 0:
            raise UsageError("give a timeout above 0 seconds and 0 or more retries")
        self._mac = interface_mac(self.dev)
        self._socket = PacketSocket(self.dev)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> ConfigClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, opcode: Opcode, tlvs: tuple[Tlv, ...] = ()) -> ConfigMessage:
        """Send a request and return the agent's reply (whatever its status)."""
        txn = next(self._ids) & 0xFFFF or next(self._ids) & 0xFFFF
        message = ConfigMessage(opcode, txn, tlvs, port=self.port)
        frame = build_ethernet(EthernetHeader(self.agent_mac, self._mac, EtherType.CONFIG))
        frame += build_config(message)
        for attempt in range(self.retries + 1):
            if attempt:
                self.resends += 1
            self._sock().send([frame])
            reply = self._wait(opcode, txn, time.monotonic() + self.timeout)
            if reply is not None:
                return reply
        raise ConfigTimeout(
            f"no reply from the agent {mac_to_str(self.agent_mac)} on {self.dev} to"
            f" {opcode.name} after {self.retries + 1} tries {self.timeout:g} s apart (is the"
            " agent running on the other end, and is it configured with this interface's"
            " MAC as its PF MAC, or with none?)"
        )

    def listen(self, seconds: float) -> list[Event]:
        """Answer and keep the EVENT frames that come within `seconds`."""
        self._wait(None, None, time.monotonic() + seconds)
        return self.events

    def _wait(
        self, opcode: Opcode | None, txn: int | None, deadline: float
    ) -> ConfigMessage | None:
        sock = self._sock()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            for frame in sock.recv_burst():
                found = self._config(frame)
                if found is None:
                    continue
                if found.base_opcode == Opcode.EVENT and not found.is_reply:
                    self._answer_event(found)
                elif found.is_reply and found.txn_id == txn and found.base_opcode == opcode:
                    return found

    def _config(self, frame: bytes) -> ConfigMessage | None:
        """A config message from the agent to this interface (None: any other frame)."""
        try:
            eth = parse_ethernet(frame)
            if eth.ethertype != EtherType.CONFIG or eth.src != self.agent_mac:
                return None
            if eth.dst != self._mac:
                return None
            return parse_config(memoryview(frame)[eth.header_len :])
        except ParseError:
            return None

    def _answer_event(self, message: ConfigMessage) -> None:
        try:
            event = decode_event(message.tlvs)
        except ParseError:
            return
        self.events.append(event)
        answer = ConfigMessage(
            Opcode.EVENT | Opcode.REPLY, message.txn_id, (), ConfigStatus.OK, port=message.port
        )
        header = EthernetHeader(self.agent_mac, self._mac, EtherType.CONFIG)
        self._sock().send([build_ethernet(header) + build_config(answer)])

    def _sock(self) -> PacketSocket:
        if self._socket is None:
            raise UsageError("this ConfigClient is closed")
        return self._socket
