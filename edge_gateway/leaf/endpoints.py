"""The leaf's answers to devices' /job, /task, /result and /selection, from its view of each job."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from device_protocol.codecs import encode
from device_protocol.cookies import CookieSigner
from device_protocol.errors import CookieInvalid, UpdateRejected
from device_protocol.feg import (
    Identity,
    JobRequest,
    ResultRequest,
    SelectionRequest,
    Status,
    TaskRequest,
    response,
)
from device_protocol.tensors import decode_update
from internal_link.calls import ClientLimit, DeviceAnswer, device_answer
from internal_link.errors import ErrorCode, LinkUnavailable, RemoteError
from internal_link.messages import GroupsReply, GroupsRequest, JobStatus, RegisterGroup
from internal_link.server import answer_room
from internal_link.streams import Streamed

from ..device_groups import MAX_GROUPS, MAX_PREFIX_CHARS
from ..result_log import ResultRecord
from ..robustness import ScreenBounds, Screened, screen_update
from ..uplink import Outcome, ResultUplink, ServerLink
from .job_state import LeafJob, Lease, TaskDecision
from .metrics import LeafMetrics
from .payload_cache import PayloadCache
from .result_verdicts import RESULT_ANSWERS, ResultFacts, ResultVerdict, Tally, judge_result, result_answer

log = logging.getLogger(__name__)

SIMULATOR_GROUP = re.compile(r"(?P<prefix>[^?#]+)\?(?P<count>[1-9][0-9]{0,5})")
STARTING_RETRY_WAIT = 5

FegReply = DeviceAnswer | Streamed  # a task with a large model is streamed (internal_link/streams.py)
ANSWER_MARGIN = 0.05  # seconds a held /task keeps for its answer to reach the proxy in time
# Seconds a durable result waits for the server's answer, so that the device hears whether it
# counted (its round may close meanwhile); then OK all the same: it is delivered later.
RESULT_ANSWER_WAIT = 2.0
# Seconds a device waits for a result's answer when no proxy says (sessions, XAIN): below the
# proxy's own wait, so the device hears the leaf rather than a gateway timeout.
RESULT_PATIENCE = 20.0


# What a repeat hears, by its first copy's outcome (None: the server had answered it already).
_REPEAT_VERDICTS: dict[Outcome | None, ResultVerdict] = {
    Outcome.LATE: ResultVerdict.LATE_UPSTREAM,
    Outcome.PENDING: ResultVerdict.PENDING,
}


def _decode_and_screen(result: Any, shapes: dict[str, tuple[int, ...]], bounds: ScreenBounds | None) -> Screened:
    """A device's result decoded and screened (robustness.py); raises `UpdateRejected`."""
    update, weight = decode_update(result, shapes)
    if bounds is None:
        return Screened(update, weight, clipped=False, capped=False, clamped=False, norm=0.0)
    return screen_update(update, weight, bounds)


# The server's reasons, in words for the device (the server's own text is logged).
_GROUP_REFUSALS = {
    ErrorCode.TOO_MANY_DEVICES: "too many devices for this job",
    ErrorCode.TOO_MANY_GROUPS: f"more than {MAX_GROUPS} groups for this job",
}


def _group_refused(job: LeafJob, reason: str) -> dict[str, Any]:
    job.groups_refused += 1
    return response(Status.RETRY, retry_wait=job.view.retry_wait, message=f"simulated device group refused: {reason}")


def _from_simulator(identity: Identity) -> bool:
    """NVFlare's Python simulator sends `platform=None`, read as no platform (docs/NVFLARE_SIMULATOR.md
    §4); phones name theirs, so a phone's `x?N` id is an ordinary id and registers no phantoms."""
    return "platform" not in identity.device_info


class DeviceEndpoints:
    """Answers parsed device requests; the leaf process owns the jobs, payloads and links it reads."""

    def __init__(
        self,
        jobs: dict[str, LeafJob],
        payloads: PayloadCache,
        signer: CookieSigner,
        uplink: ResultUplink,
        link: ServerLink,
        quota_hold: float,
        sync_soon: Callable[[float], Awaitable[None]],
        metrics: LeafMetrics,
    ) -> None:
        self._jobs = jobs
        self._metrics = metrics
        self._payloads = payloads
        self._signer = signer
        self._uplink = uplink
        self._link = link
        self._quota_hold = quota_hold
        # Asks the server for a sync now and waits (at most the given seconds) until one is done.
        self._sync_soon = sync_soon
        self._group_fetches: dict[str, asyncio.Future[Any]] = {}  # by job id, while in flight

    def job(self, request: JobRequest) -> dict[str, Any]:
        # Jobs are looked up by exact name; a running one wins over a finished one of that name.
        matches = [j.view for j in self._jobs.values() if j.view.job_name == request.job_name]
        live = [v for v in matches if v.status is not JobStatus.DONE]
        if not live:
            return response(Status.NO_JOB, message=f"no running job named {request.job_name!r}")
        view = live[0]
        return response(Status.OK, job_id=view.job_id, job_name=view.job_name, job_data={"config": view.config})

    def task(
        self,
        request: TaskRequest,
        as_msgpack: bool,
        wait: float,
        client: ClientLimit | None = None,
        fetch_hold: bool = True,
    ) -> FegReply | Awaitable[FegReply]:
        """`client`: the credential the proxy saw and its lease cap (None: uncapped)."""
        job = self._jobs.get(request.job_id)
        if job is None:
            self._metrics.answers["task", Status.NO_JOB.value] += 1
            content_type, data = encode(response(Status.NO_JOB, message=f"unknown job {request.job_id!r}"), as_msgpack)
            return DeviceAnswer(200, content_type, data)
        loop = asyncio.get_running_loop()
        decision, lease = self._decide(job, request, loop.time(), client)
        # Held never past the time the proxy still waits: the device would hear RETRY instead.
        hold = min(self._quota_hold, wait - ANSWER_MARGIN)
        if decision is TaskDecision.NOT_SELECTED and job.view.free_slots > 0 and hold > 0:
            return self._task_held(job, request, as_msgpack, loop.time() + hold, client)
        if decision is TaskDecision.NOT_READY and hold > 0 and fetch_hold and self._payloads.fetching(job.view):
            return self._task_once_fetched(job, request, as_msgpack, wait, hold, client)
        return self._task_answer(job, request, decision, lease, as_msgpack)

    async def _task_once_fetched(
        self,
        job: LeafJob,
        request: TaskRequest,
        as_msgpack: bool,
        wait: float,
        hold: float,
        client: ClientLimit | None,
    ) -> FegReply:
        # The payload is on its way (a new version, or one fetched again after its eviction): a
        # moment's wait spares the device a whole retry_wait. Then decided afresh, once.
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._payloads.fetched(job.view, hold)
        await answer_room()
        outcome = self.task(request, as_msgpack, wait - (loop.time() - started), client, fetch_hold=False)
        return await outcome if isinstance(outcome, Awaitable) else outcome

    async def _task_held(
        self, job: LeafJob, request: TaskRequest, as_msgpack: bool, give_up: float, client: ClientLimit | None
    ) -> FegReply:
        # No slot here, but some are free: ask the server now and give it a moment rather
        # than sending the device away for retry_wait.
        loop = asyncio.get_running_loop()
        while True:
            await self._sync_soon(give_up - loop.time())
            decision, lease = self._decide(job, request, loop.time(), client)
            left = give_up - loop.time()
            if decision is not TaskDecision.NOT_SELECTED or left <= 0 or job.view.free_slots == 0:
                if decision is TaskDecision.TASK:
                    await answer_room()  # the task is the model: built when the proxy's link can take it
                return self._task_answer(job, request, decision, lease, as_msgpack)

    def _decide(
        self, job: LeafJob, request: TaskRequest, now: float, client: ClientLimit | None
    ) -> tuple[TaskDecision, Lease | None]:
        ready = self._payloads.servable(job.view)
        identity = request.identity
        issued = job.tasks_issued
        decided = job.decide_task(identity.device_id, now, ready, identity.device_info.get("platform"), client)
        self._metrics.tasks_issued += job.tasks_issued - issued
        return decided

    def _task_answer(
        self, job: LeafJob, request: TaskRequest, decision: TaskDecision, lease: Lease | None, as_msgpack: bool
    ) -> FegReply:
        view = job.view
        payload = self._payloads.get(view.job_id)
        if decision is TaskDecision.TASK and lease is not None and payload is not None:
            cookie = self._signer.issue(
                view.job_id, request.identity.device_id, lease.task_id, lease.version, lease.selection_id
            )
            content_type, parts = payload.render_parts(lease.task_id, cookie, as_msgpack)
            self._metrics.answers["task", Status.OK.value] += 1
            return device_answer(200, content_type, parts)
        if decision is TaskDecision.NO_JOB:
            reply = response(Status.NO_JOB, job_id=view.job_id, message="job finished")
        elif decision is TaskDecision.NOT_READY:
            reply = response(Status.RETRY, job_id=view.job_id, retry_wait=view.retry_wait, message="Model not ready")
        elif decision is TaskDecision.CLIENT_AT_CAP:
            # RETRY, not an error: an honest client with many devices goes on once one reports.
            reply = response(
                Status.RETRY,
                job_id=view.job_id,
                retry_wait=view.retry_wait,
                message="Device not selected: its credential holds all the unfinished tasks it may",
            )
        else:
            reply = response(
                Status.RETRY, job_id=view.job_id, retry_wait=view.retry_wait, message="Device not selected"
            )
        self._metrics.answers["task", reply["status"]] += 1
        content_type, data = encode(reply, as_msgpack)
        return DeviceAnswer(200, content_type, data)

    async def result(self, request: ResultRequest, offload: bool, patience: float = RESULT_PATIENCE) -> dict[str, Any]:
        """The answer to a device's result; `patience`: the seconds the device still waits for it."""
        # Facts are gathered and `judge_result` asked after each step; it alone decides.
        loop = asyncio.get_running_loop()
        answer_by = loop.time() + patience
        job = self._jobs.get(request.job_id)
        detail: str | None = None  # why the cookie or the update was refused
        version = -1
        lease = None if job is None else job.by_task.get(request.task_id)  # async jobs drop it once taken
        if job is None:
            facts = ResultFacts(job_known=False)
        elif request.status != Status.OK.value:
            facts = ResultFacts(device_ok=False)
        else:
            try:
                version, _ = self._signer.verify(
                    request.cookie, job.view.job_id, request.identity.device_id, request.task_id
                )
                facts = job.result_facts(request.task_id, version)
            except CookieInvalid as exc:
                facts, detail = ResultFacts(cookie_ok=False), exc.message
        verdict = judge_result(facts)
        if verdict is ResultVerdict.DUPLICATE and job is not None:
            verdict = await self._first_copy(job.view.job_id, request.task_id, version, answer_by)
        if verdict is None and job is not None:
            try:
                shapes = {k: tuple(v) for k, v in job.view.param_shapes.items()}
                # The bounds of the version just checked: taken before the await, as the shapes.
                screen = job.view.screen
                bounds = None if screen is None else ScreenBounds(**screen.model_dump())
                if offload:  # lists of a large diff take milliseconds to turn into arrays
                    screened = await asyncio.to_thread(_decode_and_screen, request.result, shapes, bounds)
                else:
                    screened = _decode_and_screen(request.result, shapes, bounds)
            except UpdateRejected as exc:
                facts, detail = replace(facts, decoded=False), exc.message
            else:
                # Looked at again: the round may have closed or the lease run out meanwhile.
                facts = replace(job.result_facts(request.task_id, version), decoded=True)
            verdict = judge_result(facts)
            if verdict is None:
                job.take(request.task_id, version)
                record = ResultRecord(
                    job.view.job_id,
                    version,
                    request.task_id,
                    screened.weight,
                    screened.update,
                    clipped=screened.clipped,
                    capped=screened.capped,
                )
                outcome = await self._uplink.accept(record, RESULT_ANSWER_WAIT, answer_by - loop.time())
                verdict = judge_result(replace(facts, upstream=outcome))
            elif verdict is ResultVerdict.DUPLICATE:
                verdict = await self._first_copy(job.view.job_id, request.task_id, version, answer_by)
        assert verdict is not None, "a result the server has answered always has a verdict"
        if job is not None:
            job.settle(request.task_id, verdict)
        self._count_result(verdict, lease)
        if detail is not None:
            log.info("refused result from %s: %s", request.identity.device_id, detail)
        return result_answer(
            verdict,
            request.task_id,
            request.task_name,
            job_id=request.job_id,
            device_status=request.status,
            detail=detail,
            version=version,
        )

    def _count_result(self, verdict: ResultVerdict, lease: Lease | None) -> None:
        self._metrics.results[verdict.value] += 1
        if RESULT_ANSWERS[verdict].tally is Tally.REFUSED:
            self._metrics.refusals[verdict.value] += 1
        if verdict is ResultVerdict.COUNTED and lease is not None:
            self._metrics.turnaround.observe(asyncio.get_running_loop().time() - lease.issued_at)

    async def _first_copy(self, job_id: str, task_id: str, version: int, answer_by: float) -> ResultVerdict:
        """A repeat hears what its first copy became: "counted once" only once that one is durable
        and counted or promised (while it is being made durable, or waits for the server's answer,
        the repeat waits as the first copy's device would)."""
        first = self._uplink.first_copy(job_id, task_id)
        if first is not None and not await asyncio.shield(first):
            return ResultVerdict.UNAVAILABLE
        patience = answer_by - asyncio.get_running_loop().time()
        outcome = await self._uplink.answer_for(job_id, task_id, version, RESULT_ANSWER_WAIT, patience)
        return _REPEAT_VERDICTS.get(outcome, ResultVerdict.DUPLICATE)

    async def selection(self, request: SelectionRequest) -> dict[str, Any]:
        # NVFlare's Python simulator: it announces its devices as "<prefix>?N", reads which of
        # "<prefix>#i" may ask for a task, and stops only on NO_JOB (docs/NVFLARE_SIMULATOR.md).
        job = self._jobs.get(request.job_id)
        if job is None or job.view.status is JobStatus.DONE:
            return response(Status.NO_JOB, message=f"no running job {request.job_id!r}")
        group = SIMULATOR_GROUP.fullmatch(request.identity.device_id) if _from_simulator(request.identity) else None
        if group is not None:
            refused = await self._register(job, group["prefix"], int(group["count"]))
            if refused is not None:
                return refused
        selection = job.selection()
        # Every simulated device may ask; the leaves' slots decide who trains (PROTOCOL.md §4).
        for prefix, count in (await self._groups(job)).items():
            selection.update((f"{prefix}#{i}", job.view.selection_id) for i in range(count))
        return response(Status.OK, job_id=job.view.job_id, selection=selection)

    async def _register(self, job: LeafJob, prefix: str, count: int) -> dict[str, Any] | None:
        """Announce a group to the server: None once it is recorded, else the answer to send."""
        if len(prefix) > MAX_PREFIX_CHARS:  # refused here: the server never sees it
            return _group_refused(job, f"prefix longer than {MAX_PREFIX_CHARS} characters")
        register = RegisterGroup(job_id=job.view.job_id, prefix=prefix, count=count)
        try:
            await self._link.call("register", register.model_dump(), 5.0)
        except LinkUnavailable:
            return response(Status.RETRY, retry_wait=STARTING_RETRY_WAIT, message="server unavailable")
        except RemoteError as exc:
            log.info("simulated device group %s?%d refused: %s", prefix, count, exc)
            return _group_refused(job, _GROUP_REFUSALS.get(exc.code, exc.code.name))
        job.groups_version = -1  # ours is newer than what the last sync said: fetch them
        return None

    async def _groups(self, job: LeafJob) -> dict[str, int]:
        """The job's simulator groups, fetched from the server when their version moved (once,
        however many devices ask meanwhile); the last ones known when the server is out of reach."""
        job_id = job.view.job_id
        if job.groups_version == job.view.groups_version:
            return job.device_groups
        fetch = self._group_fetches.get(job_id)
        if fetch is None:
            fetch = asyncio.ensure_future(self._link.call("groups", GroupsRequest(job_id=job_id).model_dump(), 5.0))
            self._group_fetches[job_id] = fetch
            fetch.add_done_callback(lambda _: self._group_fetches.pop(job_id, None))
        try:
            reply = GroupsReply.model_validate(await asyncio.shield(fetch))
        except (LinkUnavailable, RemoteError, ValidationError) as exc:
            log.warning("simulated device groups of job %s not fetched: %s", job_id, exc)
            return job.device_groups
        job.device_groups, job.groups_version = reply.groups, reply.version
        return job.device_groups
