"""Per-frame integrity for a link without TLS, no I/O: a 128-bit tag on every frame.

A tag covers the frame's body and its position in its direction's stream (a counter both ends
keep, never sent), so a frame changed, inserted, dropped, replayed or reordered fails the check.
Keys come from the handshake (`proofs.frame_key`), one per direction. The MAC depends on the body's
length, which both ends know: keyed BLAKE2b below `LARGE_FRAME` (a device request or answer: ~1 µs
where HMAC-SHA256 takes ~3), HMAC-SHA256 from there (model-sized frames: SHA-256 in hardware is
about twice as fast per byte; `scripts/seal_timing.py`).
"""

from __future__ import annotations

import hashlib
import hmac

TAG_SIZE = 16  # 128 bits: forging one is a 2**-128 guess per try
LARGE_FRAME = 64 * 1024


class _Mac:
    """The tag of the n-th frame of one direction."""

    __slots__ = ("_large", "_small")

    def __init__(self, key: bytes) -> None:
        # Keyed once; copied per frame.
        self._small = hashlib.blake2b(key=key, digest_size=TAG_SIZE)
        self._large = hmac.new(key, digestmod=hashlib.sha256)

    def tag(self, position: int, body: bytes | memoryview) -> bytes:
        mac = (self._small if len(body) < LARGE_FRAME else self._large).copy()
        mac.update(position.to_bytes(8, "big"))
        mac.update(body)
        return mac.digest()[:TAG_SIZE]


class Sealer:
    """Tags the frames one side sends, in order."""

    __slots__ = ("_mac", "_sent")

    def __init__(self, key: bytes) -> None:
        self._mac = _Mac(key)
        self._sent = 0

    def tag(self, body: bytes) -> bytes:
        tag = self._mac.tag(self._sent, body)
        self._sent += 1
        return tag


class Opener:
    """Checks the tags of the frames the other side sent, in order."""

    __slots__ = ("_mac", "_received")

    def __init__(self, key: bytes) -> None:
        self._mac = _Mac(key)
        self._received = 0

    def check(self, body: memoryview, tag: memoryview) -> bool:
        """Whether `tag` is the next frame's tag for `body` (the counter moves on only if so)."""
        if not hmac.compare_digest(self._mac.tag(self._received, body), tag):
            return False
        self._received += 1
        return True
