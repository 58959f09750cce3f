"""One live session on the proxy: the device's socket, `websockets`' sans-I/O core, and the relay of
whole messages to the leaf that owns the device (and of the leaf's answers and pushes back).

The proxy parses no message: it assembles frames into messages (the core checks the framing and
the size), sends each message's payload to the leaf, and writes back what the leaf says to, in a
text frame for JSON sessions and a binary frame for msgpack ones (PROTOCOL.md §9).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from internal_link.errors import LinkError, RemoteError
from internal_link.sessions import KEEP_OPEN, SESSION_CLOSED, SESSION_MESSAGE, SESSION_OPEN, SessionOpen, SessionReply

if TYPE_CHECKING:
    from ..upstreams import Upstream

logger = logging.getLogger(__name__)

INTERNAL_ERROR = 1011  # RFC 6455 §7.4.1
SERVICE_RESTART = 1012  # the leaf went away: reconnect, the proxy routes to a live one
# Messages a session may have at its leaf unanswered before the proxy stops reading its socket.
MAX_IN_FLIGHT = 4
# Seconds the device gets to answer our close frame before the socket is cut (RFC 6455 §7.1.1).
CLOSE_TIMEOUT = 5.0

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

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
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
        if self.upstream.client.connected:
            try:
                future = self.upstream.client.send(SESSION_CLOSED, [self.hub, self.number], self._timeout)
            except LinkError:
                return  # the leaf finds the session silent instead
            future.add_done_callback(_ignore_outcome)

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
            self._set_reading(False)
            task = asyncio.get_running_loop().create_task(self._send_backlog())
            _waiting_for_room.add(task)
            task.add_done_callback(_waiting_for_room.discard)
            return
        self._in_flight += 1
        if self._in_flight >= MAX_IN_FLIGHT:
            self._set_reading(False)
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

    def _set_reading(self, reading: bool) -> None:
        if self._transport is not None and reading != self._reading:
            self._reading = reading
            if reading:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def _answered(self, future: asyncio.Future[Any]) -> None:
        self._in_flight -= 1
        if self._in_flight < MAX_IN_FLIGHT and not self._backlog:
            self._set_reading(True)
        try:
            reply = SessionReply.check(future.result())
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
        for message in messages:
            if self._binary:
                self._ws.send_binary(message)
            else:
                self._ws.send_text(message)
        if close != KEEP_OPEN:
            self.close(close)
        else:
            self._flush()

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
        for data in self._ws.data_to_send():
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
