"""Counters and latency samples of one simulation run, and the report built from them."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson

from .decisions import Outcome

# Latency samples kept per endpoint; beyond this a reservoir keeps a uniform sample, so memory
# stays bounded on long runs while p50/p99 stay unbiased.
RESERVOIR_SIZE = 50_000
ENDPOINTS: tuple[str, ...] = ("job", "task", "result")


class Stats:
    """Live counters, shared by every device of a run (one event loop: no locks needed)."""

    def __init__(self, seed: int = 0) -> None:
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self.devices_finished = 0
        self.training_errors = 0
        self._samples: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
        self._seen: Counter[str] = Counter()
        self._rng = random.Random(seed)

    def add(self, outcomes: Iterable[Outcome]) -> None:
        self.counts.update(o.value for o in outcomes)

    def record_latency(self, endpoint: str, seconds: float) -> None:
        self._seen[endpoint] += 1
        samples = self._samples[endpoint]
        if len(samples) < RESERVOIR_SIZE:
            samples.append(seconds)
            return
        slot = self._rng.randrange(self._seen[endpoint])
        if slot < RESERVOIR_SIZE:
            samples[slot] = seconds

    def latency(self) -> dict[str, LatencySummary]:
        out: dict[str, LatencySummary] = {}
        for endpoint, samples in self._samples.items():
            if samples:
                p50, p99 = np.percentile(np.asarray(samples) * 1000.0, [50, 99])
                out[endpoint] = LatencySummary(self._seen[endpoint], round(float(p50), 3), round(float(p99), 3))
        return out


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class SimulationReport:
    """What a run did: the figures of the CLI's summary table. `to_json()` for files and launchers."""

    device_prefix: str
    devices: int
    devices_finished: int  # sessions that ended before the deadline
    jobs_joined: int  # /job answered OK
    jobs_finished: int  # NO_JOB/DONE while working: the job is over for that device
    tasks_received: int
    tasks_aborted: int  # dropped on purpose (--abort-rate)
    results_accepted: int  # OK, counted (or counted before: a duplicate)
    results_not_counted: int  # OK with "counted": false (late, stale)
    results_refused: int  # ERROR (or the job gone) on /result
    results_abandoned: int  # still RETRY or unreachable after every resend
    training_errors: int
    sessions_refused: int  # ERROR on /job or /task: the session ends, as on iOS
    retries: int  # RETRY or NO_TASK answers
    no_job: int  # NO_JOB on /job: waiting for a job to start
    invalid_replies: int  # HTTP 4xx, INVALID_REQUEST, unknown statuses
    transport_errors: int  # connection errors, timeouts, HTTP 5xx, undecodable bodies
    requests: int
    wall_time_s: float
    requests_per_s: float
    timed_out: bool  # the deadline ended the run before every device finished
    latency_ms: dict[str, LatencySummary]

    @classmethod
    def from_stats(
        cls, stats: Stats, *, device_prefix: str, devices: int, wall_time_s: float, timed_out: bool
    ) -> SimulationReport:
        counts = {outcome.value: stats.counts[outcome.value] for outcome in Outcome}
        return cls(
            device_prefix=device_prefix,
            devices=devices,
            devices_finished=stats.devices_finished,
            training_errors=stats.training_errors,
            requests=stats.requests,
            wall_time_s=round(wall_time_s, 3),
            requests_per_s=round(stats.requests / wall_time_s, 1) if wall_time_s > 0 else 0.0,
            timed_out=timed_out,
            latency_ms=stats.latency(),
            **counts,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2)
