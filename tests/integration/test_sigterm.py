"""SIGTERM on every process while devices work (issue 5; DESIGN.md "Guarantees": drain, flush,
checkpoint). Each process exits 0 within `EXIT_BOUND` seconds of the signal, and nothing a device
was told is lost: every result a device heard OK for is counted, and — as a drain answers what it
took — every result the server counted was acknowledged to its device (exact accounting).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_gateway.launcher import Stack

from .helpers import job_status, wait_for
from .load import LoadRun, Transcript, assert_counted_once, finish_job, start_job
from .stack_control import (
    child,
    restart_proxy,
    restart_server,
    terminate,
    wait_proxy_healthy,
)
from .test_local_cli import child_pids, gone

EXIT_BOUND = 10.0  # seconds from SIGTERM to exit, for each process
DEVICES = 300
JOB: dict[str, Any] = {
    "model": "xor",
    "devices_per_round": 40,
    "over_selection": 0.2,
    "retry_wait": 2,
    "task_timeout": 20.0,
    "round_timeout": 60.0,
    "evaluate": False,
}

pytestmark = [pytest.mark.slow]


async def start(stack: Stack, name: str, rounds: int) -> tuple[str, LoadRun]:
    return await start_job(stack, name, rounds, leaves=2, job=JOB, devices=DEVICES, seed=7)


def assert_all_answered(status: dict[str, Any], transcript: Transcript) -> None:
    """Exact accounting, and no device had to send a counted result again."""
    assert_counted_once(status, transcript, exact=True)
    assert not transcript.tasks_with("duplicate"), transcript.statuses


@pytest.mark.timeout(240)
async def test_sigterm_leaf_answers_the_results_it_holds_then_exits(stack: Stack) -> None:
    """The leaf stops taking new work, answers every result it is sent, delivers what it holds, then exits.

    The server is paused (SIGSTOP) around the signal, so the leaf holds results (acknowledged: in its
    log) waiting for it: a leaf that dropped them would lose results its devices were told count."""
    rounds = 8
    job_id, load = await start(stack, "xor_sigterm_leaf", rounds)
    server, leaf = child(stack, "server"), child(stack, "leaf-0")
    try:
        await wait_for(stack.api_url, job_id, lambda s: s["round"] >= 1 and s["reported"] > 0, timeout=90)
        server.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.5)  # a second of training: results reach the leaves and wait there
            stopping = asyncio.ensure_future(terminate(leaf, EXIT_BOUND))
            await asyncio.sleep(0.5)
        finally:
            server.process.send_signal(signal.SIGCONT)
        code, seconds = await stopping
        assert code == 0, (code, leaf.log_path.read_text()[-2000:])
        # The case in point: the leaf held results for the paused server when the signal came.
        held = re.search(r"stopping with (\d+) results not delivered yet", leaf.log_path.read_text())
        assert held is not None and int(held[1]) > 0, leaf.log_path.read_text()[-2000:]
        await wait_proxy_healthy(stack, 1, unhealthy="leaf-0")
        status, transcript = await finish_job(stack, job_id, load, rounds)
    finally:
        await load.cancel()
    assert_all_answered(status, transcript)
    assert seconds <= EXIT_BOUND


@pytest.mark.timeout(240)
async def test_sigterm_server_checkpoints_and_resumes(stack: Stack, tmp_path: Path) -> None:
    """The server exits 0 with its checkpoint current; restarted, it resumes, and the leaves hand it
    what the old one held (their devices hear OK once it is back)."""
    rounds = 10
    job_id, load = await start(stack, "xor_sigterm_server", rounds)
    try:
        before = await wait_for(stack.api_url, job_id, lambda s: s["round"] >= 2 and s["reported"] > 0, timeout=90)
        code, seconds = await terminate(child(stack, "server"), EXIT_BOUND)
        assert code == 0, child(stack, "server").log_path.read_text()[-2000:]
        state = orjson.loads((tmp_path / "server" / "jobs" / job_id / "state.json").read_bytes())
        assert state["version"] >= before["model_version"] and len(state["history"]) == state["version"], state
        await asyncio.sleep(1.0)
        await restart_server(stack, tmp_path)
        resumed = await job_status(stack.api_url, job_id)
        assert resumed["model_version"] == state["version"] and resumed["history"] == state["history"]
        status, transcript = await finish_job(stack, job_id, load, rounds)
    finally:
        await load.cancel()
    assert_all_answered(status, transcript)
    assert seconds <= EXIT_BOUND


@pytest.mark.timeout(240)
async def test_sigterm_proxy_drains_then_restarts(stack: Stack, tmp_path: Path) -> None:
    """The proxy answers what it took before it exits (devices may see connections refused while
    it is down, never a request taken and dropped); restarted on its port, devices carry on."""
    rounds = 8
    job_id, load = await start(stack, "xor_sigterm_proxy", rounds)
    try:
        await wait_for(stack.api_url, job_id, lambda s: s["round"] >= 2 and s["reported"] > 0, timeout=90)
        code, seconds = await terminate(child(stack, "proxy"), EXIT_BOUND)
        assert code == 0, child(stack, "proxy").log_path.read_text()[-2000:]
        await restart_proxy(stack, tmp_path)
        await wait_proxy_healthy(stack, 2)
        status, transcript = await finish_job(stack, job_id, load, rounds)
    finally:
        await load.cancel()
    assert_all_answered(status, transcript)
    assert seconds <= EXIT_BOUND


def launched_by(pid: int) -> list[int]:
    """The processes `pid` started (Linux: /proc/<pid>/task/<tid>/children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in children.split()]


@pytest.mark.timeout(240)
async def test_sigterm_local_launcher_stops_the_whole_stack(tmp_path: Path) -> None:
    """`python -m edge_gateway local` mid-job: its devices stop, every child drains and exits, the
    server's checkpoint holds every closed round, and the launcher exits 0 — within a bound."""
    bound = 2 * EXIT_BOUND  # four children stopped one after another, each well within EXIT_BOUND
    pids: list[int] = []
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_gateway",
        "local",
        "--port",
        "0",
        "--leaves",
        "2",
        "--job",
        "xor",
        "--rounds",
        "200",
        "--devices-per-round",
        "20",
        "--simulated",
        "100",
        "--trainer",
        "synthetic",
        "--retry-wait",
        "1",
        "--data-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        seen = b""
        while len(re.findall(rb"^round +\d+ ", seen, re.MULTILINE)) < 2:  # mid-job: two rounds done
            line = await asyncio.wait_for(proc.stdout.readline(), 90)
            assert line, seen.decode(errors="replace")
            seen += line
        assert len(child_pids(tmp_path)) == 3  # server and two leaves are up (they write ready files)
        pids = launched_by(proc.pid)
        assert len(pids) == 4, pids  # and the proxy
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), bound)
        seconds = time.monotonic() - started
        logging.getLogger(__name__).info("the launcher exited with %s %.2f s after SIGTERM", proc.returncode, seconds)
        assert proc.returncode == 0, (seen + out).decode(errors="replace")
        assert b"stopped before the job finished" in out
        assert all(gone(pid) for pid in pids)
        assert b"did not stop" not in out  # no child needed a SIGKILL (processes.Child.stop)
        (job_dir,) = (tmp_path / "server" / "jobs").iterdir()
        state = orjson.loads((job_dir / "state.json").read_bytes())
        printed = len(re.findall(rb"^round +\d+ ", seen + out, re.MULTILINE))
        assert state["version"] >= printed and len(state["history"]) == state["version"], state
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in pids:  # what the launcher left behind, if it failed (by PID, never by name)
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert seconds <= bound
