"""Large task answers are streamed from leaf to device in bounded chunks (issue 10, transport).

Twenty devices ask for a 6.3 MB task (`cifar10_wide`) at once and then stop reading: the proxy
must hold about a window per download, not the whole answer, and still answer a small request at
once; the leaf sends every download from its one cached payload. A device that leaves mid-download
frees its stream at the leaf, and a leaf stopping finishes the downloads it is streaming.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import msgpack
import pytest

from edge_gateway.launcher import Stack

from .helpers import UNSCREENED, submit_job, wait_leaves_synced
from .process_figures import metric_values, metrics_until, peak_rss_mib
from .stack_control import child, terminate

pytestmark = pytest.mark.integration

DEVICES = 20
MSGPACK = "application/msgpack"
# A device's receive buffer, kept small so that what it does not read stays in the proxy.
DEVICE_RCVBUF = 64 * 1024
# The proxy's peak RSS while 20 downloads stall: 171 MiB when it held whole answers (20 x 6.3 MB,
# measured before streaming), 51 MiB with a window per download.
PROXY_PEAK_RSS_MIB = 90
# The leaf's, in the same run: 178 MiB when each download had its own joined copy of the answer,
# 132 MiB when every stream slices the one cached payload.
LEAF_PEAK_RSS_MIB = 155
_JOB_REQUEST = {"job_name": "wide", "capabilities": {"methods": ["cnn"]}}
DOWNLOAD_STREAMS = "edgefl_leaf_download_streams"


def _task_request(job_id: str, device: str) -> bytes:
    return (
        f"POST /task?job_id={job_id} HTTP/1.1\r\nHost: device\r\nX-Flare-Device-ID: {device}\r\n"
        f"Accept: {MSGPACK}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()


async def _ask_task(port: int, job_id: str, device: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """Send a /task request from a socket with a small receive buffer; return it and the answer's length."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DEVICE_RCVBUF)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=DEVICE_RCVBUF)
    writer.write(_task_request(job_id, device))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return reader, writer, length


async def _model_ready(http: aiohttp.ClientSession, url: str, job_id: str) -> None:
    headers = {"X-Flare-Device-ID": "probe", "Accept": MSGPACK, "Content-Type": "application/json"}
    give_up = time.monotonic() + 90
    while time.monotonic() < give_up:  # bounded: 90 s
        async with http.post(f"{url}/task", params={"job_id": job_id}, data=b"{}", headers=headers) as response:
            reply = msgpack.unpackb(await response.read())
        if reply["status"] == "OK":
            return
        await asyncio.sleep(0.3)
    raise AssertionError("the model never became ready")


async def _job(one_leaf: Stack, devices: int) -> str:
    job_id = await submit_job(
        one_leaf.api_url, name="wide", model="cifar10_wide", rounds=1, devices_per_round=devices, **UNSCREENED
    )
    await wait_leaves_synced(one_leaf.api_url, job_id, 1)
    return job_id


async def leaf_streams(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    return await metric_values(http, url, DOWNLOAD_STREAMS)


def cancelled_once(counts: dict[str, float]) -> bool:
    return counts.get('edgefl_leaf_download_streams_total{outcome="cancelled"}') == 1


async def test_stalled_large_downloads_hold_a_window_each_at_the_proxy(one_leaf: Stack) -> None:
    job_id = await _job(one_leaf, 4 * DEVICES)
    port = int(one_leaf.proxy_url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        await _model_ready(http, one_leaf.proxy_url, job_id)
        asks = [_ask_task(port, job_id, f"device-{i}") for i in range(DEVICES)]
        devices = await asyncio.wait_for(asyncio.gather(*asks), 60)
        assert all(length > 6_000_000 for _, _, length in devices), [length for _, _, length in devices]
        # Nobody reads: whatever the proxy holds for them, it holds now.
        await asyncio.sleep(3.0)
        started = time.monotonic()
        headers = {"X-Flare-Device-ID": "small", "Content-Type": "application/json"}
        async with http.post(f"{one_leaf.proxy_url}/job", json=_JOB_REQUEST, headers=headers) as response:
            small = await response.json()
        small_seconds = time.monotonic() - started
        peak = peak_rss_mib(child(one_leaf, "proxy").process.pid)
        leaf_peak = peak_rss_mib(child(one_leaf, "leaf-0").process.pid)
        assert small["status"] == "OK", small
        for reader, writer, length in devices:
            body = await asyncio.wait_for(reader.readexactly(length), 60)
            assert msgpack.unpackb(body)["status"] == "OK"
            writer.close()
    print(f"proxy peak RSS {peak:.0f} MiB, leaf {leaf_peak:.0f} MiB; /job answered in {small_seconds:.3f} s")
    assert small_seconds < 2.0
    assert peak < PROXY_PEAK_RSS_MIB, peak
    assert leaf_peak < LEAF_PEAK_RSS_MIB, leaf_peak


async def test_a_download_cut_midway_frees_its_stream_at_the_leaf(one_leaf: Stack) -> None:
    job_id = await _job(one_leaf, 8)
    port = int(one_leaf.proxy_url.rsplit(":", 1)[1])
    metrics = one_leaf.metrics["leaf-0"]
    async with aiohttp.ClientSession() as http:
        await _model_ready(http, one_leaf.proxy_url, job_id)
        reader, writer, _ = await _ask_task(port, job_id, "leaver")
        await reader.readexactly(100_000)
        writer.transport.abort()  # the device is gone mid-download
        counts = await metrics_until(http, metrics, DOWNLOAD_STREAMS, cancelled_once)
    assert counts.get('edgefl_leaf_download_streams_total{outcome="cancelled"}') == 1, counts
    assert counts.get("edgefl_leaf_download_streams_open") == 0, counts


async def test_a_leaf_stopping_finishes_the_downloads_it_is_streaming(one_leaf: Stack) -> None:
    job_id = await _job(one_leaf, 8)
    port = int(one_leaf.proxy_url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        await _model_ready(http, one_leaf.proxy_url, job_id)
        reader, writer, length = await _ask_task(port, job_id, "reader")
        first = await reader.readexactly(100_000)
        leaf = child(one_leaf, "leaf-0")
        stopping = asyncio.ensure_future(terminate(leaf, bound=30))
        # The device reads on only after the leaf's quiet second of draining has passed.
        await asyncio.sleep(2.5)
        rest = await asyncio.wait_for(reader.readexactly(length - len(first)), 20)
        writer.close()
        await stopping
    assert msgpack.unpackb(first + rest)["status"] == "OK"
