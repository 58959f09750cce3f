"""The accepting end of the link's asyncio shell: `LinkServer` serves handlers on one port."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import os
import ssl as ssl_module
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .connection import LinkProtocol, channel_binding
from .errors import CallRefused, ErrorCode, LinkProtocolError
from .events import CallReceived, CreditGranted, StreamCancelled
from .frames import DEFAULT_MAX_FRAME, NONCE_SIZE
from .protocol import HANDSHAKE_TIMEOUT, ServerConnection
from .request_streams import DEFAULT_MAX_RECEIVING, UploadLedger
from .streams import STREAM_CHUNK, Streamed, chunk_at

logger = logging.getLogger(__name__)

# A handler answers at once (a plain value) or later (an awaitable): most proxy requests need no task.
Handler = Callable[[Any], Any]

# The drain of the link a handler's call came on, for its task (tasks copy the context they start in).
_ANSWER_ROOM: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar(
    "answer_room", default=None
)


async def answer_room() -> None:
    """For a handler's task about to build a large answer: wait until the link its call came on has
    room, so that answers held back by a slow peer are built as they can leave, not all at once."""
    drain = _ANSWER_ROOM.get()
    if drain is not None:
        await drain()


# Answers are written as they are made once this many bytes wait, not at the end of the loop turn,
# so that a congested link holds further calls instead of their (possibly model-sized) answers.
WRITE_NOW_BYTES = 256 * 1024


class _ServerProtocol(LinkProtocol):
    core: ServerConnection

    def __init__(self, server: LinkServer) -> None:
        super().__init__(server.refusals)
        self.server = server
        self._auth_timer: asyncio.TimerHandle | None = None
        # Calls taken while the peer does not read our answers: handled in order as it does. Each is
        # a few hundred bytes, where its answer may be a 6 MB model: memory stays with the calls.
        self._held: collections.deque[CallReceived] = collections.deque()
        # Streamed answers with bytes left to send, by call id: their parts and the next byte's offset.
        self._sending: dict[int, tuple[Streamed, list[int]]] = {}

    @property
    def authenticated(self) -> bool:
        return self.core.open

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self.server
        self.core = ServerConnection(
            server.secret, os.urandom(NONCE_SIZE), server.max_frame, channel_binding(transport), server.uploads
        )
        server.links.add(self)
        self.queued()  # the hello
        self._auth_timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self.abort, "no auth within the handshake timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server.links.discard(self)
        self.server.streams["lost"] += len(self._sending)
        self._sending.clear()
        self.core.receiving.drop_all()  # the bytes of requests that will never be whole
        if self._auth_timer is not None:
            self._auth_timer.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.core.receive_data(data)
        except LinkProtocolError as exc:
            self.refuse(exc)
            return
        credit = False
        for event in events:
            if type(event) is CallReceived:
                if self._held or self.flow.write_paused:
                    self._held.append(event)
                else:
                    self._take(event)
            elif type(event) is CreditGranted:
                credit = True
            elif type(event) is StreamCancelled:
                # The device left mid-download: its bytes stop here (the core acknowledged).
                if self._sending.pop(event.call_id, None) is not None:
                    self.server.streams["cancelled"] += 1
                self.queued()
            else:  # Accepted: the client proved the secret
                if self._auth_timer is not None:
                    self._auth_timer.cancel()
                self.queued()
        if credit:
            self._pump()
        if self.core.queued_bytes and not self.flush_scheduled:
            self.queued()  # credit for streamed requests, or a refusal of one

    def resume_writing(self) -> None:
        super().resume_writing()
        # Calls first: a control call or a small answer never waits behind a stream's chunks.
        while self._held and not self.flow.write_paused and self.transport is not None:
            self._take(self._held.popleft())
        self._pump()

    def _pump(self) -> None:
        """Send streams' chunks, one per stream in turn, within their credit, while the link has room."""
        core = self.core
        while self._sending and not self.flow.write_paused and self.transport is not None:
            sent = False
            for call_id, (answer, offset) in list(self._sending.items()):
                credit = core.streams[call_id].credit
                if credit <= 0:
                    continue
                chunk = chunk_at(answer.parts, offset[0], min(credit, STREAM_CHUNK))
                core.send_chunk(call_id, chunk)
                offset[0] += len(chunk)
                sent = True
                if call_id not in core.streams:
                    del self._sending[call_id]
                    self.server.streams["completed"] += 1
            if not sent:
                return  # every stream waits for credit
            self.flush()  # may pause writing: the rest waits for the peer to read

    def _take(self, call: CallReceived) -> None:
        self._call_received(call)
        if self.core.queued_bytes >= WRITE_NOW_BYTES:
            self.flush()  # may pause writing: the calls after this one wait for the peer to read

    def _call_received(self, call: CallReceived) -> None:
        if self.server.closing:
            return  # the link drops in a moment and the caller retries the call elsewhere
        handler = self.server.handlers.get(call.method)
        if handler is None:
            self._send_error(call, ErrorCode.UNKNOWN_METHOD, f"unknown method {call.method!r}")
            return
        room = _ANSWER_ROOM.set(self.drain)  # seen by the handler and the task it may need
        try:
            outcome = handler(call.payload)
            if isinstance(outcome, Awaitable):
                task = self.loop.create_task(self._answer_later(call, outcome))
                self.server.tasks.add(task)
                task.add_done_callback(self.server.tasks.discard)
                return
        except Exception as exc:
            self._send_failure(call, exc)
            return
        finally:
            _ANSWER_ROOM.reset(room)
        if type(outcome) is Streamed:
            self._start_stream(call, outcome)
            return
        # Answered without waiting: no task, the frame leaves with this turn's others.
        try:
            self.core.send_result(call.call_id, outcome)
        except Exception as exc:  # not packable
            self._send_failure(call, exc)
            return
        if not self.flush_scheduled:
            self.queued()

    async def _answer_later(self, call: CallReceived, outcome: Awaitable[Any]) -> None:
        try:
            result = await outcome
        except Exception as exc:
            failed: Exception | None = exc
        else:
            failed = None
        await self.drain()  # re-checked after every wake-up: answers that were waiting go one by one
        if failed is None:
            self._send_result(call, result)
        else:
            self._send_failure(call, failed)

    def _send_result(self, call: CallReceived, result: Any) -> None:
        if type(result) is Streamed:
            self._start_stream(call, result)
            return
        try:
            self.core.send_result(call.call_id, result)
        except Exception as exc:  # not packable
            self._send_failure(call, exc)
            return
        if self.core.queued_bytes >= WRITE_NOW_BYTES:
            self.flush()
        else:
            self.queued()

    def _start_stream(self, call: CallReceived, answer: Streamed) -> None:
        try:
            self.core.start_stream(call.call_id, answer.meta, answer.nbytes)
        except Exception as exc:  # meta not packable
            self._send_failure(call, exc)
            return
        self.server.streams["started"] += 1
        if call.call_id in self.core.streams:
            self._sending[call.call_id] = (answer, [0])
        else:
            self.server.streams["completed"] += 1  # no bytes to send
        self.queued()
        self._pump()

    def _send_failure(self, call: CallReceived, exc: Exception) -> None:
        # A handler error is an answer, never a dropped link.
        logger.debug("handler %r failed", call.method, exc_info=exc)
        if isinstance(exc, CallRefused):
            self._send_error(call, exc.code, exc.text)
        else:
            self._send_error(call, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    def _send_error(self, call: CallReceived, code: ErrorCode, text: str) -> None:
        self.core.send_error(call.call_id, code, text)
        self.queued()


class LinkServer:
    """Serves `handlers` (method name → callable of the payload) on one port.

    A handler returning an awaitable is awaited in a task of its own; a plain value is the answer.
    A handler raising `CallRefused` answers with its code; any other exception with `INTERNAL`.
    `refusals` counts the connections dropped for breaking the protocol, by reason (`wrong_secret`,
    `tampered_frame`, `protocol_error`). A handler answering `Streamed` sends a stream
    (`streams.py`); `streams` counts them: started, then completed, cancelled or lost (link gone).
    A call may come as a streamed request (`request_streams.py`): its handler gets a
    `StreamedRequest` once the last byte is in; `uploads` bounds the bytes being received at
    `max_receiving` and counts what became of each stream.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        secret: bytes = b"",
        *,
        ssl: ssl_module.SSLContext | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_receiving: int = DEFAULT_MAX_RECEIVING,
    ) -> None:
        self.handlers = handlers
        self.secret = secret
        self.max_frame = max_frame
        self.links: set[_ServerProtocol] = set()
        self.refusals: Counter[str] = Counter()
        self.streams: Counter[str] = Counter()
        self.uploads = UploadLedger(max_receiving)
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._ssl = ssl
        self._server: asyncio.Server | None = None

    @property
    def open_streams(self) -> int:
        """Streamed answers with bytes left to send, over every link."""
        return sum(len(link._sending) for link in self.links)

    @property
    def open_uploads(self) -> int:
        """Streamed requests being received, over every link."""
        return sum(link.core.receiving.receiving for link in self.links)

    async def start(self, host: str, port: int) -> int:
        """Listen on (host, port) and return the bound port; port 0 picks a free one."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerProtocol(self), host, port, ssl=self._ssl, reuse_address=True
        )
        port_bound: int = self._server.sockets[0].getsockname()[1]
        return port_bound

    async def close(self, grace: float = 0.0) -> None:
        """Stop listening, give in-flight handlers up to `grace` seconds, then drop every link."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for link in self.links:
            # Streamed requests will not be whole in time: their callers hear now, and send elsewhere.
            if link.core.receiving.stop_all(ErrorCode.SHUTTING_DOWN, "the leaf is stopping"):
                link.queued()
        if grace > 0 and self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
        # One turn so that every handler task has started: a task cancelled before its first step
        # never awaits the handler coroutine it was given (a 'never awaited' warning, and a leaf
        # whose busy count never comes down).
        await asyncio.sleep(0)
        for task in list(self.tasks):
            task.cancel()
        for link in list(self.links):
            if link.transport is not None:
                link.flush()  # answers of handlers that finished within the grace
                link.transport.close()
        waiting = [link.closed for link in self.links] + list(self.tasks)
        if waiting:
            await asyncio.wait(waiting, timeout=5.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
