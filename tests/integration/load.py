"""Load for fault tests: the simulator's devices, in this process, with a transcript of every
`/result` answer per task, so a test can hold the server's count against what devices were told.

The devices are `edge_gateway.simulator.device.Device`, unchanged but for one observer around each
exchange; their trainer is the synthetic one plus a pause that stands for a phone's training time,
which puts a floor under a round's duration (a round cannot close before its tasks are trained)
and so keeps a job running through a fault however fast this machine is.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from yarl import URL

from edge_gateway.launcher import Stack
from edge_gateway.simulator.decisions import Phase
from edge_gateway.simulator.device import Device, DeviceSettings, _Request
from edge_gateway.simulator.stats import SimulationReport, Stats
from edge_gateway.simulator.trainers import Diff, SyntheticTrainer
from internal_link.messages import JobStatus

from .helpers import submit_job, wait_for, wait_leaves_synced


class PacedTrainer:
    """Random diffs (no torch) after `seconds` of "training", as a phone would take."""

    def __init__(self, rng: np.random.Generator, seconds: float) -> None:
        self._inner = SyntheticTrainer(rng)
        self._seconds = seconds

    @property
    def compute_s(self) -> float:
        return self._inner.compute_s

    async def train(self, task_data: Mapping[str, Any]) -> tuple[Diff, int]:
        await asyncio.sleep(self._seconds)
        return await self._inner.train(task_data)


@dataclass
class Transcript:
    """Every answer devices got, by endpoint, and per task for `/result`."""

    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, status or "transport")
    results: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # task id -> verdicts
    tasks: list[tuple[str, float]] = field(default_factory=list)  # (device id, loop time) of each task handed out

    def record(self, device_id: str, request: _Request, http_status: int, body: Mapping[str, Any] | None) -> None:
        if request.phase is Phase.REPORT:
            verdict = _result_verdict(http_status, body)
            self.results[request.url.query["task_id"]].append(verdict)
        else:
            verdict = "transport" if body is None or http_status >= 500 else str(body.get("status"))
            if request.phase is Phase.POLL and verdict == "OK":
                self.tasks.append((device_id, asyncio.get_running_loop().time()))
        self.statuses[(request.phase.value, verdict)] += 1

    def count(self, endpoint: str, verdict: str) -> int:
        return self.statuses[(endpoint, verdict)]

    def tasks_with(self, *verdicts: str) -> set[str]:
        return {t for t, seen in self.results.items() if any(v in verdicts for v in seen)}

    def told_counted(self) -> set[str]:
        """Tasks whose device heard that its result counts (OK, or OK as an already counted duplicate)."""
        return self.tasks_with("counted", "duplicate")

    def uncertain(self) -> set[str]:
        """Tasks a send of which got no answer from a leaf (the proxy's bare RETRY, or no HTTP answer
        at all), and that were never told they count: the leaf may have taken it before it went away."""
        return self.tasks_with("unanswered", "transport") - self.told_counted()


def _result_verdict(http_status: int, body: Mapping[str, Any] | None) -> str:
    if http_status == 0 or http_status >= 500 or body is None:
        return "transport"
    status = str(body.get("status"))
    if status == "OK":
        # The leaf's machine-readable verdict (docs/ARCHITECTURE.md "Device-facing payloads of our own").
        counted, reason = body.get("counted"), body.get("reason")
        if counted is True and reason is None:
            return "counted"
        if counted is True and reason == "duplicate":
            return "duplicate"
        if counted is False:
            return "not_counted"
        return f"OK: counted={counted!r}, reason={reason!r}"  # an answer the leaf never gives
    if status == "RETRY" and body.get("message") is None and "retry_wait" not in body:
        # The proxy's answer when a leaf took a request and went silent (PROTOCOL.md §8).
        return "unanswered"
    return status


class TracedDevice(Device):
    """A simulator device whose exchanges are also written to a shared `Transcript`."""

    transcript: Transcript

    async def _exchange(self, request: _Request) -> tuple[int, dict[str, Any] | None]:
        http_status, body = await super()._exchange(request)
        self.transcript.record(self.device_id, request, http_status, body)
        return http_status, body


@dataclass
class LoadRun:
    """Devices running in the background; `finish()` waits for them and returns what they saw."""

    task: asyncio.Task[SimulationReport]
    transcript: Transcript

    async def finish(self, timeout: float) -> tuple[SimulationReport, Transcript]:
        report = await asyncio.wait_for(self.task, timeout)
        return report, self.transcript

    async def cancel(self) -> None:
        """Stop the devices if they still run (a test failed half-way)."""
        if not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def start_job(
    stack: Stack, name: str, rounds: int, *, leaves: int, job: Mapping[str, Any], devices: int, seed: int = 0
) -> tuple[str, LoadRun]:
    """Submit a job and start `devices` devices on it, each "training" a second per task."""
    job_id = await submit_job(stack.api_url, name=name, rounds=rounds, **job)
    await wait_leaves_synced(stack.api_url, job_id, leaves)
    return job_id, start_devices(stack.proxy_url, name, devices, train_seconds=1.0, seed=seed)


async def finish_job(stack: Stack, job_id: str, load: LoadRun, rounds: int) -> tuple[dict[str, Any], Transcript]:
    """Wait for the devices to stop (the job is over for them); check the job ran every round and no
    device was refused. Returns the job's final status and the devices' transcript."""
    report, transcript = await load.finish(timeout=150)
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=15)
    assert len(status["history"]) == rounds and status["model_version"] == rounds, status
    assert_no_device_refused(report, transcript)
    return status, transcript


def start_devices(
    url: str,
    job: str,
    devices: int,
    *,
    train_seconds: float,
    seed: int = 0,
    result_attempts: int = 12,
    duration: float = 240.0,
    slow: tuple[int, float] = (0, 0.0),
) -> LoadRun:
    """Start `devices` simulated devices on `job` behind the proxy at `url` (bounded by `duration`).

    `result_attempts` is generous: a device keeps its result through a fault rather than giving it
    up, so every task ends with a definite answer. `slow`: the first that many devices train for
    the given seconds instead (stale results in async jobs).
    """
    transcript = Transcript()
    task = asyncio.get_running_loop().create_task(
        _run(url, job, devices, train_seconds, seed, result_attempts, duration, transcript, slow), name="fault-load"
    )
    return LoadRun(task, transcript)


async def _run(
    url: str,
    job: str,
    devices: int,
    train_seconds: float,
    seed: int,
    result_attempts: int,
    duration: float,
    transcript: Transcript,
    slow: tuple[int, float] = (0, 0.0),
) -> SimulationReport:
    settings = DeviceSettings(
        base_url=URL(url).with_path("/"),
        job_name=job,
        codec="json",
        keep_polling=False,
        result_attempts=result_attempts,
        backoff=(0.5, 2.0),
    )
    stats = Stats(seed)
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = asyncio.timeout(duration)
    # Past the proxy's upstream timeout (25 s), after which it answers RETRY for a leaf that went
    # silent, and short of the simulator's 60 s: a stuck request ends well within the test.
    timeout = aiohttp.ClientTimeout(total=40.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=timeout) as session:
            fleet = []
            for i in range(devices):
                device = TracedDevice(
                    f"fault-{seed}-{i}",
                    PacedTrainer(np.random.default_rng(seed * 100_003 + i), slow[1] if i < slow[0] else train_seconds),
                    settings,
                    session=session,
                    stats=stats,
                    pool=pool,
                    rng=random.Random(rng.getrandbits(64)),
                )
                device.transcript = transcript
                fleet.append(device)
            try:
                async with deadline, asyncio.TaskGroup() as group:
                    for device in fleet:
                        group.create_task(_staggered(device, rng.uniform(0.0, 2.0)))
            except TimeoutError:
                if not deadline.expired():
                    raise
    return SimulationReport.from_stats(
        stats,
        device_prefix=f"fault-{seed}",
        devices=devices,
        wall_time_s=loop.time() - started,
        timed_out=deadline.expired(),
    )


async def _staggered(device: Device, delay: float) -> None:
    await asyncio.sleep(delay)
    await device.run()


def assert_no_device_refused(report: SimulationReport, transcript: Transcript) -> None:
    """Devices may hear RETRY or lose a connection; never ERROR, never a malformed answer."""
    errors = {
        k: n for k, n in transcript.statuses.items() if k[1] in ("ERROR", "INVALID_REQUEST") or k[1].startswith("OK: ")
    }
    assert not errors, errors
    assert report.sessions_refused == 0 and report.invalid_replies == 0 and report.results_refused == 0, report
    assert report.training_errors == 0 and not report.timed_out, report
    assert report.results_abandoned == 0, report  # every result ended with a definite answer
    assert report.devices_finished == report.devices, report


def assert_counted_once(status: Mapping[str, Any], transcript: Transcript, *, exact: bool = False) -> None:
    """The server's count against what devices were told.

    Every result a device was told counts is in the server's count (acknowledged means aggregated),
    and the server counted nothing beyond those and the few whose answer was lost in the fault
    (no result counted twice). `exact`: no answer was lost, so the two are equal.
    """
    counted = status["results_counted"]
    assert counted == sum(h["results"] for h in status["history"]), status
    told = transcript.told_counted()
    uncertain = transcript.uncertain()
    assert all(seen.count("counted") <= 1 for seen in transcript.results.values())
    assert len(told) <= counted <= len(told) + len(uncertain), (counted, len(told), len(uncertain))
    if exact:
        assert counted == len(told), (counted, len(told), len(uncertain))
