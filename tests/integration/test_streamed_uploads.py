"""Large result uploads are streamed from device to leaf in bounded chunks (issue 10, transport).

Ten devices upload a 6.3 MB `cifar10_wide` result at once, slowly: the proxy must pass each body
on as it arrives, holding about a window per upload instead of the whole body, while a small
request and the leaf's health check stay prompt; each result is counted exactly once. A device
that leaves mid-upload frees its stream at the leaf.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest

from edge_gateway.launcher import Stack
from edge_gateway.simulator import wire

from .helpers import UNSCREENED, job_status, submit_job, wait_for, wait_leaves_synced
from .process_figures import metric_values, metrics_until, peak_rss_mib
from .stack_control import child

pytestmark = pytest.mark.integration

DEVICES = 10
MSGPACK = "application/msgpack"
# Each upload trickles in this many pieces over about `TRICKLE_SECONDS`.
PIECE = 128 * 1024
TRICKLE_SECONDS = 6.0
# The proxy's peak RSS in this run: 228 MiB when it buffered each body whole and sent it as one
# frame (measured before streaming), 44 MiB passing each on as it arrives.
PROXY_PEAK_RSS_MIB = 100
_JOB_REQUEST = {"job_name": "wide", "capabilities": {"methods": ["cnn"]}}
_SMALL_HEADERS = {"X-Flare-Device-ID": "small", "Content-Type": "application/json"}
UPLOAD_STREAMS = "edgefl_leaf_upload_streams"


def _headers(device: str) -> dict[str, str]:
    return {"X-Flare-Device-ID": device, "Accept": MSGPACK, "Content-Type": "application/json"}


async def _task(http: aiohttp.ClientSession, url: str, job_id: str, device: str) -> dict[str, Any]:
    give_up = time.monotonic() + 90
    while time.monotonic() < give_up:  # bounded: 90 s
        async with http.post(f"{url}/task", params={"job_id": job_id}, data=b"{}", headers=_headers(device)) as answer:
            reply: dict[str, Any] = msgpack.unpackb(await answer.read())
        if reply["status"] == "OK":
            return reply
        await asyncio.sleep(0.3)
    raise AssertionError(f"{device} got no task")


def _result(task: dict[str, Any]) -> bytes:
    shapes = wire.task_shapes(task["task_data"])
    diff = {name: np.full(shape, 0.001, np.float32) for name, shape in shapes.items()}
    _, body = wire.result_body("msgpack", diff, 10, task["cookie"])
    return body


def _result_head(job_id: str, task: dict[str, Any], device: str, length: int) -> bytes:
    target = f"/result?job_id={job_id}&task_id={task['task_id']}&task_name={task['task_name']}"
    return (
        f"POST {target} HTTP/1.1\r\nHost: device\r\nX-Flare-Device-ID: {device}\r\nAccept: {MSGPACK}\r\n"
        f"Content-Type: {MSGPACK}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def _trickle(port: int, head: bytes, body: bytes) -> dict[str, Any]:
    """Send `body` in pieces spread over about TRICKLE_SECONDS; return the decoded answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        pieces = range(0, len(body), PIECE)
        pause = TRICKLE_SECONDS / len(pieces)
        for start in pieces:  # bounded: len(body) / PIECE pieces
            writer.write(body[start : start + PIECE])
            await writer.drain()
            await asyncio.sleep(pause)
        answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert answer_head.startswith(b"HTTP/1.1 200"), answer_head
        length = next(
            int(line.split(b":", 1)[1])
            for line in answer_head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        reply: dict[str, Any] = msgpack.unpackb(await asyncio.wait_for(reader.readexactly(length), 30))
        return reply
    finally:
        writer.close()


async def _timed(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[float, Any]:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as response:
        body = await response.json(content_type=None)
    return time.monotonic() - started, body


async def _job(one_leaf: Stack, devices: int) -> str:
    job_id = await submit_job(
        one_leaf.api_url, name="wide", model="cifar10_wide", rounds=1, devices_per_round=devices, **UNSCREENED
    )
    await wait_leaves_synced(one_leaf.api_url, job_id, 1)
    return job_id


async def test_slow_large_uploads_hold_a_window_each_at_the_proxy(one_leaf: Stack) -> None:
    job_id = await _job(one_leaf, DEVICES)
    url = one_leaf.proxy_url
    port = int(url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        tasks = [await _task(http, url, job_id, f"device-{i}") for i in range(DEVICES)]
        bodies = [_result(task) for task in tasks]
        assert all(len(body) > 6_000_000 for body in bodies), [len(body) for body in bodies]
        uploads = asyncio.gather(
            *(
                _trickle(port, _result_head(job_id, task, f"device-{i}", len(body)), body)
                for i, (task, body) in enumerate(zip(tasks, bodies, strict=True))
            )
        )
        # Meanwhile, a small request and the leaf's health check are answered at once.
        await asyncio.sleep(TRICKLE_SECONDS / 2)
        small_seconds, small = await _timed(http, "POST", f"{url}/job", json=_JOB_REQUEST, headers=_SMALL_HEADERS)
        health_seconds, health = await _timed(http, "GET", f"{url}/health")
        replies = await asyncio.wait_for(uploads, 120)
        peak = peak_rss_mib(child(one_leaf, "proxy").process.pid)
        status = await wait_for(one_leaf.api_url, job_id, lambda s: s["results_counted"] >= DEVICES, timeout=60)
        await asyncio.sleep(1.0)  # a second count would show by now
        status = await job_status(one_leaf.api_url, job_id)
        counts = await metric_values(http, one_leaf.metrics["leaf-0"], UPLOAD_STREAMS)
    print(f"proxy peak RSS {peak:.0f} MiB; /job in {small_seconds:.3f} s, /health in {health_seconds:.3f} s")
    assert [reply["status"] for reply in replies] == ["OK"] * DEVICES, replies
    assert small["status"] == "OK", small
    assert health["healthy"] == 1, health
    assert small_seconds < 2.0 and health_seconds < 2.0
    assert status["results_counted"] == DEVICES, status
    assert counts.get('edgefl_leaf_upload_streams_total{outcome="completed"}') == DEVICES, counts
    assert peak < PROXY_PEAK_RSS_MIB, peak


async def test_an_upload_cut_midway_frees_its_stream_at_the_leaf(one_leaf: Stack) -> None:
    job_id = await _job(one_leaf, 4)
    url = one_leaf.proxy_url
    port = int(url.rsplit(":", 1)[1])
    metrics = one_leaf.metrics["leaf-0"]
    async with aiohttp.ClientSession() as http:
        task = await _task(http, url, job_id, "leaver")
        body = _result(task)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_result_head(job_id, task, "leaver", len(body)) + body[: len(body) // 2])
        await writer.drain()
        counts = await metrics_until(
            http, metrics, UPLOAD_STREAMS, lambda c: c.get("edgefl_leaf_upload_streams_bytes", 0) > 0, pause=0.1
        )
        assert counts.get("edgefl_leaf_upload_streams_bytes", 0) > 0, counts  # the leaf holds part of it
        writer.transport.abort()  # the device is gone mid-upload
        counts = await metrics_until(
            http, metrics, UPLOAD_STREAMS, lambda c: c.get('edgefl_leaf_upload_streams_total{outcome="cancelled"}') == 1
        )
        status = await job_status(one_leaf.api_url, job_id)
    assert counts.get('edgefl_leaf_upload_streams_total{outcome="cancelled"}') == 1, counts
    assert counts.get("edgefl_leaf_upload_streams_bytes") == 0, counts
    assert status["results_counted"] == 0, status  # a short body is never dispatched
