"""One device connection: parse with llhttp (httptools), enforce the limits while reading, dispatch
one request at a time and write the answers back in request order.

It knows nothing about FEG: the dispatcher decides every answer except the ones about HTTP itself,
which are JSON like the rest (PROTOCOL.md §3, ours).

Reading, the answer queue and whole answers are here; streamed answers and bodies passed on as
they arrive in body_streams.py, the deadline in deadlines.py: parts of this class in modules of
their own (one object per connection: a call between objects per request shows in the benchmark).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from internal_link.flow_control import FlowControl
from internal_link.streams import STREAM_THRESHOLD

from .body_streams import BodyStreams
from .deadlines import Deadlines
from .messages import (
    Reply,
    Request,
    Response,
    StreamedResponse,
    Switch,
    invalid_request,
    json_error,
    origin_form,
    response_head,
)
from .refusals import LINGER_SECONDS, Refused, body_too_large, parser_error_reason
from .state import Deadline, Hold, Incoming, Pending
from .streamed_body import StreamedBody
from .upload_body import HELD, UploadBody

if TYPE_CHECKING:
    from .server import HttpServer

logger = logging.getLogger(__name__)

# Complete requests queued behind the one in flight before reading stops (pipelining clients).
_MAX_QUEUED = 8
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpConnection(BodyStreams, Deadlines, asyncio.Protocol):
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
        # Parsed requests (or ready answers to refused ones) in arrival order.
        self._queue: deque[Pending] = deque()
        self._in_flight = False
        # Of the server's body budget: what this connection holds in all, and its request in flight.
        self._held = 0
        self._in_flight_held = 0
        self._closing = False
        self._upgraded = False
        self._began_here = False
        self._peer_done = False  # the client half-closed: answer what it sent, then close
        self._successor: asyncio.Protocol | None = None  # what took the connection over (Switch)
        self._client = ""  # the peer's address, from connection_made on
        self._body: StreamedBody | None = None  # a streamed answer being written
        self._upload: UploadBody | None = None  # the in-flight request's body, passed on as it arrives

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._flow = FlowControl(self.transport)
        self.server.connections.add(self)
        # A connection that never sends a request is closed like an idle one, only sooner.
        self._arm(self.limits.head_timeout, Deadline.CLOSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._body is not None:
            self._body.cancel()  # the device left mid-download: the leaf stops sending it
            self._body = None
        if self._upload is not None:
            self._upload.cut()  # the device left mid-upload: the leaf drops what it has
        self._flow.connection_lost()
        self.transport = None
        self._queue.clear()
        self._incoming = None
        self._in_flight_held = 0
        self._release(self._held)  # nothing will be written for any of it

    def eof_received(self) -> bool:
        """A client may shut its sending side once its request is out (HTTP/1.0 scripts, `nc -N`):
        the requests it completed are still answered, then the connection closes."""
        self._drop_incoming()  # a request it can no longer finish
        if self._upload is not None:
            self._upload.cut()
        tls = self.transport is not None and self.transport.get_extra_info("sslcontext") is not None
        if self._closing or self._idle() or tls:  # TLS cannot stay half-open
            return False  # the transport closes
        self._peer_done = True
        return True

    def data_received(self, data: bytes) -> None:
        if self._closing or self._upgraded:
            return  # lingering after the last answer: discard
        self.server.bytes_in += len(data)
        self._began_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, Refused):
                raise
            self._refuse(refused.response, refused.linger)
            return
        except httptools.HttpParserUpgrade as upgrade:
            if self._successor is not None:
                # Accepted: what the client sent past the upgrade request is the new protocol's.
                rest = data[upgrade.args[0] :]
                if rest:
                    self._successor.data_received(rest)
                return
            # Refused: answered as plain HTTP (allowed: the Upgrade header may be ignored); what follows
            # would be another protocol, so nothing more is read and the connection closes.
            self._upgraded = True
            self._flow.pause_reading(Hold.STOPPED)
            if self._idle():
                self._close_after_write()  # its answer is already out
            return
        except httptools.HttpParserError as exc:
            self._refuse(invalid_request(400, f"malformed HTTP request: {parser_error_reason(exc)}"))
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
        if self._body is not None:
            self._body.resume()
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
            raise Refused(self._head_too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        incoming = self._parsing()
        incoming.header_count += 1
        if incoming.header_count > self.limits.max_headers:
            raise Refused(invalid_request(431, f"more than {self.limits.max_headers} header fields"))
        incoming.head_bytes += len(name) + len(value)
        if incoming.head_bytes > self.limits.max_head_bytes:
            raise Refused(self._head_too_large())
        incoming.headers.setdefault(name.lower(), value)

    def on_headers_complete(self) -> None:
        incoming = self._parsing()
        incoming.headers_done = True
        if self._parser.get_http_version() not in ("1.1", "1.0"):
            raise Refused(
                invalid_request(505, f"HTTP/{self._parser.get_http_version()} is not supported; use HTTP/1.1")
            )
        limits = self.limits
        incoming.path, _, incoming.query = origin_form(incoming.target).partition(b"?")
        upload = incoming.path in limits.upload_paths or (
            bool(limits.upload_path_prefixes) and incoming.path.startswith(limits.upload_path_prefixes)
        )
        # A body the budget could never take is refused for good, not told to come back.
        path_limit = limits.max_body_bytes if upload else limits.max_other_body_bytes
        incoming.body_limit = min(path_limit, self.server.budget.largest)
        length = incoming.headers.get(b"content-length")
        if length is not None:
            incoming.length = int(length)  # llhttp has checked that it is a number
            if incoming.length > STREAM_THRESHOLD and self._idle():
                # Passed on as it arrives: the budget holds what waits here, not the whole body.
                incoming.body_limit = path_limit
                if incoming.length > path_limit:
                    raise Refused(body_too_large(incoming))
                self._hold(incoming, HELD, incoming.length)
                incoming.upload = UploadBody(self._flow, incoming.length)
            elif incoming.length > incoming.body_limit:
                raise Refused(body_too_large(incoming))
            elif incoming.length:
                # All of it now: a body that does not fit is refused before the client sends it.
                self._hold(incoming, incoming.length, incoming.length)
        if self._idle():
            self._arm(limits.body_timeout, Deadline.SLOW_BODY)
            # Only when nothing is owed before it: a 100 must not land inside an earlier answer.
            if incoming.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
                self.transport.write(_CONTINUE)
            if incoming.upload is not None:
                self._dispatch_upload(incoming, incoming.upload)

    def on_body(self, body: bytes) -> None:
        incoming = self._parsing()
        incoming.body_bytes += len(body)
        if incoming.body_bytes > incoming.body_limit:
            raise Refused(body_too_large(incoming))
        if incoming.upload is not None:
            incoming.upload.feed(body)  # once answered: discarded
            if self._upload is incoming.upload:
                self._arm(self.limits.body_timeout, Deadline.SLOW_BODY)  # a body that stops moving is dropped
            return
        if incoming.length is None:  # chunked: held as it streams
            self._hold(incoming, len(body), incoming.body_bytes)
        incoming.body.append(body)

    def on_message_complete(self) -> None:
        incoming = self._parsing()
        if incoming.upload is not None:  # dispatched from its head; now the leaf has all of it
            self._incoming = None
            if self._upload is incoming.upload:
                self._arm(float("inf"), Deadline.CLOSE)
            return
        body = incoming.body[0] if len(incoming.body) == 1 else b"".join(incoming.body)
        request = Request(
            self._parser.get_method().decode("ascii"),
            incoming.path,
            incoming.query,
            incoming.headers,
            body,
            self._client,
        )
        self._incoming = None
        # Its share of the budget goes with it, until its answer is written.
        self._queue.append(Pending(request, self._parser.should_keep_alive(), incoming.held))
        if len(self._queue) > _MAX_QUEUED:
            self._flow.pause_reading(Hold.BACKLOG)
        self._next()

    def _parsing(self) -> Incoming:
        incoming = self._incoming
        assert incoming is not None, "httptools calls back only inside a message"
        return incoming

    # The body budget

    def _hold(self, incoming: Incoming, size: int, body_size: int) -> None:
        """Count `size` more bytes of this body (`body_size` long) against the server's budget, or
        refuse the request at once: RETRY, never a pause (budget.py says why)."""
        if not self.server.budget.take(size, body_size, self._held):
            raise Refused(self.server.busy(), linger=self.limits.body_timeout)
        incoming.held += size
        self._held += size

    def _release(self, size: int) -> None:
        if size:
            self._held -= size
            self.server.budget.release(size)

    def _drop_incoming(self) -> None:
        """Forget the request being parsed, and the budget its body held."""
        incoming = self._incoming
        if incoming is not None:
            self._incoming = None
            self._release(incoming.held)

    def _discard_queue(self) -> None:
        """Forget the requests that will never be answered (the connection closes before them)."""
        for pending in self._queue:
            self._release(pending.held)
        self._queue.clear()

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
            pending = self._queue.popleft()
            item = pending.item
            if isinstance(item, Response):
                self._write(item, head_only=False, keep_alive=False, linger=pending.linger)
                return
            self._in_flight = True
            self._in_flight_held = pending.held
            self._arm(float("inf"), Deadline.CLOSE)  # the dispatcher answers within its own deadline
            reply = self._replier(item.method == "HEAD", pending.keep_alive)
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
            if self.transport is None or self._closing:
                return  # the device left, or was answered already (an upload too slow); nothing held
            if response.status == 101:
                self._hand_over(cast(Switch, response))
                return
            last = (self._upgraded or self._peer_done) and not self._queue
            if self._upload is not None:
                last = self._upload_answered() or last
            again = keep_alive and not response.close and not self.server.draining and not last
            # Answered: the request's body is done with once the answer is in the transport's hands.
            self._release(self._in_flight_held)
            self._in_flight_held = 0
            if type(response) is StreamedResponse:
                self._stream(response, head_only, again)
                return
            self._write(response, head_only, again)
            self._next()

        return reply

    def _hand_over(self, switch: Switch) -> None:
        """An accepted upgrade: the connection leaves this server (its deadlines, its drain) for
        the protocol `switch` names; nothing more is parsed here."""
        transport = self.transport
        assert transport is not None
        self.server.connections.discard(self)
        self._closing = True
        self._discard_queue()
        self._release(self._held)
        self._flow.resume_reading_regardless()
        self.transport = None
        self._successor = switch.take_over(transport)

    def _write(self, response: Response, head_only: bool, keep_alive: bool, linger: float = LINGER_SECONDS) -> None:
        transport = self.transport
        if transport is None:
            return
        head = response_head(response, self.server.clock.date, keep_alive)
        if head_only or not response.body:
            transport.write(head)
            self.server.bytes_out += len(head)
        else:
            transport.writelines((head, response.body))  # scattered where the loop can: no copy
            self.server.bytes_out += len(head) + len(response.body)
        if keep_alive:
            self._arm_for_state()
        else:
            self._close_after_write(linger)

    def _refuse(self, response: Response, linger: float = LINGER_SECONDS) -> None:
        """Stop reading this connection; answer `response` after the answers already owed, then
        close, reading (and discarding) for `linger` seconds what the client still sends."""
        self.server.refused[response.status] += 1
        self._flow.pause_reading(Hold.STOPPED)
        self._drop_incoming()
        self._queue.append(Pending(response, keep_alive=False, linger=linger))
        self._next()

    def _close_after_write(self, linger: float = LINGER_SECONDS) -> None:
        transport = self.transport
        if transport is None or self._closing:
            return
        self._closing = True
        self._discard_queue()
        if transport.can_write_eof() and not self._peer_done:
            # Half-close and read (discarding) a while longer: see LINGER_SECONDS.
            transport.write_eof()
            self._flow.resume_reading_regardless()
            self._arm(linger, Deadline.ABORT)
        else:
            transport.close()
