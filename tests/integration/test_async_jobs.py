"""Async (FedBuff) jobs on a real stack: devices train whenever a slot is free, a version is made
every `buffer_size` results with stale ones weighed down, and every acknowledged result is in
exactly one version, through a server restart too."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_gateway.launcher import Stack
from internal_link.messages import JobStatus

from .helpers import stop_launcher, submit_job, wait_for, wait_leaves_synced
from .load import LoadRun, assert_counted_once, assert_no_device_refused, start_devices
from .stack_control import child, kill, restart_server

ASYNC: dict[str, Any] = {
    "model": "xor",
    "mode": "async",
    "concurrency": 6,
    "buffer_size": 3,
    "max_staleness": 2,
    "retry_wait": 1,
    "task_timeout": 20.0,
    "evaluate": False,
}


async def start_async_job(stack: Stack, name: str, versions: int, devices: int) -> tuple[str, LoadRun]:
    job_id = await submit_job(stack.api_url, name=name, rounds=versions, **ASYNC)
    await wait_leaves_synced(stack.api_url, job_id, 2)
    # A third of the devices train six times as long: their results arrive versions later.
    load = start_devices(stack.proxy_url, name, devices, train_seconds=0.3, slow=(devices // 3, 1.8), duration=120.0)
    return job_id, load


def assert_buffer_steps(status: dict[str, Any], versions: int) -> None:
    """Every version a buffer step of at least buffer_size results, all within max_staleness."""
    history = status["history"]
    assert [h["version"] for h in history] == list(range(1, versions + 1)), history
    for step in history:
        assert step["closed_by"] == "buffer", step
        assert step["results"] >= ASYNC["buffer_size"], step
        assert sum(step["staleness"].values()) == step["results"], step
        assert all(0 <= int(tau) <= ASYNC["max_staleness"] for tau in step["staleness"]), step
    # More devices train at once than a buffer takes: some results are applied stale.
    assert any(int(tau) > 0 for step in history for tau in step["staleness"]), history


@pytest.mark.timeout(150)
async def test_async_job_makes_its_versions_with_stale_results_counted_once(stack: Stack) -> None:
    versions = 8
    job_id, load = await start_async_job(stack, "xor_async", versions, devices=12)
    training: list[int] = []
    try:

        def done(s: dict[str, Any]) -> bool:
            training.append(s["selected"])  # leases out now, as the leaves last reported
            return bool(s["status"] == JobStatus.DONE)

        status = await wait_for(stack.api_url, job_id, done, timeout=90)
        report, transcript = await load.finish(timeout=60)
    finally:
        await load.cancel()
    assert status["model_version"] == versions and status["round"] == versions
    assert_buffer_steps(status, versions)
    assert_no_device_refused(report, transcript)
    assert_counted_once(status, transcript, exact=True)
    assert 0 < max(training) <= ASYNC["concurrency"], training
    assert status["selection_id"] == 0  # no selections: leaves kept their leases over versions


@pytest.mark.timeout(200)
async def test_async_job_resumes_after_the_server_is_killed(stack: Stack, tmp_path: Path) -> None:
    versions = 14
    job_id, load = await start_async_job(stack, "xor_async_restart", versions, devices=12)
    try:
        before = await wait_for(stack.api_url, job_id, lambda s: s["round"] >= 3 and s["reported"] > 0, timeout=60)
        await kill(child(stack, "server"))  # buffered results are lost with it; leaves hold them
        await asyncio.sleep(1.0)  # devices keep training and reporting meanwhile
        await restart_server(stack, tmp_path)
        status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=120)
        report, transcript = await load.finish(timeout=60)
    finally:
        await load.cancel()
    assert status["history"][0]["closed_at"] == before["history"][0]["closed_at"]  # resumed, not restarted
    assert_buffer_steps(status, versions)
    assert_no_device_refused(report, transcript)
    assert_counted_once(status, transcript)
    state = orjson.loads(next((tmp_path / "server" / "jobs").glob("*/state.json")).read_bytes())
    assert state["fedbuff"]["version"] == state["version"] == versions  # the buffer is checkpointed with the weights


@pytest.mark.timeout(120)
def test_local_launcher_runs_an_async_job(tmp_path: Path) -> None:
    args = ["local", "--exit-when-done", "--port", "0", "--leaves", "2", "--job", "xor"]
    args += ["--mode", "async", "--rounds", "4"]
    args += ["--concurrency", "4", "--buffer-size", "2", "--max-staleness", "2", "--simulated", "6"]
    args += ["--slow-fraction", "0.5", "--slow-factor", "3", "--retry-wait", "1", "--data-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "edge_gateway", *args], capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "async, 4 versions (concurrency 4, buffer_size 2, max_staleness 2)" in done.stdout, done.stdout
    assert "job done" in done.stdout and "refused 0" in done.stdout, done.stdout


@pytest.mark.timeout(120)
async def test_local_launcher_runs_an_async_job_over_live_sessions(tmp_path: Path) -> None:
    args = ["local", "--exit-when-done", "--port", "0", "--leaves", "2", "--job", "xor", "--transport", "ws"]
    args += ["--mode", "async", "--rounds", "8", "--concurrency", "3", "--buffer-size", "2", "--simulated", "6"]
    args += ["--abort-rate", "0.2", "--retry-wait", "1", "--data-dir", str(tmp_path)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_gateway", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    out: list[str] = []
    pushed = 0.0
    try:
        async with asyncio.timeout(100):
            while line := (await proc.stdout.readline()).decode():
                out.append(line)
                if line.startswith("metrics (Prometheus):"):
                    urls = dict(zip(line.split()[2::2], line.split()[3::2], strict=True))
                    leaves = [url for name, url in urls.items() if name.startswith("leaf")]
                    pushed = await rounds_pushed(leaves)  # the devices' rounds came as session pushes
            await proc.wait()
    finally:
        await stop_launcher(proc)
    text = "".join(out)
    assert proc.returncode == 0, text[-3000:]
    assert "job done" in text and "refused 0" in text, text
    assert pushed > 0, text


async def rounds_pushed(leaf_metrics: list[str]) -> float:
    """`round` pushes the leaves have made, once there are any (bounded: the job is short)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            total = 0.0
            for url in leaf_metrics:
                async with http.get(url) as reply:
                    for family in text_string_to_metric_families(await reply.text()):
                        total += sum(
                            s.value for s in family.samples if s.name == "edgefl_leaf_session_rounds_pushed_total"
                        )
            if total > 0:
                return total
            await asyncio.sleep(0.05)
    return 0.0
