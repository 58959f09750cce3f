"""One simulated device: the I/O shell around `decisions.decide` (the iOS app's loop)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from device_protocol.codecs import MSGPACK

from . import wire
from .decisions import Outcome, Phase, Step, classify, decide
from .stats import Stats
from .trainers import Trainer, training_wait

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
# Bodies above this are encoded/decoded in the worker pool: below it a thread hop costs more.
OFFLOAD_BYTES = 256 * 1024
OFFLOAD_VALUES = 64 * 1024


@dataclass(frozen=True)
class DeviceSettings:
    """What every device of a run shares."""

    base_url: URL
    job_name: str
    codec: wire.Codec
    keep_polling: bool
    result_attempts: int  # sends of one result, the first included
    backoff: tuple[float, float]  # seconds, drawn uniformly after a transport error


@dataclass(frozen=True)
class _Request:
    phase: Phase
    url: URL
    headers: Mapping[str, str]
    body: bytes


class Device:
    """A device that joins a job, trains on tasks and reports results until its job is over."""

    def __init__(
        self,
        device_id: str,
        trainer: Trainer,
        settings: DeviceSettings,
        *,
        session: aiohttp.ClientSession,
        stats: Stats,
        pool: Executor,
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
        slowdown: float = 1.0,
        train_seconds: float = 0.0,
        abort_rate: float = 0.0,
    ) -> None:
        self.device_id = device_id
        self._abort_rate = abort_rate  # the share of tasks dropped unreported (the OS killed the app)
        self._slowdown = slowdown  # a slow device takes this many times its training time
        self._train_seconds = train_seconds  # the least a training takes (before the slowdown)
        self._trainer = trainer
        self._settings = settings
        self._session = session
        self._stats = stats
        self._pool = pool
        self._rng = rng
        self._sleep = sleep
        self._headers = wire.identity_headers(device_id)
        # Asking for msgpack makes the task's tensors arrive as raw bytes, not number lists.
        self._task_headers = {**self._headers, "Accept": MSGPACK} if settings.codec == "msgpack" else self._headers

    async def run(self) -> None:
        """Run the session until the job is over for this device (or it is refused)."""
        step = Step.JOIN
        job_id = ""
        cookie: dict[str, Any] | None = None
        task: dict[str, Any] = {}
        body: dict[str, Any] | None = None
        resends_left = 0
        while step is not Step.STOP:
            if step is Step.JOIN:
                cookie = None
                request = self._job_request()
            elif step is Step.POLL:
                request = self._task_request(job_id, cookie)
            elif step is Step.TRAIN and self._abort_rate and self._rng.random() < self._abort_rate:
                # A drop-out: the task is never reported; its lease runs out at the gateway.
                self._stats.add((Outcome.ABORTED,))
                task, step = {}, Step.POLL
                continue
            elif step is Step.TRAIN:
                request = await self._train(job_id, task)
                # The decoded task (the model's weights as Python floats, ~330 KB for digits) is not
                # needed once its result is built; kept until the next task, every device held one.
                task, body = {}, None
                resends_left = self._settings.result_attempts - 1
            else:  # Step.RESEND: `request` still holds the result just sent
                resends_left -= 1
            http_status, body = await self._exchange(request)
            reply = classify(request.phase, http_status, body)
            decision = decide(
                request.phase,
                reply,
                backoff=self._rng.uniform(*self._settings.backoff),
                keep_polling=self._settings.keep_polling,
                resends_left=resends_left,
            )
            self._stats.add(decision.outcomes)
            if body is not None and Outcome.JOINED in decision.outcomes:
                job_id = body["job_id"]
            if body is not None and Outcome.TASK in decision.outcomes:
                task, cookie = body, body.get("cookie")
            if decision.drop_cookie:
                cookie = None
            if decision.wait > 0:
                await self._sleep(decision.wait)
            step = decision.step
        self._stats.devices_finished += 1

    def _job_request(self) -> _Request:
        url = self._settings.base_url.with_path("/job")
        return _Request(Phase.JOIN, url, self._headers, wire.job_body(self._settings.job_name))

    def _task_request(self, job_id: str, cookie: Mapping[str, Any] | None) -> _Request:
        url = self._settings.base_url.with_path("/task").with_query(job_id=job_id)
        return _Request(Phase.POLL, url, self._task_headers, wire.task_body(cookie))

    async def _train(self, job_id: str, task: Mapping[str, Any]) -> _Request:
        """Train on the task and build its `/result` request, echoing the task's cookie verbatim."""
        codec, cookie = self._settings.codec, task.get("cookie")
        try:
            diff, num_samples = await self._trainer.train(task["task_data"])
            wait = training_wait(self._trainer.compute_s, self._train_seconds, self._slowdown)
            if wait > 0.0:
                await self._sleep(wait)
        except Exception as exc:  # a trainer failure is reported like iOS, never ends the run
            self._stats.training_errors += 1
            log.warning("device %s could not train on task %s: %s", self.device_id, task.get("task_id"), exc)
            content_type, body = wire.error_result_body(codec, f"{type(exc).__name__}: {exc}", cookie)
        else:
            values = sum(arr.size for arr in diff.values())
            if values > OFFLOAD_VALUES:
                loop = asyncio.get_running_loop()
                content_type, body = await loop.run_in_executor(
                    self._pool, wire.result_body, codec, diff, num_samples, cookie
                )
            else:
                content_type, body = wire.result_body(codec, diff, num_samples, cookie)
        url = self._settings.base_url.with_path("/result").with_query(
            job_id=job_id, task_id=task["task_id"], task_name=task["task_name"]
        )
        return _Request(Phase.REPORT, url, {**self._headers, "Content-Type": content_type}, body)

    async def _exchange(self, request: _Request) -> tuple[int, dict[str, Any] | None]:
        """(HTTP status, decoded body); (0, None) when no answer came back."""
        self._stats.requests += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self._session.post(request.url, data=request.body, headers=request.headers) as resp:
                raw = await resp.read()
                http_status, content_type = resp.status, resp.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("device %s: %s %s failed: %r", self.device_id, request.phase, request.url.path, exc)
            return 0, None
        self._stats.record_latency(request.phase.value, loop.time() - started)
        if len(raw) > OFFLOAD_BYTES:
            return http_status, await loop.run_in_executor(self._pool, wire.decode_reply, content_type, raw)
        return http_status, wire.decode_reply(content_type, raw)
