"""The server's status page over real HTTP: self-contained HTML, and the JSON it polls showing the
topology (leaf syncs and the proxy's /health), a job and a leaf going down. The page itself, in a
browser, is tested by tests/browser (scripts/test_browser.sh)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from typing import Any

import aiohttp

from edge_gateway.launcher import Stack

from .helpers import submit_job
from .stack_control import child, kill


async def api_status(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    async with http.get(f"{stack.api_url}/api/status") as reply:
        assert reply.status == 200 and reply.content_type == "application/json"
        return dict(await reply.json())


async def status_until(http: aiohttp.ClientSession, stack: Stack, predicate: Any, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = await api_status(http, stack)
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"status not reached in {timeout} s: {status}"
        await asyncio.sleep(0.2)


async def test_the_page_is_one_file_whose_own_script_alone_may_run(stack: Stack, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{stack.api_url}/status") as reply:
        page = await reply.read()
        assert reply.status == 200 and reply.content_type == "text/html"
        policy = reply.headers["Content-Security-Policy"]
    # Nothing loaded from elsewhere: every src/href is inline data or none at all (no CDN on a LAN).
    assert re.findall(rb'(?:src|href)="(?!data:)[^"]*"', page) == []
    (script,) = re.findall(rb"<script>(.*?)</script>", page, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy and "connect-src 'self'" in policy
    assert "default-src 'none'" in policy


async def test_status_shows_leaves_healthy_to_server_and_proxy_then_one_down(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    def both_healthy(status: dict[str, Any]) -> bool:
        return len(status["leaves"]) == 2 and all(r["server_healthy"] and r["proxy_healthy"] for r in status["leaves"])

    status = await status_until(http, stack, both_healthy)
    assert status["proxy"]["url"] == stack.proxy_url and status["proxy"]["reachable"]
    assert status["proxy"]["healthy"] == 2 and status["jobs"] == []

    job_id = await submit_job(stack.api_url, name="shown", model="xor", rounds=3, devices_per_round=4)
    status = await status_until(http, stack, lambda s: all(r["jobs"] == ["shown"] for r in s["leaves"]))
    (job,) = status["jobs"]
    assert (job["job_id"], job["status"], job["round"], job["rounds"], job["wanted"]) == (job_id, "running", 0, 3, 4)
    assert job["leaves"] == ["leaf-0", "leaf-1"] and job["funnel"]["results_counted"] == 0

    await kill(child(stack, "leaf-1"))
    status = await status_until(
        http, stack, lambda s: any(r["name"] == "leaf-1" and not r["server_healthy"] for r in s["leaves"])
    )
    # The proxy notices within its health interval (1 s); the page's answer is at most 1 s old.
    status = await status_until(
        http, stack, lambda s: [r["proxy_healthy"] for r in s["leaves"]] == [True, False] and s["proxy"]["healthy"] == 1
    )
    assert [r["server_healthy"] for r in status["leaves"]] == [True, False]
