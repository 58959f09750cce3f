"""Streamed requests over real sockets on 127.0.0.1: a large payload written in pieces reaches
the handler whole, calls are answered while it streams, and a cut, a refusal (no room) or a
server stopping each frees the stream at the server and fails the call, the link living on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from internal_link.errors import ErrorCode, LinkUnavailable, RemoteError
from internal_link.request_streams import StreamedRequest
from internal_link.streams import STREAM_WINDOW

from .test_link_sockets import HANDLERS, Runner, link, run  # noqa: F401 (run: the fixture)

BODY = bytes(range(256)) * (3 * 1024 * 1024 // 256)
META = ["result", "meta"]


async def measure(payload: Any) -> Any:
    assert type(payload) is StreamedRequest
    return [payload.meta, len(payload.body), payload.body == BODY]


UPLOADING = {**HANDLERS, "measure": measure}


def test_a_streamed_request_arrives_whole_and_calls_pass_meanwhile(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        async with link(UPLOADING) as (server, client, _port):
            assert await client.wait_connected(5)
            future, upload = client.send_upload("measure", META, len(BODY), timeout=10)
            room = asyncio.Event()
            upload.when_room(room.set)
            # More than the window at once: some waits for credit, and the writer is told so.
            assert upload.write(BODY[:STREAM_WINDOW]) is True
            assert upload.write(BODY[STREAM_WINDOW : 2 * STREAM_WINDOW + 1]) is False
            assert await client.call("echo", "small", timeout=5) == "small"
            await asyncio.wait_for(room.wait(), 5)
            upload.write(BODY[2 * STREAM_WINDOW + 1 :])
            assert await future == [META, len(BODY), True]
            assert server.uploads.outcomes == {"started": 1, "completed": 1}
            assert server.uploads.held == 0 and server.open_uploads == 0

    run(main)


def test_a_cut_request_frees_its_stream_at_the_server(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        async with link(UPLOADING) as (server, client, _port):
            assert await client.wait_connected(5)
            future, upload = client.send_upload("measure", META, len(BODY), timeout=10)
            upload.write(BODY[:100_000])
            for _ in range(100):  # bounded: 5 s
                if server.open_uploads:
                    break
                await asyncio.sleep(0.05)
            upload.cut()
            with pytest.raises(LinkUnavailable, match="cut short"):
                await future
            for _ in range(100):  # bounded: 5 s
                if server.uploads.outcomes["cancelled"]:
                    break
                await asyncio.sleep(0.05)
            assert server.uploads.outcomes == {"started": 1, "cancelled": 1}
            assert server.uploads.held == 0 and server.open_uploads == 0
            assert await client.call("echo", "after", timeout=5) == "after"  # the link lives on

    run(main)


def test_a_request_past_the_servers_room_is_refused_busy(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        async with link(UPLOADING) as (server, client, _port):
            assert await client.wait_connected(5)
            server.uploads.limit = len(BODY) - 1
            future, upload = client.send_upload("measure", META, len(BODY), timeout=10)
            upload.write(BODY[:STREAM_WINDOW])
            with pytest.raises(RemoteError) as refused:
                await future
            assert refused.value.code is ErrorCode.BUSY
            assert upload.write(BODY[STREAM_WINDOW:]) is False  # nothing more leaves
            assert server.uploads.outcomes == {"refused": 1} and server.uploads.held == 0
            assert await client.call("echo", "after", timeout=5) == "after"

    run(main)


def test_a_server_stopping_cancels_what_it_receives(run: Runner) -> None:  # noqa: F811
    async def main() -> None:
        async with link(UPLOADING) as (server, client, _port):
            assert await client.wait_connected(5)
            future, upload = client.send_upload("measure", META, len(BODY), timeout=10)
            upload.write(BODY[:100_000])
            for _ in range(100):  # bounded: 5 s
                if server.open_uploads:
                    break
                await asyncio.sleep(0.05)
            await server.close()
            with pytest.raises((RemoteError, LinkUnavailable)):
                await future
            assert server.uploads.outcomes == {"started": 1, "stopped": 1} and server.uploads.held == 0

    run(main)
