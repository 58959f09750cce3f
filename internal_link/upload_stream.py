"""A streamed request's body as its caller writes it (`request_streams.py`): bytes in as they come,
chunks out within the server's credit and only while the link has room.

The caller (the proxy, passing on a device's upload) stops reading its source when `write` says
the bytes did not all leave, and reads again when `when_room`'s callback is called: this end holds
about one read of the body per stream, however slow the link or the server.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .connection import LinkProtocol
from .protocol import ClientConnection
from .streams import STREAM_CHUNK


class UploadStream:
    """The body of call `call_id`, `total` bytes, written by its caller and sent by the link.

    `sent_all` is called once the last byte is queued (the call's deadline starts then), `fail`
    with a reason when the caller cuts the body short (the call fails with it).
    """

    __slots__ = ("_call_id", "_core", "_done", "_fail", "_link", "_pending", "_resume", "_sent_all", "_waiting")

    def __init__(
        self,
        link: LinkProtocol,
        core: ClientConnection[Any],
        call_id: int,
        sent_all: Callable[[], None],
        fail: Callable[[str], None],
    ) -> None:
        self._link = link
        self._core = core
        self._call_id = call_id
        self._sent_all = sent_all
        self._fail = fail
        self._pending: deque[memoryview] = deque()  # written, not yet sent
        self._resume: Callable[[], None] | None = None
        self._waiting = False  # the caller was told to wait for room
        self._done = False  # every byte sent, or the stream cut, cancelled or lost

    def when_room(self, resume: Callable[[], None]) -> None:
        """Call `resume` when bytes `write` kept back have left."""
        self._resume = resume

    def write(self, data: bytes) -> bool:
        """Send `data` as credit and the link allow; False: some is kept back, wait for `resume`."""
        if self._done:
            return False  # cancelled or lost: the call's answer (or its failure) follows
        self._pending.append(memoryview(data))
        while self.send_one():
            pass
        self._link.flush()
        if self._pending:
            self._waiting = True
            return False
        return True

    def send_one(self) -> bool:
        """Queue one chunk within the credit if the link has room; whether one was queued."""
        stream = self._core.sending.streams.get(self._call_id)
        link = self._link
        if not self._pending or stream is None or not stream.credit or link.flow.write_paused:
            return False
        if link.transport is None:
            return False
        piece = self._pending[0]
        size = min(len(piece), stream.credit, STREAM_CHUNK)
        self._core.sending.send(self._call_id, piece[:size])
        if size == len(piece):
            self._pending.popleft()
        else:
            self._pending[0] = piece[size:]
        if self._call_id not in self._core.sending.streams:
            self._done = True
            self._sent_all()
        if not self._pending and self._waiting:
            self._waiting = False
            if self._resume is not None:
                self._resume()
        return True

    def cut(self) -> None:
        """The body will not be whole (its source is gone): the server drops it, the call fails."""
        if self._done:
            return
        self._stop()
        self._core.sending.cut(self._call_id)
        self._link.queued()
        self._fail("upload cut short")

    def stopped(self) -> None:
        """The server cancelled the stream, or the link is gone: nothing more leaves."""
        self._stop()

    def _stop(self) -> None:
        self._done = True
        self._pending.clear()
        self._resume = None
