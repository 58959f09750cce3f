"""Proxy fixtures: real leaves (a `LinkServer` whose `FEG` handler echoes what it got) and real proxies,
all on 127.0.0.1 port 0, under both event loops."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from routing_proxy.config import ProxyConfig
from routing_proxy.server import ProxyServer

from .helpers import SECRET, FegHandler, Leaf, Proxy, wait_for, write_lcp_map


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
async def leaves() -> AsyncIterator[Callable[..., Awaitable[Leaf]]]:
    started: list[Leaf] = []

    async def make(
        name: str, feg: FegHandler | None = None, secret: bytes = SECRET, tls: ssl.SSLContext | None = None
    ) -> Leaf:
        leaf = Leaf(name, feg, secret, tls)
        await leaf.start()
        started.append(leaf)
        return leaf

    try:
        yield make
    finally:
        for leaf in started:
            await leaf.stop()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    """`await proxy(leaves, **config)`: a proxy in this process routing to those leaves."""
    servers: list[ProxyServer] = []

    async def make(leaves: list[Leaf], wait_healthy: bool = True, **settings: Any) -> Proxy:
        lcp_map = write_lcp_map(tmp_path / f"lcp_map{len(servers)}.json", leaves)
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "lcp_map": lcp_map,
            "link_secret": SECRET.decode(),
            "health_interval": 0.05,
            "health_timeout": 1.0,
            "upstream_timeout": 5.0,
            "drain_timeout": 5.0,
        }
        values.update(settings)
        server = ProxyServer(ProxyConfig(**values))
        servers.append(server)
        made = Proxy(server, await server.start())
        if wait_healthy:
            await wait_for(lambda: all(u.healthy for u in made.upstreams.members))
        return made

    try:
        yield make
    finally:
        for server in servers:
            await server.drain()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
