"""Simulator groups between leaves and server (issue 11 item 3): announced through one leaf,
listed by every leaf, fetched by version rather than carried by every sync, and written to disk
with the server's next tick rather than once per announcement.

A real server and two real leaves in this process, on the real link over 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from edge_gateway.config import LeafConfig, ServerConfig
from edge_gateway.leaf import Leaf
from edge_gateway.models import initial_weights
from edge_gateway.server import Server
from internal_link.messages import SyncRequest

from .test_link_errors import SECRET, SPEC, answer, selection


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    server = Server(ServerConfig(data_dir=tmp_path / "server", http_port=0, link_port=0, link_secret=SECRET))
    server.coordinator.add_job("j", SPEC, initial_weights("xor", 0), time.monotonic())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def leaves(server: Server, tmp_path: Path) -> AsyncIterator[list[Leaf]]:
    started = []
    try:
        for name in ("a", "b"):
            config = LeafConfig(
                name=name, port=0, server_port=server.link_port, link_secret=SECRET, data_dir=tmp_path / name
            )
            leaf = Leaf(config)
            await leaf.start()
            started.append(leaf)
        async with asyncio.timeout(10):
            while not all("j" in leaf.jobs for leaf in started):
                await asyncio.sleep(0.02)
        yield started
    finally:
        for leaf in started:
            await leaf.stop()


def sync_bytes(server: Server) -> int:
    reply = server.coordinator.sync(SyncRequest(leaf="a", boot="x"), time.monotonic())
    return len(orjson.dumps(reply.model_dump()))


async def test_a_group_announced_at_one_leaf_is_listed_by_the_other(server: Server, leaves: list[Leaf]) -> None:
    first, second = leaves
    before = sync_bytes(server)
    prefix = "simulator-" + "0" * 50  # as long as a prefix may be nearly
    assert (await answer(first, selection(f"{prefix}?3")))["status"] == "OK"
    async with asyncio.timeout(10):  # the other leaf hears of the new version with its next sync
        while second.jobs["j"].view.groups_version == 0:
            await asyncio.sleep(0.02)
    listed = (await answer(second, selection("dummy")))["selection"]
    assert {f"{prefix}#{i}" for i in range(3)} <= set(listed)
    assert sync_bytes(server) - before < 8  # a version number, not the groups


async def test_groups_reach_the_disk_at_the_next_tick_not_at_each_announcement(
    server: Server, leaves: list[Leaf], monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[str] = []
    checkpoint = server._checkpoint
    monkeypatch.setattr(server, "_checkpoint", lambda job_id: (saved.append(job_id), checkpoint(job_id)))
    for i in range(20):
        assert (await answer(leaves[0], selection(f"sim{i}?2")))["status"] == "OK"
    assert len(saved) <= 2  # at most the tick or two these took, however many groups came
    await asyncio.sleep(2 * server.config.tick_interval)
    state = orjson.loads((server.config.data_dir / "jobs" / "j" / "state.json").read_bytes())
    assert state["device_groups"] == {f"sim{i}": 2 for i in range(20)}


async def test_a_prefix_too_long_is_refused_at_the_leaf_and_counted(server: Server, leaves: list[Leaf]) -> None:
    refused = await answer(leaves[0], selection("p" * 65 + "?3"))
    assert refused == {
        "status": "RETRY",
        "retry_wait": SPEC.retry_wait,
        "message": "simulated device group refused: prefix longer than 64 characters",
    }
    assert leaves[0].jobs["j"].groups_refused == 1
    assert server.coordinator.job("j").device_groups.groups == {}


async def test_after_a_server_restart_a_leaf_fetches_the_groups_again_whatever_their_version(
    server: Server, leaves: list[Leaf], tmp_path: Path
) -> None:
    first, second = leaves
    for name in ("g1", "g2"):
        assert (await answer(first, selection(f"{name}?2")))["status"] == "OK"
    assert set((await answer(first, selection("dummy")))["selection"]) == {"g1#0", "g1#1", "g2#0", "g2#1"}
    assert first.jobs["j"].groups_version == 2
    await server.stop()  # writes the groups; the new process restores them as version 1
    config = server.config.model_copy(update={"link_port": server.link_port})
    restarted = Server(config)
    await restarted.start()
    try:
        async with asyncio.timeout(20):
            while not all(leaf._server.server_boot == restarted.coordinator.boot for leaf in leaves):
                await asyncio.sleep(0.05)
        # The other leaf announces one more: version 2 again, as the first leaf last fetched.
        assert (await answer(second, selection("g3?2")))["status"] == "OK"
        assert restarted.coordinator.job("j").device_groups.version == 2
        async with asyncio.timeout(10):
            while first.jobs["j"].view.groups_version != 2:
                await asyncio.sleep(0.02)
        assert {"g3#0", "g3#1"} <= set((await answer(first, selection("dummy")))["selection"])
    finally:
        await restarted.stop()
