"""What the PF sets up for the port's VSIs beyond their rings: the NIC's port tag and Tx
EtherType filter (through the admin queue), and the agent's hairpin table of local addresses.

Theory of operation: an untrusted VF's VSI gets a port tag, metadata with OFFLOAD=0 that the
NIC inserts on every frame from it, so that its frames are data to the agent whatever their
descriptors say (spec 6). A trusted VF's VSI gets the Tx EtherType filter on the config and
metadata EtherTypes instead: the NIC drops such frames before its switch, so that only the PF
talks to the agent (spec 9, invariant 3). In VEPA mode every local address (the PF's own and
each VF's MAC and VLANs) is registered with the agent (ADD_LOCAL_ADDR), which turns frames to
them around (hairpin); the PF keeps the set it registered, so it sends each change once.
"""

from __future__ import annotations

from ipsec_offload.driver.control import AgentControl
from ipsec_offload.nic.admin import AdminCommand, SetPortTag, SetTxEtherTypeFilter
from ipsec_offload.wire.config import LocalAddr, Opcode, Tlv, encode_local_addr
from ipsec_offload.wire.ethernet import VlanTag
from ipsec_offload.wire.metadata import TxMetadata, build_tx_metadata

UNTRUSTED_PORT_TAG = build_tx_metadata(TxMetadata(offload=False))
"""The metadata word the NIC forces on an untrusted VF's frames: OFFLOAD=0, bypass."""


class VsiSetup:
    """The port tags, Tx EtherType filters and hairpin addresses the PF sets for VSIs."""

    def __init__(
        self,
        control: AgentControl,
        *,
        agent_ethertypes: frozenset[int],
        port_tagging: bool,
        vf_filter: bool,
        hairpin: bool,
    ) -> None:
        self.port_tagging = port_tagging
        self.vf_filter = vf_filter
        self.hairpin = hairpin
        self._control = control
        self._agent_ethertypes = agent_ethertypes
        self._admin: list[AdminCommand] = []
        self._local: set[tuple[bytes, tuple[VlanTag, ...]]] = set()

    def set_trust(self, vsi_id: int, trusted: bool) -> None:
        """Untrusted: the port tag (its frames are data to the agent). Trusted: the Tx
        EtherType filter, so that only the PF talks to the agent (spec 9, invariant 3)."""
        word = None if trusted or not self.port_tagging else UNTRUSTED_PORT_TAG
        self._admin.append(SetPortTag(vsi_id, word))
        filtered = trusted and self.vf_filter
        ethertypes = self._agent_ethertypes if filtered else frozenset[int]()
        self._admin.append(SetTxEtherTypeFilter(vsi_id, ethertypes))

    def release(self, vsi_id: int) -> None:
        """A VSI the PF gives up: no port tag, no filter."""
        self._admin.append(SetPortTag(vsi_id, None))
        self._admin.append(SetTxEtherTypeFilter(vsi_id, frozenset()))

    def register_local(
        self, mac: bytes, vlans: tuple[VlanTag, ...], now: float, *, add: bool = True
    ) -> None:
        """In VEPA mode (`hairpin`), add a local address to the agent's hairpin table, or
        remove it (`add=False`); nothing when the table already says so."""
        if not self.hairpin:
            return
        key = (mac, vlans)
        if add == (key in self._local):
            return
        if add:
            self._local.add(key)
        else:
            self._local.discard(key)
        opcode = Opcode.ADD_LOCAL_ADDR if add else Opcode.REMOVE_LOCAL_ADDR
        self._control.request(opcode, encode_local_addr(LocalAddr(mac, vlans)), now, _ignore)

    def admin_commands(self) -> list[AdminCommand]:
        """Take the admin queue commands queued for the NIC."""
        out, self._admin = self._admin, []
        return out


def _ignore(_rc: int, _tlvs: tuple[Tlv, ...] | None, _now: float) -> None:
    """Continuation of a transaction whose outcome changes nothing (hairpin table entries:
    EXISTS or NOT_FOUND mean the agent already holds what the PF wants)."""
