"""`python -m edge_gateway simulate --transport ws` and `--abort-rate`: the load generator's devices
over live sessions and as drop-outs, against a real stack, each run a process stopped by its PID."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_gateway.launcher import Stack
from internal_link.messages import JobStatus

from .helpers import submit_job, wait_for, wait_leaves_synced


async def simulate(stack: Stack, report: Path, *args: str, timeout: float = 90.0) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_gateway",
        "simulate",
        "--url",
        stack.proxy_url,
        "--report-json",
        str(report),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, 9)
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return dict(orjson.loads(report.read_bytes()))


async def small_job(stack: Stack, name: str, task_timeout: float) -> str:
    job_id = await submit_job(
        stack.api_url,
        name=name,
        model="xor",
        rounds=3,
        devices_per_round=3,
        over_selection=0.0,
        retry_wait=1,
        task_timeout=task_timeout,
        round_timeout=120.0,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, 2)
    return job_id


@pytest.mark.timeout(150)
@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_simulated_session_devices_finish_a_job_while_some_abort(
    stack: Stack, tmp_path: Path, codec: str
) -> None:
    job_id = await small_job(stack, f"sim_ws_{codec}", task_timeout=120.0)
    args = ["--job", f"sim_ws_{codec}", "--devices", "6", "--transport", "ws", "--abort-rate", "0.3"]
    report = await simulate(stack, tmp_path / "report.json", *args, "--codec", codec, "--duration", "80")
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=10)
    shown = orjson.dumps(report).decode()  # the whole report when an assertion fails
    assert [h["results"] for h in status["history"]] == [3, 3, 3], status["history"]
    # Aborts freed their slots at once (the leases were 120 s): the job finished well before that.
    assert report["tasks_aborted"] > 0 and report["results_accepted"] >= 9, shown
    assert report["jobs_finished"] == 6 and report["devices_finished"] == 6 and not report["timed_out"], shown
    assert report["invalid_replies"] == 0, shown


@pytest.mark.timeout(150)
async def test_simulated_http_drop_outs_leave_their_tasks_to_expire(stack: Stack, tmp_path: Path) -> None:
    job_id = await small_job(stack, "sim_http_drop", task_timeout=3.0)
    args = ["--job", "sim_http_drop", "--devices", "6", "--abort-rate", "0.3", "--duration", "80"]
    report = await simulate(stack, tmp_path / "report.json", *args)
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=10)
    shown = orjson.dumps(report).decode()  # the whole report when an assertion fails
    assert len(status["history"]) == 3
    assert report["tasks_aborted"] > 0 and report["results_accepted"] >= 9, shown
    assert report["devices_finished"] == 6 and not report["timed_out"], shown


@pytest.mark.timeout(150)
async def test_simulated_session_devices_work_an_async_job(stack: Stack, tmp_path: Path) -> None:
    job_id = await submit_job(
        stack.api_url,
        name="sim_ws_async",
        model="xor",
        mode="async",
        rounds=4,
        concurrency=3,
        buffer_size=2,
        max_staleness=2,
        retry_wait=1,
        task_timeout=60.0,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, 2)
    args = ["--job", "sim_ws_async", "--devices", "6", "--transport", "ws", "--duration", "40"]
    report = await simulate(stack, tmp_path / "report.json", *args)
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=10)
    shown = orjson.dumps(report).decode()  # the whole report when an assertion fails
    assert [h["version"] for h in status["history"]] == [1, 2, 3, 4], status["history"]
    assert all(h["closed_by"] == "buffer" for h in status["history"]), status["history"]
    # Devices that start after the job's end (synthetic training is instant) wait for a job.
    assert report["jobs_finished"] >= 3 and report["results_accepted"] >= 8, shown
    assert report["invalid_replies"] == 0, shown
