"""Helpers for integration tests: the job API of a running stack."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import orjson

# For tests of exact aggregation arithmetic: results are summed as sent, without the poisoning
# defence (robustness.py), whose clipping and weight cap would change the mean on purpose.
UNSCREENED: dict[str, Any] = {"weight_cap": "fixed", "clip": "off", "max_update_value_ratio": None}


def _api_headers() -> dict[str, str]:
    # A stack whose job API listens beyond loopback has a token (tests/shaped): the test holds it too.
    token = os.environ.get("EDGEFL_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


async def submit_job(api_url: str, **spec: Any) -> str:
    async with (
        aiohttp.ClientSession(headers=_api_headers()) as session,
        session.post(
            f"{api_url}/api/jobs", data=orjson.dumps(spec), headers={"Content-Type": "application/json"}
        ) as reply,
    ):
        body = orjson.loads(await reply.read())
        assert reply.status == 201, body
        return str(body["job_id"])


async def job_status(api_url: str, job_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers=_api_headers()) as session,
        session.get(f"{api_url}/api/jobs/{job_id}") as reply,
    ):
        return dict(orjson.loads(await reply.read()))


async def wait_for(api_url: str, job_id: str, predicate: Any, timeout: float = 90.0) -> dict[str, Any]:
    """Poll the job's status until `predicate(status)` holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await job_status(api_url, job_id)
        if predicate(status):
            return status
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s; last status: {status}")
        await asyncio.sleep(0.2)


async def wait_leaves_synced(api_url: str, job_id: str, leaves: int) -> None:
    await wait_for(api_url, job_id, lambda s: len(s["leaves"]) == leaves, timeout=30)


async def stop_launcher(proc: asyncio.subprocess.Process, grace: float = 30.0) -> None:
    """Stop a `local` launcher a test gave up on: SIGTERM, on which it stops its stack by PID;
    SIGKILL only past `grace` (it would leave the stack's processes running)."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        proc.kill()
        await proc.wait()
