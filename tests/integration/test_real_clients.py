"""Requests shaped like the iOS and Android apps complete a job through proxy -> leaves -> server."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import numpy as np

from edge_gateway.launcher import Stack
from edge_gateway.models import initial_weights
from internal_link.messages import JobStatus

from .clients import STEP, AndroidDevice, IosDevice
from .helpers import job_status, submit_job, wait_for


async def test_ios_and_android_devices_complete_a_job(stack: Stack, http: aiohttp.ClientSession) -> None:
    job_id = await submit_job(
        stack.api_url,
        name="xor_mixed",
        model="xor",
        rounds=2,
        devices_per_round=4,
        over_selection=0.0,
        retry_wait=1,
        seed=3,
        evaluate=False,
    )
    devices = [IosDevice(http, stack.proxy_url, f"ios-{i}", "xor_mixed") for i in range(3)] + [
        AndroidDevice(http, stack.proxy_url, f"NVFlare_Android-{i:016x}", "xor_mixed") for i in range(3)
    ]
    deadline = asyncio.get_running_loop().time() + 60
    transcripts = await asyncio.gather(*(d.run(max_tasks=5, deadline=deadline) for d in devices))

    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=10)
    assert status["results_counted"] == 8 and [h["results"] for h in status["history"]] == [4, 4]
    assert status["refused"] == 0
    answers = [a for t in transcripts for a in t.results]
    counted = [a for a in answers if a["status"] == "OK" and "message" not in a]
    assert len(counted) == 8  # every result acknowledged without a note was aggregated, once
    assert all(a["status"] == "OK" for a in answers)  # late ones are OK too: Android keeps working
    assert any(t.count("task", "NO_JOB") for t in transcripts)  # finished job -> NO_JOB
    assert all(t.count("task", "ERROR") == 0 for t in transcripts)

    # Every device uploaded the same step against the sign of each weight, so FedAvg moves the
    # model by exactly that step each round.
    expected = initial_weights("xor", 3)
    for _ in range(2):
        expected = {k: v + np.where(v < 0, STEP, -STEP).astype(np.float32) for k, v in expected.items()}
    async with http.get(f"{stack.api_url}/api/jobs/{job_id}/model") as reply:
        assert reply.headers["X-Model-Version"] == "2"
        with np.load(io.BytesIO(await reply.read()), allow_pickle=False) as npz:
            for name, value in expected.items():
                np.testing.assert_allclose(npz[name], value, atol=1e-6)
    assert (await job_status(stack.api_url, job_id))["model_version"] == 2


async def test_phone_only_job_keeps_simulated_devices_off(stack: Stack, http: aiohttp.ClientSession) -> None:
    """A job reserved for phones (`platforms`): a simulated device is never selected, an iPhone is."""
    job_id = await submit_job(
        stack.api_url,
        name="phones_only",
        model="xor",
        rounds=1,
        devices_per_round=1,
        retry_wait=1,
        platforms=["ios", "android"],
        evaluate=False,
    )
    await wait_for(stack.api_url, job_id, lambda s: len(s["leaves"]) == 2, timeout=30)
    sim = IosDevice(http, stack.proxy_url, "sim-7", "phones_only")
    sim.headers = lambda endpoint: {
        "X-Flare-Device-ID": "sim-7",
        "Content-Type": "application/json",  # type: ignore[method-assign]
        "X-Flare-Device-Info": "device_id=sim-7&app_name=edgefl-sim&platform=sim",
    }
    for _ in range(3):
        reply = await sim.post("task", f"?job_id={job_id}", {})
        assert reply["status"] == "RETRY" and reply["message"] == "Device not selected"
    phone = IosDevice(http, stack.proxy_url, "iphone-1", "phones_only")
    transcript = await phone.run(max_tasks=1, deadline=asyncio.get_running_loop().time() + 30)
    assert [a["status"] for a in transcript.results] == ["OK"]
    assert (await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=10))[
        "results_counted"
    ] == 1
