"""What the proxy forwards to a leaf, what it writes back, and what it answers by itself."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from internal_link.calls import DeviceCall

from .helpers import Leaf, Proxy, echoed

MakeLeaf = Callable[..., Awaitable[Leaf]]
MakeProxy = Callable[..., Awaitable[Proxy]]

DEVICE = {"X-Flare-Device-ID": "DEV-1"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def one(leaves: MakeLeaf, proxy: MakeProxy) -> tuple[Leaf, Proxy]:
    leaf = await leaves("C11")
    return leaf, await proxy([leaf])


@pytest.mark.parametrize("endpoint", ["job", "task", "result", "selection"])
async def test_every_endpoint_is_forwarded_exactly(
    one: tuple[Leaf, Proxy], http: aiohttp.ClientSession, endpoint: str
) -> None:
    leaf, proxy = one
    body = '{"result": {"kind": "number", "data": [1.5, -2]}, "name": "é ✓"}'.encode() + b"\n"
    headers = {
        "x-FLARE-device-ID": "NVFlare_Android-0123456789abcdef",
        "X-Flare-Device-Info": "device_id=NVFlare_Android-0123456789abcdef&platform=android&app_version=1.0 beta",
        "X-Flare-User-Info": "{}",
        "Content-Type": "application/json; charset=utf-8",
        "Accept": "application/json",
        "Authorization": "Bearer not-forwarded",
        "User-Agent": "okhttp/4.12",
    }
    url = f"{proxy.url}/{endpoint}?job_id=J1&task_id=T%201&status=OK&job_id=second&empty="
    async with http.post(url, data=body, headers=headers) as reply:
        assert reply.status == 200
        assert reply.content_type == "application/msgpack"
        answer = echoed(await reply.read())
    assert answer["leaf"] == "C11"
    assert answer["payload"] == [
        endpoint,
        {"job_id": "J1", "task_id": "T 1", "status": "OK", "empty": ""},
        {
            "x-flare-device-id": "NVFlare_Android-0123456789abcdef",
            "x-flare-device-info": headers["X-Flare-Device-Info"],
            "x-flare-user-info": "{}",
            "content-type": "application/json; charset=utf-8",
            "accept": "application/json",
        },
        body,
    ]
    assert type(answer["payload"][3]) is bytes
    assert leaf.received == [answer["payload"]]
    # The leaf hears how long the proxy still waits: at most its whole upstream timeout.
    assert 0 < answer["wait"] <= proxy.server.config.upstream_timeout == 5.0


async def test_get_task_without_body(one: tuple[Leaf, Proxy], http: aiohttp.ClientSession) -> None:
    _, proxy = one
    async with http.get(f"{proxy.url}/task?job_id=J", headers=DEVICE) as reply:
        assert reply.status == 200
        endpoint, query, headers, body = echoed(await reply.read())["payload"]
    assert (endpoint, query, body) == ("task", {"job_id": "J"}, b"")
    assert headers["x-flare-device-id"] == "DEV-1"


async def test_msgpack_body_passes_untouched(one: tuple[Leaf, Proxy], http: aiohttp.ClientSession) -> None:
    _, proxy = one
    body = bytes(range(256)) * 64
    headers = {**DEVICE, "Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    async with http.post(f"{proxy.url}/result?job_id=J", data=body, headers=headers) as reply:
        assert echoed(await reply.read())["payload"][3] == body


async def test_empty_post_needs_no_content_type(one: tuple[Leaf, Proxy], http: aiohttp.ClientSession) -> None:
    _, proxy = one
    async with http.post(f"{proxy.url}/selection?job_id=J", headers=DEVICE) as reply:
        assert reply.status == 200
        assert echoed(await reply.read())["payload"][3] == b""


async def test_large_body_is_forwarded(one: tuple[Leaf, Proxy], http: aiohttp.ClientSession) -> None:
    _, proxy = one
    body = b'{"data": "' + b"x" * (8 * 1024 * 1024) + b'"}'
    # A BytesIO, not bytes: aiohttp warns about sending large raw bytes.
    async with http.post(f"{proxy.url}/result?job_id=J", data=io.BytesIO(body), headers={**DEVICE, **JSON}) as reply:
        assert reply.status == 200
        assert echoed(await reply.read())["payload"][3] == body


async def test_leaf_answer_is_written_back_as_is(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    async def feg(call: DeviceCall) -> list[Any]:
        return [202, "application/json; charset=utf-8", b'{"status": "OK",  "job_id": "J"}']

    px = await proxy([await leaves("C11", feg)])
    async with http.post(f"{px.url}/job", data=b"{}", headers={**DEVICE, **JSON}) as reply:
        assert reply.status == 202
        assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await reply.read() == b'{"status": "OK",  "job_id": "J"}'


@pytest.mark.parametrize("headers", [{}, {"X-Flare-Device-ID": ""}, {"x-flare-device-id": "  "}])
async def test_device_id_missing(one: tuple[Leaf, Proxy], http: aiohttp.ClientSession, headers: dict[str, str]) -> None:
    leaf, proxy = one
    async with http.post(f"{proxy.url}/task?job_id=J", data=b"{}", headers={**headers, **JSON}) as reply:
        assert reply.status == 400
        assert reply.content_type == "application/json"
        assert orjson.loads(await reply.read()) == {"status": "INVALID_REQUEST", "message": "Device ID missing"}
    assert leaf.received == []


async def error_of(reply: aiohttp.ClientResponse, status: int) -> str:
    assert reply.status == status
    assert reply.content_type == "application/json"
    body = orjson.loads(await reply.read())
    assert set(body) == {"status", "message"}
    assert body["status"] == "INVALID_REQUEST"
    return str(body["message"])


@pytest.mark.parametrize("path", ["/", "/jobs", "/task/", "/api/task", "/health/x"])
async def test_unknown_path_is_json_404(one: tuple[Leaf, Proxy], http: aiohttp.ClientSession, path: str) -> None:
    _, proxy = one
    async with http.post(f"{proxy.url}{path}", headers=DEVICE) as reply:
        assert path in await error_of(reply, 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/job", "POST"),
        ("PUT", "/task", "GET, POST"),
        ("DELETE", "/result", "POST"),
        ("GET", "/selection", "POST"),
        ("POST", "/health", "GET, HEAD"),
    ],
)
async def test_wrong_method_is_json_405(
    one: tuple[Leaf, Proxy], http: aiohttp.ClientSession, method: str, path: str, allow: str
) -> None:
    _, proxy = one
    async with http.request(method, f"{proxy.url}{path}", headers=DEVICE) as reply:
        assert method in await error_of(reply, 405)
        assert reply.headers["Allow"] == allow


async def test_body_over_the_limit_by_content_length(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf], max_body_bytes=1000)
    async with http.post(f"{px.url}/result", data=b"x" * 1001, headers={**DEVICE, **JSON}) as reply:
        assert "1000" in await error_of(reply, 413)
    async with http.post(f"{px.url}/result", data=b"x" * 1000, headers={**DEVICE, **JSON}) as reply:
        assert reply.status == 200
    assert len(leaf.received) == 1


async def test_streamed_body_over_the_limit(leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf], max_body_bytes=1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"y" * 400
            await asyncio.sleep(0.01)

    # No Content-Length: chunked transfer, so the limit can only be enforced while reading.
    async with http.post(f"{px.url}/result", data=chunks(), headers={**DEVICE, **JSON}) as reply:
        assert "Content-Length" not in reply.request_info.headers
        assert "1000" in await error_of(reply, 413)
    assert leaf.received == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", None])
async def test_unsupported_content_type_is_json_415(
    one: tuple[Leaf, Proxy], http: aiohttp.ClientSession, content_type: str | None
) -> None:
    leaf, proxy = one
    headers = dict(DEVICE)
    if content_type is not None:
        headers["Content-Type"] = content_type
    else:
        headers["Content-Type"] = ""
    async with http.post(f"{proxy.url}/result", data=b'{"a": 1}', headers=headers) as reply:
        assert "application/json" in await error_of(reply, 415)
    assert leaf.received == []


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=UTF-8", "application/msgpack"])
async def test_supported_content_types(one: tuple[Leaf, Proxy], http: aiohttp.ClientSession, content_type: str) -> None:
    _, proxy = one
    async with http.post(f"{proxy.url}/result", data=b"{}", headers={**DEVICE, "Content-Type": content_type}) as reply:
        assert reply.status == 200


async def test_malformed_request_gets_json(one: tuple[Leaf, Proxy]) -> None:
    _, proxy = one
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /task HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nBad Header Line\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"400"
    assert b"Content-Type: application/json" in head
    assert orjson.loads(body)["status"] == "INVALID_REQUEST"


async def test_health(one: tuple[Leaf, Proxy], http: aiohttp.ClientSession) -> None:
    _, proxy = one
    async with http.get(f"{proxy.url}/health") as reply:
        assert reply.status == 200
        body = orjson.loads(await reply.read())
    assert body["healthy"] == 1
    assert body["leaves"]["C11"]["healthy"] is True
    assert body["leaves"]["C11"]["connected"] is True


async def test_header_that_is_not_utf8_is_json_400(one: tuple[Leaf, Proxy]) -> None:
    leaf, proxy = one
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /task HTTP/1.1\r\nHost: x\r\nX-Flare-Device-ID: D\r\nX-Flare-Device-Info: a=\xe9\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
        )
        body = await reader.readexactly(length)
    finally:
        writer.close()
        await writer.wait_closed()
    assert head.split()[1] == b"400"
    assert orjson.loads(body) == {"status": "INVALID_REQUEST", "message": "header values must be UTF-8"}
    assert leaf.received == []
