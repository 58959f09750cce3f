"""The server's metrics, served on its job API port: rounds, results taken, jobs, leaves reporting.

Round durations and results are counted as they happen (server.py); jobs and leaves are read from
the coordinator at scrape time. No job id or device id is ever a label: a job id appears in a
dict here only until its job is done, and leaf names are those of the deployment's leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from internal_link.messages import JobStatus

from .coordinator import LEAF_STALE_AFTER, Coordinator
from .metrics_http import process_registry

# From a few seconds (an async version of a small buffer) to a slow cross-device round (an hour).
ROUND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class ServerMetrics:
    """The server's registry and instruments; `now` is the clock round times are measured on."""

    def __init__(self, coordinator: Coordinator, now: Callable[[], float]) -> None:
        self.registry = process_registry()
        self._now = now
        self.round_duration = Histogram(
            "edgefl_server_round_duration_seconds",
            "From a round's start (the job's submission, or the version before) to its new model version",
            ["mode"],
            buckets=ROUND_BUCKETS,
            registry=self.registry,
        )
        self.results = Counter(
            "edgefl_server_results",
            "Device results taken into a model (its rate is results per second)",
            registry=self.registry,
        )
        self._round_started: dict[str, float] = {}  # job id -> when its current round began
        self._leaf_seen: dict[str, float] = {}  # leaf name -> its last sync
        self.registry.register(_ServerState(coordinator, self._leaf_seen, now))

    def round_started(self, job_id: str) -> None:
        self._round_started[job_id] = self._now()

    def version_made(self, job_id: str, mode: str, done: bool) -> None:
        """A new model version: the round that made it ends, the next one starts (unless done)."""
        now = self._now()
        started = self._round_started.pop(job_id, None)
        if started is not None:  # a job resumed after a restart has no start to measure from
            self.round_duration.labels(mode).observe(now - started)
        if not done:
            self._round_started[job_id] = now

    def job_ended(self, job_id: str) -> None:
        self._round_started.pop(job_id, None)  # ended early: its round made no version

    def leaf_synced(self, leaf: str) -> None:
        self._leaf_seen[leaf] = self._now()


class _ServerState(Collector):
    def __init__(self, coordinator: Coordinator, leaf_seen: dict[str, float], now: Callable[[], float]) -> None:
        self._coordinator = coordinator
        self._leaf_seen = leaf_seen
        self._now = now

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("edgefl_server_jobs", "Jobs by status", labels=["status"])
        statuses = [job.status for job in self._coordinator.jobs.values()]
        for status in JobStatus:
            jobs.add_metric([status.value], statuses.count(status))
        yield jobs
        reporting = GaugeMetricFamily(
            "edgefl_server_leaf_reporting",
            f"1 while the leaf has synced within the last {LEAF_STALE_AFTER:.0f} s",
            labels=["leaf"],
        )
        now = self._now()
        for leaf, seen in sorted(self._leaf_seen.items()):
            reporting.add_metric([leaf], float(now - seen <= LEAF_STALE_AFTER))
        yield reporting
