"""One device connection: parse with llhttp (httptools), enforce the limits while reading, dispatch
one request at a time and write the answers back in request order.

It knows nothing about FEG: the dispatcher decides every answer except the ones about HTTP itself,
which are JSON like the rest (PROTOCOL.md §3, ours).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from internal_link.flow_control import FlowControl

from .messages import Reply, Request, Response, invalid_request, json_error, origin_form, response_head
from .state import SLOW_MESSAGES, Deadline, Hold, Incoming

if TYPE_CHECKING:
    from .server import HttpServer

logger = logging.getLogger(__name__)

# Read at most this much past a refused request before closing, so the client sees the answer
# instead of a reset (the kernel resets a socket closed with unread data).
_LINGER_SECONDS = 2.0
# Complete requests queued behind the one in flight before reading stops (pipelining clients).
_MAX_QUEUED = 8
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing and answer with `response`."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class HttpConnection(asyncio.Protocol):
    """One device connection: parse, queue, dispatch one request at a time, answer in order."""

    _flow: FlowControl  # from connection_made on

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.deadline = float("inf")
        self._on_deadline = Deadline.CLOSE
        self._parser = httptools.HttpRequestParser(self)
        self._incoming: Incoming | None = None
        self._waiting_for_memory = False
        # Parsed requests (or ready answers to refused ones) in arrival order, with keep-alive.
        self._queue: deque[tuple[Request | Response, bool]] = deque()
        self._in_flight = False
        self._closing = False
        self._upgraded = False
        self._began_here = False
        self._peer_done = False  # the client half-closed: answer what it sent, then close

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._flow = FlowControl(self.transport)
        self.server.connections.add(self)
        # A connection that never sends a request is closed like an idle one, only sooner.
        self._arm(self.limits.head_timeout, Deadline.CLOSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.waiting_for_memory.discard(self)
        self._drop_body()
        self._flow.connection_lost()
        self.transport = None
        self._queue.clear()

    def eof_received(self) -> bool:
        """A client may shut its sending side once its request is out (HTTP/1.0 scripts, `nc -N`):
        the requests it completed are still answered, then the connection closes."""
        if self._incoming is not None:  # a request it can no longer finish
            self._drop_body()
            self._incoming = None
        tls = self.transport is not None and self.transport.get_extra_info("sslcontext") is not None
        if self._closing or self._idle() or tls:  # TLS cannot stay half-open
            return False  # the transport closes
        self._peer_done = True
        return True

    def data_received(self, data: bytes) -> None:
        if self._closing or self._upgraded:
            return  # lingering after the last answer: discard
        self._began_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, _Refused):
                raise
            self._refuse(refused.response)
            return
        except httptools.HttpParserUpgrade:
            # Answered as plain HTTP (allowed: the Upgrade header may be ignored); what follows
            # would be another protocol, so nothing more is read and the connection closes.
            self._upgraded = True
            self._flow.pause_reading(Hold.STOPPED)
            if self._idle():
                self._close_after_write()  # its answer is already out
            return
        except httptools.HttpParserError as exc:
            self._refuse(invalid_request(400, f"malformed HTTP request: {_reason(exc)}"))
            return
        incoming = self._incoming
        if incoming is not None and not incoming.headers_done and not self._began_here:
            # httptools buffers an unfinished header line: bound it by the bytes fed meanwhile.
            incoming.head_bytes += len(data)
            if incoming.head_bytes > self.limits.max_head_bytes:
                self._refuse(self._head_too_large())

    def pause_writing(self) -> None:
        self._flow.pause_writing()
        self._flow.pause_reading(Hold.UNREAD_ANSWERS)
        self._arm(self.limits.send_timeout, Deadline.ABORT)

    def resume_writing(self) -> None:
        self._flow.resume_writing()
        if not self._idle():
            self._flow.pause_reading(Hold.BACKLOG)  # more requests once the client caught up
        self._flow.resume_reading(Hold.UNREAD_ANSWERS)
        self._arm_for_state()
        self._next()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._began_here = True
        self._incoming = Incoming()
        if self._idle():
            self._arm(self.limits.head_timeout, Deadline.SLOW_HEAD)

    def on_url(self, url: bytes) -> None:
        incoming = self._parsing()
        incoming.target += url
        incoming.head_bytes += len(url)
        if incoming.head_bytes > self.limits.max_head_bytes:
            raise _Refused(self._head_too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        incoming = self._parsing()
        incoming.header_count += 1
        if incoming.header_count > self.limits.max_headers:
            raise _Refused(invalid_request(431, f"more than {self.limits.max_headers} header fields"))
        incoming.head_bytes += len(name) + len(value)
        if incoming.head_bytes > self.limits.max_head_bytes:
            raise _Refused(self._head_too_large())
        incoming.headers.setdefault(name.lower(), value)

    def on_headers_complete(self) -> None:
        incoming = self._parsing()
        incoming.headers_done = True
        if self._parser.get_http_version() not in ("1.1", "1.0"):
            raise _Refused(
                invalid_request(505, f"HTTP/{self._parser.get_http_version()} is not supported; use HTTP/1.1")
            )
        limits = self.limits
        incoming.path, _, incoming.query = origin_form(incoming.target).partition(b"?")
        upload = incoming.path in limits.upload_paths
        incoming.body_limit = limits.max_body_bytes if upload else limits.max_other_body_bytes
        length = incoming.headers.get(b"content-length")
        # llhttp has checked that it is a number.
        if length is not None and int(length) > incoming.body_limit:
            raise _Refused(_body_too_large(incoming))
        if self._idle():
            self._arm(limits.body_timeout, Deadline.SLOW_BODY)
            # Only when nothing is owed before it: a 100 must not land inside an earlier answer.
            if incoming.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        incoming = self._parsing()
        incoming.body_bytes += len(body)
        if incoming.body_bytes > incoming.body_limit:
            raise _Refused(_body_too_large(incoming))
        incoming.body.append(body)
        server = self.server
        incoming.buffered += len(body)
        server.buffered_bytes += len(body)
        if server.buffered_bytes > self.limits.max_buffered_bytes and not self._waiting_for_memory:
            self._waiting_for_memory = True
            server.waiting_for_memory.add(self)
            self._flow.pause_reading(Hold.MEMORY)

    def on_message_complete(self) -> None:
        incoming = self._parsing()
        body = incoming.body[0] if len(incoming.body) == 1 else b"".join(incoming.body)
        request = Request(
            self._parser.get_method().decode("ascii"), incoming.path, incoming.query, incoming.headers, body
        )
        self._drop_body()  # handed on: the link and the leaf bound it from here
        self._incoming = None
        self._queue.append((request, self._parser.should_keep_alive()))
        if len(self._queue) > _MAX_QUEUED:
            self._flow.pause_reading(Hold.BACKLOG)
        self._next()

    def _parsing(self) -> Incoming:
        incoming = self._incoming
        assert incoming is not None, "httptools calls back only inside a message"
        return incoming

    def resume_after_memory(self) -> None:
        self._waiting_for_memory = False
        self._flow.resume_reading(Hold.MEMORY)

    def _drop_body(self) -> None:
        """The body in progress no longer counts against the server's buffer budget."""
        if self._incoming is not None:
            self.server.buffered_bytes -= self._incoming.buffered
            self._incoming.buffered = 0

    def _head_too_large(self) -> Response:
        return invalid_request(431, f"request head larger than {self.limits.max_head_bytes} bytes")

    # The answers, in order

    def _idle(self) -> bool:
        return not self._in_flight and not self._queue

    def _next(self) -> None:
        """Dispatch queued requests while nothing is in flight and the client reads its answers."""
        while (
            not self._in_flight
            and self._queue
            and not self._flow.write_paused
            and not self._closing
            and self.transport is not None
        ):
            item, keep_alive = self._queue.popleft()
            if isinstance(item, Response):
                self._write(item, head_only=False, keep_alive=False)
                return
            self._in_flight = True
            self._arm(float("inf"), Deadline.CLOSE)  # the dispatcher answers within its own deadline
            reply = self._replier(item.method == "HEAD", keep_alive)
            try:
                self.server.dispatch(item, reply)
            except Exception:
                logger.exception("dispatcher failed on %s %.200r", item.method, item.path)
                if self._in_flight:
                    reply(json_error(500, "ERROR", "Internal Server Error", close=True))
                return
        if self._idle():
            self._flow.resume_reading(Hold.BACKLOG)

    def _replier(self, head_only: bool, keep_alive: bool) -> Reply:
        answered = False

        def reply(response: Response) -> None:
            nonlocal answered
            if answered:
                raise RuntimeError("a request was answered twice")
            answered = True
            self._in_flight = False
            if self.transport is None:
                return  # the device left; nothing to write to
            last = (self._upgraded or self._peer_done) and not self._queue
            again = keep_alive and not response.close and not self.server.draining and not last
            self._write(response, head_only, again)
            self._next()

        return reply

    def _write(self, response: Response, head_only: bool, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        head = response_head(response, self.server.clock.date, keep_alive)
        if head_only or not response.body:
            transport.write(head)
        else:
            transport.writelines((head, response.body))  # scattered where the loop can: no copy
        if keep_alive:
            self._arm_for_state()
        else:
            self._close_after_write()

    def _refuse(self, response: Response) -> None:
        """Stop reading this connection; answer `response` after the answers already owed."""
        self._flow.pause_reading(Hold.STOPPED)
        self._drop_body()
        self._incoming = None
        self._queue.append((response, False))
        self._next()

    def _close_after_write(self) -> None:
        transport = self.transport
        if transport is None or self._closing:
            return
        self._closing = True
        self._queue.clear()
        if transport.can_write_eof() and not self._peer_done:
            # Half-close and read (discarding) a moment longer: see _LINGER_SECONDS.
            transport.write_eof()
            self._flow.resume_reading_regardless()
            self._arm(_LINGER_SECONDS, Deadline.ABORT)
        else:
            transport.close()

    # Deadlines and shutdown

    def _arm(self, seconds: float, action: Deadline) -> None:
        self.deadline = self.loop.time() + seconds
        self._on_deadline = action

    def _arm_for_state(self) -> None:
        """The deadline that fits once nothing is owed: the partial request's, or idleness'."""
        if self._flow.write_paused or not self._idle():
            return
        incoming = self._incoming
        if incoming is None:
            self._arm(self.limits.keepalive_timeout, Deadline.CLOSE)
        elif incoming.headers_done:
            self._arm(self.limits.body_timeout, Deadline.SLOW_BODY)
        else:
            self._arm(self.limits.head_timeout, Deadline.SLOW_HEAD)

    def deadline_passed(self) -> None:
        action = self._on_deadline
        self._arm(float("inf"), Deadline.CLOSE)
        if action is Deadline.CLOSE:
            self.close_if_idle()
        elif action is Deadline.ABORT:
            self.abort()
        else:
            logger.debug("closing a slow connection: %s", SLOW_MESSAGES[action])
            self._refuse(invalid_request(408, SLOW_MESSAGES[action]))

    def close_if_idle(self) -> None:
        if self.transport is not None and self._idle() and self._incoming is None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _body_too_large(incoming: Incoming) -> Response:
    return invalid_request(413, f"request body larger than {incoming.body_limit} bytes")


def _reason(exc: httptools.HttpParserError) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
