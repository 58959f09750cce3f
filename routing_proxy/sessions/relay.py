"""One live session on the proxy: the device's socket, `websockets`' sans-I/O core, and the relay of
whole messages to the leaf that owns the device (and of the leaf's answers and pushes back).

The proxy parses no message: it assembles frames into messages (the core checks the framing and
the size), sends each message's payload to the leaf, and writes back what the leaf says to, in a
text frame for JSON sessions and a binary frame for msgpack ones (PROTOCOL.md §9).

A large reply (a `task` with its model) comes as a link stream: its frame's head is written at
once with the whole length, then its payload as the chunks arrive, more granted only as the
device's socket drains, so the proxy holds about a window per session however slow the phone.
Frames cannot interleave: whatever else is to be written (later replies, pushes, the core's pongs
and close) waits behind it, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from internal_link.answer_stream import AnswerStream
from internal_link.errors import LinkError, RemoteError
from internal_link.flow_control import FlowControl
from internal_link.sessions import (
    KEEP_OPEN,
    SESSION_CLOSED,
    SESSION_MESSAGE,
    SESSION_OPEN,
    SessionOpen,
    SessionReply,
    streamed_session_head,
)

from ..http1.streamed_body import StreamedBody
from .frame_head import data_frame_head

if TYPE_CHECKING:
    from ..upstreams import Upstream

logger = logging.getLogger(__name__)

INTERNAL_ERROR = 1011  # RFC 6455 §7.4.1
SERVICE_RESTART = 1012  # the leaf went away: reconnect, the proxy routes to a live one
# Messages a session may have at its leaf unanswered before the proxy stops reading its socket.
MAX_IN_FLIGHT = 4
# Seconds the device gets to answer our close frame before the socket is cut (RFC 6455 §7.1.1).
CLOSE_TIMEOUT = 5.0
# Seconds a streamed message may go without a chunk written before the socket is cut: a device that
# stopped reading (or a leaf that stopped sending) would otherwise hold its window for ever.
STALL_TIMEOUT = 60.0
# Bytes of the core's own output (pongs, a close) held behind a streamed frame before the device's
# socket is not read: a device sending pings while not reading cannot grow them without bound.
MAX_HELD_BYTES = 16 * 1024

# Tasks of sessions waiting for room on a congested link, held so that they are not collected.
_waiting_for_room: set[asyncio.Task[None]] = set()


class SessionRelay(asyncio.Protocol):
    """A device's WebSocket, relayed message by message to its leaf over the shared link."""

    def __init__(
        self,
        hub: str,
        number: int,
        upstream: Upstream,
        protocol: ServerProtocol,
        opened: SessionOpen,
        timeout: float,
        forget: Callable[[SessionRelay], None],
    ) -> None:
        self.hub = hub
        self.number = number
        self.upstream = upstream
        self._ws = protocol
        self._binary = opened.codec == "msgpack"
        self._opened = opened
        self._timeout = timeout
        self._forget = forget
        self._transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        self._backlog: deque[tuple[str, Any]] = deque()  # messages waiting for room on the link
        self._in_flight = 0
        self._reading = True
        self._closing = False
        self._cut_armed = False
        self._flow: FlowControl | None = None
        self._body: StreamedBody | None = None  # a streamed message being written: nothing else may be
        self._behind: deque[SessionReply | tuple[SessionReply, AnswerStream]] = deque()  # waiting for it
        self._stall: asyncio.TimerHandle | None = None
        self._held: list[bytes] = []  # the core's output while a frame is being written
        self._held_bytes = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._flow = FlowControl(self._transport)
        self._flush()  # the 101 the handshake queued
        self._call(SESSION_OPEN, self._opened)

    def data_received(self, data: bytes) -> None:
        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def eof_received(self) -> bool:
        self._ws.receive_eof()
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._forget(self)
        if self._flow is not None:
            self._flow.connection_lost()
        self._drop_streams()  # the leaf stops sending what nobody will read
        if self.upstream.client.connected:
            try:
                future = self.upstream.client.send(SESSION_CLOSED, [self.hub, self.number], self._timeout)
            except LinkError:
                return  # the leaf finds the session silent instead
            future.add_done_callback(_ignore_outcome)

    def pause_writing(self) -> None:
        if self._flow is not None:
            self._flow.pause_writing()

    def resume_writing(self) -> None:
        if self._flow is not None:
            self._flow.resume_writing()
        if self._body is not None:
            self._body.resume()  # the device read: the leaf may send what it is owed

    # messages in

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                message = b"".join(self._fragments)
                self._fragments = []
                self._call(SESSION_MESSAGE, [self.hub, self.number, message])
        # Ping, pong and close are answered by the core itself.

    def _call(self, method: str, payload: Any) -> None:
        if self._closing:
            return
        if self._backlog:  # behind messages waiting for room on the link: in order
            self._backlog.append((method, payload))
            return
        try:
            future = self.upstream.client.send(method, payload, self._timeout)
        except LinkError:
            if not self.upstream.client.connected:
                self.close(SERVICE_RESTART, "gateway unavailable")
                return
            # Congested (a large upload leaving): wait for room, reading nothing more meanwhile.
            self._backlog.append((method, payload))
            self._update_reading()
            task = asyncio.get_running_loop().create_task(self._send_backlog())
            _waiting_for_room.add(task)
            task.add_done_callback(_waiting_for_room.discard)
            return
        self._in_flight += 1
        self._update_reading()
        future.add_done_callback(self._answered)

    async def _send_backlog(self) -> None:
        loop = asyncio.get_running_loop()
        while self._backlog and not self._closing:
            method, payload = self._backlog.popleft()
            answer: asyncio.Future[Any] = loop.create_future()
            self._in_flight += 1
            try:
                answer.set_result(await self.upstream.client.call(method, payload, self._timeout))
            except LinkError as exc:
                answer.set_exception(exc)
            self._answered(answer)
        self._backlog.clear()

    def _update_reading(self) -> None:
        # Unread while messages wait for the link, or answers for the device: both stay bounded.
        self._set_reading(
            self._in_flight < MAX_IN_FLIGHT
            and not self._backlog
            and len(self._behind) < MAX_IN_FLIGHT
            and self._held_bytes < MAX_HELD_BYTES
        )

    def _set_reading(self, reading: bool) -> None:
        if self._transport is not None and reading != self._reading:
            self._reading = reading
            if reading:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def _answered(self, future: asyncio.Future[Any]) -> None:
        self._in_flight -= 1
        self._update_reading()
        try:
            result = future.result()
            if type(result) is AnswerStream:
                self._queue_stream(result)
                return
            reply = SessionReply.check(result)
        except RemoteError as exc:
            logger.error("leaf %s failed on a session message: %s", self.upstream.leaf.name, exc)
            self.close(INTERNAL_ERROR, "gateway error")
            return
        except LinkError as exc:
            logger.info("leaf %s: session %d lost its leaf: %s", self.upstream.leaf.name, self.number, exc)
            self.close(SERVICE_RESTART, "gateway unavailable")
            return
        self.send(reply.messages, reply.close)

    # messages out

    def send(self, messages: list[bytes], close: int = KEEP_OPEN) -> None:
        """Write the leaf's messages in order, then close with `close` unless KEEP_OPEN."""
        if self._transport is None or self._closing:
            return
        if self._body is not None or self._behind:
            self._behind.append(SessionReply(messages, close))
            self._update_reading()
            return
        self._send_now(messages, close)

    def _send_now(self, messages: list[bytes], close: int) -> None:
        for message in messages:
            if self._binary:
                self._ws.send_binary(message)
            else:
                self._ws.send_text(message)
        if close != KEEP_OPEN:
            self.close(close)
        else:
            self._flush()

    def _queue_stream(self, stream: AnswerStream) -> None:
        try:
            head = streamed_session_head(stream.meta)
        except LinkError as exc:  # a malformed head: the leaf is broken
            stream.cancel()
            logger.error("leaf %s sent a bad session stream: %s", self.upstream.leaf.name, exc)
            self.close(INTERNAL_ERROR, "gateway error")
            return
        if self._transport is None or self._closing:
            stream.cancel()
        elif self._body is not None or self._behind:
            self._behind.append((head, stream))
            self._update_reading()
        else:
            self._start_stream(head, stream)

    def _start_stream(self, head: SessionReply, stream: AnswerStream) -> None:
        """The messages before the streamed one, its frame's head, then its payload as it comes."""
        transport, flow = self._transport, self._flow
        assert transport is not None and flow is not None  # checked by the callers
        self._send_now(head.messages, KEEP_OPEN)
        transport.write(data_frame_head(stream.total, self._binary))
        self._body = StreamedBody(transport, flow, stream, self._moved, lambda complete: self._streamed(complete, head))
        self._moved(0)
        self._body.start()

    def _moved(self, nbytes: int) -> None:
        if self._stall is not None:
            self._stall.cancel()
        self._stall = asyncio.get_running_loop().call_later(STALL_TIMEOUT, self._abort)

    def _streamed(self, complete: bool, head: SessionReply) -> None:
        self._body = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if not complete:
            # Cut short (link lost, leaf gone): a dropped socket, never a short frame that looks whole.
            self._drop_streams()
            self._abort()
            return
        if head.close != KEEP_OPEN:
            self.close(head.close)
        self._flush()  # what the core queued meanwhile (pongs, a close)
        while self._behind and self._body is None and not self._closing:
            item = self._behind.popleft()
            if isinstance(item, SessionReply):
                self._send_now(item.messages, item.close)
            else:
                self._start_stream(*item)
        if self._closing:
            self._drop_streams()
        self._update_reading()

    def _drop_streams(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.cancel()
        for item in self._behind:
            if not isinstance(item, SessionReply):
                item[1].cancel()
        self._behind.clear()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; the socket is cut if the device does not finish it."""
        if self._transport is None or self._closing:
            return
        self._closing = True
        try:
            self._ws.send_close(code, reason)
        except Exception:  # the core is closing already (the device sent its close first)
            pass
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._body is not None:  # mid-frame: the core's output waits for its end
            for data in self._ws.data_to_send():
                self._held.append(data)
                self._held_bytes += len(data)
            self._update_reading()
            return
        held, self._held, self._held_bytes = self._held, [], 0
        for data in held + self._ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()  # the core's end of stream: half-close
            else:
                transport.close()
        if not self._cut_armed and self._ws.close_expected():
            self._cut_armed = True
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a lost close is found by the leaf's silence check
