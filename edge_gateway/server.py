"""The server process: the leaves' link, rounds and versions, checkpoints and evaluation (its job API: job_api.py)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
from aiohttp import web
from pydantic import ValidationError

from device_protocol.tensors import tensors_from_binary
from internal_link.errors import CallRefused, ErrorCode
from internal_link.messages import (
    GroupsReply,
    GroupsRequest,
    JobStatus,
    ModelRequest,
    RegisterGroup,
    SubmitBatch,
    SyncRequest,
)
from internal_link.server import LinkServer

from .config import ServerConfig
from .coordinator import LEAF_STALE_AFTER, RESEND_WAIT_LIMIT, Coordinator, Event, JobNotFound, VersionDue
from .device_groups import GroupRefused
from .job_api import create_api
from .job_api_auth import refuse_exposed_without_token
from .jobs import JobNameTaken, JobSpec
from .leaf_names import LeafNames
from .metrics_http import serve_metrics
from .model_content import ModelContent
from .retirement import JobRunning, Retirement
from .robustness import ScreenBounds
from .server_metrics import ServerMetrics
from .store import CheckpointStore, load_names, save_names

log = logging.getLogger(__name__)
T = TypeVar("T")

# A leaf's "watch" call is answered at the latest after this long (it then asks again).
WATCH_LIMIT = 30.0
# Seconds a leaf's last report of its payload cache is shown (a leaf that went away drops out).
LEAF_REPORT_KEPT = 10.0


class Server:
    """Coordinator + its I/O: RPC for leaves, HTTP for people, disk for checkpoints."""

    def __init__(self, config: ServerConfig) -> None:
        refuse_exposed_without_token(config.api_host, config.api_token)  # before anything is written or bound
        self.config = config
        self.coordinator = Coordinator(boot=uuid.uuid4().hex)
        self.metrics = ServerMetrics(self.coordinator, time.monotonic)
        self._leaf_names = LeafNames(stale_after=LEAF_STALE_AFTER)
        self._refused_boots: set[str] = set()  # leaf boots refused a name: logged once each
        self.store = CheckpointStore(config.data_dir / "jobs")
        self.retirement = Retirement(config.retire_after)
        self._evaluating: Counter[str] = Counter()  # a job is not retired while its model is evaluated
        self._rpc = LinkServer(
            {
                "sync": _coded(self.handle_sync),
                "model": _coded(self.handle_model),
                "submit": _coded(self.handle_submit),
                "register": _coded(self.handle_register),
                "groups": _coded(self.handle_groups),
                "watch": _coded(self.handle_watch),
            },
            config.secret_bytes(),
            ssl=config.link_tls(),
        )
        self.link_refusals = self._rpc.refusals
        self.leaf_payloads: dict[str, tuple[int, float]] = {}  # leaf -> (payload bytes it holds, when said)
        self.content = ModelContent()  # what leaves fetch: weights or phone programs
        self._background: set[asyncio.Task[Any]] = set()
        self._groups_unsaved: set[str] = set()  # jobs whose simulator groups changed since their checkpoint
        # Which leaves a restarted server waits for (Coordinator.expect_resends): on disk, every leaf
        # that may hold results this process took and has not checkpointed, and the live ones (so a
        # round's first batch from a known leaf needs no write).
        self._leaves_file = config.data_dir / "leaves.json"
        self._leaves_on_disk: set[str] = set()
        self._unsaved_by_leaf: dict[str, set[str]] = {}  # leaf -> jobs it gave results since their checkpoint
        # News for leaves (a model version, a job added or ended): counted, and an event per count.
        self._news = 0
        self._news_event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self.http_port = 0
        self.link_port = 0
        self.metrics_port: int | None = None
        self._metrics_runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._restore()
        self.link_port = await self._rpc.start(self.config.host, self.config.link_port)
        self._runner = web.AppRunner(create_api(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.api_host, self.config.http_port)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        self._tick_task = asyncio.get_running_loop().create_task(self._tick_loop(), name="server-tick")
        if self.config.metrics_port is not None:
            host = self.config.metrics_host or self.config.host
            self._metrics_runner, self.metrics_port = await serve_metrics(
                self.metrics.registry, host, self.config.metrics_port
            )
            log.info("server: metrics also on http://%s:%d/metrics", host, self.metrics_port)
        log.info(
            "server: job API on http://%s:%d (%s), leaf link on %s:%d",
            self.config.api_host,
            self.http_port,
            "token required" if self.config.api_token else "no token",
            self.config.host,
            self.link_port,
        )

    async def stop(self) -> None:
        """Stop taking work, finish checkpoints and evaluations, close."""
        if self._tick_task is not None:
            self._tick_task.cancel()
        self._save_groups()
        await self._rpc.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        self.content.close()

    def _restore(self) -> None:
        now, wall = time.monotonic(), time.time()
        for job_id in self.store.job_ids():
            state = self.store.load_state(job_id)
            if self.retirement.retired(state, wall):
                continue  # on disk only (retirement.py): its weights are not even read
            spec = JobSpec.model_validate(state.pop("spec"))
            job = self.coordinator.add_job(
                job_id,
                spec,
                self.store.load_weights(job_id, state["version"]),
                now,
                version=state["version"],
                round_=state["round"],
                history=state.get("history"),
                status=JobStatus(state.get("status", JobStatus.RUNNING)),
                device_groups=state.get("device_groups"),
                fedbuff_state=state.get("fedbuff"),
                bounds=ScreenBounds(**state["bounds"]) if "bounds" in state else None,
            )
            if job.status is JobStatus.DONE:
                self.retirement.finished(job_id, float(state.get("finished_at", wall)))
            log.info("resumed job %s (%s) at model version %d", job_id, spec.name, state["version"])
        self._leaves_on_disk = load_names(self._leaves_file)
        if self._leaves_on_disk and any(job.status is JobStatus.RUNNING for job in self.coordinator.jobs.values()):
            self.coordinator.expect_resends(self._leaves_on_disk, now)
            log.info(
                "no round closes until leaves %s have re-sent what the last process took (at most %.0f s)",
                ", ".join(sorted(self._leaves_on_disk)),
                RESEND_WAIT_LIMIT,
            )

    # -- jobs ---------------------------------------------------------------------------------
    def _refuse_taken_name(self, name: str) -> None:
        # A device asks for a job by name (PROTOCOL.md §4 /job): two running under one name could not be told apart.
        for job in self.coordinator.jobs.values():
            if job.spec.name == name and job.status is JobStatus.RUNNING:
                raise JobNameTaken(
                    f"a running job is already named {name!r} ({job.job_id}): end it or choose another name"
                )

    async def submit_job(self, spec: JobSpec) -> str:
        from .models import initial_weights  # torch is loaded only when a job needs it

        self._refuse_taken_name(spec.name)  # at once, before the weights are made
        weights = await asyncio.to_thread(initial_weights, spec.model, spec.seed)
        self._refuse_taken_name(spec.name)  # again: another submit may have come meanwhile
        job_id = str(uuid.uuid4())
        self.coordinator.add_job(job_id, spec, weights, time.monotonic())
        self.metrics.round_started(job_id)
        self._checkpoint(job_id)
        self._announce()
        self._evaluate_later(job_id, 0)
        if spec.runtime == "executorch":
            self.content.program(
                self.coordinator.job(job_id)
            )  # exported now, off the request path, while devices hear "Model not ready"
        log.info(
            "job %s (%s) submitted: %d rounds, %d devices per round",
            job_id,
            spec.name,
            spec.rounds,
            spec.devices_per_round,
        )
        return job_id

    async def end_job(self, job_id: str) -> None:
        self.coordinator.end_job(job_id)
        self.metrics.job_ended(job_id)
        self._checkpoint(job_id)
        self._announce()

    def delete_job(self, job_id: str) -> None:
        """Remove a finished job, in memory or retired, with its checkpoints; a running one is refused."""
        job = self.coordinator.jobs.get(job_id)
        if job is not None:
            if job.status is not JobStatus.DONE:
                raise JobRunning(job_id)
            self._retire(job_id)
        if not self.store.delete(job_id):
            raise JobNotFound(job_id)
        log.info("job %s deleted", job_id)

    def _retire_due(self) -> None:
        for job_id in self.retirement.due(time.time()):
            if not self._evaluating[job_id]:
                self._retire(job_id)
                log.info("job %s retired: finished %.0f s ago, kept on disk only", job_id, self.retirement.retain)

    def _retire(self, job_id: str) -> None:
        """Drop a finished job from memory and from the leaves' syncs; its checkpoint stays."""
        self.coordinator.retire(job_id)
        self.retirement.forget(job_id)
        self.content.forget(job_id)
        for jobs in self._unsaved_by_leaf.values():
            jobs.discard(job_id)
        self._announce()  # the leaves drop it at their next sync

    def _checkpoint(self, job_id: str) -> None:
        # On the loop, not in a thread: two writers could land out of order and leave an older
        # state on disk than leaves were already told about.
        job = self.coordinator.job(job_id)
        state = {
            "round": job.round,
            "status": job.status,
            "history": [dict(h) for h in job.history],
            "device_groups": dict(job.device_groups.groups),
            "bounds": asdict(job.bounds),  # adaptive: they follow the rounds so far
        }
        if job.status is JobStatus.DONE:  # retirement counts from here, over restarts too
            state["finished_at"] = self.retirement.finished(job_id, time.time())
        if job.fedbuff is not None:  # the ids already applied; buffered results are re-sent by leaves
            state["fedbuff"] = job.fedbuff.state()
        self.store.save(job_id, job.spec, job.version, job.weights, state)

    def _results_checkpointed(self, job_id: str) -> None:
        """A new version of `job_id` is on disk: no leaf needs to re-send for it any more."""
        for jobs in self._unsaved_by_leaf.values():
            jobs.discard(job_id)
        self._unsaved_by_leaf = {leaf: jobs for leaf, jobs in self._unsaved_by_leaf.items() if jobs}
        self._save_leaves(self.coordinator.live_leaves(time.monotonic()) | set(self._unsaved_by_leaf))

    def _save_leaves(self, leaves: set[str]) -> None:
        if leaves != self._leaves_on_disk:
            save_names(self._leaves_file, leaves)
            self._leaves_on_disk = leaves

    def _evaluate_later(self, job_id: str, version: int) -> None:
        job = self.coordinator.job(job_id)
        if not job.spec.evaluate:
            return
        task = asyncio.get_running_loop().create_task(
            self._evaluate(job_id, version, job.spec.model, dict(job.weights))
        )
        self._evaluating[job_id] += 1
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _evaluate(self, job_id: str, version: int, model: str, weights: dict[str, np.ndarray]) -> None:
        from .evaluation import evaluate_on_test_split

        try:
            accuracy, loss = await asyncio.to_thread(evaluate_on_test_split, model, weights)
        except Exception:
            log.exception("evaluating %s v%d failed", job_id, version)
            return
        finally:
            self._evaluating -= Counter([job_id])  # drops the count at zero
        if job_id not in self.coordinator.jobs:  # deleted meanwhile: nothing to record it in
            return
        self.coordinator.record_evaluation(job_id, version, accuracy, loss)
        log.info("job %s model v%d: test accuracy %.4f, loss %.4f", job_id, version, accuracy, loss)
        self._checkpoint(job_id)  # keep the accuracy history with the checkpoint

    def _on_versions(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, VersionDue):  # the leaves answer for what they acknowledged (closing.py)
                log.info("job %s: next version due, waiting for %d leaves to answer", event.job_id, event.leaves)
                self._announce()
                continue
            job = self.coordinator.job(event.job_id)
            self.metrics.version_made(event.job_id, job.spec.mode, done=job.status is not JobStatus.RUNNING)
            started = time.perf_counter()
            # Written before anything else runs on the loop: no leaf may see the new version (and
            # drop the results it keeps for the old one) before it is on disk.
            self._checkpoint(event.job_id)
            self._results_checkpointed(event.job_id)
            log.info(
                "job %s: round %d closed, model v%d (%d results) after %.1f ms for the leaves, checkpoint written in %.1f ms",
                event.job_id,
                job.round,
                event.version,
                job.history[-1]["results"],
                event.waited * 1e3,
                (time.perf_counter() - started) * 1e3,
            )
            if "rejected" in job.history[-1]:
                log.warning(
                    "job %s: the new model of round %d was refused, v%d keeps the previous weights: %s",
                    event.job_id,
                    job.round,
                    event.version,
                    job.history[-1]["rejected"],
                )
            self._announce()
            self._evaluate_later(event.job_id, event.version)
            if job.spec.runtime == "executorch" and job.status is JobStatus.RUNNING:
                self.content.program(job)  # ready before the leaves ask

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval)
            try:
                self._save_groups()
                self._on_versions(self.coordinator.tick(time.monotonic()))
                self._retire_due()
            except Exception:
                log.exception("tick failed")

    def _save_groups(self) -> None:
        unsaved, self._groups_unsaved = self._groups_unsaved, set()
        for job_id in unsaved:
            self._checkpoint(job_id)

    def _announce(self) -> None:
        """Wake the leaves' watch calls: they sync at once instead of at their next tick."""
        self._news += 1
        self._news_event.set()
        self._news_event = asyncio.Event()

    # -- leaf link handlers -------------------------------------------------------------------
    async def handle_watch(self, payload: Any) -> int:
        """Long poll: the news count, as soon as it differs from the one the leaf saw (or after `wait` s)."""
        seen, wait = int(payload["seen"]), min(float(payload["wait"]), WATCH_LIMIT)
        if seen == self._news:
            try:
                await asyncio.wait_for(self._news_event.wait(), wait)
            except TimeoutError:
                pass
        return self._news

    async def handle_sync(self, payload: Any) -> dict[str, Any]:
        request = SyncRequest.model_validate(payload)
        refusal = self._leaf_names.claim(request.leaf, request.boot, time.monotonic())
        if refusal is not None:
            if request.boot not in self._refused_boots:
                self._refused_boots.add(request.boot)
                log.warning("leaf boot %s refused: %s", request.boot[:8], refusal)
            raise CallRefused(ErrorCode.NAME_TAKEN, refusal)
        now = time.monotonic()
        self.leaf_payloads = {k: v for k, v in self.leaf_payloads.items() if now - v[1] < LEAF_REPORT_KEPT}
        self.leaf_payloads[request.leaf] = (request.payload_bytes, now)
        awaited = len(self.coordinator.awaiting_resends)
        reply = self.coordinator.sync(request, time.monotonic()).model_dump()
        self.metrics.leaf_synced(request.leaf)
        # This leaf may be the last a due version waited for, or its hold the last on.
        self._on_versions(self.coordinator.settle_closings(time.monotonic()))
        if awaited and not self.coordinator.awaiting_resends:
            log.info("every leaf has re-sent what the last process took: rounds may close")
        return reply

    async def handle_model(self, payload: Any) -> dict[str, Any]:
        """The current version's task content: weights, or for phone jobs the training program."""
        request = ModelRequest.model_validate(payload)
        job = self.coordinator.job(request.job_id)
        if request.version != job.version:
            raise CallRefused(ErrorCode.NOT_CURRENT, f"model version {request.version} is not current ({job.version})")
        return await self.content.of(job)

    async def handle_register(self, payload: Any) -> None:
        request = RegisterGroup.model_validate(payload)
        try:
            changed = self.coordinator.register_group(request.job_id, request.prefix, request.count)
        except GroupRefused as exc:
            code = ErrorCode.TOO_MANY_GROUPS if exc.too_many_groups else ErrorCode.TOO_MANY_DEVICES
            raise CallRefused(code, str(exc)) from None
        if changed:
            # On disk with the next tick's checkpoint, not now: a flood of announcements costs
            # one state write per tick, not one (with its fsync, on this loop) per announcement.
            self._groups_unsaved.add(request.job_id)

    async def handle_groups(self, payload: Any) -> dict[str, Any]:
        groups = self.coordinator.job(GroupsRequest.model_validate(payload).job_id).device_groups
        return GroupsReply(version=groups.version, groups=groups.groups).model_dump()

    async def handle_submit(self, payload: Any) -> dict[str, Any]:
        batch = SubmitBatch.model_validate(payload)
        update = tensors_from_binary(batch.sum_update)
        # On disk before the batch is taken: should this process die before its next checkpoint,
        # the next one waits for this leaf's re-send.
        if batch.leaf not in self._leaves_on_disk:
            self._save_leaves(self._leaves_on_disk | {batch.leaf})
        started = time.perf_counter()
        reply, events = self.coordinator.submit(batch, update, time.monotonic())
        if reply.accepted:
            self._unsaved_by_leaf.setdefault(batch.leaf, set()).add(batch.job_id)
            self.metrics.results.inc(len(batch.task_ids))  # an accepted batch counts every one
        if any(not isinstance(e, VersionDue) for e in events):
            log.info(
                "job %s: batch of %d results added and round closed in %.1f ms",
                batch.job_id,
                len(batch.task_ids),
                (time.perf_counter() - started) * 1e3,
            )
        # The version the batch went into is checkpointed before the leaf is answered.
        self._on_versions(events)
        return reply.model_dump()


def _coded(handler: Callable[[Any], Awaitable[T]]) -> Callable[[Any], Awaitable[T]]:
    """The handler, its errors translated to the link's codes at the boundary."""

    async def coded(payload: Any) -> T:
        try:
            return await handler(payload)
        except JobNotFound as exc:
            raise CallRefused(ErrorCode.UNKNOWN_JOB, f"no job {exc.args[0]!r}") from None
        except ValidationError as exc:
            raise CallRefused(ErrorCode.BAD_PAYLOAD, str(exc)) from None

    return coded


# -- HTTP API ---------------------------------------------------------------------------------
