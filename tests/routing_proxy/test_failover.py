"""Upstream failures: the proxy answers RETRY (PROTOCOL.md §8) and moves only a dead leaf's devices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from pytest import LogCaptureFixture

from internal_link.calls import DeviceCall

from .helpers import Leaf, Proxy, echoed, wait_for

MakeLeaf = Callable[..., Awaitable[Leaf]]
MakeProxy = Callable[..., Awaitable[Proxy]]

DEVICES = [f"device-{i}" for i in range(120)]
RETRY = {"status": "RETRY"}


async def leaf_of(http: aiohttp.ClientSession, proxy: Proxy, device: str) -> str:
    headers = {"X-Flare-Device-ID": device}
    async with http.post(f"{proxy.url}/task?job_id=J", headers=headers) as reply:
        assert reply.status == 200
        body = await reply.read()
    if reply.content_type == "application/json":
        return "RETRY" if orjson.loads(body) == RETRY else body.decode()
    return str(echoed(body)["leaf"])


async def placement(http: aiohttp.ClientSession, proxy: Proxy) -> dict[str, str]:
    leaves = await asyncio.gather(*(leaf_of(http, proxy, device) for device in DEVICES))
    return dict(zip(DEVICES, leaves))


async def assert_retry(http: aiohttp.ClientSession, proxy: Proxy, device: str = "D") -> None:
    async with http.post(f"{proxy.url}/task?job_id=J", headers={"X-Flare-Device-ID": device}) as reply:
        assert reply.status == 200
        assert reply.content_type == "application/json"
        assert orjson.loads(await reply.read()) == RETRY


async def test_no_leaf_reachable_is_retry(leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession) -> None:
    leaf = await leaves("C11")
    await leaf.stop()
    px = await proxy([leaf], wait_healthy=False)
    started = time.monotonic()
    await assert_retry(http, px)
    assert time.monotonic() - started < 1.0  # at once, not after the upstream timeout


async def test_wrong_link_secret_is_no_healthy_leaf(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    leaf = await leaves("C11", secret=b"another secret")
    px = await proxy([leaf], wait_healthy=False)
    await asyncio.sleep(0.3)
    assert not px.upstreams.members[0].client.connected
    await assert_retry(http, px)
    assert leaf.received == []


async def test_a_dead_leafs_devices_move_and_come_back(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    a, b, c = await leaves("A"), await leaves("B"), await leaves("C")
    px = await proxy([a, b, c])
    before = await placement(http, px)
    assert set(before.values()) == {"A", "B", "C"}
    assert await placement(http, px) == before  # stable while every leaf is healthy

    await a.stop()
    await wait_for(lambda: not px.upstreams.members[0].healthy)
    during = await placement(http, px)
    for device, leaf in before.items():
        if leaf == "A":
            assert during[device] in ("B", "C")
        else:
            assert during[device] == leaf, "a healthy leaf's device moved"
    # The dead leaf's devices spread over the survivors rather than piling onto one.
    assert {during[d] for d, leaf in before.items() if leaf == "A"} == {"B", "C"}

    await a.start()  # back on the same port
    await wait_for(lambda: px.upstreams.members[0].healthy)
    assert await placement(http, px) == before


async def test_fails_over_at_once_when_the_preferred_leaf_is_not_connected(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    a, b = await leaves("A"), await leaves("B")
    # Health checks far apart: only the link's own state can tell that A is gone.
    px = await proxy([a, b], health_interval=60)
    before = await placement(http, px)
    await a.stop()
    await wait_for(lambda: not px.upstreams.members[0].client.connected)
    assert px.upstreams.members[0].ping_ok  # no ping noticed yet
    assert "A" in before.values()
    assert set((await placement(http, px)).values()) == {"B"}


async def test_deadline_is_retry_and_not_resent(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession, caplog: LogCaptureFixture
) -> None:
    async def stuck(call: DeviceCall) -> list[Any]:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    slow, other = await leaves("slow", stuck), await leaves("other")
    px = await proxy([slow, other], upstream_timeout=0.3)
    device = next(d for d in DEVICES if px.upstreams.router.ranking(d)[0] == 0)
    started = time.monotonic()
    await assert_retry(http, px, device)
    assert 0.3 <= time.monotonic() - started < 2.0
    assert len(slow.received) == 1
    assert other.received == []  # a call that was sent is not re-sent elsewhere
    assert any("no answer within 0.3" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


async def test_leaf_dying_mid_request_is_retry(leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession) -> None:
    arrived = asyncio.Event()

    async def hang(call: DeviceCall) -> list[Any]:
        arrived.set()
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    leaf = await leaves("C11", hang)
    px = await proxy([leaf])
    request = asyncio.ensure_future(assert_retry(http, px))
    await asyncio.wait_for(arrived.wait(), 5)
    started = time.monotonic()
    await leaf.stop()
    await asyncio.wait_for(request, 5)
    assert time.monotonic() - started < 1.0


async def test_leaf_handler_error_is_retry(leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession) -> None:
    async def broken(call: DeviceCall) -> list[Any]:
        raise RuntimeError("bug in the leaf")

    px = await proxy([await leaves("C11", broken)])
    await assert_retry(http, px)


async def test_malformed_leaf_result_is_retry(leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession) -> None:
    results = iter([[200, "application/json"], "nonsense", [200, "application/json", "not bytes"], [99, "x", b""]])

    async def odd(call: DeviceCall) -> Any:
        return next(results)

    px = await proxy([await leaves("C11", odd)])
    for _ in range(4):
        await assert_retry(http, px)


async def test_a_silent_leaf_releases_its_requests_when_marked_unhealthy(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A partition sends no reset: the link looks up, nothing comes back. Requests waiting on that
    leaf are answered RETRY once its pings fail, not at the 20 s deadline, and new ones go elsewhere."""
    silent, other = await leaves("silent"), await leaves("other")
    px = await proxy([silent, other], upstream_timeout=20.0, health_interval=0.1, health_timeout=0.5)
    device = next(d for d in DEVICES if px.upstreams.router.ranking(d)[0] == 0)
    server = silent._server
    assert server is not None
    for link in server.links:  # the leaf stops reading: pings and requests go unanswered
        assert link.transport is not None
        link.transport.pause_reading()
    started = time.monotonic()
    await assert_retry(http, px, device)
    assert time.monotonic() - started < 3.0
    assert await leaf_of(http, px, device) == "other"
