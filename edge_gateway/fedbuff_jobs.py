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
from .fedavg import PartialSum
from .fedbuff import Accepted, Duplicate, FedBuffBuffer, Late
from .robustness import ScreenBounds, check_global_model, check_partial, model_limits, next_bounds

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
    # Screened with the bounds of the version it was trained on, at the most the widest of the window.
    unscreened = check_partial(
        update,
        batch.sum_weight,
        len(batch.task_ids),
        _widest(job.async_bounds),
        clipped=batch.clipped,
        capped=batch.capped,
    )
    if unscreened is not None:
        return SubmitReply(accepted=False, message=f"batch refused: {unscreened}")
    outcome = buffer.offer(batch.version, update, batch.sum_weight, batch.task_ids)
    if isinstance(outcome, Accepted):
        job.async_screened.add_partial(
            {}, batch.sum_weight, len(batch.task_ids), clipped=batch.clipped, capped=batch.capped
        )
        return SubmitReply(accepted=True, boot=boot)
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
    """Make the next version from every buffered result; the job ends after `spec.rounds` versions.

    As a sync round's close: a new model that fails the robustness check is not published (the
    version still moves on), and the screening bounds adapt from what this step's results saw.
    """
    new, report = buffer.step(job.weights, job.spec.server_lr)
    screened, widest = job.async_screened, _widest(job.async_bounds)
    rejected = check_global_model(new, job.weights, model_limits(job.policy, widest, job.spec.server_lr))
    if rejected is None:
        job.weights = new
    entry: dict[str, Any] = {
        "version": report.version,
        "round": job.round + 1,
        "results": report.results,
        "weight": report.weight,
        "closed_by": CLOSED_BY_BUFFER,
        "closed_at": now,
        # staleness -> results applied with it; str keys, as JSON (and orjson) need them
        "staleness": {str(tau): n for tau, n in sorted(report.by_staleness.items())},
        "clipped": screened.clipped,
        "capped": screened.capped,
        "clip_bound": job.bounds.norm_bound,
        "weight_cap": job.bounds.weight_cap,
    }
    if rejected is not None:
        entry["rejected"] = rejected
    job.history.append(entry)
    job.bounds = next_bounds(job.policy, job.bounds, screened.clipped, screened.capped, screened.count, job.weights)
    job.async_screened = PartialSum({})
    # Results may lag by max_staleness versions: keep the bounds they may have been screened with.
    job.async_bounds = [*job.async_bounds, job.bounds][-(job.spec.max_staleness + 1) :]
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


def _widest(bounds: list[ScreenBounds]) -> ScreenBounds:
    """The loosest of several bounds, each field on its own (None: unbounded wins)."""

    def loosest(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else max(v for v in values if v is not None)

    return ScreenBounds(
        weight_cap=max(b.weight_cap for b in bounds),
        norm_bound=loosest([b.norm_bound for b in bounds]),
        value_limit=loosest([b.value_limit for b in bounds]),
    )
