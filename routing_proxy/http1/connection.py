"""The device-facing HTTP/1.1 server: llhttp parsing (httptools), limits, timeouts, keep-alive.

A connection parses requests as bytes arrive, enforces every limit while reading (head size and
header count, body size, head/body/idle/send deadlines), hands each complete request to the
dispatcher and writes the answers back in request order. It knows nothing about FEG: the
dispatcher decides every answer except the ones about HTTP itself, which are JSON like the rest
(PROTOCOL.md §3, ours). Why not aiohttp's server: its request and response objects cost about as
much CPU per request as the whole forwarding path (docs/BENCHMARKS.md §1).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools
import orjson

from device_protocol.codecs import JSON

logger = logging.getLogger(__name__)

INVALID_REQUEST = "INVALID_REQUEST"

# Read at most this much past a refused request before closing, so the client sees the answer
# instead of a reset (the kernel resets a socket closed with unread data).
_LINGER_SECONDS = 2.0
# Complete requests queued behind the one in flight before reading stops (pipelining clients).
_MAX_QUEUED = 8
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What a device may send and how long it may take (seconds)."""

    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    max_body_bytes: int = 64 * 1024 * 1024  # on `upload_paths`
    upload_paths: frozenset[bytes] = frozenset({b"/result"})
    # Any other path: a poll's body is a few hundred bytes, and one the size of an upload would
    # only make the leaf parse it into millions of objects before saying what is wrong.
    max_other_body_bytes: int = 1024 * 1024
    head_timeout: float = 15.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    # Request bodies being received, all connections together: past it, connections still sending
    # one stop being read until others finish (many big uploads at once cannot exhaust memory).
    max_buffered_bytes: int = 512 * 1024 * 1024


class Request:
    """One parsed request: its target split into path and query (an absolute-form target reduced to
    them). Header names are lower-cased; the first of repeated headers wins."""

    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(self, method: str, path: bytes, query: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body


class Response:
    """One answer: status, content type and body, plus headers and whether to close after it."""

    __slots__ = ("body", "close", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        content_type: str,
        body: bytes,
        headers: tuple[tuple[str, str], ...] = (),
        close: bool = False,
    ) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body
        self.headers = headers
        self.close = close


def json_error(http_status: int, status: str, message: str, close: bool = False) -> Response:
    """`{"status": status, "message": message}` with the given HTTP status."""
    return Response(http_status, JSON, orjson.dumps({"status": status, "message": message}), close=close)


def invalid_request(http_status: int, message: str, close: bool = False) -> Response:
    return json_error(http_status, INVALID_REQUEST, message, close)


def origin_form(target: bytes) -> bytes:
    """The path and query of a request target, also of an absolute-form one (RFC 9112 §3.2.2:
    clients behind a forward proxy send `http://host/path?query`)."""
    if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        slash = target.find(b"/", target.index(b"//") + 2)
        return target[slash:] if slash >= 0 else b"/"
    return target


Reply = Callable[[Response], None]
# Called once per request; must call `reply` exactly once, now or later.
Dispatcher = Callable[[Request, Reply], None]


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing and answer with `response`."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Clock:
    """The `Date` header value, refreshed once per second by the sweep."""

    def __init__(self) -> None:
        self.date = b""
        self.tick()

    def tick(self) -> None:
        self.date = email.utils.formatdate(time.time(), usegmt=True).encode("ascii")


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus}


class HttpServer:
    """The set of open connections: their deadlines (swept each second) and the drain."""

    def __init__(self, dispatch: Dispatcher, limits: HttpLimits) -> None:
        self.dispatch = dispatch
        self.limits = limits
        self.connections: set[HttpConnection] = set()
        self.buffered_bytes = 0  # of request bodies not yet complete
        self.waiting_for_memory: set[HttpConnection] = set()
        self.clock = _Clock()
        self.draining = False
        self._sweeper: asyncio.Task[None] | None = None

    def protocol(self) -> HttpConnection:
        """A protocol factory for `loop.create_server`."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return HttpConnection(self)

    async def drain(self, timeout: float) -> None:
        """Close idle connections at once and the others after their answer; cut them at `timeout`."""
        self.draining = True
        for connection in list(self.connections):
            connection.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep(self) -> None:
        # One timer for all connections: arming a timer per request would cost more than it saves.
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            self.clock.tick()
            self._resume_waiting_for_memory()
            now = loop.time()
            for connection in [c for c in self.connections if c.deadline < now]:
                try:
                    connection.deadline_passed()
                except Exception:  # one broken connection must not end the sweep for all
                    logger.exception("closing a connection past its deadline failed")
                    connection.abort()

    def _resume_waiting_for_memory(self) -> None:
        while self.waiting_for_memory and self.buffered_bytes <= self.limits.max_buffered_bytes:
            self.waiting_for_memory.pop().resume_after_memory()


# What happens when a connection's deadline passes.
_CLOSE = 0  # idle: close quietly
_ABORT = 1  # a client that stopped reading, or lingering after a refusal: drop it
_SLOW_HEAD = 2  # answer 408, then close
_SLOW_BODY = 3

_SLOW_MESSAGES = {
    _SLOW_HEAD: "request head not received in time",
    _SLOW_BODY: "request body not received in time",
}


class HttpConnection(asyncio.Protocol):
    """One device connection: parse, queue, dispatch one request at a time, answer in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.deadline = float("inf")
        self._on_deadline = _CLOSE
        self._parser = httptools.HttpRequestParser(self)
        # The request being parsed.
        self._in_message = False
        self._headers_done = False
        self._head_bytes = 0
        self._target = b""
        self._path = self._query = b""  # of the target, once the head is complete
        self._headers: dict[bytes, bytes] = {}
        self._header_count = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._body_limit = 0  # of the request being parsed, from its path
        self._buffered = 0  # of this body, counted in the server's budget
        self._waiting_for_memory = False
        # Parsed requests (or ready answers to refused ones) in arrival order, with keep-alive.
        self._queue: deque[tuple[Request | Response, bool]] = deque()
        self._in_flight = False
        self._reading = True
        self._write_paused = False
        self._closing = False
        self._upgraded = False
        self._began_here = False
        self._peer_done = False  # the client half-closed: answer what it sent, then close

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server.connections.add(self)
        # A connection that never sends a request is closed like an idle one, only sooner.
        self._arm(self.limits.head_timeout, _CLOSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.waiting_for_memory.discard(self)
        self._drop_body()
        self.transport = None
        self._queue.clear()

    def eof_received(self) -> bool:
        """A client may shut its sending side once its request is out (HTTP/1.0 scripts, `nc -N`):
        the requests it completed are still answered, then the connection closes."""
        if self._in_message:  # a request it can no longer finish
            self._in_message = False
            self._drop_body()
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
            self._pause_reading()
            if self._idle():
                self._close_after_write()  # its answer is already out
            return
        except httptools.HttpParserError as exc:
            self._refuse(invalid_request(400, f"malformed HTTP request: {_reason(exc)}"))
            return
        if self._in_message and not self._headers_done and not self._began_here:
            # httptools buffers an unfinished header line: bound it by the bytes fed meanwhile.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(self._head_too_large())

    def _body_too_large(self) -> Response:
        return invalid_request(413, f"request body larger than {self._body_limit} bytes")

    def _head_too_large(self) -> Response:
        return invalid_request(431, f"request head larger than {self.limits.max_head_bytes} bytes")

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()
        self._arm(self.limits.send_timeout, _ABORT)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._arm_for_state()
        self._next()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._began_here = True
        self._in_message = True
        self._headers_done = False
        self._head_bytes = 0
        self._target = b""
        self._headers = {}
        self._header_count = 0
        self._body = []
        self._body_bytes = 0
        if self._idle():
            self._arm(self.limits.head_timeout, _SLOW_HEAD)

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_head_bytes:
            raise _Refused(self._head_too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _Refused(invalid_request(431, f"more than {self.limits.max_headers} header fields"))
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > self.limits.max_head_bytes:
            raise _Refused(self._head_too_large())
        self._headers.setdefault(name.lower(), value)

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._parser.get_http_version() not in ("1.1", "1.0"):
            raise _Refused(
                invalid_request(505, f"HTTP/{self._parser.get_http_version()} is not supported; use HTTP/1.1")
            )
        limits = self.limits
        self._path, _, self._query = origin_form(self._target).partition(b"?")
        self._body_limit = limits.max_body_bytes if self._path in limits.upload_paths else limits.max_other_body_bytes
        length = self._headers.get(b"content-length")
        # llhttp has checked that it is a number.
        if length is not None and int(length) > self._body_limit:
            raise _Refused(self._body_too_large())
        if self._idle():
            self._arm(limits.body_timeout, _SLOW_BODY)
            # Only when nothing is owed before it: a 100 must not land inside an earlier answer.
            if self._headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._body_limit:
            raise _Refused(self._body_too_large())
        self._body.append(body)
        server = self.server
        self._buffered += len(body)
        server.buffered_bytes += len(body)
        if server.buffered_bytes > self.limits.max_buffered_bytes and not self._waiting_for_memory:
            self._waiting_for_memory = True
            server.waiting_for_memory.add(self)
            self._pause_reading()

    def resume_after_memory(self) -> None:
        self._waiting_for_memory = False
        if not self._write_paused and len(self._queue) <= _MAX_QUEUED:
            self._resume_reading()

    def _drop_body(self) -> None:
        """The body in progress no longer counts against the server's buffer budget."""
        self.server.buffered_bytes -= self._buffered
        self._buffered = 0

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(self._parser.get_method().decode("ascii"), self._path, self._query, self._headers, body)
        self._in_message = False
        self._headers_done = False
        self._body = []
        self._drop_body()  # handed on: the link and the leaf bound it from here
        self._queue.append((request, self._parser.should_keep_alive()))
        if len(self._queue) > _MAX_QUEUED:
            self._pause_reading()
        self._next()

    # The answers, in order

    def _idle(self) -> bool:
        return not self._in_flight and not self._queue

    def _next(self) -> None:
        """Dispatch queued requests while nothing is in flight and the client reads its answers."""
        while (
            not self._in_flight
            and self._queue
            and not self._write_paused
            and not self._closing
            and self.transport is not None
        ):
            item, keep_alive = self._queue.popleft()
            if isinstance(item, Response):
                self._write(item, head_only=False, keep_alive=False)
                return
            self._in_flight = True
            self._arm(float("inf"), _CLOSE)  # the dispatcher answers within its own deadline
            reply = self._replier(item.method == "HEAD", keep_alive)
            try:
                self.server.dispatch(item, reply)
            except Exception:
                logger.exception("dispatcher failed on %s %.200r", item.method, item.path)
                if self._in_flight:
                    reply(json_error(500, "ERROR", "Internal Server Error", close=True))
                return
        if (
            self._idle()
            and not self._reading
            and not self._closing
            and not self._write_paused
            and not self._waiting_for_memory
        ):
            self._resume_reading()

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
        body = response.body
        head = [
            _STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} Unknown\r\n".encode("ascii"),
            b"Content-Type: ",
            response.content_type.encode("latin-1"),
            b"\r\nContent-Length: ",
            str(len(body)).encode("ascii"),
            b"\r\nDate: ",
            self.server.clock.date,
            b"\r\n",
        ]
        for name, value in response.headers:
            head += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        head.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        if head_only:
            transport.write(b"".join(head))
        elif len(body) < 65536:
            head.append(body)
            transport.write(b"".join(head))
        else:
            transport.writelines([b"".join(head), body])  # a big body is not copied into the head
        if keep_alive:
            self._arm_for_state()
        else:
            self._close_after_write()

    def _refuse(self, response: Response) -> None:
        """Stop reading this connection; answer `response` after the answers already owed."""
        self._pause_reading()
        self._in_message = False
        self._body = []
        self._drop_body()
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
            self._resume_reading()
            self._arm(_LINGER_SECONDS, _ABORT)
        else:
            transport.close()

    # Deadlines and shutdown

    def _arm(self, seconds: float, action: int) -> None:
        self.deadline = self.loop.time() + seconds
        self._on_deadline = action

    def _arm_for_state(self) -> None:
        """The deadline that fits once nothing is owed: the partial request's, or idleness'."""
        if self._write_paused or not self._idle():
            return
        if not self._in_message:
            self._arm(self.limits.keepalive_timeout, _CLOSE)
        elif self._headers_done:
            self._arm(self.limits.body_timeout, _SLOW_BODY)
        else:
            self._arm(self.limits.head_timeout, _SLOW_HEAD)

    def deadline_passed(self) -> None:
        action = self._on_deadline
        self._arm(float("inf"), _CLOSE)
        if action == _CLOSE:
            self.close_if_idle()
        elif action == _ABORT:
            self.abort()
        else:
            logger.debug("closing a slow connection: %s", _SLOW_MESSAGES[action])
            self._refuse(invalid_request(408, _SLOW_MESSAGES[action]))

    def close_if_idle(self) -> None:
        if self.transport is not None and self._idle() and not self._in_message:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _pause_reading(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self._reading and self.transport is not None:
            self._reading = True
            self.transport.resume_reading()


def _reason(exc: httptools.HttpParserError) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
