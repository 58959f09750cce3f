"""The head of an unmasked, unfragmented WebSocket data frame sent by a server (RFC 6455 §5.2), for
a message whose payload is written after it in chunks as they arrive. No I/O.

`websockets` serializes a frame only with its whole payload in hand; a streamed `task` message is
never whole at the proxy, so its head is written here and its payload follows as it comes.
"""

from __future__ import annotations

import struct

_FIN = 0x80
_TEXT = 0x1
_BINARY = 0x2


def data_frame_head(length: int, binary: bool) -> bytes:
    """FIN, the opcode (binary or text), no mask, and `length` in the shortest of its 3 forms."""
    first = _FIN | (_BINARY if binary else _TEXT)
    if length < 0 or length >= 1 << 63:
        raise ValueError(f"a frame payload cannot be {length} bytes long")
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)
