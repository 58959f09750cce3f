"""SIGKILL the server mid-job and start it again: the job resumes from its last checkpoint, the
leaves send again what the server had taken but not checkpointed, and the job finishes with every
acknowledged result in the model exactly once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import orjson

from edge_gateway.launcher import Stack
from edge_gateway.processes import spawn, wait_ready_file
from internal_link.messages import JobStatus

from .clients import IosDevice
from .helpers import submit_job, wait_for


async def test_server_killed_and_restarted(stack: Stack, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    rounds, per_round = 12, 5
    job_id = await submit_job(
        stack.api_url,
        name="xor_restart",
        model="xor",
        rounds=rounds,
        devices_per_round=per_round,
        over_selection=0.4,
        retry_wait=1,
        evaluate=False,
    )
    devices = [IosDevice(http, stack.proxy_url, f"phone-{i}", "xor_restart") for i in range(12)]
    deadline = asyncio.get_running_loop().time() + 120
    running = asyncio.gather(*(d.run(max_tasks=20, deadline=deadline) for d in devices))

    before = await wait_for(stack.api_url, job_id, lambda s: s["round"] >= 1, timeout=30)
    assert before["status"] == JobStatus.RUNNING, before
    ports = orjson.loads((tmp_path / "server.ready").read_bytes())
    old = next(c for c in stack.children if c.name == "server")
    old.process.send_signal(signal.SIGKILL)
    await old.process.wait()
    await asyncio.sleep(1.0)  # devices keep calling meanwhile: their results wait in the leaves
    ready = tmp_path / "server2.ready"
    new = await spawn(
        "server2",
        [
            "edge_gateway",
            "server",
            "--http-port",
            str(ports["http_port"]),
            "--link-port",
            str(ports["link_port"]),
            "--data-dir",
            str(tmp_path / "server"),
            "--ready-file",
            str(ready),
        ],
        tmp_path / "logs",
        stack.env,
    )
    stack.children[stack.children.index(old)] = new  # stopped by PID with the rest
    await wait_ready_file(new, ready)

    transcripts = await running
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=15)
    assert status["model_version"] == rounds and len(status["history"]) == rounds
    assert status["history"][0]["closed_at"] == before["history"][0]["closed_at"]  # resumed, not restarted
    for t in transcripts:
        assert t.count("task", "ERROR") == 0
    answers = [a for t in transcripts for a in t.results]
    plain_ok = sum(1 for a in answers if a["status"] == "OK" and "message" not in a)
    counted_once = sum(1 for a in answers if a.get("message", "").startswith("duplicate"))
    assert plain_ok <= status["results_counted"] <= plain_ok + counted_once
    assert status["results_counted"] == sum(h["results"] for h in status["history"])
