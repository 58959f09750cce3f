"""The proxy's /metrics port: what devices' requests add to it, and what else it answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from .helpers import Leaf, Proxy

MakeLeaf = Callable[..., Awaitable[Leaf]]
MakeProxy = Callable[..., Awaitable[Proxy]]
DEVICE = {"X-Flare-Device-ID": "DEV-1", "Content-Type": "application/json"}


async def scrape(http: aiohttp.ClientSession, proxy: Proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(f"http://127.0.0.1:{proxy.server.metrics_port}/metrics") as reply:
        assert reply.status == 200
        text = await reply.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def raw(proxy: Proxy, request: bytes) -> bytes:
    """Send bytes as they are (what aiohttp would not send) and read the answer to the end."""
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_answers_refusals_bytes_and_links_are_counted(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    leaf = await leaves("C11")
    p = await proxy([leaf], metrics_port=0, max_poll_body_bytes=1000)
    async with http.post(f"{p.url}/job", data=b"{}", headers=DEVICE) as reply:
        assert reply.status == 200
    async with http.post(f"{p.url}/job", data=b"{}", headers={"Content-Type": "application/json"}) as reply:
        assert reply.status == 400  # no device id
    async with http.get(f"{p.url}/nowhere", headers=DEVICE) as reply:
        assert reply.status == 404
    async with http.post(f"{p.url}/task", data=b"x" * 2000, headers=DEVICE) as reply:
        assert reply.status == 413
    assert b" 400 " in await raw(p, b"GET /job HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    samples = await scrape(http, p)
    assert samples["edgefl_proxy_answers_total", (("code", "200"), ("endpoint", "job"))] == 1
    refusals = {
        dict(labels)["reason"]: v for (name, labels), v in samples.items() if name == "edgefl_proxy_refusals_total"
    }
    assert refusals == {"device_id_missing": 1, "unknown_endpoint": 1, "body_too_large": 1, "malformed_http": 1}
    assert samples["edgefl_proxy_received_bytes_total", ()] > 2000
    assert samples["edgefl_proxy_sent_bytes_total", ()] > 0
    assert samples["edgefl_proxy_leaf_healthy", (("leaf", "C11"),)] == 1
    assert samples["edgefl_proxy_sessions", ()] == 0
    assert samples["process_resident_memory_bytes", ()] > 1e6


async def test_a_dead_leaf_shows_as_unhealthy_and_its_devices_as_unanswered(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    leaf = await leaves("C11")
    p = await proxy([leaf], metrics_port=0)
    await leaf.stop()
    async with http.post(f"{p.url}/task", data=b"{}", headers=DEVICE) as reply:
        assert orjson.loads(await reply.read()) == {"status": "RETRY"}
    samples = await scrape(http, p)
    assert samples["edgefl_proxy_unanswered_total", (("cause", "no_leaf"), ("endpoint", "task"))] == 1
    assert samples["edgefl_proxy_leaf_connected", (("leaf", "C11"),)] == 0
    assert samples["edgefl_proxy_leaf_healthy", (("leaf", "C11"),)] == 0


async def test_the_metrics_port_serves_only_metrics(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    p = await proxy([await leaves("C11")], metrics_port=0)
    base = f"http://127.0.0.1:{p.server.metrics_port}"
    async with http.get(f"{base}/job") as reply:
        assert reply.status == 404 and (await reply.json())["status"] == "INVALID_REQUEST"
    async with http.post(f"{base}/metrics") as reply:
        assert reply.status == 405 and reply.headers["Allow"] == "GET, HEAD"
    # Nor do devices reach the metrics on their port.
    async with http.get(f"{p.url}/metrics", headers=DEVICE) as reply:
        assert reply.status == 404


async def test_no_metrics_port_unless_asked(leaves: MakeLeaf, proxy: MakeProxy) -> None:
    p = await proxy([await leaves("C11")])
    assert p.server.metrics_port is None
