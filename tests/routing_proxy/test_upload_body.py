"""Request bodies above STREAM_THRESHOLD passed on as they arrive (upload_body.py), driven with
bytes through the fake transport: dispatched from the head, the device read only while the sink
has room, a window of the budget held instead of the body, and every way the body may not be
whole (the device leaves, is answered first, or stops sending) cutting it at the sink."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from internal_link.streams import STREAM_THRESHOLD
from routing_proxy.http1 import HttpServer, Response, UploadRequest
from routing_proxy.http1.upload_body import HELD

from .fake_transport import Dispatched, FakeTransport, make_server, open_connection, split_answers

SIZE = STREAM_THRESHOLD + 100_000
HEAD = b"POST /result HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % SIZE
BODY = bytes(range(256)) * (SIZE // 256) + b"x" * (SIZE % 256)
TASK = b"POST /task HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"


class Sink:
    """A link stream stand-in: takes `room` bytes, then keeps the rest back until `make_room`."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.taken = b""
        self.kept = b""
        self.cut_short = False
        self._resume: Callable[[], None] | None = None

    def when_room(self, resume: Callable[[], None]) -> None:
        self._resume = resume

    def write(self, data: bytes) -> bool:
        take = max(0, min(len(data), self.room - len(self.taken)))
        self.taken += data[:take]
        self.kept += data[take:]
        return not self.kept

    def make_room(self) -> None:
        self.room = 1 << 30
        self.taken, self.kept = self.taken + self.kept, b""
        assert self._resume is not None
        self._resume()

    def cut(self) -> None:
        self.cut_short = True


def ok() -> Response:
    return Response(200, "application/json", b'{"status":"OK"}')


def _started(room: int = 1 << 30) -> tuple[HttpServer, Dispatched, FakeTransport, Sink, UploadRequest]:
    server, dispatched = make_server()
    _, transport = open_connection(server)
    transport.feed(HEAD)
    (request,) = dispatched.requests  # from its head, before any of its body
    assert type(request) is UploadRequest and request.length == SIZE and request.body == b""
    assert server.budget.held == HELD
    sink = Sink(room)
    request.attach(sink)
    return server, dispatched, transport, sink, request


async def test_a_large_body_is_passed_on_as_it_arrives_paced_by_the_sink() -> None:
    server, dispatched, transport, sink, _ = _started(room=100_000)
    transport.feed(BODY[:150_000])
    assert sink.taken == BODY[:100_000] and not transport.reading
    transport.feed(BODY[150_000:] + TASK)
    assert transport.unread == BODY[150_000:] + TASK  # waiting in the kernel
    sink.make_room()
    assert sink.taken == BODY and not sink.cut_short
    assert len(dispatched.calls) == 1  # the next request waits its turn
    dispatched.answer(0, ok())
    assert [r.body for r in dispatched.requests[1:]] == [b"{}"]  # kept alive
    dispatched.answer(1, ok())
    assert server.budget.held == 0


async def test_a_device_leaving_mid_upload_cuts_it() -> None:
    server, dispatched, transport, sink, _ = _started()
    transport.feed(BODY[:1000])
    transport.abort()
    assert sink.cut_short and server.budget.held == 0
    dispatched.answer(0, ok())  # the late answer writes nothing
    assert transport.writes == []


async def test_an_answer_before_the_body_is_whole_cuts_it_and_closes() -> None:
    server, dispatched, transport, sink, _ = _started()
    transport.feed(BODY[:1000])
    dispatched.answer(0, Response(200, "application/json", b'{"status":"RETRY"}'))
    assert sink.cut_short and server.budget.held == 0
    ((status, headers, _),) = split_answers(transport.sent)
    assert status == 200 and headers["connection"] == "close" and transport.eof_written
    transport.feed(BODY[1000:])  # read while lingering, and dropped
    assert sink.taken == BODY[:1000] and transport.reading


async def test_a_body_that_stops_coming_is_cut_and_answered_408() -> None:
    server, dispatched, transport, sink, _ = _started()
    transport.feed(BODY[:1000])
    assert transport.protocol is not None
    transport.protocol.deadline_passed()
    assert sink.cut_short and server.budget.held == 0
    ((status, _, body),) = split_answers(transport.sent)
    assert status == 408 and orjson.loads(body)["message"] == "request body not received in time"
    dispatched.answer(0, ok())  # the leaf's late RETRY: not written
    assert len(split_answers(transport.sent)) == 1


async def test_small_and_pipelined_bodies_are_held_whole_as_before() -> None:
    server, dispatched = make_server()
    _, transport = open_connection(server)
    small = b"POST /result HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % STREAM_THRESHOLD + b"y" * STREAM_THRESHOLD
    transport.feed(small + HEAD + BODY)
    assert type(dispatched.requests[0]) is not UploadRequest
    assert dispatched.requests[0].body == b"y" * STREAM_THRESHOLD
    dispatched.answer(0, ok())
    # The large one came behind a request in flight: held whole, as a pipelined body always was.
    assert type(dispatched.requests[1]) is not UploadRequest and dispatched.requests[1].body == BODY


async def test_a_refusal_from_the_head_alone_discards_the_body_read_with_it() -> None:
    # A dispatcher answering at once (a missing device id, a wrong content type) answers from
    # inside the parser's callback, with body bytes of the same read still to be parsed.
    refused = Response(400, "application/json", b'{"status":"INVALID_REQUEST"}')
    server, _ = make_server()
    server.dispatch = lambda request, reply: reply(refused)
    _, transport = open_connection(server)
    transport.feed(HEAD + BODY[:50_000])
    ((status, headers, _),) = split_answers(transport.sent)
    assert status == 400 and headers["connection"] == "close" and transport.eof_written
    assert server.budget.held == 0 and not transport.aborted
    transport.feed(BODY[50_000:] + TASK)  # read while lingering, and dropped
    assert len(split_answers(transport.sent)) == 1 and transport.reading
