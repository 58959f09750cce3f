"""State that must not only grow (issue 11 item 6): finished jobs leave the server's memory and the
leaves' syncs, stay listed from disk and can be deleted; leaves keep only the payloads still served."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from edge_gateway.jobs import JobSpec
from edge_gateway.launcher import Stack, start_stack
from edge_gateway.leaf.task_payload import TaskPayload
from internal_link.client import LinkClient
from internal_link.messages import JobStatus, SyncReply, SyncRequest
from internal_link.process import link_secret

from .helpers import submit_job
from .load import assert_no_device_refused, start_devices
from .stack_control import child, kill, restart_server, server_ports
from .test_job_cli import job_cli

DEVICE = {"X-Flare-Device-ID": "phone-1", "Content-Type": "application/json"}


@pytest.fixture
async def retiring_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    """One leaf; finished jobs are retired one second after they finish."""
    monkeypatch.setenv("EDGEFL_SERVER_RETIRE_AFTER", "1")
    stack = await start_stack(tmp_path, leaves=1, proxy_host="127.0.0.1", proxy_port=0)
    try:
        yield stack
    finally:
        await stack.stop()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as reply:
        return reply.status, orjson.loads(await reply.read())


async def jobs_in_memory(http: aiohttp.ClientSession, stack: Stack, expected: int, timeout: float = 30.0) -> None:
    """Until the server holds `expected` jobs in memory (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (health := (await get(http, f"{stack.api_url}/api/health"))[1])["jobs"] != expected:
        assert loop.time() < deadline, f"still {health['jobs']} jobs in memory, not {expected}"
        await asyncio.sleep(0.2)


async def synced_jobs(stack: Stack, run_dir: Path) -> list[str]:
    """The job ids the server sends a leaf in its sync, asked over the link as a leaf does."""
    client = LinkClient(
        "127.0.0.1",
        server_ports(run_dir)["link_port"],
        link_secret(stack.env["EDGEFL_LINK_SECRET"]),
        name="probe->server",
    )
    await client.start()
    try:
        assert await client.wait_connected(10)
        request = SyncRequest(leaf="probe", boot=uuid.uuid4().hex)
        reply = SyncReply.model_validate(await client.call("sync", request.model_dump(), 5.0))
        return [view.job_id for view in reply.jobs]
    finally:
        await client.close()


async def ask_device(http: aiohttp.ClientSession, stack: Stack, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{stack.proxy_url}{path}", data=orjson.dumps(body), headers=DEVICE) as reply:
        return dict(orjson.loads(await reply.read()))


async def test_finished_jobs_retire_to_disk_and_can_be_deleted(
    retiring_stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    stack = retiring_stack
    api = stack.api_url
    running = await submit_job(api, name="keeps-running", model="xor", rounds=50, evaluate=False)
    finished = [await submit_job(api, name=f"short-{i}", model="xor", rounds=5, evaluate=False) for i in range(3)]
    for job_id in finished:
        async with http.post(f"{api}/api/jobs/{job_id}/end") as reply:
            assert reply.status == 200
    await jobs_in_memory(http, stack, 1)
    assert await synced_jobs(stack, tmp_path) == [running]

    # Still listed, read from disk; its model still downloads.
    status, listed = await get(http, f"{api}/api/jobs")
    by_id = {job["job_id"]: job for job in listed["jobs"]}
    assert status == 200 and set(by_id) == {running, *finished}
    assert not by_id[running]["retired"] and by_id[running]["status"] == JobStatus.RUNNING
    assert all(by_id[j]["retired"] and by_id[j]["status"] == JobStatus.DONE for j in finished)
    status, one = await get(http, f"{api}/api/jobs/{finished[0]}")
    assert status == 200 and one["name"] == "short-0" and one["retired"] and one["model_version"] == 0
    async with http.get(f"{api}/api/jobs/{finished[0]}/model") as reply:
        assert reply.status == 200 and reply.headers["X-Model-Version"] == "0"
        assert (await reply.read())[:2] == b"PK"  # an .npz
    status, no_program = await get(http, f"{api}/api/jobs/{finished[0]}/model.pte")
    assert status == 404 and "retired" in no_program["message"]

    # Devices hear that the job is over (PROTOCOL.md §4) from the leaf that no longer knows it.
    assert (await ask_device(http, stack, "/job", {"job_name": "short-0", "capabilities": {"methods": ["xor"]}}))[
        "status"
    ] == "NO_JOB"
    assert (await ask_device(http, stack, f"/task?job_id={finished[0]}", {}))["status"] == "NO_JOB"

    # `job delete`: a running job is refused with a reason; a retired one goes, checkpoints and all.
    code, refused = await job_cli(api, "delete", running)
    assert code == 1 and refused["status"] == "ERROR" and "is running: end it first" in refused["message"]
    code, deleted = await job_cli(api, "delete", finished[0])
    assert code == 0 and deleted["status"] == "OK"
    assert not (tmp_path / "server" / "jobs" / finished[0]).exists()
    assert (await get(http, f"{api}/api/jobs/{finished[0]}"))[0] == 404
    code, again = await job_cli(api, "delete", finished[0])
    assert code == 1 and again["message"] == f"no job {finished[0]!r}"

    # A restarted server loads only the job still running; the retired ones stay listed.
    await kill(child(stack, "server"))
    await restart_server(stack, tmp_path)
    await jobs_in_memory(http, stack, 1)
    _, listed = await get(http, f"{api}/api/jobs")
    assert {job["job_id"] for job in listed["jobs"]} == {running, *finished[1:]}
    assert await synced_jobs(stack, tmp_path) == [running]


async def test_jobs_run_to_their_end_leave_memory_with_their_last_evaluation(
    retiring_stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Three short jobs run by devices to their last round (not ended by hand): each leaves memory
    # once its last model is evaluated, and its devices stop on NO_JOB.
    stack = retiring_stack
    spec = {"model": "xor", "rounds": 2, "devices_per_round": 2, "retry_wait": 1, "round_timeout": 30.0}
    jobs, loads = [], []
    for i in range(3):
        jobs.append(await submit_job(stack.api_url, name=f"run-{i}", task_timeout=20.0, **spec))
        loads.append(start_devices(stack.proxy_url, f"run-{i}", 3, train_seconds=0.2, seed=i, duration=90.0))
    try:
        for load in loads:
            report, transcript = await load.finish(timeout=120)
            assert_no_device_refused(report, transcript)
    finally:
        for load in loads:
            await load.cancel()
    await jobs_in_memory(http, stack, 0)
    assert await synced_jobs(stack, tmp_path) == []
    _, listed = await get(http, f"{stack.api_url}/api/jobs")
    assert {job["job_id"] for job in listed["jobs"]} == set(jobs)
    for job in listed["jobs"]:
        assert job["retired"] and job["model_version"] == 2 and job["results_counted"] >= 4
        assert "accuracy" in job["history"][-1], job["history"]


async def test_a_finished_job_not_yet_retired_can_be_deleted(stack: Stack, http: aiohttp.ClientSession) -> None:
    # The default retention (an hour): the finished job is still in memory when it is deleted.
    job_id = await submit_job(stack.api_url, name="short", model="xor", rounds=5, evaluate=False)
    async with http.post(f"{stack.api_url}/api/jobs/{job_id}/end") as reply:
        assert reply.status == 200
    assert (await get(http, f"{stack.api_url}/api/jobs/{job_id}"))[1]["retired"] is False
    async with http.delete(f"{stack.api_url}/api/jobs/{job_id}") as reply:
        assert reply.status == 200
    assert (await get(http, f"{stack.api_url}/api/health"))[1]["jobs"] == 0
    assert (await get(http, f"{stack.api_url}/api/jobs"))[1]["jobs"] == []


def xor_payload_bytes() -> int:
    """What one xor job's task payload costs a leaf (the model as the server makes it for a job)."""
    from edge_gateway.models import initial_weights

    spec = JobSpec(name="x", model="xor")
    return TaskPayload.for_weights(str(uuid.uuid4()), 0, initial_weights("xor", spec.seed), spec.task_meta()).nbytes


async def leaf_payload_bytes(http: aiohttp.ClientSession, stack: Stack) -> int:
    return int((await get(http, f"{stack.api_url}/api/health"))[1]["leaf_payload_bytes"].get("leaf-0", 0))


async def payload_bytes_reach(http: aiohttp.ClientSession, stack: Stack, check: Any, timeout: float = 30.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check(held := await leaf_payload_bytes(http, stack)):
        assert loop.time() < deadline, f"the leaf holds {held} bytes of payloads"
        await asyncio.sleep(0.2)
    return held


@pytest.fixture
async def small_cache_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Stack, int]]:
    """One leaf whose payload cache holds one xor payload, not two."""
    budget = xor_payload_bytes() * 3 // 2
    monkeypatch.setenv("EDGEFL_LEAF_PAYLOAD_CACHE_BYTES", str(budget))
    stack = await start_stack(tmp_path, leaves=1, proxy_host="127.0.0.1", proxy_port=0)
    try:
        yield stack, budget
    finally:
        await stack.stop()


async def test_leaf_drops_the_payloads_of_finished_jobs(stack: Stack, http: aiohttp.ClientSession) -> None:
    jobs = [await submit_job(stack.api_url, name=f"j{i}", model="xor", evaluate=False) for i in range(2)]
    one = xor_payload_bytes()
    # Both payloads are fetched ahead of any device (the leaves sync with the server).
    held = await payload_bytes_reach(http, stack, lambda held: held >= 2 * one * 0.9)
    assert held <= 2 * one * 1.1
    for job_id in jobs:  # finished, not retired (an hour by default): still in every sync
        async with http.post(f"{stack.api_url}/api/jobs/{job_id}/end") as reply:
            assert reply.status == 200
    await payload_bytes_reach(http, stack, lambda held: held == 0)


async def test_payload_cache_stays_within_its_budget_and_refetches_on_demand(
    small_cache_stack: tuple[Stack, int], http: aiohttp.ClientSession
) -> None:
    stack, budget = small_cache_stack
    jobs = [
        await submit_job(stack.api_url, name=f"j{i}", model="xor", devices_per_round=200, retry_wait=1, evaluate=False)
        for i in range(2)
    ]
    tasks = {job_id: 0 for job_id in jobs}
    # Devices ask for one job's task, then the other's: each time the payload the other job evicted
    # is fetched again. Bounded: 60 requests, a tenth of a second apart.
    for n in range(60):
        job_id = jobs[n // 6 % 2]  # six asks per job in turn
        headers = {**DEVICE, "X-Flare-Device-ID": f"phone-{n}"}
        async with http.post(f"{stack.proxy_url}/task?job_id={job_id}", data=b"{}", headers=headers) as reply:
            answer = orjson.loads(await reply.read())
        assert answer["status"] == "OK" or answer.get("message") == "Model not ready", answer
        tasks[job_id] += answer["status"] == "OK"
        assert await leaf_payload_bytes(http, stack) <= budget
        await asyncio.sleep(0.1)
    assert all(count >= 3 for count in tasks.values()), tasks
    # Ten switches evict and fetch again; a device waits for that fetch (the leaf's quota_hold,
    # 0.5 s) instead of hearing "Model not ready" and coming back a retry_wait later.
    assert sum(tasks.values()) >= 56, tasks
