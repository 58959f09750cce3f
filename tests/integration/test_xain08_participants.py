"""Unmodified xain-sdk 0.8 participants train real jobs through the proxy (docs/XAIN.md).

A real stack (server, two leaves, proxy); each participant (`tests/xain/participant08.py`) runs
with the SDK's own interpreter and uploads the global model plus a fixed delta. The leaf turns
an upload into the update `uploaded - global` (float32) with weight 1, so the final model is
known exactly: the test replays each round's arithmetic (float32 uploads and differences, the
server's float64 mean) and compares bit for bit.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from edge_gateway.launcher import Stack
from edge_gateway.processes import Child

from ..xain.sdk_venvs import sdk_python
from .clients import IosDevice, diff_for
from .helpers import UNSCREENED, job_status, submit_job, wait_for
from .stack_control import child, kill

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTICIPANT = Path(__file__).parents[1] / "xain" / "participant08.py"
Weights = dict[str, np.ndarray]


async def start_participants(stack: Stack, deltas: Sequence[float], *extra: str) -> list[asyncio.subprocess.Process]:
    python = await asyncio.to_thread(sdk_python, "xain-sdk-0.8.0")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the SDK's venv, not edgefl's
    return [
        await asyncio.create_subprocess_exec(
            str(python),
            str(PARTICIPANT),
            stack.proxy_url,
            str(delta),
            "--heartbeat-period",
            "0.1",
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for delta in deltas
    ]


async def stop(processes: Sequence[asyncio.subprocess.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def finished(processes: Sequence[asyncio.subprocess.Process], timeout: float) -> list[tuple[bytes, bytes]]:
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), timeout)
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()[-3000:]
    return outputs


async def model(http: aiohttp.ClientSession, stack: Stack, job_id: str) -> tuple[int, Weights]:
    async with http.get(f"{stack.api_url}/api/jobs/{job_id}/model") as reply:
        assert reply.status == 200
        version = int(reply.headers["X-Model-Version"])
        with np.load(io.BytesIO(await reply.read()), allow_pickle=False) as npz:
            return version, {name: npz[name] for name in npz.files}


def next_global(current: Weights, deltas: Sequence[float], ios_devices: int = 0) -> Weights:
    """One round as the stack computes it: each participant uploads float32 `g + d`, the leaf
    takes `upload - g` in float32, iOS devices send `diff_for(g)`; the server averages in float64."""
    out = {}
    for name, g in current.items():
        total = np.zeros(g.shape, np.float64)
        for delta in deltas:
            uploaded = g + np.float32(delta)
            total += np.subtract(uploaded, g, dtype=np.float32)
        for _ in range(ios_devices):
            total += diff_for({name: g})[name]
        out[name] = (g.astype(np.float64) + total / (len(deltas) + ios_devices)).astype(np.float32)
    return out


def assert_same(actual: Weights, expected: Weights) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert np.array_equal(actual[name], expected[name]), (name, np.abs(actual[name] - expected[name]).max())


async def test_participants_average_exactly_round_after_round(stack: Stack, http: aiohttp.ClientSession) -> None:
    deltas = [0.5, 1.0, -0.75]
    rounds = 3
    job_id = await submit_job(
        stack.api_url,
        **UNSCREENED,
        name="xain_exact",
        model="xor",
        rounds=rounds,
        devices_per_round=len(deltas),
        over_selection=0.0,
        retry_wait=1,
        xain=True,
        evaluate=False,
    )
    version, initial = await model(http, stack, job_id)
    assert version == 0
    processes = await start_participants(stack, deltas)
    try:
        outputs = await finished(processes, timeout=120)
    finally:
        await stop(processes)
    for out, _ in outputs:
        assert out.decode().strip() == f"finished after {rounds} rounds"
    status = await job_status(stack.api_url, job_id)
    assert status["status"] == "done" and status["model_version"] == rounds
    expected = initial
    for _ in range(rounds):
        expected = next_global(expected, deltas)
    version, final = await model(http, stack, job_id)
    assert version == rounds
    assert_same(final, expected)


async def test_participant_killed_mid_round_does_not_stall_the_job(stack: Stack, http: aiohttp.ClientSession) -> None:
    rounds = 3
    job_id = await submit_job(
        stack.api_url,
        **UNSCREENED,
        name="xain_kill",
        model="xor",
        rounds=rounds,
        devices_per_round=3,
        over_selection=0.0,
        task_timeout=3.0,
        round_timeout=60.0,
        retry_wait=1,
        xain=True,
        evaluate=False,
    )
    processes = await start_participants(stack, [0.5, 0.25, 0.125, -0.5], "--announce", "--train-seconds", "0.3")
    try:
        # The first participant to start training holds a lease: kill it there, by its PID.
        readers = {asyncio.ensure_future(p.stdout.readline()): p for p in processes if p.stdout is not None}
        done, pending = await asyncio.wait(readers, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        assert done, "no participant started training"
        victim = readers[next(iter(done))]
        assert (next(iter(done))).result().strip() == b"training"
        victim.kill()
        await victim.wait()
        survivors = [p for p in processes if p is not victim]
        await finished(survivors, timeout=120)
    finally:
        await stop(processes)
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == "done", timeout=10)
    assert status["model_version"] == rounds


async def test_mixed_job_of_participants_and_feg_devices_aggregates_exactly(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    deltas = [0.5, -0.25]
    ios = 2
    rounds = 2
    job_id = await submit_job(
        stack.api_url,
        **UNSCREENED,
        name="xain_mixed",
        model="xor",
        rounds=rounds,
        devices_per_round=len(deltas) + ios,
        over_selection=0.0,
        retry_wait=1,
        xain=True,
        evaluate=False,
    )
    _, initial = await model(http, stack, job_id)
    processes = await start_participants(stack, deltas)
    try:
        loop = asyncio.get_running_loop()
        devices = [IosDevice(http, stack.proxy_url, f"iphone-{i}", "xain_mixed") for i in range(ios)]
        transcripts = await asyncio.gather(*(d.run(max_tasks=rounds, deadline=loop.time() + 120) for d in devices))
        await finished(processes, timeout=120)
    finally:
        await stop(processes)
    assert all(len(t.results) == rounds for t in transcripts)
    expected = initial
    for _ in range(rounds):
        expected = next_global(expected, deltas, ios_devices=ios)
    version, final = await model(http, stack, job_id)
    assert version == rounds
    assert_same(final, expected)


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> dict[str, Any]:
    async with http.get(url, **kwargs) as reply:
        assert reply.status == 200, await reply.text()
        return dict(orjson.loads(await reply.read()))


async def test_the_sdk_traps_and_bad_uploads_by_hand(stack: Stack, http: aiohttp.ClientSession) -> None:
    """What the SDK relies on, call by call: a URL-safe id, `round` only to a participant that will
    get a task, the aggregator at the root of the URL it was reached by, `stand_by` after an
    upload; uploads that are not a `.npy` of the model's flat float32 vector are refused, answered 200."""
    job_id = await submit_job(
        stack.api_url, name="xain_hand", model="xor", rounds=2, devices_per_round=2, retry_wait=1, evaluate=False
    )
    _, initial = await model(http, stack, job_id)
    values = sum(v.size for v in initial.values())
    base = stack.proxy_url
    participant = (await get_json(http, f"{base}/rendez_vous"))["id"]
    assert participant.startswith("x8-") and participant.replace("-", "").replace("_", "").isalnum()
    # The only running job takes XAIN participants without asking for them.
    beat = await wait_heartbeat(http, base, participant, "round")
    assert beat["round"] == 0
    start = await get_json(http, f"{base}/start_training/{participant}", headers={"Host": "edge.example:4321"})
    assert start["ok"] is True and start["url"] == "http://edge.example:4321"
    aggregator = f"{base}/{participant}/{start['token']}"
    async with http.get(aggregator) as reply:
        assert reply.status == 200
        downloaded = np.load(io.BytesIO(await reply.read()), allow_pickle=False)
    assert downloaded.dtype == np.dtype("<f4") and downloaded.shape == (values,)
    assert np.array_equal(downloaded, np.concatenate([v.ravel() for v in initial.values()]))

    def npy(array: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return buf.getvalue()

    bad = {
        "not npy": b"\x00" * 64,
        "float64": npy(downloaded.astype("<f8") + 1),
        "too short": npy(downloaded[:-1] + 1),
        "NaN": npy(np.full(values, np.nan, "<f4")),
        "unchanged": npy(downloaded),
    }
    for what, body in bad.items():
        async with http.post(aggregator, data=body) as reply:
            assert reply.status == 200, what
            answer = orjson.loads(await reply.read())
        assert answer["counted"] is False and answer["reason"] == "update_rejected", (what, answer)
    forged = f"{base}/{participant}/{start['token'][:-4]}AAAA"
    async with http.post(forged, data=npy(downloaded + 1)) as reply:
        assert reply.status == 200 and orjson.loads(await reply.read())["reason"] == "cookie_invalid"
    # Still leased after refusals: the same participant may send a good one.
    assert (await get_json(http, f"{base}/heartbeat/{participant}"))["state"] == "round"
    async with http.post(aggregator, data=npy(downloaded + np.float32(0.5))) as reply:
        assert reply.status == 200 and orjson.loads(await reply.read())["counted"] is True
    # Uploaded: never `round` again in this round (the SDK would train it again).
    assert (await get_json(http, f"{base}/heartbeat/{participant}"))["state"] == "stand_by"
    async with http.post(aggregator, data=npy(downloaded + np.float32(0.5))) as reply:
        assert orjson.loads(await reply.read())["reason"] == "duplicate"
    # A path that is not a participant's is still a 404, not a leaf call.
    async with http.get(f"{base}/someone/else") as reply:
        assert reply.status == 404


async def wait_heartbeat(http: aiohttp.ClientSession, base: str, participant: str, state: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        beat = await get_json(http, f"{base}/heartbeat/{participant}")
        if beat["state"] == state or loop.time() > deadline:
            assert beat["state"] == state, beat
            return beat
        await asyncio.sleep(0.2)


def log_of(process: Child) -> str:
    return process.log_path.read_text(errors="replace")


async def test_participants_move_when_their_leaf_dies(stack: Stack, http: aiohttp.ClientSession) -> None:
    rounds = 4
    job_id = await submit_job(
        stack.api_url,
        **UNSCREENED,
        name="xain_leaf_dies",
        model="xor",
        rounds=rounds,
        devices_per_round=3,
        over_selection=0.0,
        task_timeout=3.0,
        round_timeout=60.0,
        retry_wait=1,
        xain=True,
        evaluate=False,
    )
    processes = await start_participants(stack, [0.5, 0.25, 0.125, -0.5])
    try:
        await wait_for(stack.api_url, job_id, lambda s: s["round"] >= 1, timeout=60)
        # A leaf some participants are on (each leaf logs who joined through it).
        victim = next(c for c in (child(stack, "leaf-0"), child(stack, "leaf-1")) if "XAIN participant" in log_of(c))
        await kill(victim)
        await finished(processes, timeout=120)
    finally:
        await stop(processes)
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == "done", timeout=10)
    assert status["model_version"] == rounds
