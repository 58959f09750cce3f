"""Streamed requests, no I/O: calls whose payload is too large for one frame (a device's large
result), sent client -> server as a head and chunks within the credit the server grants.

The same frames as a streamed answer (`streams.py`), the other way: the client sends
`[REQUEST_HEAD, call_id, method, meta, total]` then `total` bytes as `STREAM_DATA` chunks, a
window at once and then only what the server granted (`STREAM_CREDIT`); an empty chunk cuts the
stream short (the device left). The server may `STREAM_CANCEL` it (no room, or it is stopping),
answering the call with an error. Once every byte is in, the call is dispatched like any other,
its payload a `StreamedRequest` (ARCHITECTURE.md "Streamed requests").

`UploadLedger` bounds the bytes all of a server's connections are receiving; `Receiving` is a
server connection's table of streams coming in, `Sending` a client connection's going out. Both
queue frames through the function their connection gives them and raise `LinkProtocolError` for
a peer breaking the rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import ErrorCode, LinkProtocolError
from .frames import RESPONSE, STREAM_CANCEL, STREAM_CREDIT, STREAM_DATA
from .streams import Incoming, Outgoing

# Bytes a server's connections may be receiving at once unless told otherwise: past it, a new
# stream is refused (BUSY) rather than let uploads grow the leaf's memory without bound.
DEFAULT_MAX_RECEIVING = 256 * 1024 * 1024

Queue = Callable[[list[Any]], None]


class StreamedRequest(NamedTuple):
    """The payload of a call that came as a stream: the head's `meta` and the assembled `body`."""

    meta: Any
    body: bytes


class UploadLedger:
    """The bytes being received over every connection of one server, and what became of each stream.

    `outcomes` counts streams `started`, then `completed`, `cancelled` (the sender cut it short),
    `stopped` (the server cancelled it) or `lost` (its connection dropped); `refused` ones were
    never started (no room). Pure counting, shared by the connections.
    """

    __slots__ = ("held", "limit", "outcomes")

    def __init__(self, limit: int = DEFAULT_MAX_RECEIVING) -> None:
        self.limit = limit
        self.held = 0  # the totals of the streams being received
        self.outcomes: Counter[str] = Counter()

    def take(self, total: int) -> bool:
        if self.held + total > self.limit:
            self.outcomes["refused"] += 1
            return False
        self.held += total
        self.outcomes["started"] += 1
        return True

    def end(self, total: int, outcome: str) -> None:
        self.held -= total
        self.outcomes[outcome] += 1


class _Stream:
    """One stream coming in: its credit, and its body so far (None once cancelled)."""

    __slots__ = ("body", "flow", "meta", "method")

    def __init__(self, flow: Incoming, method: str, meta: Any) -> None:
        self.flow = flow
        self.method = method
        self.meta = meta
        self.body: list[bytes] | None = [] if not flow.cancelled else None


class Receiving:
    """A server connection's streamed requests coming in, by call id.

    A cancelled stream stays until its sender stops (all bytes in, or an empty chunk), so that the
    chunks already on their way are told apart from a peer sending on an unknown stream.
    """

    __slots__ = ("_ledger", "_queue", "streams")

    def __init__(self, ledger: UploadLedger, queue: Queue) -> None:
        self._ledger = ledger
        self._queue = queue
        self.streams: dict[int, _Stream] = {}

    def head(self, call_id: int, method: str, meta: Any, total: int) -> None:
        """A stream starts: taken if the ledger has room, else refused (BUSY) and cancelled."""
        if call_id in self.streams:
            raise LinkProtocolError(f"stream head for call {call_id}, which is streaming already")
        if self._ledger.take(total):
            self.streams[call_id] = _Stream(Incoming(total), method, meta)
            return
        self.streams[call_id] = _Stream(Incoming(total, cancelled=True), method, meta)
        self._queue([STREAM_CANCEL, call_id])
        text = f"no room to receive {total} more bytes now"
        self._queue([RESPONSE, call_id, int(ErrorCode.BUSY), text])

    def data(self, call_id: int, chunk: bytes) -> tuple[str, Any] | None:
        """Take a chunk; the (method, payload) of the call it completes, or None."""
        stream = self.streams.get(call_id)
        if stream is None:
            raise LinkProtocolError(f"stream data for call {call_id}, which has no open stream")
        flow = stream.flow
        if not chunk:  # cut short by the sender, or the end of a cancel
            del self.streams[call_id]
            if stream.body is not None:
                self._ledger.end(flow.total, "cancelled")
            return None
        if not flow.take(len(chunk)):
            raise LinkProtocolError(f"stream {call_id} sent past its credit")
        if stream.body is None:  # cancelled: dropped as it comes
            if flow.complete:
                del self.streams[call_id]
            return None
        stream.body.append(chunk)
        if not flow.complete:
            # Taken, so room for as much more: the ledger bounded the whole body at its head.
            if granted := flow.grantable(len(chunk)):
                self._queue([STREAM_CREDIT, call_id, granted])
            return None
        del self.streams[call_id]
        self._ledger.end(flow.total, "completed")
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        return stream.method, StreamedRequest(stream.meta, body)

    def stop_all(self, code: ErrorCode, text: str) -> int:
        """Cancel every stream still coming in and answer its call with `code`; how many."""
        stopped = 0
        for call_id, stream in self.streams.items():
            if stream.body is not None:
                stream.body = None
                stream.flow.cancelled = True
                self._ledger.end(stream.flow.total, "stopped")
                self._queue([STREAM_CANCEL, call_id])
                self._queue([RESPONSE, call_id, int(code), text])
                stopped += 1
        return stopped

    def drop_all(self) -> None:
        """The connection is gone: forget every stream, its bytes freed."""
        for stream in self.streams.values():
            if stream.body is not None:
                self._ledger.end(stream.flow.total, "lost")
        self.streams.clear()

    @property
    def receiving(self) -> int:
        """Streams with bytes still to come and a body being assembled."""
        return sum(1 for stream in self.streams.values() if stream.body is not None)


class Sending:
    """A client connection's streamed requests going out, by call id: the credit of each."""

    __slots__ = ("_issued", "_queue", "streams")

    def __init__(self, queue: Queue, issued: Callable[[int], bool]) -> None:
        self._queue = queue
        self._issued = issued  # whether a call id was ever used on this connection
        self.streams: dict[int, Outgoing] = {}

    def start(self, call_id: int, total: int) -> None:
        self.streams[call_id] = Outgoing(total)

    def send(self, call_id: int, chunk: bytes | memoryview) -> None:
        """Queue the next chunk (at most the stream's credit: `ValueError` otherwise)."""
        stream = self.streams[call_id]
        stream.sent(len(chunk))
        self._queue([STREAM_DATA, call_id, chunk])
        if not stream.left:
            del self.streams[call_id]

    def cut(self, call_id: int) -> None:
        """The body will not be whole (its device left): the server drops what it has."""
        if self.streams.pop(call_id, None) is not None:
            self._queue([STREAM_DATA, call_id, b""])

    def credit(self, call_id: int, nbytes: int) -> bool:
        """Credit from the server; whether it is for a stream still sending. Credit for one this
        end has cut or finished crossed its end on the way; anything else is a protocol error."""
        stream = self.streams.get(call_id)
        if stream is None:
            if self._issued(call_id):
                return False
            raise LinkProtocolError(f"credit for stream {call_id}, which this end never started")
        if not stream.grant(nbytes):
            raise LinkProtocolError(f"credit of {nbytes} bytes for stream {call_id} past its end")
        return True

    def cancelled(self, call_id: int) -> bool:
        """The server wants no more (its answer says why); whether the stream was still sending."""
        if self.streams.pop(call_id, None) is not None:
            self._queue([STREAM_DATA, call_id, b""])  # its end, acknowledging the cancel
            return True
        if not self._issued(call_id):
            raise LinkProtocolError(f"cancel of stream {call_id}, which this end never started")
        return False
