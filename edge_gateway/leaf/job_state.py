"""A leaf's per-job bookkeeping: leases, who trained, who is waiting, duplicates. No I/O.

Slots come from the server (`JobView.quota`); within them the leaf hands tasks to devices that
ask, first come first served, and takes a slot back when its lease runs out.

Async (FedBuff) jobs differ in four rules: a lease holds its slot only while training (a taken
result frees it, and the device may get a new task at once: no ALREADY_TRAINED); a new version
clears no leases; a result counts while its trained-on version is within `max_staleness` of the
current one; and the books of taken and expired tasks are kept for that whole window.

Two rules keep slots from being captured (issue 11): a client (one credential, or one address
when device authentication is off; the proxy says which) holds at most its cap of unreported
leases, and a device that lets leases run out gets a free slot only when no reliable device is
waiting for one (no_shows.py).
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from internal_link.calls import ClientLimit
from internal_link.messages import JobStatus, JobView, LeafJobReport

from ..fedbuff import is_late
from .no_shows import NoShowScores
from .result_verdicts import RESULT_ANSWERS, ResultFacts, ResultVerdict, Tally
from .unreported import UnreportedLeases


class TaskDecision(Enum):
    NO_JOB = "no_job"
    NOT_READY = "not_ready"
    NOT_SELECTED = "not_selected"  # no free slot: may be worth waiting a moment for one
    ALREADY_TRAINED = "already_trained"  # trained in this selection: wait for the next
    NOT_ELIGIBLE = "not_eligible"  # the job's allow-lists leave this device out
    CLIENT_AT_CAP = "client_at_cap"  # its client holds as many unreported leases as it may
    TASK = "task"


@dataclass
class Lease:
    task_id: str
    device_id: str
    version: int
    selection_id: int
    issued_at: float  # for the turnaround metric
    expires_at: float
    reported: bool = False
    client: str | None = None  # the credential it was taken with (ClientLimit.key), if capped


@dataclass
class LeafJob:
    view: JobView
    waiting_window: float
    leases: dict[str, Lease] = field(default_factory=dict)  # by device id, this selection
    by_task: dict[str, Lease] = field(default_factory=dict)
    expired_tasks: set[str] = field(default_factory=set)
    reported_tasks: set[str] = field(default_factory=set)  # this model version
    # The version before's: a device whose OK was lost re-sends after the round closed, and hears
    # "counted once", not "late: not counted".
    reported_before: set[str] = field(default_factory=set)
    # Both in deadline order, so expiry and pruning stop at the first live entry: a scan of every
    # lease or device per request or sync cost milliseconds with thousands of them.
    unreported: UnreportedLeases[Lease] = field(default_factory=UnreportedLeases)
    waiting: OrderedDict[str, float] = field(default_factory=OrderedDict)  # device id -> last ask, oldest first
    waiting_flagged: set[str] = field(default_factory=set)  # of `waiting`, the devices no_shows flags
    no_shows: NoShowScores = field(default_factory=NoShowScores)  # the leaf's, shared by its jobs
    # Async: the trained-on version of each task in reported_tasks or expired_tasks, to forget
    # them once late (sync forgets them at each new version).
    task_versions: dict[str, int] = field(default_factory=dict)
    sessions_waiting: int = 0  # standby live sessions (session_service.py): demand like `waiting`
    tasks_issued: int = 0
    refused: int = 0
    late: int = 0
    duplicates: int = 0
    over_cap: int = 0  # task requests refused: their client held its cap of unreported leases
    groups_refused: int = 0  # simulator group announcements refused (bounds: device_groups.py)
    # The job's simulator groups as last fetched, and their version (JobView.groups_version).
    device_groups: dict[str, int] = field(default_factory=dict)
    groups_version: int = 0

    # -- server view --------------------------------------------------------------------------
    @property
    def is_async(self) -> bool:
        return self.view.mode == "async"

    def apply_view(self, view: JobView) -> None:
        old = self.view
        self.view = view
        if view.mode == "async":
            if view.model_version != old.model_version:
                self._forget_late_tasks()
            return
        if view.model_version != old.model_version:
            self.reported_before = self.reported_tasks if view.model_version == old.model_version + 1 else set()
            self.reported_tasks = set()
            self.expired_tasks.clear()
        if view.selection_id != old.selection_id or view.model_version != old.model_version:
            self.leases.clear()
            self.by_task.clear()
            self.unreported.clear()

    def report(self, now: float) -> LeafJobReport:
        self.expire(now)
        horizon = now - self.waiting_window
        while self.waiting:
            device, seen = self.waiting.popitem(last=False)
            if seen >= horizon:
                self.waiting[device] = seen
                self.waiting.move_to_end(device, last=False)
                break
            self.waiting_flagged.discard(device)
        return LeafJobReport(
            selection_id=self.view.selection_id,
            waiting=len(self.waiting) + self.sessions_waiting,
            assigned=len(self.leases),
            tasks_issued=self.tasks_issued,
            refused=self.refused,
            late=self.late,
            duplicates=self.duplicates,
            over_cap=self.over_cap,
            groups_refused=self.groups_refused,
        )

    def has_free_slot(self, now: float) -> bool:
        """Whether a new device could get a task now (expired leases freed first)."""
        self.expire(now)
        return self.view.quota > len(self.leases)

    def expire(self, now: float) -> None:
        """Leases past their deadline free their slot; their results will count as late, and their
        devices are scored as no-shows."""
        while (lease := self.unreported.oldest()) is not None and lease.expires_at <= now:
            # Every later lease was created later, with the same timeout: all still live.
            self.no_shows.missed(lease.device_id, now)
            self._expire_lease(lease)

    def _expire_lease(self, lease: Lease) -> None:
        self.unreported.pop(lease.task_id)
        self.by_task.pop(lease.task_id, None)
        if self.leases.get(lease.device_id) is lease:
            del self.leases[lease.device_id]
        self.expired_tasks.add(lease.task_id)
        if self.is_async:
            self.task_versions[lease.task_id] = lease.version

    def _forget_late_tasks(self) -> None:
        current, window = self.view.model_version, self.view.max_staleness
        for lease in [x for x in self.unreported.leases() if is_late(x.version, current, window)]:
            self._expire_lease(lease)  # its result could no longer count: the slot is free now
        for task_id in [t for t, v in self.task_versions.items() if is_late(v, current, window)]:
            del self.task_versions[task_id]
            self.reported_tasks.discard(task_id)
            self.expired_tasks.discard(task_id)

    # -- devices ------------------------------------------------------------------------------
    def eligible(self, device_id: str, platform: str | None) -> bool:
        """Whether the job takes this device at all (its allow-lists)."""
        view = self.view
        if view.device_ids is not None and device_id not in view.device_ids:
            return False
        return view.platforms is None or (platform or "").lower() in view.platforms

    def decide_task(
        self,
        device_id: str,
        now: float,
        model_ready: bool,
        platform: str | None = None,
        client: ClientLimit | None = None,
    ) -> tuple[TaskDecision, Lease | None]:
        view = self.view
        if view.status is JobStatus.DONE:
            return TaskDecision.NO_JOB, None
        if not self.eligible(device_id, platform):
            return TaskDecision.NOT_ELIGIBLE, None
        if view.status is not JobStatus.RUNNING or view.model_version < 0 or not model_ready:
            return TaskDecision.NOT_READY, None
        self.expire(now)
        lease = self.leases.get(device_id)
        if lease is not None and lease.expires_at <= now and not lease.reported:
            self.no_shows.missed(device_id, now)
            self._expire_lease(lease)  # e.g. a result that could not be made durable, then silence
            lease = None
        if lease is not None and self.is_async and lease.version != view.model_version:
            # Asked again for a task it lost while a new version came: the payload now is the new
            # version's, so the old lease ends (a result for it would count as late).
            self._expire_lease(lease)
            lease = None
        if lease is not None:
            if lease.reported:
                return TaskDecision.ALREADY_TRAINED, None
            return TaskDecision.TASK, lease  # the same task again: its answer may have been lost
        if client is not None and self.unreported.held_by(client.key) >= client.max_leases:
            self.over_cap += 1  # not waiting either: its demand would win the leaf more slots
            return TaskDecision.CLIENT_AT_CAP, None
        flagged = self.no_shows.flagged(device_id, now)
        free = view.quota - len(self.leases)
        if free <= 0 or (flagged and free <= len(self.waiting) - len(self.waiting_flagged)):
            self.waiting[device_id] = now
            self.waiting.move_to_end(device_id)  # the dict stays in order of last ask
            if flagged:
                self.waiting_flagged.add(device_id)
            else:
                self.waiting_flagged.discard(device_id)
            return TaskDecision.NOT_SELECTED, None
        self.waiting.pop(device_id, None)
        self.waiting_flagged.discard(device_id)
        lease = Lease(
            task_id=uuid.uuid4().hex,
            device_id=device_id,
            version=view.model_version,
            selection_id=view.selection_id,
            issued_at=now,
            expires_at=now + view.task_timeout,
            client=None if client is None else client.key,
        )
        self.leases[device_id] = lease
        self.by_task[lease.task_id] = lease
        self.unreported.add(lease)
        self.tasks_issued += 1
        return TaskDecision.TASK, lease

    def release(self, task_id: str) -> None:
        """The device gave its task up (a session's abort, close or silence): the slot is free at
        once, not at the lease's deadline, and a result that still comes counts as late."""
        lease = self.by_task.get(task_id)
        if lease is not None and not lease.reported:
            self._expire_lease(lease)

    def param_count(self) -> int:
        return sum(math.prod(shape) for shape in self.view.param_shapes.values())

    def may_promise(self, version: int) -> bool:
        """Whether a device may hear that its result of `version` counts before the server has
        answered for it: not while the next version is due and would make it late (closing.py)."""
        view = self.view
        staleness = view.max_staleness if self.is_async else 0
        return not (view.closing and is_late(version, view.model_version + 1, staleness))

    def reported_already(self, task_id: str) -> bool:
        """Whether this task's result was taken before (this model version or the one before)."""
        return task_id in self.reported_tasks or task_id in self.reported_before

    def result_facts(self, task_id: str, version: int) -> ResultFacts:
        """What this job's books say of an authentic result of `task_id` for model `version`."""
        view = self.view
        if self.is_async:
            current = not is_late(version, view.model_version, view.max_staleness)
        else:
            current = version == view.model_version
        return ResultFacts(
            reported=self.reported_already(task_id),
            current=current and view.status is JobStatus.RUNNING,
            lease_expired=task_id in self.expired_tasks,
        )

    def take(self, task_id: str, version: int | None = None) -> None:
        """The result passed every check and goes to the server: a second one is a duplicate.

        `version`, the one it was trained on (its cookie's), keeps an async job's books."""
        self.reported_tasks.add(task_id)
        lease = self.by_task.get(task_id)
        if self.is_async:
            if version is None:
                version = lease.version if lease is not None else self.view.model_version
            self.task_versions[task_id] = version
        if lease is not None and self.is_async:
            self._end_async_lease(lease)
        elif lease is not None:
            lease.reported = True
            self.unreported.pop(task_id)

    def _end_async_lease(self, lease: Lease) -> None:
        # Its slot is free and its device may get a new task; a retry of the result after an
        # unavailable server counts (settle forgets the report) without the lease.
        self.unreported.pop(lease.task_id)
        self.by_task.pop(lease.task_id, None)
        if self.leases.get(lease.device_id) is lease:
            del self.leases[lease.device_id]

    def taken_before(self, task_ids: dict[int, set[str]]) -> None:
        """Results of these tasks (by model version) were acknowledged by this leaf's last process."""
        if self.is_async:  # any version within the staleness window still counts its results
            for version, ids in task_ids.items():
                self.reported_tasks |= ids
                self.task_versions.update(dict.fromkeys(ids, version))
            self._forget_late_tasks()
            return
        self.reported_tasks |= task_ids.get(self.view.model_version, set())
        self.reported_before |= task_ids.get(self.view.model_version - 1, set())

    def not_counted(self, task_ids: list[str], acknowledged: int) -> None:
        """The server counted none of these (they reached it late): a device sending one again hears
        "late", not "counted once". `acknowledged` of them were told they count: late all the same."""
        self.late += acknowledged
        self.reported_tasks.difference_update(task_ids)
        self.reported_before.difference_update(task_ids)

    def settle(self, task_id: str, verdict: ResultVerdict) -> None:
        """Book the verdict on a result: the counter it moves, and what it undoes of `take`."""
        tally = RESULT_ANSWERS[verdict].tally
        if tally is Tally.REFUSED:
            self.refused += 1
        elif tally is Tally.LATE:
            self.late += 1
        elif tally is Tally.DUPLICATES:
            self.duplicates += 1
        if verdict is ResultVerdict.LATE_UPSTREAM:
            # The server closed the round before this result reached it: it was not counted.
            self.reported_tasks.discard(task_id)
            self.reported_before.discard(task_id)
        elif verdict is ResultVerdict.UNAVAILABLE:
            self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        # The result could not be made durable: let the device's retry count.
        self.reported_tasks.discard(task_id)
        self.reported_before.discard(task_id)
        lease = self.by_task.get(task_id)
        if lease is not None:
            lease.reported = False
            # Back at the end: it may expire a little after its deadline, never before.
            self.unreported.add(lease)

    def selection(self) -> dict[str, int]:
        return {device: lease.selection_id for device, lease in self.leases.items()}
