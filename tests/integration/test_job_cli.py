"""`python -m edge_gateway job submit|list|status|end` against a running server."""

from __future__ import annotations

import asyncio
import sys

import orjson

from edge_gateway.launcher import Stack
from internal_link.messages import JobStatus


async def job_cli(api: str, *args: str) -> tuple[int, dict]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_gateway",
        "job",
        "--api",
        api,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert err == b"" or b"Traceback" not in err, err
    return int(proc.returncode or 0), orjson.loads(out)


async def test_job_commands(stack: Stack, tmp_path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_bytes(orjson.dumps({"name": "from_file", "model": "xor", "rounds": 2, "retry_wait": 2}))
    code, submitted = await job_cli(stack.api_url, "submit", "--spec", str(spec), "--devices-per-round", "3")
    assert code == 0 and submitted["status"] == JobStatus.RUNNING
    assert submitted["spec"]["devices_per_round"] == 3 and submitted["spec"]["retry_wait"] == 2
    job_id = submitted["job_id"]
    code, listed = await job_cli(stack.api_url, "list")
    assert code == 0 and [j["job_id"] for j in listed["jobs"]] == [job_id]
    code, status = await job_cli(stack.api_url, "status", job_id)
    assert code == 0 and status["model_version"] == 0 and status["history"] == []
    code, ended = await job_cli(stack.api_url, "end", job_id)
    assert code == 0 and ended["status"] == JobStatus.DONE
    code, refused = await job_cli(stack.api_url, "submit", "--name", "bad", "--model", "resnet")
    assert code == 1 and refused["status"] == "INVALID_REQUEST" and any("model" in e for e in refused["errors"])
    code, missing = await job_cli(stack.api_url, "status", "no-such-job")
    assert code == 1 and missing["message"] == "no job 'no-such-job'"


async def test_job_submit_takes_the_async_settings(stack: Stack) -> None:
    code, submitted = await job_cli(
        stack.api_url,
        "submit",
        "--name",
        "xor_async",
        "--model",
        "xor",
        "--mode",
        "async",
        "--concurrency",
        "8",
        "--buffer-size",
        "4",
        "--max-staleness",
        "1",
    )
    assert code == 0, submitted
    spec = submitted["spec"]
    assert (spec["mode"], spec["concurrency"], spec["buffer_size"], spec["max_staleness"]) == ("async", 8, 4, 1)
    bad = ["--name", "bad", "--model", "xor", "--mode", "async", "--buffer-size", "4", "--max-staleness", "1"]
    # 9 devices starting together: the last would be 2 versions behind, past max_staleness.
    code, refused = await job_cli(stack.api_url, "submit", *bad, "--concurrency", "9")
    assert code == 1 and refused["status"] == "INVALID_REQUEST"
