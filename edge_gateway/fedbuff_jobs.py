"""The coordinator's async (FedBuff) jobs: batches into the buffer, buffer steps, slot grants. No I/O.

An async job has no rounds, deadlines or selections: its `selection_id` stays fixed (leaves clear
their leases when it changes), `round` counts the versions made, and the job ends after
`spec.rounds` of them. The arithmetic is `fedbuff.FedBuffBuffer`'s; this module maps it onto the
coordinator's `JobState` and the link's messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from internal_link.messages import JobStatus, LeafJobReport, SubmitBatch, SubmitReply

from .concurrency import LeafDemand, grant_slots
from .fedbuff import Accepted, Duplicate, FedBuffBuffer, Late

if TYPE_CHECKING:
    from .coordinator import JobState

CLOSED_BY_BUFFER = "buffer"  # the history's `closed_by` of a version an async step made


def new_buffer(
    shapes: Mapping[str, tuple[int, ...]],
    buffer_size: int,
    max_staleness: int,
    version: int,
    state: Mapping[str, Any] | None,
) -> FedBuffBuffer:
    """A fresh job's buffer, or a restored one's from its checkpointed `FedBuffBuffer.state()`."""
    if state is None:
        return FedBuffBuffer(shapes, buffer_size, max_staleness, version=version)
    if int(state["version"]) != version:
        raise ValueError(f"checkpoint holds weights of version {version} and a buffer of {state['version']}")
    return FedBuffBuffer.from_state(state, shapes, buffer_size, max_staleness)


def submit_async(
    job: JobState, buffer: FedBuffBuffer, batch: SubmitBatch, update: Mapping[str, np.ndarray], boot: str
) -> SubmitReply:
    """Offer a leaf's batch (all trained on `batch.version`) to the buffer; whether to step is the caller's."""
    if job.status is not JobStatus.RUNNING:
        return SubmitReply(accepted=False, late=True, message=f"job {job.job_id} is not running")
    outcome = buffer.offer(batch.version, update, batch.sum_weight, batch.task_ids)
    if isinstance(outcome, Accepted):
        return SubmitReply(accepted=True, boot=boot, applies_in=outcome.applies_in)
    if isinstance(outcome, Late):
        return SubmitReply(
            accepted=False,
            late=True,
            message=f"results for model version {batch.version} are {outcome.staleness} versions old "
            f"(current {outcome.current}, max_staleness {job.spec.max_staleness})",
        )
    if isinstance(outcome, Duplicate):
        return SubmitReply(accepted=False, duplicates=list(outcome.task_ids))
    return SubmitReply(accepted=False, message=outcome.reason)


def step_async(job: JobState, buffer: FedBuffBuffer, now: float) -> None:
    """Make the next version from every buffered result; the job ends after `spec.rounds` versions."""
    job.weights, report = buffer.step(job.weights, job.spec.server_lr)
    job.history.append(
        {
            "version": report.version,
            "round": job.round + 1,
            "results": report.results,
            "weight": report.weight,
            "closed_by": CLOSED_BY_BUFFER,
            "closed_at": now,
            # staleness -> results applied with it; str keys, as JSON (and orjson) need them
            "staleness": {str(tau): n for tau, n in sorted(report.by_staleness.items())},
        }
    )
    job.version = report.version
    job.round += 1
    if job.round >= job.spec.rounds:
        job.status = JobStatus.DONE


def grant_async(job: JobState, leaf: str, report: LeafJobReport, now: float, stale_after: float) -> tuple[int, int]:
    """(leases this leaf may have out at once, slots it could still get by asking again).

    A leaf reports the leases it has training as `assigned`; the other live leaves hold what they
    train or were granted, and `concurrency` is split among them max-min fairly.
    """
    others = [
        LeafDemand(training=slots.report.assigned, waiting=slots.report.waiting, granted=slots.granted)
        for name, slots in job.leaves.items()
        if name != leaf and now - slots.seen_at <= stale_after
    ]
    grant = grant_slots(job.spec.concurrency, LeafDemand(training=report.assigned, waiting=report.waiting), others)
    return grant.quota, grant.free_slots
