"""A streamed answer written to a device, driven with bytes (`fake_transport`): head from the
source's total, chunks as they come, credit only as the device reads, the next answer after it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import orjson

from internal_link.calls import DeviceCall
from internal_link.streams import STREAM_THRESHOLD, Streamed
from routing_proxy.http1 import Response, StreamedResponse
from routing_proxy.http1.connection import HttpConnection

from .fake_transport import Dispatched, FakeTransport, make_server, open_connection, split_answers
from .helpers import Leaf, Proxy

MakeLeaf = Callable[..., Awaitable[Leaf]]
MakeProxy = Callable[..., Awaitable[Proxy]]
HEADERS = {"X-Flare-Device-ID": "DEV-1", "Content-Type": "application/json"}

TASK = b"POST /task?job_id=J HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


class Source:
    """A leaf's streamed answer, by hand: the test delivers chunks and sees the grants."""

    def __init__(self) -> None:
        self.granted: list[int] = []
        self.cancelled = False
        self.on_chunk: Callable[[bytes], None] | None = None
        self.on_end: Callable[[bool], None] | None = None

    def consume(self, on_chunk: Callable[[bytes], None], on_end: Callable[[bool], None]) -> None:
        self.on_chunk, self.on_end = on_chunk, on_end

    def grant(self, nbytes: int) -> None:
        self.granted.append(nbytes)

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, chunk: bytes) -> None:
        assert self.on_chunk is not None
        self.on_chunk(chunk)

    def end(self, complete: bool) -> None:
        assert self.on_end is not None
        self.on_end(complete)


def _streaming(source: Source, requests: int = 1) -> tuple[HttpConnection, FakeTransport, Dispatched]:
    server, dispatched = make_server()
    connection, transport = open_connection(server)
    transport.feed(TASK * requests)
    dispatched.answer(0, StreamedResponse(200, "application/msgpack", 6, source))
    return connection, transport, dispatched


async def test_the_body_follows_its_head_and_the_next_answer_waits_for_its_end() -> None:
    source = Source()
    _, transport, dispatched = _streaming(source, requests=2)
    assert b"Content-Length: 6\r\n" in transport.sent
    assert len(dispatched.calls) == 1  # the second request waits: its answer must not cut the body
    source.send(b"abc")
    source.send(b"def")
    assert source.granted == [3, 3]  # the device takes them at once: granted as written
    source.end(True)
    assert len(dispatched.calls) == 2
    dispatched.answer(1, Response(200, "application/json", b"{}"))
    assert [(status, body) for status, _, body in split_answers(transport.sent)] == [(200, b"abcdef"), (200, b"{}")]


async def test_credit_waits_for_a_device_that_does_not_read() -> None:
    source = Source()
    connection, _, _ = _streaming(source)
    connection.pause_writing()  # the device's socket is full
    source.send(b"abc")
    assert source.granted == []
    connection.resume_writing()
    assert source.granted == [3]


async def test_a_device_that_leaves_cancels_the_stream() -> None:
    source = Source()
    _, transport, _ = _streaming(source)
    source.send(b"ab")
    transport.abort()
    assert source.cancelled


async def test_a_stream_cut_short_aborts_the_connection() -> None:
    source = Source()
    _, transport, _ = _streaming(source)
    source.send(b"ab")
    source.end(False)
    assert transport.aborted  # never a short body that looks whole


async def test_a_body_that_stops_moving_is_dropped() -> None:
    source = Source()
    connection, transport, _ = _streaming(source)
    connection.deadline_passed()  # send_timeout with no byte written
    assert transport.aborted and source.cancelled


async def test_a_streamed_answer_crosses_a_real_proxy_and_a_malformed_one_is_retry(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    big = bytes(range(256)) * (STREAM_THRESHOLD // 128)

    async def feg(call: DeviceCall) -> Streamed:
        meta = [200, "application/octet-stream"] if call.endpoint == "task" else ["not", "a head"]
        return Streamed(meta, [big[:1000], big[1000:]])

    px = await proxy([await leaves("C11", feg)])
    async with http.post(f"{px.url}/task", data=b"{}", headers=HEADERS) as reply:
        assert reply.headers["Content-Length"] == str(len(big))
        assert await reply.read() == big
    async with http.post(f"{px.url}/job", data=b"{}", headers=HEADERS) as reply:
        assert orjson.loads(await reply.read()) == {"status": "RETRY"}
