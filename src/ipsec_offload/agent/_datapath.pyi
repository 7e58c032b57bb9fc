from typing import Any

from ipsec_offload.agent.sad import SecurityAssociation

class SadTable:
    def __init__(self, capacity: int) -> None: ...
    def __len__(self) -> int: ...
    def insert(self, key: tuple[Any, ...], sa: SecurityAssociation, index: int) -> None: ...
    def remove(self, key: tuple[Any, ...]) -> None: ...
    def get(self, key: tuple[Any, ...]) -> SecurityAssociation | None: ...
    def lookup_burst(self, keys: list[tuple[Any, ...]]) -> list[int]: ...

class Datapath:
    def __init__(
        self,
        *,
        sad_table: SadTable,
        local_addrs: set[Any],
        invalid_tag: type[BaseException],
        paths: dict[Any, int],
        rx_status: dict[Any, int],
        tx_encrypted: object,
        rx_esp: object,
        rx_ok: object,
        meta_ethertype: int,
        config_ethertype: int,
        ivdb: bool,
        sa_type: type,
        replay_type: type,
        aead_type: type,
    ) -> None: ...
    def tx_burst(self, frames: list[bytes], start: int, to_wire: list[bytes]) -> int: ...
    def rx_burst(self, frames: list[bytes], start: int, to_host: list[bytes]) -> int: ...
