"""Faults while 1,000 simulated devices work a job (issue 5): a leaf killed and restarted, the
server killed mid-round and restarted, the proxy restarted. In each, devices may hear RETRY or
lose a connection but never ERROR, the job finishes, and the server's count matches what devices
were told: every acknowledged result counted, none twice (`load.assert_counted_once`).

The devices "train" for a second (load.PacedTrainer), so every round lasts at least that long and
the job is still running when the fault strikes and after it heals.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_gateway.launcher import Stack, start_stack
from routing_proxy.routing import Router

from .helpers import job_status, wait_for
from .load import LoadRun, assert_counted_once, finish_job, start_job
from .stack_control import (
    child,
    kill,
    restart_leaf,
    restart_proxy,
    restart_server,
    rounds_later,
    wait_proxy_healthy,
)

DEVICES = 1000
# Small model, short waits: a round is ~100 results of XOR, and a device polls every 2 s.
JOB: dict[str, Any] = {
    "model": "xor",
    "devices_per_round": 100,
    "over_selection": 0.2,
    "retry_wait": 2,
    "task_timeout": 20.0,
    "round_timeout": 60.0,
    "evaluate": False,
}

pytestmark = [pytest.mark.slow]


@pytest.fixture
async def stack4(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await start_stack(tmp_path, leaves=4, proxy_host="127.0.0.1", proxy_port=0)
    try:
        yield stack
    finally:
        await stack.stop()


async def start(stack: Stack, name: str, rounds: int, leaves: int) -> tuple[str, LoadRun]:
    return await start_job(stack, name, rounds, leaves=leaves, job=JOB, devices=DEVICES)


async def finish(stack: Stack, job_id: str, load: LoadRun, rounds: int) -> dict[str, Any]:
    status, transcript = await finish_job(stack, job_id, load, rounds)
    assert_counted_once(status, transcript)
    return status


@pytest.mark.timeout(300)
async def test_leaf_killed_and_restarted_under_load(stack4: Stack, tmp_path: Path) -> None:
    stack, rounds = stack4, 14
    job_id, load = await start(stack, "xor_leaf_restart", rounds, leaves=4)
    loop = asyncio.get_running_loop()
    try:
        await wait_for(stack.api_url, job_id, lambda s: s["round"] >= 2 and s["reported"] > 0, timeout=90)
        killed_at = loop.time()
        await kill(child(stack, "leaf-1"))  # mid-round: results of this round are in its batches
        await wait_proxy_healthy(stack, 3, unhealthy="leaf-1")
        await rounds_later(stack, job_id, 1)  # the job goes on without it
        await restart_leaf(stack, tmp_path, "leaf-1")
        restarted_at = loop.time()
        await wait_proxy_healthy(stack, 4)
        await rounds_later(stack, job_id, 2)
        assert "leaf-1" in (await job_status(stack.api_url, job_id))["leaves"]
        status = await finish(stack, job_id, load, rounds)
    finally:
        await load.cancel()
    # Devices whose first choice is leaf-1 got tasks from the others while it was dead, and
    # again once it was back (rendezvous hashing over the lcp map's leaves, PROTOCOL.md §7).
    leaves = list(orjson.loads(stack.lcp_map.read_bytes()))
    router = Router(leaves)
    homed = {d for d, _ in load.transcript.tasks if router.ranking(d)[0] == leaves.index("leaf-1")}
    assert any(d in homed and killed_at < t < restarted_at for d, t in load.transcript.tasks)
    assert any(d in homed and t > restarted_at for d, t in load.transcript.tasks)
    assert status["results_counted"] >= rounds * JOB["devices_per_round"]


@pytest.mark.timeout(300)
async def test_server_killed_mid_round_under_load(stack: Stack, tmp_path: Path) -> None:
    """test_server_restart.py with a dozen devices, here with 1,000 and the kill landing while a round
    holds results: the leaves send them again to the restarted server, which resumes from its checkpoint."""
    rounds = 12
    job_id, load = await start(stack, "xor_server_restart", rounds, leaves=2)
    try:
        # Well inside a round (~100 results a second come in): the server holds partial sums that
        # only the leaves can give back.
        before = await wait_for(
            stack.api_url, job_id, lambda s: s["round"] >= 2 and 20 <= s["reported"] <= 60, timeout=90
        )
        await kill(child(stack, "server"))
        await asyncio.sleep(2.0)  # devices go on meanwhile: their results wait in the leaves
        await restart_server(stack, tmp_path)
        resumed = await job_status(stack.api_url, job_id)
        assert resumed["model_version"] >= before["model_version"], (before, resumed)
        assert resumed["history"][: len(before["history"])] == before["history"]  # from the checkpoint
        await rounds_later(stack, job_id, 1)
        status = await finish(stack, job_id, load, rounds)
    finally:
        await load.cancel()
    logs = "".join((tmp_path / "logs" / f"leaf-{i}.log").read_text() for i in range(2))
    assert "server restarted" in logs and "re-sent" in logs, logs[-2000:]
    # The new server knew from disk which leaves to wait for, and rounds closed once both had re-sent.
    server_log = (tmp_path / "logs" / "server2.log").read_text()
    assert "no round closes until leaves leaf-0, leaf-1 have re-sent" in server_log, server_log[-2000:]
    assert "every leaf has re-sent what the last process took" in server_log, server_log[-2000:]
    assert status["history"][0]["closed_at"] == before["history"][0]["closed_at"]


@pytest.mark.timeout(300)
async def test_proxy_killed_and_restarted_under_load(stack: Stack, tmp_path: Path) -> None:
    """The proxy is stateless: after a `kill -9` and a restart on the same port, devices that lost
    connections (or heard RETRY) carry on, and no result is lost or counted twice."""
    rounds = 10
    job_id, load = await start(stack, "xor_proxy_restart", rounds, leaves=2)
    try:
        await wait_for(stack.api_url, job_id, lambda s: s["round"] >= 2 and s["reported"] > 0, timeout=90)
        await kill(child(stack, "proxy"))
        await asyncio.sleep(1.0)  # devices hit a closed port meanwhile
        await restart_proxy(stack, tmp_path)
        await wait_proxy_healthy(stack, 2)
        await rounds_later(stack, job_id, 2)
        await finish(stack, job_id, load, rounds)
    finally:
        await load.cancel()
    statuses = load.transcript.statuses
    assert sum(n for (endpoint, verdict), n in statuses.items() if verdict == "transport") > 0, statuses
