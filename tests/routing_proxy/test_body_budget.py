"""The proxy's memory budget for request bodies, over real sockets to a real in-process proxy.

A body is admitted or refused from its head and counts until its answer is handed to the kernel,
so the budget can never stall every connection at once: what does not fit is told RETRY at once,
and what fits is served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson

from .helpers import Leaf, Proxy, echoed, wait_for
from .test_http1 import answers, exchange, port_of

MakeLeaf = Callable[..., Awaitable[Leaf]]
MakeProxy = Callable[..., Awaitable[Proxy]]

MiB = 1024 * 1024
OK = b'{"status":"OK"}'


def upload_head(length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST /result?job_id=J HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % length + extra + b"\r\n"
    )


def json_body(size: int) -> bytes:
    return b'{"r":"' + b"a" * (size - 8) + b'"}'


async def read_answers(reader: asyncio.StreamReader, count: int, wait: float) -> bytes:
    """Read until `count` complete answers arrived, the proxy closed, or `wait` seconds of silence."""
    received = b""
    while complete_answers(received) < count:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    return received


def complete_answers(raw: bytes) -> int:
    count = 0
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        if len(rest) < length:
            break
        count += 1
        raw = rest[length:]
    return count


def retry_answer(raw: bytes, wait: int) -> str:
    """Check one clear RETRY refusal (PROTOCOL.md §4) and return its message."""
    ((status, headers, body),) = answers(raw)
    assert status == 200 and headers["content-type"] == "application/json"
    parsed = orjson.loads(body)
    assert parsed["status"] == "RETRY" and wait <= parsed["retry_wait"] <= 2 * wait, parsed
    assert headers["retry-after"] == str(parsed["retry_wait"])
    assert headers["connection"] == "close"
    return str(parsed["message"])


async def test_slow_large_uploads_cannot_stop_a_small_honest_one(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    """Nine uploads of 2 MiB stall one byte short of their end. Each is passed on to the leaf as it
    arrives and holds a window (256 KiB) of the 2 MiB budget: seven fill the share large bodies may
    take, two are told RETRY. The honest 512 KiB upload after them is served while they stall."""
    leaf = await leaves("C11")
    px = await proxy([leaf], max_buffered_bytes=2 * MiB, body_timeout=30.0, refusal_retry_wait=3)
    port = port_of(px)
    stalled: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(9):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            stalled.append((reader, writer))
            writer.write(upload_head(2 * MiB) + json_body(2 * MiB)[:-1])  # all but the last byte
        await asyncio.sleep(0.5)  # all of it sent: at the proxy or in its socket buffers
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stalled.append((reader, writer))
        body = json_body(512 * 1024)
        writer.write(upload_head(len(body)) + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.2)  # two parts: the second must be read after the first was counted
        writer.write(body[len(body) // 2 :])
        ((status, _, answer),) = answers(await asyncio.wait_for(read_answers(reader, 1, 10.0), 10.0))
        assert status == 200 and echoed(answer)["payload"][3] == body
        # The uploads that fit are still being received, unanswered; the others were told RETRY.
        told = [await read_answers(r, 1, 0.5) for r, _ in stalled[:9]]
    finally:
        for _, writer in stalled:
            writer.close()
    refused = [raw for raw in told if raw]
    assert len(refused) == 2, [raw[:100] for raw in told]
    for raw in refused:
        assert "memory" in retry_answer(raw, 3)
    assert [len(payload[3]) for payload in leaf.received] == [len(body)]


async def test_pipelined_bodies_count_until_their_answer_is_written(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    """4 connections pipeline 8 bodies of 100 KiB each while the leaf holds every answer: bodies
    parsed and queued count too, so no more than the 1 MiB budget (10 bodies) is taken in."""
    release = asyncio.Event()

    async def held(payload: list[object]) -> list[object]:
        await release.wait()
        return [200, "application/json", OK]

    leaf = await leaves("C11", feg=held)
    px = await proxy([leaf], max_buffered_bytes=MiB, upstream_timeout=20.0)
    port = port_of(px)
    request = upload_head(100 * 1024) + json_body(100 * 1024)
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    try:
        for _, writer in connections:
            writer.write(request * 8)
        await asyncio.sleep(1.0)  # all parsed: in flight, queued or refused
        release.set()
        got = [answers(await read_answers(reader, 8, 3.0)) for reader, _ in connections]
    finally:
        for _, writer in connections:
            writer.close()
    served = 0
    for per_connection in got:
        statuses = [orjson.loads(body)["status"] for _, _, body in per_connection]
        # Answers in order: what was admitted, then at most one RETRY, after which the proxy closed.
        ok = statuses.count("OK")
        assert statuses[:ok] == ["OK"] * ok and statuses[ok:] in ([], ["RETRY"]), statuses
        served += ok
    assert 1 <= served <= 10
    assert len(leaf.received) == served
    assert any(len(per_connection) < 8 for per_connection in got)
    assert px.server.http.budget.held == 0


async def test_a_body_that_does_not_fit_is_told_retry_before_it_is_sent(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    """Bodies held whole (up to STREAM_THRESHOLD: larger ones are passed on as they arrive)."""
    budget = 200 * 1024
    leaf = await leaves("C11")
    px = await proxy([leaf], max_buffered_bytes=budget, refusal_retry_wait=2)
    port = port_of(px)
    size = 120 * 1024  # two do not fit
    holder_reader, holder = await asyncio.open_connection("127.0.0.1", port)
    try:
        # It holds its whole announced length from its head on: the 100 says the head was taken.
        holder.write(upload_head(size, b"Expect: 100-continue\r\n"))
        assert await asyncio.wait_for(holder_reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        holder.write(b"{")
        # With `Expect: 100-continue`: the RETRY instead of the 100, and the body is never sent.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(upload_head(size, b"Expect: 100-continue\r\n"))
            raw = await asyncio.wait_for(reader.read(65536), 5)
            assert b"100 Continue" not in raw
            assert "memory" in retry_answer(raw, 2)
        finally:
            writer.close()
        # Without it: the answer comes from the head alone. A client that sends its body anyway,
        # slowly, is read to the end (within the body deadline), not reset after the usual 2 s.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(upload_head(size))
            retry_answer(await asyncio.wait_for(reader.read(65536), 5), 2)
            body = json_body(size)
            for part in range(5):
                writer.write(body[part * size // 5 : (part + 1) * size // 5])
                await asyncio.wait_for(writer.drain(), 5)
                await asyncio.sleep(0.8)
            assert not writer.transport.is_closing()
        finally:
            writer.close()
        # Chunked, no length announced: refused once it crosses what is left, while it streams.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /result?job_id=J HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            piece = 32 * 1024
            for _ in range(8):
                writer.write(b"%x\r\n" % piece + b" " * piece + b"\r\n")
            retry_answer(await asyncio.wait_for(read_answers(reader, 1, 5.0), 5), 2)
        finally:
            writer.close()
        # A body larger than the budget could ever take: refused for good, not told to come back.
        ((status, _, body),) = answers(await exchange(px, upload_head(250 * 1024)))
        assert status == 413 and orjson.loads(body)["message"] == f"request body larger than {budget} bytes"
        assert px.server.http.budget.refused == 3
    finally:
        holder.close()
    await wait_for(lambda: px.server.http.budget.held == 0)  # the holder's share, freed as it left
    assert leaf.received == []
    # What fits is served, one after another on one connection: an answer frees its body's share.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(3):
            writer.write(upload_head(size) + json_body(size))
            ((status, _, _),) = answers(await read_answers(reader, 1, 5.0))
            assert status == 200
    finally:
        writer.close()
    assert len(leaf.received) == 3
    await wait_for(lambda: px.server.http.budget.held == 0)


async def test_a_large_upload_a_leaf_has_no_room_for_is_told_retry_with_a_wait(
    leaves: MakeLeaf, proxy: MakeProxy
) -> None:
    """Passed on as it arrives, a large body is bounded at the leaf too: past the bytes it may be
    receiving, the leaf refuses the stream and the device hears the proxy's own RETRY with a wait."""
    leaf = await leaves("C11")
    px = await proxy([leaf], refusal_retry_wait=3)
    assert leaf._server is not None
    leaf._server.uploads.limit = MiB
    port = port_of(px)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(upload_head(2 * MiB) + json_body(2 * MiB)[:100_000])
        assert "memory" in retry_answer(await asyncio.wait_for(read_answers(reader, 1, 5.0), 10), 3)
    finally:
        writer.close()
    assert leaf._server.uploads.outcomes == {"refused": 1} and leaf.received == []
    # One that fits, on a connection of its own, is received whole and answered.
    body = json_body(MiB // 2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(upload_head(len(body)) + body)
        ((status, _, answer),) = answers(await asyncio.wait_for(read_answers(reader, 1, 5.0), 10))
    finally:
        writer.close()
    assert status == 200 and echoed(answer)["payload"][3] == body
    assert leaf._server.uploads.outcomes == {"refused": 1, "started": 1, "completed": 1}
    await wait_for(lambda: px.server.http.budget.held == 0)
