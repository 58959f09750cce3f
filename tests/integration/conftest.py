"""Integration fixtures: a real stack (server, leaves, proxy) as separate processes on loopback,
stopped by PID after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge_gateway.launcher import Stack, start_stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await start_stack(tmp_path, leaves=2, proxy_host="127.0.0.1", proxy_port=0)
    try:
        yield stack
    finally:
        await stack.stop()


@pytest.fixture
async def one_leaf(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await start_stack(tmp_path, leaves=1, proxy_host="127.0.0.1", proxy_port=0)
    try:
        yield stack
    finally:
        await stack.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
