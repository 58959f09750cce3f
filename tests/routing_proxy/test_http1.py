"""The proxy's own HTTP/1.1 front-end, over raw sockets: what it answers to HTTP itself.

Every limit answers JSON and closes; pipelined requests are answered in order; slow clients are
cut by their deadline. The echo leaf records what reached it, so each test also says whether a
refused request got through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest

from .helpers import Leaf, Proxy, echoed

MakeLeaf = Callable[..., Awaitable[Leaf]]
MakeProxy = Callable[..., Awaitable[Proxy]]

TASK = b"POST /task?job_id=J HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nContent-Length: 0\r\n\r\n"


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def exchange(proxy: Proxy, data: bytes, wait: float = 5.0, half_close: bool = False) -> bytes:
    """Send `data` (then shut the sending side, with `half_close`), then read until the proxy closes
    (or `wait` seconds of silence)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy))
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        received = b""
        while chunk := await asyncio.wait_for(reader.read(65536), wait):
            received += chunk
        return received
    finally:
        writer.close()


def answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of responses into (status, headers, body)."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


def error(answer: tuple[int, dict[str, str], bytes], status: int) -> str:
    code, headers, body = answer
    assert code == status
    assert headers["content-type"] == "application/json"
    parsed = orjson.loads(body)
    assert parsed["status"] == "INVALID_REQUEST"
    return str(parsed["message"])


async def test_pipelined_requests_are_answered_in_order(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    requests = b"".join(
        f"POST /task?job_id=J{i} HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nContent-Length: 0\r\n\r\n".encode()
        for i in range(20)
    )
    raw = await exchange(px, requests + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = answers(raw)
    assert [echoed(body)["payload"][1]["job_id"] for _, _, body in got[:20]] == [f"J{i}" for i in range(20)]
    assert got[20][0] == 200 and orjson.loads(got[20][2])["healthy"] == 1
    assert got[20][1]["connection"] == "close"


async def test_keep_alive_serves_many_requests_on_one_connection(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(px))
    try:
        for _ in range(5):
            writer.write(TASK)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
    finally:
        writer.close()
    assert len(leaf.received) == 5


async def test_http10_closes_after_the_answer(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    raw = await exchange(px, b"GET /task?job_id=J HTTP/1.0\r\nX-Flare-Device-ID: D\r\n\r\n")
    ((status, headers, body),) = answers(raw)  # one answer, then the proxy closed
    assert status == 200 and headers["connection"] == "close"
    assert echoed(body)["payload"][1] == {"job_id": "J"}


async def test_head_of_health_has_no_body(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    raw = await exchange(px, b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0
    assert body == b""


async def test_expect_100_continue(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf], max_body_bytes=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(px))
    try:
        writer.write(
            b"POST /result HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
    # Over the limit: refused at once, the body never asked for.
    raw = await exchange(
        px,
        b"POST /result HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    assert b"100 Continue" not in raw
    assert "1000" in error(answers(raw)[0], 413)
    assert len(leaf.received) == 1


async def test_content_length_over_the_limit_is_refused_before_the_body(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf], max_body_bytes=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(px))
    try:
        # Only the head is sent: the answer must come without waiting for the 10 MB.
        writer.write(
            b"POST /result HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n"
        )
        raw = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    assert "1000" in error(answers(raw)[0], 413)
    assert leaf.received == []


async def test_polls_get_a_smaller_body_limit_than_uploads(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    # A /task, /job or /selection body is a few hundred bytes: one the size of an upload is refused
    # from its head, before the leaf would parse it into millions of objects.
    leaf = await leaves("C11")
    px = await proxy([leaf], max_body_bytes=10_000, max_poll_body_bytes=1_000)

    def post(target: bytes, size: int) -> bytes:
        return (
            b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size + b" " * size
        )

    for target in (b"/task?job_id=J", b"/job", b"/selection?job_id=J", b"/nowhere", b"http://gw/task?job_id=J"):
        assert error(answers(await exchange(px, post(target, 1_001)))[0], 413) == "request body larger than 1000 bytes"
    assert answers(await exchange(px, post(b"/task?job_id=J", 1_000)))[0][0] == 200
    for target in (b"/result?job_id=J", b"http://gw:4321/result?job_id=J"):
        assert answers(await exchange(px, post(target, 5_000)))[0][0] == 200
    assert (
        error(answers(await exchange(px, post(b"/result", 10_001)))[0], 413) == "request body larger than 10000 bytes"
    )
    assert len(leaf.received) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (b"X-Big: " + b"a" * 40_000 + b"\r\n", "request head larger than 32768 bytes"),
        (b"".join(b"X-H%d: v\r\n" % i for i in range(150)), "more than 100 header fields"),
    ],
)
async def test_oversized_heads_are_431(leaves: MakeLeaf, proxy: MakeProxy, extra: bytes, message: str) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    raw = await exchange(px, b"POST /task HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\n" + extra + b"\r\n")
    answer = answers(raw)[0]
    assert error(answer, 431) == message
    assert answer[1]["connection"] == "close"
    assert leaf.received == []


async def test_a_header_that_never_ends_is_cut_at_the_limit(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(px))
    try:
        writer.write(b"POST /task HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        for _ in range(10):  # 80 kB of one header value, no line end: buffered only up to the limit
            writer.write(b"b" * 8192)
            await writer.drain()
            await asyncio.sleep(0.01)
        raw = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    assert "32768" in error(answers(raw)[0], 431)


async def test_slow_head_and_slow_body_get_408(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf], head_timeout=1.0, body_timeout=1.0)
    started = asyncio.get_running_loop().time()
    slow_head, slow_body = await asyncio.gather(
        exchange(px, b"POST /task HTTP/1.1\r\nHost: x\r\n"),
        exchange(
            px,
            b"POST /result HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{",
        ),
    )
    # The sweep runs once a second: cut after 1-2 s plus the linger, never after the 5 s read wait.
    assert asyncio.get_running_loop().time() - started < 4.5
    assert error(answers(slow_head)[0], 408) == "request head not received in time"
    assert error(answers(slow_body)[0], 408) == "request body not received in time"
    assert leaf.received == []


async def test_silent_and_idle_connections_are_closed(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf], head_timeout=1.0, keepalive_timeout=1.0)
    silent = await exchange(px, b"")
    assert silent == b""  # closed without an answer: it asked nothing
    idle = await exchange(px, TASK)
    assert [status for status, _, _ in answers(idle)] == [200]  # answered, then closed when idle


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /task HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST /task HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /task?job_id=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
async def test_malformed_http_is_json_400_and_closes(leaves: MakeLeaf, proxy: MakeProxy, request_bytes: bytes) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    raw = await exchange(px, request_bytes)
    assert error(answers(raw)[0], 400).startswith("malformed HTTP request")
    assert leaf.received == []


async def test_a_client_that_half_closes_still_gets_its_answers(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    # Scripts and HTTP/1.0 tools shut their sending side once the request is out; the requests
    # they completed are answered (the last with Connection: close), then the proxy closes.
    leaf = await leaves("C11")
    px = await proxy([leaf])
    raw = await exchange(px, TASK, half_close=True)
    ((status, headers, body),) = answers(raw)
    assert status == 200 and headers["connection"] == "close" and echoed(body)["payload"][0] == "task"
    second = TASK.replace(b"job_id=J", b"job_id=K")
    got = answers(await exchange(px, TASK + second, half_close=True))
    assert [echoed(body)["payload"][1]["job_id"] for _, _, body in got] == ["J", "K"]
    assert "connection" not in got[0][1] and got[1][1]["connection"] == "close"
    # A request cut off by the half-close can never complete: nothing is dispatched, the proxy closes.
    assert await exchange(px, TASK.replace(b"Content-Length: 0", b"Content-Length: 10") + b"{}", half_close=True) == b""
    assert len(leaf.received) == 3


async def test_http_versions_other_than_1x_are_505(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    raw = await exchange(px, TASK.replace(b"HTTP/1.1", b"HTTP/2.0"))
    assert error(answers(raw)[0], 505) == "HTTP/2.0 is not supported; use HTTP/1.1"
    assert leaf.received == []


async def test_websocket_upgrade_is_answered_as_http_and_closed(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    raw = await exchange(
        px,
        b"GET /task?job_id=J HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00junk",
    )
    ((status, _, body),) = answers(raw)
    assert status == 200 and echoed(body)["payload"][0] == "task"


async def test_drain_closes_idle_connections_and_finishes_busy_ones(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    release = asyncio.Event()

    async def slow(payload: list[object]) -> list[object]:
        await release.wait()
        return [200, "application/json", b'{"status":"OK"}']

    leaf = await leaves("C11", feg=slow)
    px = await proxy([leaf], drain_timeout=5.0)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port_of(px))
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port_of(px))
    try:
        busy_writer.write(TASK)
        await asyncio.sleep(0.2)  # the busy request is at the leaf
        drain = asyncio.create_task(px.server.drain())
        assert await asyncio.wait_for(idle_reader.read(), 2) == b""  # idle: closed at once
        release.set()
        answer = await asyncio.wait_for(busy_reader.read(), 5)  # busy: answered, then closed
        await asyncio.wait_for(drain, 5)
    finally:
        idle_writer.close()
        busy_writer.close()
    ((status, headers, body),) = answers(answer)
    assert status == 200 and headers["connection"] == "close" and body == b'{"status":"OK"}'


async def test_nothing_is_dispatched_after_a_closing_answer(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    closing = b"POST /task?job_id=J HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nConnection: close\r\n\r\n"
    raw = await exchange(px, closing + TASK + TASK)
    assert [status for status, _, _ in answers(raw)] == [200]
    assert len(leaf.received) == 1


async def test_absolute_form_targets_are_routed_by_their_path(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf])
    raw = await exchange(
        px,
        b"POST http://gateway.lan:4321/task?job_id=J HTTP/1.1\r\nHost: gateway.lan:4321\r\n"
        b"X-Flare-Device-ID: D\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    ((status, _, body),) = answers(raw)
    assert status == 200 and echoed(body)["payload"][:2] == ["task", {"job_id": "J"}]
