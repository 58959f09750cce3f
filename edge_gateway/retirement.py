"""When finished jobs leave the server's memory, and how a retired job reads from its checkpoint. No I/O.

A finished job stays in memory, and in every leaf sync, for `retain` seconds after it finished
(wall-clock time, saved with its checkpoint, so the period runs on over restarts); then only its
checkpoint on disk remains: listed by the job API, deletable, never loaded again. Devices that ask
for it hear `NO_JOB` from the leaves, which no longer know it (PROTOCOL.md §4: "over or unknown").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from internal_link.messages import JobStatus


class JobRunning(Exception):
    """A running job cannot be deleted: it must be ended first."""


class Retirement:
    """The finish times of the finished jobs in memory, and which of them are due to leave it."""

    def __init__(self, retain: float) -> None:
        self.retain = retain
        self._finished_at: dict[str, float] = {}

    def finished(self, job_id: str, now: float) -> float:
        """When the job finished: `now` the first time it is seen finished."""
        return self._finished_at.setdefault(job_id, now)

    def due(self, now: float) -> list[str]:
        return [job_id for job_id, at in self._finished_at.items() if now - at >= self.retain]

    def forget(self, job_id: str) -> None:
        self._finished_at.pop(job_id, None)

    def retired(self, record: Mapping[str, Any], now: float) -> bool:
        """Whether a checkpoint (`CheckpointStore.load_state`) is of a job retired already."""
        at = record.get("finished_at")
        return record.get("status") == JobStatus.DONE and at is not None and now - float(at) >= self.retain


def retired_status(job_id: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A retired job's status from its checkpoint: what `Coordinator.status` says of a finished job,
    less what lived only in memory (leaves, their counters, selections)."""
    history = list(record.get("history", []))
    spec = dict(record["spec"])
    return {
        "job_id": job_id,
        "name": spec["name"],
        "status": JobStatus(record.get("status", JobStatus.DONE)),
        "retired": True,
        "finished_at": record.get("finished_at"),
        "spec": spec,
        "round": record["round"],
        "model_version": record["version"],
        "results_counted": sum(h["results"] for h in history),
        "clipped": sum(h.get("clipped", 0) for h in history),
        "capped": sum(h.get("capped", 0) for h in history),
        "rejected_models": sum("rejected" in h for h in history),
        "screen": record.get("bounds"),
        "history": history,
    }
