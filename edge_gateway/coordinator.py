"""The server's core: jobs, sync FedAvg rounds, device-slot grants to leaves. No I/O.

Time is passed in (`now`); what the shell must do comes back as events: `VersionDue` (tell the
leaves now), `NewVersion` (checkpoint, evaluate). A round ("selection") is open until
`devices_per_round` results are counted, or until its deadline, when it closes with at least
`min_results` or opens a fresh selection. A version that comes due is made once the leaves have
answered for what they acknowledged (closing.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from internal_link.messages import (
    JobStatus,
    JobView,
    LeafJobReport,
    ScreenLimits,
    SubmitBatch,
    SubmitReply,
    SyncReply,
    SyncRequest,
)

from .closing import Closing, begin_closing, closing_settled, record_answer
from .device_groups import DeviceGroups
from .fair_share import fair_level
from .fedavg import PartialSum
from .fedbuff import FedBuffBuffer, repeated_ids
from .fedbuff_jobs import CLOSED_BY_BUFFER, grant_async, new_buffer, step_async, submit_async
from .jobs import JobSpec
from .robustness import (
    ScreenBounds,
    UpdatePolicy,
    check_global_model,
    check_partial,
    initial_bounds,
    model_limits,
    next_bounds,
)
from .rounds import RoundEnd, round_due

# A leaf that has not synced for this long no longer holds slots: its devices have moved on.
LEAF_STALE_AFTER = 3.0
# After a restart no round closes (by quorum or deadline) until every leaf that may hold results the lost process
# had taken (`expect_resends`) says it has re-sent them: a round closed before that would turn those
# acknowledged results away as late. Likewise while a live leaf says it holds results it could not
# deliver (`hold_for`: the server was out of reach, or the leaf restarted and replayed its log).
# A leaf that does not come back within this long (dead for good; its results are lost with it)
# holds rounds no longer.
RESEND_WAIT_LIMIT = 30.0
# What leaves count per job (LeafJobReport), summed over leaves and their processes in job status.
LEAF_COUNTERS = ("tasks_issued", "refused", "late", "duplicates", "over_cap", "groups_refused")


@dataclass(frozen=True)
class NewVersion:
    job_id: str
    version: int
    # Seconds it waited, once due, for the leaves' answers (closing.py); for the logs only.
    waited: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class VersionDue:
    """A job's next version is due: the leaves must hear it at once and answer (closing.py)."""

    job_id: str
    leaves: int = field(default=0, compare=False)  # how many it waits for


Event = NewVersion | VersionDue


@dataclass
class LeafSlots:
    report: LeafJobReport
    granted: int
    seen_at: float
    selection_id: int  # the selection `granted` is for: a grant for an earlier one holds nothing
    leaf_boot: str  # the leaf process the report is from: its counters start at 0 in the next
    serving: bool  # the leaf's last report named the job: it has the job and answers its devices
    missed_close: bool = False  # silent through a closing: not waited for again until it syncs


@dataclass
class JobState:
    job_id: str
    spec: JobSpec
    weights: dict[str, np.ndarray]
    bounds: ScreenBounds  # what this version's results are screened with (robustness.py)
    status: JobStatus = JobStatus.RUNNING
    version: int = 0
    round: int = 0
    selection_id: int = 0
    selection_opened_at: float = 0.0
    partial: PartialSum = field(init=False)
    counted: set[str] = field(default_factory=set)
    leaves: dict[str, LeafSlots] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    device_groups: DeviceGroups = field(default_factory=DeviceGroups)
    # Counters of leaf processes that have ended (a leaf restarted under its name starts at 0).
    ended_leaf_totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEAF_COUNTERS, 0))
    fedbuff: FedBuffBuffer | None = None  # async jobs' results since their last version (fedbuff_jobs.py)
    # Async jobs: screening counts since the last step (no tensors), and the bounds of the versions
    # a buffered result may have been screened with (fedbuff_jobs.py).
    async_screened: PartialSum = field(default_factory=lambda: PartialSum({}))
    async_bounds: list[ScreenBounds] = field(default_factory=list)
    closing: Closing | None = None  # the next version is due: made once the leaves have answered

    def __post_init__(self) -> None:
        self.shapes = {name: tuple(arr.shape) for name, arr in self.weights.items()}
        self.partial = PartialSum(self.shapes)
        self.policy = UpdatePolicy.from_spec(self.spec)
        self.async_bounds = [self.bounds]

    def leaf_totals(self) -> dict[str, int]:
        return {
            k: self.ended_leaf_totals[k] + sum(getattr(s.report, k) for s in self.leaves.values())
            for k in LEAF_COUNTERS
        }


class JobNotFound(KeyError):
    pass


class Coordinator:
    """All jobs of one server. Every method is synchronous and does no I/O."""

    def __init__(self, boot: str) -> None:
        self.boot = boot
        self.jobs: dict[str, JobState] = {}
        self.awaiting_resends: set[str] = set()  # leaves, see RESEND_WAIT_LIMIT
        self.leaves_seen: dict[str, float] = {}  # leaf -> its last sync, jobs or none (the status page's topology)
        self._resends_due_by = 0.0

    # -- jobs ---------------------------------------------------------------------------------
    def add_job(
        self,
        job_id: str,
        spec: JobSpec,
        weights: Mapping[str, np.ndarray],
        now: float,
        version: int = 0,
        round_: int = 0,
        history: list[dict[str, Any]] | None = None,
        status: JobStatus = JobStatus.RUNNING,
        device_groups: Mapping[str, int] | None = None,
        fedbuff_state: Mapping[str, Any] | None = None,
        bounds: ScreenBounds | None = None,
    ) -> JobState:
        """Add a new job, or one restored from its checkpoint after a restart (with its `bounds`)."""
        job = JobState(
            job_id=job_id,
            spec=spec,
            weights=dict(weights),
            bounds=bounds or initial_bounds(UpdatePolicy.from_spec(spec), weights),
            status=status,
            version=version,
            round=round_,
            selection_id=round_,
            selection_opened_at=now,
            history=list(history or []),
            device_groups=DeviceGroups.restored(device_groups),
        )
        if spec.mode == "async":
            job.fedbuff = new_buffer(job.shapes, spec.buffer_size, spec.max_staleness, version, fedbuff_state)
            job.selection_id = 0  # fixed, restarts included: leaves keep their leases over versions
        if job.round >= spec.rounds:
            job.status = JobStatus.DONE
        self.jobs[job_id] = job
        return job

    def job(self, job_id: str) -> JobState:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    def end_job(self, job_id: str) -> None:
        job = self.job(job_id)
        job.status, job.closing = JobStatus.DONE, None

    def retire(self, job_id: str) -> None:
        """Forget a finished job: leaves no longer see it in their syncs (retirement.py)."""
        if self.job(job_id).status is not JobStatus.DONE:
            raise ValueError(f"job {job_id!r} is running: only a finished job is retired")
        del self.jobs[job_id]

    def register_group(self, job_id: str, prefix: str, count: int) -> bool:
        """Record a simulator's device group; True when it changed the job's groups.

        Raises `GroupRefused` past the bounds (device_groups.py)."""
        return self.job(job_id).device_groups.register(prefix, count)

    # -- leaves -------------------------------------------------------------------------------
    def expect_resends(self, leaves: set[str], now: float) -> None:
        """After a restart: close no round until these leaves have re-sent, or until the limit."""
        self.awaiting_resends = set(leaves)
        self._resends_due_by = now + RESEND_WAIT_LIMIT

    def hold_for(self, leaf: str, now: float) -> None:
        """A live leaf has results it could not deliver yet: close no round until it has, or until
        the limit (counted from the first leaf of this hold, so a hold always ends)."""
        if not self.rounds_held(now):
            self.awaiting_resends = set()
            self._resends_due_by = now + RESEND_WAIT_LIMIT
        self.awaiting_resends.add(leaf)

    def rounds_held(self, now: float) -> bool:
        return bool(self.awaiting_resends) and now < self._resends_due_by

    def live_leaves(self, now: float) -> set[str]:
        return {
            name
            for job in self.jobs.values()
            for name, slots in job.leaves.items()
            if now - slots.seen_at <= LEAF_STALE_AFTER
        }

    def sync(self, request: SyncRequest, now: float) -> SyncReply:
        """Record a leaf's reports and grant it task slots for each running job."""
        self.leaves_seen[request.leaf] = now
        if request.undelivered:
            self.hold_for(request.leaf, now)
        elif request.server_boot == self.boot:
            self.awaiting_resends.discard(request.leaf)
        views = []
        for job in self.jobs.values():
            report = request.jobs.get(job.job_id)
            if job.closing is not None:
                record_answer(job.closing, request.leaf, request.closing.get(job.job_id), report is not None)
            views.append(self._view(job, request.leaf, request.boot, report, now))
        return SyncReply(boot=self.boot, jobs=views)

    def _view(self, job: JobState, leaf: str, leaf_boot: str, report: LeafJobReport | None, now: float) -> JobView:
        serving = report is not None
        report = report or LeafJobReport()
        grant = free = 0
        if job.status is JobStatus.RUNNING:
            grant, free = self._grant(job, leaf, report, now)
        slots = job.leaves.get(leaf)
        if slots is None:
            job.leaves[leaf] = LeafSlots(
                report=report,
                granted=grant,
                seen_at=now,
                selection_id=job.selection_id,
                leaf_boot=leaf_boot,
                serving=serving,
            )
        else:
            if slots.leaf_boot != leaf_boot:  # restarted: keep what the ended process had counted
                for key in LEAF_COUNTERS:
                    job.ended_leaf_totals[key] += getattr(slots.report, key)
                slots.leaf_boot = leaf_boot
            slots.report, slots.granted, slots.seen_at, slots.selection_id = report, grant, now, job.selection_id
            slots.serving, slots.missed_close = serving, False
        spec = job.spec
        return JobView(
            job_id=job.job_id,
            job_name=spec.name,
            status=job.status,
            model_version=job.version,
            round=job.round,
            closing=job.closing is not None,
            selection_id=job.selection_id,
            quota=grant,
            free_slots=free,
            retry_wait=spec.retry_wait,
            task_timeout=spec.task_timeout,
            param_shapes={k: list(v) for k, v in job.shapes.items()},
            config=spec.app_config(),
            task_meta=spec.task_meta(),
            groups_version=job.device_groups.version,
            task_kind="APP_DEFINED" if spec.runtime == "executorch" else "WEIGHTS",
            platforms=spec.platforms,
            device_ids=spec.device_ids,
            xain=spec.xain,
            mode=spec.mode,
            max_staleness=spec.max_staleness,
            requires=list(spec.requires),
            screen=ScreenLimits(**asdict(job.bounds)),
        )

    def _grant(self, job: JobState, leaf: str, report: LeafJobReport, now: float) -> tuple[int, int]:
        """(slots granted to this leaf, slots it could still get by asking again).

        Each leaf gets at most its max-min fair share of the selection, computed from the demand
        (slots in use + devices waiting) every live leaf last reported: the first leaf to sync
        after a round opens no longer takes every slot, and a share nobody else wants (one busy
        leaf, a dead leaf's) goes to whoever asks.
        """
        if job.fedbuff is not None:
            return grant_async(job, leaf, report, now, LEAF_STALE_AFTER)
        current = job.selection_id
        assigned = report.assigned if report.selection_id == current else 0
        if job.closing is not None:  # the round has what it needs: a task now would only be late
            return assigned, 0
        waiting = report.waiting if report.selection_id == current else 0
        held = 0
        others = []
        for name, slots in job.leaves.items():
            if name == leaf or now - slots.seen_at > LEAF_STALE_AFTER:
                continue
            used = slots.report.assigned if slots.report.selection_id == current else 0
            granted = slots.granted if slots.selection_id == current else 0
            # What they use or were granted, whichever is more: two leaves never get the same slot.
            held += max(used, granted)
            # Waiting devices count even in a report on the previous selection: that leaf asks
            # for them at its next sync, a moment after a round opens.
            others.append(max(used, granted, used + slots.report.waiting))
        total = job.spec.tasks_per_selection
        free = max(0, total - held - assigned)
        cap = fair_level(total, others)
        share = max(0, min(waiting, free, cap - assigned))
        return assigned + share, max(0, min(free - share, cap - assigned - share))

    # -- results ------------------------------------------------------------------------------
    def submit(
        self, batch: SubmitBatch, update: Mapping[str, np.ndarray], now: float
    ) -> tuple[SubmitReply, list[Event]]:
        """Count a leaf's batch exactly once, or say why not; may close the round."""
        job = self.job(batch.job_id)
        if job.fedbuff is not None:
            return self._submit_async(job, job.fedbuff, batch, update, now)
        if job.status is not JobStatus.RUNNING or batch.version != job.version:
            # Leaves count these per device (LeafJobReport.late); the server only says so.
            return SubmitReply(
                accepted=False,
                late=True,
                message=f"results for model version {batch.version}; current is {job.version}",
            ), []
        duplicates = [t for t in batch.task_ids if t in job.counted]
        if duplicates or len(set(batch.task_ids)) != len(batch.task_ids):
            return SubmitReply(
                accepted=False, duplicates=duplicates or repeated_ids(batch.task_ids), boot=self.boot
            ), []
        if set(update) != set(job.shapes) or any(update[k].shape != job.shapes[k] for k in job.shapes):
            return SubmitReply(accepted=False, message="batch does not match the model's parameters"), []
        unscreened = check_partial(
            update, batch.sum_weight, len(batch.task_ids), job.bounds, clipped=batch.clipped, capped=batch.capped
        )
        if unscreened is not None:
            return SubmitReply(accepted=False, message=f"batch refused: {unscreened}"), []
        job.partial.add_partial(
            update, batch.sum_weight, len(batch.task_ids), clipped=batch.clipped, capped=batch.capped
        )
        job.counted.update(batch.task_ids)
        # Only a quorum brings a version due here; deadlines are the tick's.
        return SubmitReply(accepted=True, boot=self.boot), self._advance(job, now, quorum_only=True)

    def _submit_async(
        self, job: JobState, buffer: FedBuffBuffer, batch: SubmitBatch, update: Mapping[str, np.ndarray], now: float
    ) -> tuple[SubmitReply, list[Event]]:
        reply = submit_async(job, buffer, batch, update, self.boot)
        return reply, self._advance(job, now) if reply.accepted else []

    def tick(self, now: float) -> list[Event]:
        """Apply round deadlines; make the versions that came due while held or closing."""
        return [event for job in list(self.jobs.values()) for event in self._advance(job, now)]

    def settle_closings(self, now: float) -> list[Event]:
        """After a leaf's sync: make the versions whose closings it was the last to answer."""
        return [
            event for job in list(self.jobs.values()) if job.closing is not None for event in self._advance(job, now)
        ]

    def _advance(self, job: JobState, now: float, quorum_only: bool = False) -> list[Event]:
        """Bring the job's next version due (announced: `VersionDue`), and make it (`NewVersion`)
        once the leaves have answered for what they acknowledged and no hold is on."""
        if job.status is not JobStatus.RUNNING:
            return []
        came_due = job.closing is None
        if job.closing is None:
            closed_by = self._due(job, now, quorum_only)
            if closed_by is None:
                return []
            job.closing = begin_closing(job.version, closed_by, job.leaves, now, seen_within=RESEND_WAIT_LIMIT)
        if self.rounds_held(now) or not closing_settled(
            job.closing, job.leaves, now, silent_after=LEAF_STALE_AFTER, limit=RESEND_WAIT_LIMIT
        ):
            return [VersionDue(job.job_id, len(job.closing.waiting))] if came_due else []
        closing, job.closing = job.closing, None
        if job.fedbuff is not None:
            step_async(job, job.fedbuff, now)
        else:
            self._close_round(job, now, RoundEnd(closing.closed_by))
        return [NewVersion(job.job_id, job.version, now - closing.since)]

    def _due(self, job: JobState, now: float, quorum_only: bool) -> str | None:
        """How the job's next version comes due now (the history's `closed_by`), or None. A sync
        round past its deadline short of `min_results` opens a fresh selection here instead."""
        if job.fedbuff is not None:
            return CLOSED_BY_BUFFER if job.fedbuff.due() and not self.rounds_held(now) else None
        end = round_due(job.spec, job.partial.count, job.selection_opened_at, now, held=self.rounds_held(now))
        if end is RoundEnd.RESELECT and not quorum_only:
            job.selection_id += 1
            job.selection_opened_at = now
        if end is None or end is RoundEnd.RESELECT or (quorum_only and end is not RoundEnd.QUORUM):
            return None
        return end.value

    def _close_round(self, job: JobState, now: float, reason: RoundEnd) -> None:
        partial, bounds = job.partial, job.bounds
        new = partial.apply_to(job.weights, job.spec.server_lr)
        rejected = check_global_model(new, job.weights, model_limits(job.policy, bounds, job.spec.server_lr))
        if rejected is None:
            job.weights = new
        # Else the previous weights stay; the version still moves on (this round's results are late).
        entry: dict[str, Any] = {
            "version": job.version + 1,
            "round": job.round + 1,
            "results": partial.count,
            "weight": partial.weight,
            "closed_by": reason.value,
            "closed_at": now,
            "clipped": partial.clipped,
            "capped": partial.capped,
            "clip_bound": bounds.norm_bound,
            "weight_cap": bounds.weight_cap,
        }
        if rejected is not None:
            entry["rejected"] = rejected
        job.history.append(entry)
        job.bounds = next_bounds(job.policy, bounds, partial.clipped, partial.capped, partial.count, job.weights)
        job.version += 1
        job.round += 1
        job.selection_id += 1
        job.selection_opened_at = now
        job.partial = PartialSum(job.shapes)
        job.counted = set()
        if job.round >= job.spec.rounds:
            job.status = JobStatus.DONE

    def record_evaluation(self, job_id: str, version: int, accuracy: float, loss: float) -> None:
        for entry in self.job(job_id).history:
            if entry["version"] == version:
                entry["accuracy"], entry["loss"] = accuracy, loss

    # -- status -------------------------------------------------------------------------------
    def status(self, job_id: str, now: float) -> dict[str, Any]:
        job = self.job(job_id)
        fresh = [s for s in job.leaves.values() if now - s.seen_at <= LEAF_STALE_AFTER]
        selected = sum(s.report.assigned for s in fresh if s.report.selection_id == job.selection_id)
        totals = job.leaf_totals()
        pending = job.partial.count if job.fedbuff is None else job.fedbuff.buffered
        return {
            "job_id": job.job_id,
            "name": job.spec.name,
            "status": job.status,
            "spec": job.spec.model_dump(),
            "round": job.round,
            "model_version": job.version,
            "selection_id": job.selection_id,
            "selected": selected,
            "reported": pending,
            "results_counted": sum(h["results"] for h in job.history) + pending,
            "refused": totals["refused"],
            "late": totals["late"],
            "duplicates": totals["duplicates"],
            "over_cap": totals["over_cap"],
            "groups_refused": totals["groups_refused"],
            "device_groups": len(job.device_groups.groups),
            "clipped": sum(h.get("clipped", 0) for h in job.history) + job.partial.clipped,
            "capped": sum(h.get("capped", 0) for h in job.history) + job.partial.capped,
            "rejected_models": sum("rejected" in h for h in job.history),
            "screen": asdict(job.bounds),
            "tasks_issued": totals["tasks_issued"],
            "leaves": sorted(s for s, v in job.leaves.items() if v.serving and now - v.seen_at <= LEAF_STALE_AFTER),
            "history": job.history,
        }
