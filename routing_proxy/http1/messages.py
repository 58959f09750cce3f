"""What crosses between the HTTP server and its dispatcher: requests, responses, and their bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

import orjson

from device_protocol.codecs import JSON

INVALID_REQUEST = "INVALID_REQUEST"


class Request:
    """One parsed request: its target split into path and query (an absolute-form target reduced to
    them). Header names are lower-cased; the first of repeated headers wins. `client` is the peer's
    IP address ("" when the transport has none)."""

    __slots__ = ("body", "client", "headers", "method", "path", "query")

    def __init__(
        self, method: str, path: bytes, query: bytes, headers: dict[bytes, bytes], body: bytes, client: str = ""
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.client = client


class BodySink(Protocol):
    """Where a request body passed on as it arrives goes (a leaf's streamed request:
    internal_link/upload_stream.py)."""

    def when_room(self, resume: Callable[[], None]) -> None: ...

    def write(self, data: bytes) -> bool: ...  # False: some kept back, read on at `resume`

    def cut(self) -> None: ...


class UploadRequest(Request):
    """A request whose body, `length` bytes, is passed on as it arrives instead of held whole: the
    dispatcher takes it from its head and hands `attach` the sink for the body (upload_body.py).
    Answered before its body is whole, the connection closes after the answer."""

    __slots__ = ("attach", "length")

    def __init__(
        self,
        method: str,
        path: bytes,
        query: bytes,
        headers: dict[bytes, bytes],
        client: str,
        length: int,
        attach: Callable[[BodySink], None],
    ) -> None:
        super().__init__(method, path, query, headers, b"", client)
        self.length = length
        self.attach = attach


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


class Switch(Response):
    """The dispatcher's answer to an upgrade it accepts (a WebSocket session): `take_over` is
    handed the connection's transport and returns the protocol that reads it from then on; that
    protocol writes the `101 Switching Protocols` itself."""

    __slots__ = ("take_over",)

    def __init__(self, take_over: Callable[[asyncio.Transport], asyncio.Protocol]) -> None:
        super().__init__(101, "", b"")
        self.take_over = take_over


class BodySource(Protocol):
    """Where a streamed body comes from (a leaf's streamed answer: internal_link/answer_stream.py)."""

    def consume(self, on_chunk: Callable[[bytes], None], on_end: Callable[[bool], None]) -> None: ...

    def grant(self, nbytes: int) -> None: ...

    def cancel(self) -> None: ...


class StreamedResponse(Response):
    """An answer of `length` bytes whose body `source` delivers in chunks after the head; the
    connection grants the source more as the client reads (streamed_body.py)."""

    __slots__ = ("length", "source")

    def __init__(self, status: int, content_type: str, length: int, source: BodySource) -> None:
        super().__init__(status, content_type, b"")
        self.length = length
        self.source = source


Reply = Callable[[Response], None]
# Called once per request; must call `reply` exactly once, now or later.
Dispatcher = Callable[[Request, Reply], None]


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


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus}


def response_head(response: Response, date: bytes, keep_alive: bool, length: int | None = None) -> bytes:
    """The status line and header block of `response`, its blank line included; `length`: the
    Content-Length of a body that is not `response.body` (a streamed one)."""
    head = [
        _STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} Unknown\r\n".encode("ascii"),
        b"Content-Type: ",
        response.content_type.encode("latin-1"),
        b"\r\nContent-Length: ",
        str(len(response.body) if length is None else length).encode("ascii"),
        b"\r\nDate: ",
        date,
        b"\r\n",
    ]
    for name, value in response.headers:
        head += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
    head.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    return b"".join(head)
