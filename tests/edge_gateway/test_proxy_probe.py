"""The proxy's /health as the status page fetches it (proxy_probe.py): over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from edge_gateway.processes import free_port
from edge_gateway.proxy_probe import ProxyProbe

HEALTH = {"status": "OK", "healthy": 1, "leaves": {"leaf-0": {"healthy": True, "host": "h", "port": 1}}, "edgefl": "9"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/health", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_health_is_fetched_and_kept_for_max_age(serve) -> None:
    asked = 0

    async def health(request: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        return web.json_response(HEALTH)

    probe = ProxyProbe(await serve(health), max_age=30.0)
    try:
        answers = await asyncio.gather(*(probe.health() for _ in range(5)))
    finally:
        await probe.close()
    assert asked == 1
    assert answers[0]["reachable"] and answers[0]["healthy"] == 1 and answers[0]["status"] == "OK"
    assert answers[0]["leaves"] == {"leaf-0": {"healthy": True}} and answers[0]["edgefl"] == "9"


async def test_a_dead_proxy_is_unreachable_not_an_exception() -> None:
    probe = ProxyProbe(f"http://127.0.0.1:{free_port()}")
    try:
        answer = await probe.health()
    finally:
        await probe.close()
    assert answer["reachable"] is False and answer["error"]


async def test_something_else_on_the_port_is_named_as_such(serve) -> None:
    async def not_a_proxy(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>")

    probe = ProxyProbe(await serve(not_a_proxy))
    try:
        answer = await probe.health()
    finally:
        await probe.close()
    assert answer == {"url": probe.url, "reachable": False, "error": "its /health is not a routing proxy's"}


async def test_a_stalled_proxy_costs_the_page_at_most_the_timeout(serve) -> None:
    release = asyncio.Event()

    async def stalled(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 30)
        return web.json_response(HEALTH)

    probe = ProxyProbe(await serve(stalled), timeout=0.5)
    started = time.monotonic()
    try:
        answer = await probe.health()
    finally:
        release.set()  # the server's teardown need not wait for the handler
        await probe.close()
    assert answer["reachable"] is False and time.monotonic() - started < 5.0
