from collections.abc import Sequence

def build_udp_frames(
    l2: bytes,
    src: bytes,
    dst: bytes,
    ip_id: int,
    esp: tuple[int, int] | None,
    src_port: int,
    dst_port: int,
    payloads: Sequence[bytes | bytearray | memoryview],
    /,
) -> list[bytes]: ...
