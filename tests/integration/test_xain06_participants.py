"""Unmodified xain-sdk 0.6 participants (gRPC + S3 objects) train real jobs on a leaf (docs/XAIN.md).

A real stack (server, two leaves, proxy) whose leaf-0 opens the 0.6 doors; each participant
(`tests/xain/participant06.py`) runs with the SDK's own interpreter (protobuf 3.x), downloads the
pickled global `{round}/global`, uploads it plus a fixed delta to `{round}/{uuid}` and reports
its sample count. The leaf takes `upload - global` (float32) weighted by that count, so the final
model is known exactly: the test replays each round (float32 differences, the server's float64
weighted mean) and compares bit for bit. The SDK heartbeats every 10 s, so a round takes 10-20 s.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from edge_gateway.launcher import Stack, start_stack
from edge_gateway.processes import free_port

from ..xain.sdk_venvs import SDKS, sdk_python
from .clients import IosDevice, diff_for
from .helpers import UNSCREENED, job_status, submit_job, wait_for
from .test_readme_commands import EXCLUDED, XAIN06_REASON, readme_commands
from .test_xain08_participants import Weights, assert_same, finished, model, stop
from .test_xain08_participants import start_participants as start_participants08

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

PARTICIPANT = Path(__file__).parents[1] / "xain" / "participant06.py"


@pytest.fixture
async def stack06(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await start_stack(tmp_path, leaves=2, proxy_host="127.0.0.1", proxy_port=0, xain06_ports=(0, 0))
    try:
        yield stack
    finally:
        await stack.stop()


async def start_participants(
    stack: Stack, deltas: Sequence[float], samples: Sequence[int], *extra: str
) -> list[asyncio.subprocess.Process]:
    assert stack.xain06 is not None
    host, port = stack.xain06[0].rsplit(":", 1)
    python = await asyncio.to_thread(sdk_python, "xain-sdk-0.6.0")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the SDK's venv, not edgefl's
    return [
        await asyncio.create_subprocess_exec(
            str(python),
            str(PARTICIPANT),
            host,
            port,
            stack.xain06[1],
            "edgefl",
            str(delta),
            "--samples",
            str(count),
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for delta, count in zip(deltas, samples, strict=True)
    ]


def next_global(current: Weights, uploads: Sequence[tuple[float, int]], ios_devices: int = 0) -> Weights:
    """One round as the stack computes it: participant i uploads float32 `g + d_i` and weighs its
    sample count n_i (a 0.8 participant: 1), an iOS device sends `diff_for(g)` weighing 1; the
    server's mean is float64."""
    out = {}
    for name, g in current.items():
        total = np.zeros(g.shape, np.float64)
        for delta, samples in uploads:
            total += np.subtract(g + np.float32(delta), g, dtype=np.float32).astype(np.float64) * samples
        for _ in range(ios_devices):
            total += diff_for({name: g})[name]
        weight = sum(n for _, n in uploads) + ios_devices
        out[name] = (g.astype(np.float64) + total / weight).astype(np.float32)
    return out


async def test_participants_average_by_samples_exactly_round_after_round(
    stack06: Stack, http: aiohttp.ClientSession
) -> None:
    deltas, samples = [0.5, 1.0, -0.75], [10, 30, 20]
    rounds = 2
    job_id = await submit_job(
        stack06.api_url,
        **UNSCREENED,
        name="xain06_exact",
        model="xor",
        rounds=rounds,
        devices_per_round=len(deltas),
        over_selection=0.0,
        task_timeout=30.0,
        retry_wait=1,
        xain=True,
        evaluate=False,
    )
    version, initial = await model(http, stack06, job_id)
    assert version == 0
    processes = await start_participants(stack06, deltas, samples)
    try:
        outputs = await finished(processes, timeout=200)
    finally:
        await stop(processes)
    for out, _ in outputs:
        assert out.decode().strip().endswith(" finished")
    status = await job_status(stack06.api_url, job_id)
    assert status["status"] == "done" and status["model_version"] == rounds
    expected = initial
    for _ in range(rounds):
        expected = next_global(expected, list(zip(deltas, samples, strict=True)))
    version, final = await model(http, stack06, job_id)
    assert version == rounds
    assert_same(final, expected)


async def test_participant_killed_mid_round_does_not_stall_the_job(stack06: Stack) -> None:
    rounds = 2
    job_id = await submit_job(
        stack06.api_url,
        **UNSCREENED,
        name="xain06_kill",
        model="xor",
        rounds=rounds,
        devices_per_round=3,
        over_selection=0.0,
        task_timeout=5.0,
        round_timeout=200.0,
        retry_wait=1,
        xain=True,
        evaluate=False,
    )
    deltas = [0.5, 0.25, 0.125, -0.5]
    processes = await start_participants(stack06, deltas, [10] * 4, "--announce", "--train-seconds", "1")
    try:
        # The first participant to start training holds a lease: kill it there, by its PID.
        readers = {asyncio.ensure_future(p.stdout.readline()): p for p in processes if p.stdout is not None}
        done, pending = await asyncio.wait(readers, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        assert done, "no participant started training"
        first = next(iter(done))
        assert first.result().strip() == b"training"
        victim = readers[first]
        victim.kill()
        await victim.wait()
        await finished([p for p in processes if p is not victim], timeout=200)
    finally:
        await stop(processes)
    status = await wait_for(stack06.api_url, job_id, lambda s: s["status"] == "done", timeout=10)
    assert status["model_version"] == rounds


async def test_mixed_job_of_06_08_participants_and_feg_devices_aggregates_exactly(
    stack06: Stack, http: aiohttp.ClientSession
) -> None:
    deltas, samples = [0.5, -0.25], [3, 5]
    delta08 = 0.125  # a 0.8 participant through the proxy: no sample count, it weighs 1
    ios = 2
    rounds = 2
    job_id = await submit_job(
        stack06.api_url,
        **UNSCREENED,
        name="xain06_mixed",
        model="xor",
        rounds=rounds,
        devices_per_round=len(deltas) + 1 + ios,
        over_selection=0.0,
        task_timeout=30.0,
        retry_wait=1,
        xain=True,
        evaluate=False,
    )
    _, initial = await model(http, stack06, job_id)
    processes = await start_participants(stack06, deltas, samples)
    processes += await start_participants08(stack06, [delta08])
    try:
        loop = asyncio.get_running_loop()
        devices = [IosDevice(http, stack06.proxy_url, f"iphone-{i}", "xain06_mixed") for i in range(ios)]
        transcripts = await asyncio.gather(*(d.run(max_tasks=rounds, deadline=loop.time() + 200) for d in devices))
        outputs = await finished(processes, timeout=200)
    finally:
        await stop(processes)
    assert all(len(t.results) == rounds for t in transcripts)
    assert outputs[-1][0].decode().strip() == f"finished after {rounds} rounds"  # the 0.8 participant
    expected = initial
    for _ in range(rounds):
        uploads = [*zip(deltas, samples, strict=True), (delta08, 1)]
        expected = next_global(expected, uploads, ios_devices=ios)
    version, final = await model(http, stack06, job_id)
    assert version == rounds
    assert_same(final, expected)


async def test_readme_xain06_commands(tmp_path: Path) -> None:
    """README's 0.6 commands as written, but on free ports and with the venv `sdk_venvs` makes."""
    commands = readme_commands()
    first = next(i for i, c in enumerate(commands) if c.startswith("python3 -m venv /tmp/xain06"))
    install, local, background, foreground, kill = commands[first : first + 5]
    assert all(EXCLUDED.get(c) == XAIN06_REASON for c in (install, local, background, foreground))
    assert kill == "kill %1" and background.endswith("&") and local.endswith("&")
    assert shlex.split(install)[-2:] == SDKS["xain-sdk-0.6.0"]  # the cached venv holds what README installs
    sdk = await asyncio.to_thread(sdk_python, "xain-sdk-0.6.0")
    ports = {fixed: str(free_port("127.0.0.1")) for fixed in ("4321", "50051", "9000")}

    def argv(command: str) -> list[str]:
        words = shlex.split(command.removesuffix("&"))
        words = [re.sub(r"(?<![0-9.])(4321|50051|9000)$", lambda m: ports[m[1]], w) for w in words]
        programs = {"python": sys.executable, "/tmp/xain06/bin/python": str(sdk)}
        scripts = {"tests/xain/participant06.py": str(PARTICIPANT)}
        return [programs.get(words[0], words[0]), *(scripts.get(w, w) for w in words[1:])]

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the SDK's venv, not edgefl's
    with (tmp_path / "local.log").open("wb") as log:
        stack = await asyncio.create_subprocess_exec(*argv(local), cwd=tmp_path, stdout=log, stderr=log)
        participants: list[asyncio.subprocess.Process] = []
        try:
            for command in (background, foreground):
                participants.append(
                    await asyncio.create_subprocess_exec(
                        *argv(command), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
                    )
                )
            outputs = await finished(participants, timeout=200)
        finally:
            await stop(participants)
            stack.send_signal(signal.SIGTERM)  # `kill %1`
            code = await asyncio.wait_for(stack.wait(), 60)
    assert all(out.decode().strip().endswith(" finished") for out, _ in outputs)
    printed = (tmp_path / "local.log").read_text()
    assert code == 0, printed[-3000:]
    assert f"xain-sdk 0.6: coordinator 127.0.0.1:{ports['50051']}" in printed
    assert "job 'xor'" in printed and "done" in printed, printed[-3000:]
