"""The server's link handlers answer with error codes, and the leaf tells them apart.

A real server and a real leaf in this process, on the real link over 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_gateway.config import LeafConfig, ServerConfig
from edge_gateway.jobs import JobSpec
from edge_gateway.leaf import Leaf
from edge_gateway.models import initial_weights
from edge_gateway.server import Server
from internal_link.calls import DeviceAnswer, DeviceCall
from internal_link.client import LinkClient
from internal_link.errors import ErrorCode, RemoteError

SPEC = JobSpec(name="xor", model="xor", rounds=3, devices_per_round=1, evaluate=False)
SECRET = "link errors test"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    server = Server(ServerConfig(data_dir=tmp_path, http_port=0, link_port=0, link_secret=SECRET))
    server.coordinator.add_job("j", SPEC, initial_weights("xor", 0), time.monotonic())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[LinkClient]:
    client = LinkClient("127.0.0.1", server.link_port, SECRET.encode(), name="test->server")
    await client.start()
    assert await client.wait_connected(10)
    try:
        yield client
    finally:
        await client.close()


async def refused(client: LinkClient, method: str, payload: Any) -> ErrorCode:
    with pytest.raises(RemoteError) as info:
        await client.call(method, payload, 10.0)
    return info.value.code


async def test_server_refusals_carry_their_code(client: LinkClient) -> None:
    register = {"job_id": "j", "prefix": "sim", "count": 5}
    assert await client.call("register", register, 10.0) is None
    assert await refused(client, "register", {**register, "job_id": "nope"}) is ErrorCode.UNKNOWN_JOB
    assert await refused(client, "register", {**register, "count": 200_000}) is ErrorCode.TOO_MANY_DEVICES
    assert await refused(client, "model", {"job_id": "j", "version": 7}) is ErrorCode.NOT_CURRENT
    assert await refused(client, "model", {"job_id": "nope", "version": 0}) is ErrorCode.UNKNOWN_JOB
    assert await refused(client, "sync", {"leaf": 1}) is ErrorCode.BAD_PAYLOAD
    assert await refused(client, "nothing", None) is ErrorCode.UNKNOWN_METHOD
    assert "weights" in await client.call("model", {"job_id": "j", "version": 0}, 10.0)


def selection(device_id: str) -> DeviceCall:
    # NVFlare's simulator names no platform (docs/NVFLARE_SIMULATOR.md §4).
    headers = {"x-flare-device-id": device_id, "x-flare-device-info": f"device_id={device_id}"}
    return DeviceCall("selection", {"job_id": "j"}, headers, b"", 10.0)


async def answer(leaf: Leaf, call: DeviceCall) -> dict[str, Any]:
    outcome = leaf.handle_feg(call)
    reply = await outcome if isinstance(outcome, Awaitable) else outcome
    http_status, _, body = DeviceAnswer.check(list(reply))
    assert http_status == 200
    return dict(orjson.loads(body))


async def test_leaf_says_too_many_devices_only_when_that_is_the_reason(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = LeafConfig(port=0, server_port=server.link_port, link_secret=SECRET, quota_hold=0.0, data_dir=tmp_path)
    leaf = Leaf(config)
    await leaf.start()
    try:
        async with asyncio.timeout(10):
            while "j" not in leaf.jobs:
                await asyncio.sleep(0.02)
        ok = await answer(leaf, selection("sim?3"))
        assert ok["status"] == "OK" and {"sim#0", "sim#1", "sim#2"} <= set(ok["selection"])

        too_many = await answer(leaf, selection("big?200000"))
        assert too_many["status"] == "RETRY"
        assert too_many["message"] == "simulated device group refused: too many devices for this job"

        def broken(job_id: str, prefix: str, count: int) -> bool:
            raise OSError("No space left on device")

        monkeypatch.setattr(server.coordinator, "register_group", broken)  # the server fails for another reason
        failed = await answer(leaf, selection("other?4"))
        assert failed["status"] == "RETRY"
        assert "too many devices" not in failed["message"], failed
        assert failed["message"] == "simulated device group refused: INTERNAL"
    finally:
        await leaf.stop()


def task(device_id: str, wait: float) -> DeviceCall:
    headers = {"x-flare-device-id": device_id, "x-flare-device-info": f"device_id={device_id}&platform=android"}
    return DeviceCall("task", {"job_id": "j"}, headers, b"", wait)


async def test_a_held_task_is_answered_within_the_time_the_proxy_still_waits(tmp_path: Path) -> None:
    # A /task with no slot here while the server has some free waits for a sync (quota_hold); the
    # server is gone, so the hold runs out: after `wait`, not after the much longer quota_hold.
    server = Server(ServerConfig(data_dir=tmp_path, http_port=0, link_port=0, link_secret=SECRET))
    server.coordinator.add_job("j", SPEC, initial_weights("xor", 0), time.monotonic())
    await server.start()
    leaf = Leaf(
        LeafConfig(
            port=0, server_port=server.link_port, link_secret=SECRET, quota_hold=20.0, data_dir=tmp_path / "leaf"
        )
    )
    await leaf.start()
    try:
        async with asyncio.timeout(10):
            while leaf._payloads.get("j") is None:  # synced, and the model is servable
                await asyncio.sleep(0.02)
        await server.stop()
        view = leaf.jobs["j"].view
        assert view.quota == 0 and view.free_slots > 0  # no device asked yet: the hold applies
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await answer(leaf, task("phone-1", wait=0.5))
        held = loop.time() - started
        assert reply["status"] == "RETRY" and reply["message"] == "Device not selected", reply
        assert held < 10.0  # bounded by `wait` (0.5 s), far from quota_hold's 20 s
    finally:
        await leaf.stop()
