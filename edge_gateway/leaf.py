"""The leaf aggregator: answers devices (via the proxy's link) and feeds partial sums upward."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable
from typing import Any

import orjson

from device_protocol.codecs import JSON, decode_body, encode, wants_msgpack
from device_protocol.cookies import CookieSigner
from device_protocol.errors import BodyTooLarge, CookieInvalid, ProtocolError, UpdateRejected
from device_protocol.feg import (
    FegRequest,
    Identity,
    JobRequest,
    ResultRequest,
    SelectionRequest,
    Status,
    TaskRequest,
    error_response,
    parse_request,
    response,
)
from device_protocol.tensors import decode_update, max_result_body_bytes, tensors_from_binary
from internal_link.calls import FEG, PING, PONG, DeviceAnswer, DeviceCall, device_call_handler
from internal_link.client import LinkClient
from internal_link.errors import CallRefused, ErrorCode, LinkUnavailable, RemoteError
from internal_link.messages import JobView, RegisterGroup, SyncReply, SyncRequest
from internal_link.server import LinkServer

from .config import LeafConfig
from .leaf_state import LeafJob, Lease, ResultVerdict, TaskDecision
from .payloads import TaskPayload
from .uplink import Outcome, ResultBatcher, ServerLink

log = logging.getLogger(__name__)

# Bodies larger than this are decoded in a worker thread so other devices are not held up.
INLINE_DECODE_LIMIT = 64 * 1024
SIMULATOR_GROUP = re.compile(r"(?P<prefix>[^?#]+)\?(?P<count>[1-9][0-9]{0,5})")
STARTING_RETRY_WAIT = 5
# On SIGTERM the leaf answers requests until none has come for this long: the proxy stops sending
# once its next health ping (every second by default) fails.
DRAIN_QUIET = 1.0
DRAINING_RETRY_WAIT = 1  # another leaf will answer: no need to wait long
ANSWER_MARGIN = 0.05  # seconds a held /task keeps for its answer to reach the proxy in time
WATCH_WAIT = 20.0  # seconds the server may hold a "watch" call

FegReply = DeviceAnswer | list[Any]  # a list [http_status, content_type, body] is the same on the link


def _from_simulator(identity: Identity) -> bool:
    """NVFlare's Python simulator sends `platform=None`, read as no platform (docs/NVFLARE_SIMULATOR.md
    §4); phones name theirs, so a phone's `x?N` id is an ordinary id and registers no phantoms."""
    return "platform" not in identity.device_info


class Leaf:
    """One leaf process: an RPC server for the proxy, a link to the server."""

    def __init__(self, config: LeafConfig, link: ServerLink | None = None) -> None:
        self.config = config
        self.name = config.name
        self.boot = uuid.uuid4().hex
        secret = config.secret_bytes()
        self._client = (
            LinkClient(config.server_host, config.server_port, secret, name=f"{self.name}->server")
            if link is None
            else None
        )
        self._link: ServerLink = link if link is not None else self._client  # type: ignore[assignment]
        self._rpc = LinkServer({FEG: device_call_handler(self.handle_feg), PING: self.handle_ping}, secret)
        self._signer = CookieSigner(config.cookie_key())
        self.batcher = ResultBatcher(self.name, self._link, hold_limit=config.result_hold)
        self.jobs: dict[str, LeafJob] = {}
        self._payloads: dict[str, TaskPayload] = {}
        self._fetching: set[tuple[str, int]] = set()
        self._server_boot: str | None = None
        self._synced = asyncio.Event()  # replaced after every sync, so waiters see the next one
        self._wake_sync = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.port = 0
        self._draining = False
        self._busy = 0  # device requests taken and not answered yet
        self._last_request = 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> int:
        if self._client is not None:
            await self._client.start()
        self.batcher.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._sync_loop(), name="leaf-sync"))
        self._tasks.append(loop.create_task(self._watch_loop(), name="leaf-watch"))
        self.port = await self._rpc.start(self.config.host, self.config.port)
        log.info("leaf %s listening on %s:%d", self.name, self.config.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Drain: fail health pings and turn new work away, but answer every result taken (and the
        ones still coming until the proxy has moved the devices away), within `drain_timeout`.
        Then flush what waits for the server and close the links."""
        self._draining = True
        loop = asyncio.get_running_loop()
        started, in_flight = loop.time(), self._busy
        deadline = started + self.config.drain_timeout
        while loop.time() < deadline and (self._busy or loop.time() - self._last_request < DRAIN_QUIET):
            await asyncio.sleep(0.05)
        if self._busy:
            log.warning(
                "leaf %s: %d requests unanswered after a %.0f s drain", self.name, self._busy, self.config.drain_timeout
            )
        else:
            log.info(
                "leaf %s drained in %.1f s (%d requests were in flight)", self.name, loop.time() - started, in_flight
            )
        await self._rpc.close()
        await self.batcher.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    # -- proxy-facing handlers ----------------------------------------------------------------
    def handle_ping(self, _: Any) -> str:
        if self._draining:
            # The proxy marks it unhealthy and moves its devices.
            raise CallRefused(ErrorCode.SHUTTING_DOWN, "leaf shutting down")
        return PONG

    def handle_feg(self, call: DeviceCall) -> FegReply | Awaitable[FegReply]:
        """The answer now when it needs no waiting (most /job and /task), else an awaitable."""
        self._last_request = asyncio.get_running_loop().time()
        if self._draining and call.endpoint != "result":
            # A result is still answered (Android ends its session on anything but OK); new work
            # is for the leaves that stay.
            reply = response(Status.RETRY, retry_wait=DRAINING_RETRY_WAIT, message="leaf shutting down")
            content_type, data = encode(reply, wants_msgpack(call.headers.get("accept", "")))
            return DeviceAnswer(200, content_type, data)
        outcome = self._answer_feg(call)
        if isinstance(outcome, Awaitable):
            self._busy += 1
            return self._counted(outcome)
        return outcome

    async def _counted(self, outcome: Awaitable[FegReply]) -> FegReply:
        try:
            return await outcome
        finally:
            self._busy -= 1

    def _answer_feg(self, call: DeviceCall) -> FegReply | Awaitable[FegReply]:
        endpoint, query, headers, body, wait = call
        if len(body) > INLINE_DECODE_LIMIT:
            if endpoint == "result" and len(body) > (limit := self._result_body_limit(query.get("job_id"))):
                # Refused unparsed: junk the size of an upload would become millions of objects.
                return self._refused(
                    endpoint,
                    BodyTooLarge(f"result body larger than {limit} bytes, more than this job's model can need"),
                )
            return self._feg_decoded_in_thread(endpoint, query, headers, body, wait)
        try:
            fields = decode_body(headers.get("content-type", ""), body)
            request = parse_request(endpoint, query, headers, fields)
        except ProtocolError as exc:
            return self._refused(endpoint, exc)
        return self._feg(request, headers, len(body), wait)

    async def _feg_decoded_in_thread(
        self, endpoint: str, query: Any, headers: Any, body: bytes, wait: float
    ) -> FegReply:
        try:
            fields = await asyncio.to_thread(decode_body, headers.get("content-type", ""), body)
            request = parse_request(endpoint, query, headers, fields)
        except ProtocolError as exc:
            return self._refused(endpoint, exc)
        outcome = self._feg(request, headers, len(body), wait)
        return await outcome if isinstance(outcome, Awaitable) else outcome

    def _result_body_limit(self, job_id: str | None) -> int:
        job = self.jobs.get(job_id or "")
        if job is not None:
            return max_result_body_bytes(job.param_count())
        # An unknown job is answered as such once parsed; the body is bounded by the largest model.
        return max_result_body_bytes(max((j.param_count() for j in self.jobs.values()), default=0))

    def _refused(self, endpoint: str, exc: ProtocolError) -> FegReply:
        log.info("refused %s request: %s", endpoint, exc.message)
        return DeviceAnswer(exc.http_status, JSON, orjson.dumps(error_response(exc.status, exc.message, exc.errors)))

    def _feg(self, request: FegRequest, headers: Any, body_size: int, wait: float) -> FegReply | Awaitable[FegReply]:
        as_msgpack = wants_msgpack(headers.get("accept", ""))
        if not self._synced_once():
            reply = response(Status.RETRY, retry_wait=STARTING_RETRY_WAIT, message="Gateway starting")
        elif isinstance(request, JobRequest):
            reply = self._job(request)
        elif isinstance(request, TaskRequest):
            return self._task(request, as_msgpack, wait)
        elif isinstance(request, ResultRequest):
            return self._encoded(self._result(request, offload=body_size > INLINE_DECODE_LIMIT), as_msgpack)
        else:
            return self._encoded(self._selection(request), as_msgpack)
        content_type, data = encode(reply, as_msgpack)
        return [200, content_type, data]

    @staticmethod
    async def _encoded(reply: Awaitable[dict[str, Any]], as_msgpack: bool) -> FegReply:
        content_type, data = encode(await reply, as_msgpack)
        return [200, content_type, data]

    def _synced_once(self) -> bool:
        return self._server_boot is not None

    def _job(self, request: JobRequest) -> dict[str, Any]:
        # Jobs are looked up by exact name; a running one wins over a finished one of that name.
        matches = [j.view for j in self.jobs.values() if j.view.job_name == request.job_name]
        live = [v for v in matches if v.status != "done"]
        if not live:
            return response(Status.NO_JOB, message=f"no running job named {request.job_name!r}")
        view = live[0]
        return response(Status.OK, job_id=view.job_id, job_name=view.job_name, job_data={"config": view.config})

    def _task(self, request: TaskRequest, as_msgpack: bool, wait: float) -> FegReply | Awaitable[FegReply]:
        job = self.jobs.get(request.job_id)
        if job is None:
            content_type, data = encode(response(Status.NO_JOB, message=f"unknown job {request.job_id!r}"), as_msgpack)
            return [200, content_type, data]
        loop = asyncio.get_running_loop()
        decision, lease = self._decide(job, request, loop.time())
        # Held never past the time the proxy still waits: the device would hear RETRY instead.
        hold = min(self.config.quota_hold, wait - ANSWER_MARGIN)
        if decision is TaskDecision.NOT_SELECTED and job.view.free_slots > 0 and hold > 0:
            return self._task_held(job, request, as_msgpack, loop.time() + hold)
        return self._task_answer(job, request, decision, lease, as_msgpack)

    async def _task_held(self, job: LeafJob, request: TaskRequest, as_msgpack: bool, give_up: float) -> FegReply:
        # No slot here, but some are free: ask the server now and give it a moment rather
        # than sending the device away for retry_wait.
        loop = asyncio.get_running_loop()
        while True:
            self._wake_sync.set()
            await self._next_sync(give_up - loop.time())
            decision, lease = self._decide(job, request, loop.time())
            left = give_up - loop.time()
            if decision is not TaskDecision.NOT_SELECTED or left <= 0 or job.view.free_slots == 0:
                return self._task_answer(job, request, decision, lease, as_msgpack)

    def _decide(self, job: LeafJob, request: TaskRequest, now: float) -> tuple[TaskDecision, Lease | None]:
        payload = self._payloads.get(job.view.job_id)
        ready = payload is not None and payload.version == job.view.model_version
        return job.decide_task(request.identity.device_id, now, ready, request.identity.device_info.get("platform"))

    def _task_answer(
        self, job: LeafJob, request: TaskRequest, decision: TaskDecision, lease: Lease | None, as_msgpack: bool
    ) -> FegReply:
        view = job.view
        payload = self._payloads.get(view.job_id)
        if decision is TaskDecision.TASK and lease is not None and payload is not None:
            cookie = self._signer.issue(
                view.job_id, request.identity.device_id, lease.task_id, lease.version, lease.selection_id
            )
            content_type, data = payload.render(lease.task_id, cookie, as_msgpack)
            return [200, content_type, data]
        if decision is TaskDecision.NO_JOB:
            reply = response(Status.NO_JOB, job_id=view.job_id, message="job finished")
        elif decision is TaskDecision.NOT_READY:
            reply = response(Status.RETRY, job_id=view.job_id, retry_wait=view.retry_wait, message="Model not ready")
        else:
            reply = response(
                Status.RETRY, job_id=view.job_id, retry_wait=view.retry_wait, message="Device not selected"
            )
        content_type, data = encode(reply, as_msgpack)
        return [200, content_type, data]

    async def _result(self, request: ResultRequest, offload: bool) -> dict[str, Any]:
        ids = {"task_id": request.task_id, "task_name": request.task_name}
        job = self.jobs.get(request.job_id)
        if job is None:
            return response(Status.ERROR, message=f"unknown job {request.job_id!r}", **ids)
        if request.status != Status.OK.value:
            job.refused += 1
            return response(
                Status.ERROR, message=f"device reported status {request.status!r}: result not counted", **ids
            )
        try:
            version, _ = self._signer.verify(
                request.cookie, job.view.job_id, request.identity.device_id, request.task_id
            )
        except CookieInvalid as exc:
            job.refused += 1
            log.info("refused result from %s: %s", request.identity.device_id, exc.message)
            return response(Status.ERROR, message=exc.message, **ids)
        if job.reported_already(request.task_id):
            job.duplicates += 1
            return response(Status.OK, message="duplicate result for this task: counted once", **ids)
        if version != job.view.model_version or job.view.status != "running":
            job.late += 1
            return response(Status.OK, message=f"late result for model version {version}: not counted", **ids)
        try:
            shapes = {k: tuple(v) for k, v in job.view.param_shapes.items()}
            if offload:  # lists of a large diff take milliseconds to turn into arrays
                update, weight = await asyncio.to_thread(decode_update, request.result, shapes)
            else:
                update, weight = decode_update(request.result, shapes)
        except UpdateRejected as exc:
            job.refused += 1
            log.info("refused result from %s: %s", request.identity.device_id, exc.message)
            return response(Status.ERROR, message=exc.message, **ids)
        verdict = job.judge_result(request.task_id, version)
        if verdict is ResultVerdict.LATE:
            return response(Status.OK, message="late result (lease expired or round closed): not counted", **ids)
        if verdict is ResultVerdict.DUPLICATE:
            return response(Status.OK, message="duplicate result for this task: counted once", **ids)
        outcome = await self.batcher.submit(job.view.job_id, version, request.task_id, weight, update)
        if outcome is Outcome.ACCEPTED:
            return response(Status.OK, **ids)
        if outcome is Outcome.LATE:
            job.late_upstream(request.task_id)
            return response(Status.OK, message="late result (round closed): not counted", **ids)
        if outcome is Outcome.DUPLICATE:
            job.duplicates += 1
            return response(Status.OK, message="duplicate result for this task: counted once", **ids)
        job.forget_result(request.task_id)
        return response(
            Status.RETRY, retry_wait=STARTING_RETRY_WAIT, message="server unavailable: send the result again", **ids
        )

    async def _selection(self, request: SelectionRequest) -> dict[str, Any]:
        # NVFlare's Python simulator: it announces its devices as "<prefix>?N", reads which of
        # "<prefix>#i" may ask for a task, and stops only on NO_JOB (docs/NVFLARE_SIMULATOR.md).
        job = self.jobs.get(request.job_id)
        if job is None or job.view.status == "done":
            return response(Status.NO_JOB, message=f"no running job {request.job_id!r}")
        group = SIMULATOR_GROUP.fullmatch(request.identity.device_id) if _from_simulator(request.identity) else None
        if group is not None:
            register = RegisterGroup(job_id=job.view.job_id, prefix=group["prefix"], count=int(group["count"]))
            try:
                await self._link.call("register", register.model_dump(), 5.0)
            except LinkUnavailable:
                return response(Status.RETRY, retry_wait=STARTING_RETRY_WAIT, message="server unavailable")
            except RemoteError as exc:
                log.warning("simulated device group %s?%d refused: %s", register.prefix, register.count, exc)
                reason = "too many devices for this job" if exc.code is ErrorCode.TOO_MANY_DEVICES else exc.code.name
                return response(
                    Status.RETRY, retry_wait=job.view.retry_wait, message=f"simulated device group refused: {reason}"
                )
            job.view = job.view.model_copy(
                update={"device_groups": {**job.view.device_groups, register.prefix: register.count}}
            )
        selection = job.selection()
        # Every simulated device may ask; the leaves' slots decide who trains (PROTOCOL.md §4).
        for prefix, count in job.view.device_groups.items():
            selection.update((f"{prefix}#{i}", job.view.selection_id) for i in range(count))
        return response(Status.OK, job_id=job.view.job_id, selection=selection)

    # -- server sync --------------------------------------------------------------------------
    async def _next_sync(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            pass

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self._sync_once()
            except (LinkUnavailable, RemoteError) as exc:
                log.debug("sync failed: %s", exc)
            except Exception:
                log.exception("sync failed")
            try:
                await asyncio.wait_for(self._wake_sync.wait(), self.config.sync_interval)
            except TimeoutError:
                pass
            self._wake_sync.clear()

    async def _watch_loop(self) -> None:
        # A new model version is served as soon as the server has it, not up to a sync interval later.
        seen = -1
        while True:
            try:
                seen = await self._link.call("watch", {"seen": seen, "wait": WATCH_WAIT}, WATCH_WAIT + 5.0)
            except (LinkUnavailable, RemoteError) as exc:
                log.debug("watch failed: %s", exc)
                await asyncio.sleep(self.config.sync_interval)  # the periodic sync still runs
                continue
            self._wake_sync.set()

    async def _sync_once(self) -> None:
        now = asyncio.get_running_loop().time()
        reports = {job_id: job.report(now) for job_id, job in self.jobs.items()}
        request = SyncRequest(leaf=self.name, boot=self.boot, jobs=reports, server_boot=self._server_boot)
        reply = SyncReply.model_validate(await self._link.call("sync", request.model_dump(), 5.0))
        if reply.boot != self._server_boot:
            if self._server_boot is not None:
                log.warning("server restarted (boot %s): sending again what it had not checkpointed", reply.boot)
                if not await self.batcher.resend_retained(reply.boot):
                    return  # the next sync tries again
            self._server_boot = reply.boot
            self._wake_sync.set()  # the server holds its rounds until this leaf says it has re-sent
        seen = set()
        for view in reply.jobs:
            seen.add(view.job_id)
            self._apply(view)
        for job_id in [j for j in self.jobs if j not in seen]:
            del self.jobs[job_id]
            self._payloads.pop(job_id, None)
        self._synced.set()
        self._synced = asyncio.Event()

    def _apply(self, view: JobView) -> None:
        job = self.jobs.get(view.job_id)
        if job is None:
            self.jobs[view.job_id] = LeafJob(view=view, waiting_window=2.0 * view.retry_wait + 5.0)
        else:
            job.apply_view(view)
        self.batcher.release(view.job_id, view.model_version)
        payload = self._payloads.get(view.job_id)
        key = (view.job_id, view.model_version)
        if (
            view.status != "done"
            and view.model_version >= 0
            and (payload is None or payload.version != view.model_version)
            and key not in self._fetching
        ):
            self._fetching.add(key)
            self._tasks.append(asyncio.get_running_loop().create_task(self._fetch_model(view)))

    async def _fetch_model(self, view: JobView) -> None:
        key = (view.job_id, view.model_version)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            reply = await self._link.call("model", {"job_id": view.job_id, "version": view.model_version}, 60.0)
            fetched = loop.time()
            if view.task_kind == "APP_DEFINED":
                payload = await asyncio.to_thread(
                    TaskPayload.for_program, view.job_id, view.model_version, reply["program"], view.task_meta
                )
            else:
                weights = tensors_from_binary(reply["weights"])
                payload = await asyncio.to_thread(
                    TaskPayload.for_weights, view.job_id, view.model_version, weights, view.task_meta
                )
            current = self.jobs.get(view.job_id)
            if current is not None and current.view.model_version == view.model_version:
                self._payloads[view.job_id] = payload
                log.info(
                    "job %s model v%d servable: fetched in %.1f ms, task payload built in %.1f ms",
                    view.job_id,
                    view.model_version,
                    (fetched - asked) * 1e3,
                    (loop.time() - fetched) * 1e3,
                )
        except (LinkUnavailable, RemoteError) as exc:
            log.warning("fetching model %s v%d failed: %s", view.job_id, view.model_version, exc)
        finally:
            self._fetching.discard(key)
            self._tasks = [t for t in self._tasks if not t.done()]
