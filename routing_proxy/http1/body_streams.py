"""The bodies a connection does not hold whole: an answer written as its chunks arrive
(streamed_body.py) and a request body passed on to its leaf as it arrives (upload_body.py).

A part of `HttpConnection` (connection.py), as a base class in a module of its own so that the
connection's module stays about parsing, the answer queue and deadlines. Its methods share the
connection's state; `_Connection` names what they use of it, for the type checker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from internal_link.flow_control import FlowControl

from .limits import HttpLimits
from .messages import Reply, Response, StreamedResponse, UploadRequest, invalid_request, response_head
from .state import SLOW_MESSAGES, Deadline, Hold, Incoming
from .streamed_body import StreamedBody
from .upload_body import UploadBody

if TYPE_CHECKING:
    from .server import HttpServer

logger = logging.getLogger(__name__)


class _Connection(Protocol):
    server: HttpServer
    limits: HttpLimits
    transport: asyncio.Transport | None
    _flow: FlowControl
    _parser: httptools.HttpRequestParser
    _client: str
    _in_flight: bool
    _in_flight_held: int
    _body: StreamedBody | None
    _upload: UploadBody | None

    def _arm(self, seconds: float, action: Deadline) -> None: ...
    def _arm_for_state(self) -> None: ...
    def _close_after_write(self) -> None: ...
    def _next(self) -> None: ...
    def _release(self, size: int) -> None: ...
    def _replier(self, head_only: bool, keep_alive: bool) -> Reply: ...
    def _write(self, response: Response, head_only: bool, keep_alive: bool) -> None: ...
    def _wrote(self, nbytes: int) -> None: ...
    def _streamed(self, keep_alive: bool, complete: bool) -> None: ...
    def _upload_answered(self) -> bool: ...
    def abort(self) -> None: ...


class BodyStreams:
    """Streamed answers written and uploads passed on, for `HttpConnection`."""

    _body: StreamedBody | None  # a streamed answer being written
    _upload: UploadBody | None  # the in-flight request's body, passed on as it arrives

    # A streamed answer

    def _stream(self: _Connection, response: StreamedResponse, head_only: bool, keep_alive: bool) -> None:
        """Write the head now and the body as it arrives; the next answer waits for its end."""
        transport = cast(asyncio.Transport, self.transport)
        head = response_head(response, self.server.clock.date, keep_alive, response.length)
        transport.write(head)
        self.server.bytes_out += len(head)
        if head_only:
            response.source.cancel()
            self._streamed(keep_alive, complete=True)
            return
        self._in_flight = True
        body = StreamedBody(
            transport, self._flow, response.source, self._wrote, lambda complete: self._streamed(keep_alive, complete)
        )
        self._body = body
        self._arm(self.limits.send_timeout, Deadline.ABORT)
        body.start()

    def _wrote(self: _Connection, nbytes: int) -> None:
        self.server.bytes_out += nbytes
        self._arm(self.limits.send_timeout, Deadline.ABORT)  # a body that stops moving is dropped

    def _streamed(self: _Connection, keep_alive: bool, complete: bool) -> None:
        self._body = None
        self._in_flight = False
        if not complete:
            self.abort()  # cut short: a closed connection, never a body that looks whole
            return
        if keep_alive:
            self._arm_for_state()
        else:
            self._close_after_write()
        self._next()

    # An upload passed on as it arrives

    def _dispatch_upload(self: _Connection, incoming: Incoming, upload: UploadBody) -> None:
        """Dispatch a request from its head; its body goes where the dispatcher attaches it."""
        method = self._parser.get_method().decode("ascii")
        request = UploadRequest(
            method, incoming.path, incoming.query, incoming.headers, self._client, upload.length, upload.attach
        )
        self._in_flight = True
        self._upload = upload
        self._in_flight_held, incoming.held = incoming.held, 0  # answered, it frees the budget
        try:
            self.server.dispatch(request, self._replier(method == "HEAD", self._parser.should_keep_alive()))
        except Exception:
            logger.exception("dispatcher failed on %s %.200r", method, incoming.path)
            self.abort()

    def _upload_answered(self: _Connection) -> bool:
        """The upload in flight is answered: whether before its body was whole (then it is cut at
        the leaf, and the connection closes after the answer: the rest is read only to be dropped,
        maybe by the parser callback this answer came from)."""
        upload, self._upload = cast(UploadBody, self._upload), None
        if upload.complete:
            self._flow.resume_reading(Hold.UPLOAD_ROOM)  # its last bytes may not have had room
            return False
        upload.cut()
        return True

    def _upload_stalled(self: _Connection) -> None:
        """Its body stopped on its way: cut it and answer 408 now, whatever the leaf says later."""
        self._in_flight = False
        self._release(self._in_flight_held)
        self._in_flight_held = 0
        self._upload_answered()
        self.server.refused[408] += 1
        self._write(invalid_request(408, SLOW_MESSAGES[Deadline.SLOW_BODY]), head_only=False, keep_alive=False)
