"""A streamed answer as its caller sees it (`streams.py`): the head, then chunks as they arrive.

The caller passes the bytes on (to a device) and grants credit as they leave, so that this end
holds about a window of the answer, however slow the reader behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .protocol import ClientConnection

OnChunk = Callable[[bytes], None]
OnEnd = Callable[[bool], None]  # True: every byte arrived; False: cut short (link lost, sender gave up)


class AnswerStream:
    """The result of a call answered by a stream: `meta` and `total` from its head.

    Chunks that arrive before `consume` are kept (at most the credit granted so far).
    """

    __slots__ = (
        "_buffer",
        "_call_id",
        "_core",
        "_ended",
        "_flush",
        "_forget",
        "_on_chunk",
        "_on_end",
        "meta",
        "total",
    )

    def __init__(
        self,
        core: ClientConnection[Any],
        flush: Callable[[], None],
        forget: Callable[[int], object],
        call_id: int,
        meta: Any,
        total: int,
    ) -> None:
        self.meta = meta
        self.total = total
        self._core = core
        self._flush = flush  # sends what the core queued (a credit, a cancel)
        self._forget = forget  # the link's table of streams: a cancelled one has no more events
        self._call_id = call_id
        self._buffer: list[bytes] = []
        self._ended: bool | None = None
        self._on_chunk: OnChunk | None = None
        self._on_end: OnEnd | None = None

    def consume(self, on_chunk: OnChunk, on_end: OnEnd) -> None:
        """Hand every chunk to `on_chunk` (those already here at once), then the end to `on_end`."""
        buffered, self._buffer = self._buffer, []
        for chunk in buffered:
            on_chunk(chunk)
        if self._ended is not None:
            on_end(self._ended)
            return
        self._on_chunk, self._on_end = on_chunk, on_end

    def grant(self, nbytes: int) -> None:
        """Let the sender send `nbytes` more (passed on, so room for more behind them)."""
        self._core.grant(self._call_id, nbytes)
        self._flush()

    def cancel(self) -> None:
        """Want no more: the sender stops. No callback is called after this."""
        self._on_chunk = self._on_end = None
        self._buffer.clear()
        if self._ended is None:
            self._ended = False
            self._forget(self._call_id)
            self._core.cancel(self._call_id)
            self._flush()

    def chunk_arrived(self, chunk: bytes) -> None:
        if self._on_chunk is not None:
            self._on_chunk(chunk)
        elif self._ended is None:
            self._buffer.append(chunk)

    def ended(self, complete: bool) -> None:
        if self._ended is not None:
            return
        self._ended = complete
        on_end, self._on_chunk, self._on_end = self._on_end, None, None
        if on_end is not None:
            on_end(complete)
