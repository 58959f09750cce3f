"""A request body passed on to its leaf as it arrives, instead of held whole (issue 10).

A body above `STREAM_THRESHOLD` with its length announced is dispatched from its head, as an
`UploadRequest`: the dispatcher attaches the sink the bytes go to (a streamed request on the
link). Each read goes to the sink; when the sink keeps some back (no credit from the leaf yet, or
a congested link), reading the device stops until it has room. So the proxy holds about one read
per upload, however large the body and however slow the leaf (ARCHITECTURE.md "Streamed requests").
"""

from __future__ import annotations

from internal_link.flow_control import FlowControl
from internal_link.streams import STREAM_WINDOW

from .messages import BodySink
from .state import Hold

# What an upload holds of the body budget: one read (256 KiB in asyncio and uvloop) waiting for
# room before reading stops.
HELD = STREAM_WINDOW


class UploadBody:
    """The body of one request, `length` bytes, from the device's reads to a sink."""

    __slots__ = ("_cut", "_flow", "_pending", "_sink", "length", "received")

    def __init__(self, flow: FlowControl, length: int) -> None:
        self._flow = flow
        self.length = length
        self.received = 0
        self._sink: BodySink | None = None
        self._pending: list[bytes] = []  # read before a sink was attached
        self._cut = False

    @property
    def complete(self) -> bool:
        return self.received == self.length

    def attach(self, sink: BodySink) -> None:
        """Send the body to `sink`: what arrived so far now, the rest as it comes."""
        if self._cut:
            sink.cut()
            return
        self._sink = sink
        sink.when_room(self._room)
        pending, self._pending = self._pending, []
        if pending:
            self._flow.resume_reading(Hold.UPLOAD_ROOM)  # paused while there was no sink
        for data in pending:
            self._write(sink, data)

    def feed(self, data: bytes) -> None:
        """Bytes of the body as the device sent them."""
        self.received += len(data)
        if self._cut:
            return  # answered already: read only to be discarded
        if self._sink is None:
            self._pending.append(data)
            self._flow.pause_reading(Hold.UPLOAD_ROOM)
        else:
            self._write(self._sink, data)

    def cut(self) -> None:
        """The body will not be whole (the device left, or was answered first): the leaf drops it."""
        if self._cut:
            return
        self._cut = True
        self._pending.clear()
        self._flow.resume_reading(Hold.UPLOAD_ROOM)
        if self._sink is not None and not self.complete:
            self._sink.cut()

    def _write(self, sink: BodySink, data: bytes) -> None:
        if not sink.write(data):
            self._flow.pause_reading(Hold.UPLOAD_ROOM)

    def _room(self) -> None:
        self._flow.resume_reading(Hold.UPLOAD_ROOM)
