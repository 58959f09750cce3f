from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from .fake_feg import FakeFeg

StartFeg = Callable[..., Awaitable[tuple[FakeFeg, str]]]


@pytest.fixture
async def start_feg() -> AsyncIterator[StartFeg]:
    """Start a `FakeFeg(**options)` on 127.0.0.1:0; returns (server, base URL)."""
    servers: list[FakeFeg] = []

    async def start(**options: Any) -> tuple[FakeFeg, str]:
        server = FakeFeg(**options)
        url = await server.start()
        servers.append(server)
        return server, url

    yield start
    for server in servers:
        await server.close()


@pytest.fixture(params=["json", "msgpack"])
def codec(request: pytest.FixtureRequest) -> str:
    return request.param
