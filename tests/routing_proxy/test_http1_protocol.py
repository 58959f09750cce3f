"""The HTTP connection driven with bytes, no socket (`fake_transport.FakeTransport` stands in for the
kernel): the edge cases of splitting, pipelining, flow control and deadlines, byte for byte."""

from __future__ import annotations

import orjson
import pytest

from routing_proxy.http1 import HttpLimits, Response

from .fake_transport import make_server, open_connection, split_answers

TASK = b"POST /task?job_id=J HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def ok(body: bytes = b'{"status":"OK"}') -> Response:
    return Response(200, "application/json", body)


async def test_a_request_split_at_every_byte_is_parsed_whole() -> None:
    server, dispatched = make_server()
    _, transport = open_connection(server)
    stream = TASK + TASK.replace(b"J", b"K") + TASK.replace(b"J", b"L")
    for i in range(len(stream)):
        transport.feed(stream[i : i + 1])
        # One request at a time reaches the dispatcher, however the bytes arrive.
        assert len(dispatched.calls) <= 1
    assert [(r.method, r.path, r.query, r.body) for r in dispatched.requests] == [
        ("POST", b"/task", b"job_id=J", b"{}")
    ]
    dispatched.answer(0, ok(b"1"))
    dispatched.answer(1, ok(b"2"))
    dispatched.answer(2, ok(b"3"))
    assert [r.query for r in dispatched.requests] == [b"job_id=J", b"job_id=K", b"job_id=L"]
    assert [(status, body) for status, _, body in split_answers(transport.sent)] == [
        (200, b"1"),
        (200, b"2"),
        (200, b"3"),
    ]


async def test_head_and_body_are_handed_over_without_a_copy() -> None:
    server, dispatched = make_server()
    _, transport = open_connection(server)
    transport.feed(TASK)
    body = b"x" * 100
    dispatched.answer(0, ok(body))
    head, written = transport.writes
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 100\r\n" in head
    assert written is body  # the dispatcher's bytes object itself, never joined to the head


async def test_reading_stops_past_the_backlog_and_resumes_once_it_is_answered() -> None:
    server, dispatched = make_server()
    _, transport = open_connection(server)
    transport.feed(TASK * 12)
    # One in flight, then reading stops once more than 8 wait behind it.
    assert len(dispatched.calls) == 1 and not transport.reading
    assert transport.unread == b""  # the 12 arrived in one read: all parsed, none lost
    for i in range(12):
        dispatched.answer(i, ok())
        assert transport.reading is (i == 11)  # once the last is answered: nothing is owed
    assert len(split_answers(transport.sent)) == 12


async def test_a_client_that_stops_reading_is_not_read_until_it_catches_up() -> None:
    server, dispatched = make_server()
    connection, transport = open_connection(server)
    transport.feed(TASK * 2)
    connection.pause_writing()  # the transport's buffer is over its high-water mark
    dispatched.answer(0, ok())
    assert len(dispatched.calls) == 1  # the next answer would only pile up: not dispatched
    transport.feed(TASK)
    assert not transport.reading and transport.unread == TASK
    connection.resume_writing()
    assert len(dispatched.calls) == 2 and not transport.reading  # the owed answer first
    dispatched.answer(1, ok())
    assert transport.reading and len(dispatched.calls) == 3


async def test_100_continue_only_when_nothing_is_owed_before_it() -> None:
    server, dispatched = make_server()
    _, transport = open_connection(server)
    expecting = b"POST /task HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    transport.feed(TASK + expecting)
    assert transport.sent == b""  # a 100 now would land inside the first answer
    dispatched.answer(0, ok())
    transport.feed(b"{}")
    dispatched.answer(1, ok())
    transport.feed(expecting)
    assert transport.sent.endswith(b"HTTP/1.1 100 Continue\r\n\r\n")


@pytest.mark.parametrize(
    ("partial", "message"),
    [
        (b"POST /task HTTP/1.1\r\nHost: x\r\n", "request head not received in time"),
        (b"POST /task HTTP/1.1\r\nContent-Length: 10\r\n\r\n{", "request body not received in time"),
    ],
)
async def test_a_deadline_passing_mid_request_is_a_408_then_a_short_linger(partial: bytes, message: str) -> None:
    server, dispatched = make_server()
    connection, transport = open_connection(server)
    transport.feed(partial)
    connection.deadline_passed()
    ((status, headers, body),) = split_answers(transport.sent)
    assert status == 408 and headers["connection"] == "close"
    assert orjson.loads(body) == {"status": "INVALID_REQUEST", "message": message}
    # Half-closed, reading (and discarding) until the linger deadline, then dropped.
    assert transport.eof_written and transport.reading and not transport.closed
    transport.feed(b"more of the request")
    connection.deadline_passed()
    assert transport.aborted and dispatched.calls == []
    assert server.connections == set()


async def test_an_idle_deadline_closes_quietly() -> None:
    server, _ = make_server()
    connection, transport = open_connection(server)
    connection.deadline_passed()
    assert transport.closed and not transport.aborted and transport.sent == b""


async def test_a_half_close_mid_body_dispatches_nothing() -> None:
    server, dispatched = make_server(HttpLimits())
    _, transport = open_connection(server)
    transport.feed(TASK + b"POST /task HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
    transport.client_closes()
    assert not transport.closed  # the complete request is still owed its answer
    dispatched.answer(0, ok())
    assert len(dispatched.calls) == 1 and transport.closed
    ((_, headers, _),) = split_answers(transport.sent)
    assert headers["connection"] == "close"


# The body budget (budget.py): held from the head until the answer is written, refused, never paused.

KiB = 1024


def upload(size: int, path: bytes = b"/result") -> bytes:
    return b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (path, size) + b"x" * size


def budget_limits(total: int, per_connection: int = 1 << 30, small: int = 64 * KiB) -> HttpLimits:
    return HttpLimits(
        max_buffered_bytes=total, max_connection_buffered_bytes=per_connection, max_other_body_bytes=small
    )


async def test_pipelined_bodies_hold_the_budget_until_answered_and_no_more_is_taken() -> None:
    server, dispatched = make_server(budget_limits(1000 * KiB, small=100 * KiB))
    connections = [open_connection(server) for _ in range(4)]
    for _, transport in connections:
        transport.feed(upload(100 * KiB) * 8)
    # Ten bodies fit (the first connection's eight, two of the second's); a connection that met
    # the limit stops being read, its refusal owed after the answers before it. The first is still
    # read: nobody waits for memory that others would have to free.
    assert server.budget.held == 1000 * KiB and server.budget.refused == 3
    assert connections[0][1].reading
    answered = 0
    while len(dispatched.calls) > answered:
        dispatched.answer(answered, ok())
        answered += 1
        assert server.budget.held == (10 - answered) * 100 * KiB
    assert answered == 10
    busy = [split_answers(t.sent)[-1] for _, t in connections if t.eof_written]
    assert busy and all(orjson.loads(body)["status"] == "RETRY" for _, _, body in busy)


async def test_one_connection_cannot_hold_more_than_its_cap() -> None:
    server, dispatched = make_server(budget_limits(10_000 * KiB, per_connection=250 * KiB, small=100 * KiB))
    _, transport = open_connection(server)
    transport.feed(upload(100 * KiB) * 3)
    assert server.budget.held == 200 * KiB and not transport.reading
    dispatched.answer(0, ok())
    assert server.budget.held == 100 * KiB  # freed as soon as its answer was handed over
    dispatched.answer(1, ok())
    statuses = [orjson.loads(body)["status"] for _, _, body in split_answers(transport.sent)]
    assert statuses == ["OK", "OK", "RETRY"] and transport.eof_written and server.budget.held == 0


async def test_a_lost_connection_frees_all_it_held() -> None:
    server, dispatched = make_server(budget_limits(1000 * KiB, small=100 * KiB))
    _, transport = open_connection(server)
    transport.feed(upload(100 * KiB) * 2 + upload(100 * KiB)[:1000])  # in flight, queued, partial
    assert len(dispatched.calls) == 1 and server.budget.held == 300 * KiB
    transport.abort()
    assert server.budget.held == 0
    dispatched.answer(0, ok())  # the late answer has nothing to write and nothing to free
    assert server.budget.held == 0 and transport.writes == []


async def test_large_bodies_leave_an_eighth_of_the_budget_to_small_ones() -> None:
    # Bodies held whole: up to STREAM_THRESHOLD (256 KiB); larger ones are passed on as they arrive.
    server, dispatched = make_server(budget_limits(240 * KiB, small=16 * KiB))
    _, large = open_connection(server)
    large.feed(upload(200 * KiB)[:-1])  # stalls one byte short: holds 200 KiB
    _, second = open_connection(server)
    second.feed(upload(17 * KiB)[:100])  # large too: would pass 7/8 of the budget
    assert orjson.loads(split_answers(second.sent)[0][2])["status"] == "RETRY"
    _, small = open_connection(server)
    small.feed(upload(16 * KiB))  # small: may use the last eighth
    assert [r.path for r in dispatched.requests] == [b"/result"] and server.budget.held == 216 * KiB


async def test_a_body_larger_than_the_budget_could_ever_take_is_413_not_retry() -> None:
    server, _ = make_server(budget_limits(240 * KiB, small=16 * KiB))
    _, transport = open_connection(server)
    transport.feed(b"POST /result HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (210 * KiB + 1))
    ((status, _, body),) = split_answers(transport.sent)
    assert status == 413 and orjson.loads(body)["message"] == f"request body larger than {210 * KiB} bytes"
    assert server.budget.refused == 0


async def test_a_chunked_body_is_held_as_it_streams_and_refused_when_it_no_longer_fits() -> None:
    server, dispatched = make_server(budget_limits(600 * KiB, small=2000 * KiB))
    _, holder = open_connection(server)
    holder.feed(upload(200 * KiB)[:-1])
    _, transport = open_connection(server)
    transport.feed(b"POST /result HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % (100 * KiB) + b"y" * (100 * KiB) + b"\r\n"
    for held in (300, 400, 500, 600):
        transport.feed(chunk)
        assert server.budget.held == held * KiB and transport.sent == b""
    transport.feed(chunk)
    assert orjson.loads(split_answers(transport.sent)[0][2])["status"] == "RETRY"
    assert server.budget.held == 200 * KiB and dispatched.calls == []
    # Lingering after it (it may still be sending): read and discarded, never held.
    assert transport.reading and transport.eof_written
    transport.feed(chunk * 3)
    assert server.budget.held == 200 * KiB
