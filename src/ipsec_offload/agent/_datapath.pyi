from typing import Any

class Datapath:
    def __init__(
        self,
        *,
        by_key: dict[Any, Any],
        local_addrs: set[Any],
        outbound: object,
        inbound: object,
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
