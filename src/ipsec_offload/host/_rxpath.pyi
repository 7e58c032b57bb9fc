from collections.abc import Callable
from typing import Any

class RxPath:
    def __init__(
        self,
        *,
        inbound: dict[Any, Any],
        addresses: dict[int, bytes],
        counters: object,
        admits: Callable[[bytes, bytes, int, Any], bool],
        transport: object,
        rx_ok: object,
        invalid_tag: type[BaseException],
        packet_type: type,
        rx_type: type,
        state_type: type,
        replay_type: type,
        aead_type: type,
        delivered_type: type,
    ) -> None: ...
    def burst(self, now: float, out: list[Any], events: list[Any], start: int) -> int: ...
