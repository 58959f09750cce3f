"""Streamed answers, no I/O: the bookkeeping of both ends for answers sent in bounded chunks.

An answer larger than `STREAM_THRESHOLD` is not one frame but a head (the answer's `meta` and
its total length) and data chunks of at most `STREAM_CHUNK` bytes, under the answer's call id
(ARCHITECTURE.md "Streamed answers"). The receiver grants credit: the sender may send
`STREAM_WINDOW` bytes after the head and then only what was granted, so a receiver that passes the
bytes on to a slow reader holds about a window per stream, not the whole answer.

`Outgoing` is the sender's side of one stream, `Incoming` the receiver's; `protocol.py` keeps a
table of each and turns their verdicts into frames and `LinkProtocolError`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

STREAM_THRESHOLD = 256 * 1024  # answers above this many bytes are streamed (below: one frame, as ever)
STREAM_CHUNK = 64 * 1024
STREAM_WINDOW = 256 * 1024  # bytes a sender may send before its first credit


class Streamed(NamedTuple):
    """A handler's answer to send as a stream: `meta` (any packable value) in the head, then the
    bytes of `parts` in order. The parts are sent as slices, never joined: many streams of one
    cached payload share its bytes."""

    meta: Any
    parts: Sequence[bytes | memoryview]

    @property
    def nbytes(self) -> int:
        return sum(len(part) for part in self.parts)


class Outgoing:
    """The sender's side of one stream: what is left to send and the credit to send it."""

    __slots__ = ("credit", "left")

    def __init__(self, total: int) -> None:
        self.left = total  # bytes not yet sent
        self.credit = min(STREAM_WINDOW, total)  # bytes that may be sent now

    def grant(self, nbytes: int) -> bool:
        """Add credit; False (and nothing added) if it would exceed what is left to send."""
        if self.credit + nbytes > self.left:
            return False
        self.credit += nbytes
        return True

    def sent(self, nbytes: int) -> None:
        """Count a chunk sent. Raises `ValueError` past the credit: a caller's bug, not the peer's."""
        if nbytes > self.credit:
            raise ValueError(f"a chunk of {nbytes} bytes exceeds the stream's credit of {self.credit}")
        self.credit -= nbytes
        self.left -= nbytes


class Incoming:
    """The receiver's side of one stream: bytes received against bytes granted and the total.

    A cancelled stream stays until its sender stops (all bytes in, or an empty chunk), so that
    the chunks already on their way are told apart from a peer sending on an unknown stream.
    """

    __slots__ = ("cancelled", "granted", "received", "total")

    def __init__(self, total: int, cancelled: bool = False) -> None:
        self.total = total
        self.received = 0
        self.granted = min(STREAM_WINDOW, total)
        self.cancelled = cancelled

    def take(self, nbytes: int) -> bool:
        """Count a chunk received; False if the sender exceeded its credit."""
        if self.received + nbytes > self.granted:
            return False
        self.received += nbytes
        return True

    @property
    def complete(self) -> bool:
        return self.received == self.total

    def grantable(self, nbytes: int) -> int:
        """Up to `nbytes` more to grant, never past the total, and nothing once cancelled."""
        if self.cancelled:
            return 0
        nbytes = min(nbytes, self.total - self.granted)
        self.granted += nbytes
        return nbytes


def chunk_at(parts: Sequence[bytes | memoryview], start: int, size: int) -> bytes | memoryview:
    """Up to `size` bytes of `parts` from byte `start`: a slice of one part (no copy), or the
    joined slices where the chunk spans two parts (one chunk's copy, not the payload's)."""
    views: list[memoryview] = []
    taken = 0
    offset = 0
    for part in parts:
        end = offset + len(part)
        if end > start:
            begin = max(start - offset, 0)
            piece = memoryview(part)[begin : begin + size - taken]
            views.append(piece)
            taken += len(piece)
            if taken >= size:
                break
        offset = end
    return views[0] if len(views) == 1 else b"".join(views)
