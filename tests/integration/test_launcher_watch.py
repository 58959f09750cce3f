"""The launcher's job watch ends with the job even when a version has no accuracy to print."""

from __future__ import annotations

import asyncio

import aiohttp

from edge_gateway.launcher import Stack, watch_job

from .clients import IosDevice
from .helpers import submit_job


async def test_versions_never_evaluated_print_without_numbers(stack: Stack, http: aiohttp.ClientSession) -> None:
    job_id = await submit_job(
        stack.api_url,
        name="unevaluated",
        model="xor",
        rounds=1,
        devices_per_round=1,
        over_selection=0.0,
        retry_wait=1,
        evaluate=False,
    )
    device = IosDevice(http, stack.proxy_url, "only-device", "unevaluated")
    await device.run(max_tasks=1, deadline=asyncio.get_running_loop().time() + 60)
    lines: list[str] = []
    status = await asyncio.wait_for(watch_job(stack.api_url, job_id, asyncio.Event(), out=lines.append), 30)
    assert status["status"] == "done" and len(lines) == 1, (status, lines)
    assert lines[0].endswith("test accuracy n/a  loss n/a")
