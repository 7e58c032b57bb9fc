from collections.abc import Sequence
from typing import Any

from ipsec_offload.nic.descriptors import TxDescriptor
from ipsec_offload.nic.nic import Vsi
from ipsec_offload.wire.ethernet import VlanKey

class TxPath:
    def __init__(self, descriptor_type: type[TxDescriptor]) -> None: ...
    def transmit(
        self,
        descriptors: list[TxDescriptor],
        start: int,
        vsi: Vsi,
        by_addr: dict[tuple[bytes, VlanKey], Vsi],
        veb: bool,
        meta_ethertype: int,
        to_agent: list[bytes],
    ) -> int: ...
    def descriptors(self, frames: Sequence[bytes], l2tag: int | None) -> list[TxDescriptor]: ...

def plain_receive(
    mac: bytes, events: list[Any], packet_type: type, frames: list[bytes], start: int
) -> int: ...
