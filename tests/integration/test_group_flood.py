"""Simulator-group flood (issue 11 item 3) through a real proxy, two leaves and a server.

Any client naming no platform may announce `<prefix>?N` as NVFlare's simulator does. Before the
bounds, 1,000 announcements with 30 kB prefixes made every leaf heartbeat 30 MB and rewrote the
server's `state.json` (with an fsync, on its event loop) 1,000 times. Now a device id over 256
characters is refused by the proxy before any leaf sees it, a prefix over 64 characters by the
leaf, a job takes at most 32 groups, the sync carries a version number instead of the groups, and
honest devices are served throughout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from edge_gateway.device_groups import MAX_GROUPS
from edge_gateway.launcher import Stack
from internal_link.client import LinkClient
from internal_link.messages import JobStatus, SyncRequest
from routing_proxy.routing import Router

from .clients import IosDevice
from .helpers import job_status, submit_job, wait_for, wait_leaves_synced
from .stack_control import server_ports
from .test_late_and_duplicate_results import join, result_body, result_query, take_task

FLOOD = 1_000
PREFIX_BYTES = 30_000
LONG_PREFIX = 200  # within the proxy's id bound (256), past the groups' (64)
CONCURRENCY = 20
FLOOD_BOUND = 300.0  # seconds for the whole flood: the loop is bounded in count and in time
PROBE_BOOT = uuid.uuid4().hex  # one process as far as the server knows: it refuses a name's second boot
SIMULATOR_INFO = "app_name=flare_mobile&app_version=1.0&platform=None&platform_version=None"


def simulator(device_id: str) -> dict[str, str]:
    """NVFlare's simulator's headers (docs/NVFLARE_SIMULATOR.md §4): it names no platform."""
    return {
        "X-Flare-Device-ID": device_id,
        "X-Flare-Device-Info": SIMULATOR_INFO,
        "X-Flare-User-Info": "user_id=demo_id&auth_token=None",
        "Content-Type": "application/json",
    }


async def answer(http: aiohttp.ClientSession, proxy: str, job_id: str, device_id: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{proxy}/selection?job_id={quote(job_id)}", data=b"{}", headers=simulator(device_id)) as r:
        return r.status, dict(orjson.loads(await r.read()))


async def selection(http: aiohttp.ClientSession, proxy: str, job_id: str, device_id: str) -> dict[str, Any]:
    status, body = await answer(http, proxy, job_id, device_id)
    assert status == 200, body
    return body


async def sync_reply_bytes(stack: Stack, run_dir: Path) -> int:
    """The size of one leaf heartbeat's answer, as a leaf gets it from the server's link."""
    client = LinkClient("127.0.0.1", server_ports(run_dir)["link_port"], stack.env["EDGEFL_LINK_SECRET"].encode())
    await client.start()
    try:
        assert await client.wait_connected(10.0)
        reply = await client.call("sync", SyncRequest(leaf="probe", boot=PROBE_BOOT).model_dump(), 30.0)
    finally:
        await client.close()
    return len(orjson.dumps(reply))


async def flood(
    http: aiohttp.ClientSession, proxy: str, job_id: str, device_ids: list[str]
) -> list[tuple[int, dict[str, Any]]]:
    """Every id announced once, CONCURRENCY at a time, within FLOOD_BOUND seconds."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(device_id: str) -> tuple[int, dict[str, Any]]:
        async with gate:
            return await answer(http, proxy, job_id, device_id)

    return await asyncio.wait_for(asyncio.gather(*(one(d) for d in device_ids)), FLOOD_BOUND)


async def honest_polls(device: IosDevice, stop: asyncio.Event) -> list[float]:
    """/job polls of a phone while the flood runs: each one's seconds (bounded in count)."""
    seconds = []
    for _ in range(2_000):
        if stop.is_set():
            break
        started = time.perf_counter()
        reply = await device.post("job", "", {"job_name": device.job_name, "capabilities": {"methods": ["xor"]}})
        seconds.append(time.perf_counter() - started)
        assert reply["status"] == "OK", reply
        await asyncio.sleep(0.05)
    return seconds


async def test_a_flood_of_group_announcements_leaves_heartbeats_small_and_devices_served(
    stack: Stack, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    proxy = stack.proxy_url
    job_id = await submit_job(
        stack.api_url,
        name="xor_groups",
        model="xor",
        rounds=1,
        devices_per_round=1,
        retry_wait=1,
        round_timeout=600.0,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, 2)
    # The real simulator announces its group first; its listing must survive the flood.
    assert (await selection(http, proxy, job_id, "legit?3"))["status"] == "OK"
    before = await sync_reply_bytes(stack, tmp_path)

    phone = IosDevice(http, proxy, "honest-phone", "xor_groups")
    stop = asyncio.Event()
    polling = asyncio.create_task(honest_polls(phone, stop))
    try:
        huge_ones = await flood(http, proxy, job_id, [f"{i:05d}" + "x" * PREFIX_BYTES + "?100" for i in range(FLOOD)])
        long_ones = await flood(http, proxy, job_id, [f"{i:05d}" + "x" * LONG_PREFIX + "?100" for i in range(FLOOD)])
        short_ones = await flood(http, proxy, job_id, [f"flood-{i}?100" for i in range(FLOOD)])
    finally:
        stop.set()
        poll_seconds = await polling

    too_long = {"status": "INVALID_REQUEST", "message": "Device ID longer than 256 characters"}
    assert all(r == (400, too_long) for r in huge_ones), [r for r in huge_ones if r != (400, too_long)][:1]
    assert all(
        status == 200
        and r["status"] == "RETRY"
        and r["message"] == "simulated device group refused: prefix longer than 64 characters"
        for status, r in long_ones
    ), [r for r in long_ones if r[1]["status"] != "RETRY"][:1]
    accepted = [r for status, r in short_ones if r["status"] == "OK"]
    assert len(accepted) == MAX_GROUPS - 1  # "legit" holds one
    refused = {r.get("message") for status, r in short_ones if r["status"] != "OK"}
    assert refused == {f"simulated device group refused: more than {MAX_GROUPS} groups for this job"}

    # Heartbeats carry a version, not the groups: the same size, give or take its digits.
    after = await sync_reply_bytes(stack, tmp_path)
    assert after - before < 64, (before, after)
    status = await wait_for(stack.api_url, job_id, lambda s: s["groups_refused"] >= 2 * FLOOD - MAX_GROUPS + 1)
    assert status["device_groups"] == MAX_GROUPS, status
    # state.json holds at most 32 short prefixes (it held every 30 kB one, rewritten each time).
    await asyncio.sleep(1.0)  # the server's next tick writes it
    assert (tmp_path / "server" / "jobs" / job_id / "state.json").stat().st_size < 64 * 1024

    # Honest polls were served all along; so is the simulator, on whichever leaf it lands.
    assert poll_seconds and max(poll_seconds) < 5.0, max(poll_seconds)
    print(f"\n/job during the flood: {len(poll_seconds)} polls, max {max(poll_seconds) * 1e3:.0f} ms")
    print(f"sync reply: {before} bytes before, {after} after")
    router = Router(list(orjson.loads(stack.lcp_map.read_bytes())))
    observers = {router.ranking(f"observer-{i}")[0]: f"observer-{i}" for i in range(32)}
    assert len(observers) == 2
    for observer in observers.values():
        listed = (await selection(http, proxy, job_id, observer))["selection"]
        assert {f"legit#{i}" for i in range(3)} <= set(listed)
        assert not any(len(device) > 70 for device in listed)
    await join(phone)
    task = await take_task(phone, job_id)
    answer = await phone.post("result", result_query(job_id, task), result_body(phone, task))
    assert answer["status"] == "OK" and answer["counted"], answer
    done = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=30.0)
    assert done["results_counted"] == 1 and (await job_status(stack.api_url, job_id))["late"] == 0
