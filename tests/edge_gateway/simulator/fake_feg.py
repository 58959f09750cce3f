"""A small real FEG server on 127.0.0.1:0 that scripts answers and checks what devices send."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from aiohttp import web

from device_protocol.codecs import JSON, MSGPACK, decode_body, encode, media_type, wants_msgpack
from device_protocol.errors import UpdateRejected
from device_protocol.tensors import decode_update, tensors_to_binary

JOB_NAME = "sim-test-job"
JOB_ID = "job-1"
TINY_WEIGHTS = {
    "w": np.arange(6, dtype=np.float32).reshape(3, 2) / 10,
    "b": np.array([0.5, -0.5], dtype=np.float32),
}
TINY_META = {"model": "xor", "epochs": 1, "lr": 0.1, "batch_size": 4}

# A script answers one request of a device instead of the default logic: it gets the device id and
# the 0-based index of that device's request to this endpoint; returns a reply dict, an HTTP status
# (int, answered with a JSON error body) or None for the default answer.
Script = Callable[[str, int], "dict[str, Any] | int | None"]


@dataclass
class Result:
    device_id: str
    task_id: str
    content_type: str
    body: bytes
    weight: float
    diff: dict[str, np.ndarray]


@dataclass
class FakeFeg:
    tasks_per_device: int = 2
    retry_first_task: bool = True
    weights: Mapping[str, np.ndarray] = field(default_factory=lambda: TINY_WEIGHTS)
    meta: Mapping[str, Any] = field(default_factory=lambda: TINY_META)
    # When set, tasks carry this ExecuTorch program as phones get it (APP_DEFINED, base64 text in
    # either codec, as the gateway sends it); `weights` then only gives the shapes results must have.
    program: bytes | None = None
    scripts: dict[str, Script] = field(default_factory=dict)
    # Per device, in arrival order: "job:OK", "task:RETRY", ... (tests add "sleep:<s>").
    events: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    problems: list[str] = field(default_factory=list)
    issued: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    task_cookies: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    accepts: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._calls: dict[tuple[str, str], int] = defaultdict(int)
        self._given: dict[str, int] = defaultdict(int)
        self._serial = itertools.count()
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/job", self._job)
        app.router.add_post("/task", self._task)
        app.router.add_post("/result", self._result)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers --------------------------------------------------------------------------------
    async def _job(self, request: web.Request) -> web.StreamResponse:
        device, body = await self._receive(request, "job")
        if body.get("job_name") != JOB_NAME or not body.get("capabilities", {}).get("methods"):
            self.problems.append(f"bad /job body {body}")
        return self._answer(
            request,
            "job",
            device,
            lambda: {"status": "OK", "job_id": JOB_ID, "job_name": JOB_NAME, "job_data": {"config": {}}},
        )

    async def _task(self, request: web.Request) -> web.StreamResponse:
        device, body = await self._receive(request, "task")
        self.task_cookies[device].append(body.get("cookie"))
        self.accepts.append(request.headers.get("Accept", ""))
        if request.query.get("job_id") != JOB_ID:
            self.problems.append(f"/task with job_id {request.query.get('job_id')!r}")
        return self._answer(request, "task", device, lambda: self._default_task(device, request))

    def _default_task(self, device: str, request: web.Request) -> dict[str, Any]:
        if self.retry_first_task and self._calls[(device, "task")] == 1:
            return {"status": "RETRY", "job_id": JOB_ID, "retry_wait": 1, "message": "Model not ready"}
        if self._given[device] >= self.tasks_per_device:
            return {"status": "NO_JOB", "job_id": JOB_ID, "message": "job finished"}
        k = self._given[device]
        self._given[device] += 1
        task_id = f"{device}/t{k}/{next(self._serial)}"
        # Nested and odd values: the echo must be verbatim, not merely "a cookie".
        cookie = {"model_version": 7, "device_selection_id": k, "sig": "a1b2", "nested": {"x": [1, 2.5, "é"]}}
        self.issued[task_id] = cookie
        task_data: dict[str, Any]
        if self.program is not None:
            task_data = {
                "kind": "APP_DEFINED",
                "data": base64.b64encode(self.program).decode("ascii"),
                "meta": {**self.meta, "model_version": 7},
            }
        else:
            if wants_msgpack(request.headers.get("Accept", "")):
                data: dict[str, Any] = tensors_to_binary(self.weights)
            else:
                data = {name: arr.tolist() for name, arr in self.weights.items()}
            task_data = {"kind": "WEIGHTS", "data": data, "meta": {**self.meta, "model_version": 7}}
        return {
            "status": "OK",
            "job_id": JOB_ID,
            "retry_wait": 0,
            "task_id": task_id,
            "task_name": "train",
            "task_data": task_data,
            "cookie": cookie,
        }

    async def _result(self, request: web.Request) -> web.StreamResponse:
        device, body = await self._receive(request, "result")
        task_id = request.query.get("task_id", "")
        if request.query.get("job_id") != JOB_ID or request.query.get("task_name") != "train":
            self.problems.append(f"/result query {dict(request.query)}")
        if task_id not in self.issued:
            self.problems.append(f"/result for unknown task {task_id!r}")
        elif body.get("cookie") != self.issued[task_id]:
            self.problems.append(f"cookie not echoed for {task_id}: {body.get('cookie')!r}")
        shapes = {name: arr.shape for name, arr in self.weights.items()}
        try:
            diff, weight = decode_update(body.get("result") or {}, shapes)
        except UpdateRejected as exc:
            self.problems.append(f"result of {task_id} refused: {exc.message}")
        else:
            self.results.append(
                Result(
                    device,
                    task_id,
                    media_type(request.headers.get("Content-Type", "")),
                    await request.read(),
                    weight,
                    diff,
                )
            )
        ids = {"task_id": task_id, "task_name": "train"}
        return self._answer(request, "result", device, lambda: {"status": "OK", **ids})

    # -- helpers ---------------------------------------------------------------------------------
    async def _receive(self, request: web.Request, endpoint: str) -> tuple[str, dict[str, Any]]:
        device = request.headers.get("X-Flare-Device-ID", "")
        self.headers.append(
            {
                k: request.headers.get(k, "<absent>")
                for k in ("X-Flare-Device-ID", "X-Flare-Device-Info", "X-Flare-User-Info", "Content-Type")
            }
        )
        info = {k: v[0] for k, v in parse_qs(request.headers.get("X-Flare-Device-Info", "")).items()}
        expected = {"device_id": device, "app_name": "edgefl-sim", "app_version": "1.0", "platform": "sim"}
        if not device or info != expected:
            self.problems.append(f"{endpoint}: bad identity headers {dict(request.headers)}")
        if "X-Flare-User-Info" not in request.headers:
            self.problems.append(f"{endpoint}: no X-Flare-User-Info header")
        content_type = media_type(request.headers.get("Content-Type", ""))
        if content_type not in (JSON, MSGPACK) or (endpoint != "result" and content_type != JSON):
            self.problems.append(f"{endpoint}: content type {content_type!r}")
        body = decode_body(request.headers.get("Content-Type", ""), await request.read())
        self._calls[(device, endpoint)] += 1
        return device, body

    def _answer(
        self, request: web.Request, endpoint: str, device: str, default: Callable[[], dict[str, Any]]
    ) -> web.StreamResponse:
        script = self.scripts.get(endpoint)
        reply = script(device, self._calls[(device, endpoint)] - 1) if script else None
        if isinstance(reply, int):
            self.events[device].append(f"{endpoint}:HTTP{reply}")
            return web.json_response({"status": "INVALID_REQUEST", "message": "scripted"}, status=reply)
        if reply is None:
            reply = default()
        self.events[device].append(f"{endpoint}:{reply['status']}")
        content_type, data = encode(reply, wants_msgpack(request.headers.get("Accept", "")))
        return web.Response(body=data, content_type=content_type)


def recording_sleep(feg: FakeFeg, *, real: bool = True) -> Callable[[float], Any]:
    """A sleep that logs "sleep:<s>" in the calling device's event list (tasks are named by device)."""

    async def sleep(seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        feg.events[task.get_name()].append(f"sleep:{seconds:g}")
        await asyncio.sleep(seconds if real else 0)

    return sleep
