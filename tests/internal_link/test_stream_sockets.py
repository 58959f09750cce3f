"""Streamed answers over real sockets on 127.0.0.1: the receiver's credit paces the sender, calls
are answered between a stalled stream's chunks, and a cancel frees the stream at the sender."""

from __future__ import annotations

import asyncio
from typing import Any

from internal_link.answer_stream import AnswerStream
from internal_link.streams import STREAM_WINDOW, Streamed

from .test_link_sockets import HANDLERS, Runner, link, run  # noqa: F401 (run: the fixture)

HEAD = b"h" * 1000
TAIL = bytes(range(256)) * (3 * 1024 * 1024 // 256)


def streamed(payload: Any) -> Streamed:
    return Streamed([200, "application/octet-stream"], [memoryview(HEAD), TAIL])


STREAMING = {**HANDLERS, "stream": streamed}


async def _started(client: Any) -> AnswerStream:
    stream = await client.call("stream", None, timeout=10)
    assert isinstance(stream, AnswerStream)
    assert stream.meta == [200, "application/octet-stream"] and stream.total == len(HEAD) + len(TAIL)
    return stream


def test_a_stream_arrives_whole_paced_by_credit(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        async with link(STREAMING) as (server, client, _port):
            assert await client.wait_connected(5)
            stream = await _started(client)
            received: list[bytes] = []
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            stream.consume(received.append, done.set_result)
            await asyncio.sleep(0.3)
            # Nothing granted yet: the sender stopped at its window, and a call still gets through.
            assert sum(map(len, received)) == STREAM_WINDOW
            assert await client.call("echo", "small", timeout=5) == "small"
            assert server.open_streams == 1
            while not done.done():  # bounded: the stream's length in windows
                stream.grant(STREAM_WINDOW)
                await asyncio.sleep(0.01)
            assert done.result() is True
            assert b"".join(received) == HEAD + TAIL
            assert server.streams == {"started": 1, "completed": 1}
            assert server.open_streams == 0

    run(main)


def test_a_cancelled_stream_stops_at_the_sender(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        async with link(STREAMING) as (server, client, _port):
            assert await client.wait_connected(5)
            stream = await _started(client)
            stream.cancel()
            for _ in range(100):  # bounded: 5 s
                if server.streams["cancelled"]:
                    break
                await asyncio.sleep(0.05)
            assert server.streams == {"started": 1, "cancelled": 1}
            assert server.open_streams == 0
            assert await client.call("echo", "after", timeout=5) == "after"  # the link lives on

    run(main)
