"""The server's job API over HTTP: submit, list, status, end, delete, model downloads, health, version, the status page.

A thin aiohttp shell over `Server` (server.py): every answer is JSON (the status page's HTML aside), every error too.
Jobs retired from memory (retirement.py) are read from their checkpoints.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import ValidationError

from internal_link.versions import versions

from .coordinator import JobNotFound
from .job_api_auth import RefusalCount, bearer_auth
from .jobs import JobNameTaken, JobSpec
from .metrics_http import metrics_handler
from .retirement import JobRunning, retired_status
from .status_api import add_status_routes
from .store import weights_to_npz

if TYPE_CHECKING:  # server.py builds this API: imported there, not here
    from .server import Server

SERVER_KEY: web.AppKey[Server] = web.AppKey("server")
REFUSALS_KEY: web.AppKey[RefusalCount] = web.AppKey("refusals")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"status": "ERROR", "message": message}, status)


def create_api(server: Server) -> web.Application:
    """The job API: submit, list, status, end, delete, download the current model (.npz, or a phone job's .pte).

    With a token in the server's config, every route but health and version asks for it
    (job_api_auth.py)."""
    refusals = RefusalCount()
    token = server.config.api_token
    middlewares: list[Middleware] = [_errors_as_json]
    if token:
        middlewares.insert(0, bearer_auth(token, refusals))  # first: a stranger learns not even a 404
    app = web.Application(middlewares=middlewares, client_max_size=1 << 20)
    app[SERVER_KEY] = server
    app[REFUSALS_KEY] = refusals
    app.router.add_get("/api/health", _health)
    app.router.add_get("/api/version", _version)
    app.router.add_post("/api/jobs", _submit)
    app.router.add_get("/api/jobs", _list)
    app.router.add_get("/api/jobs/{job_id}", _status)
    app.router.add_delete("/api/jobs/{job_id}", _delete)
    app.router.add_post("/api/jobs/{job_id}/end", _end)
    app.router.add_get("/api/jobs/{job_id}/model", _model)
    app.router.add_get("/api/jobs/{job_id}/model.pte", _program)
    add_status_routes(app, server)
    app.router.add_get("/metrics", metrics_handler(server.metrics.registry))  # docs/OPERATIONS.md
    return app


@web.middleware
async def _errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except JobNotFound as exc:
        return _error(404, f"no job {exc.args[0]!r}")
    except JobRunning as exc:
        return _error(409, f"job {exc.args[0]!r} is running: end it first (job end), then delete it")
    except JobNameTaken as exc:
        return _json({"status": "CONFLICT", "message": str(exc)}, 409)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


async def _health(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    # link_refusals: leaf connections dropped by reason (wrong_secret, tampered_frame, protocol_error).
    refusals = dict(server.link_refusals)
    return _json(
        {
            "status": "OK",
            "boot": server.coordinator.boot,
            "jobs": len(server.coordinator.jobs),  # in memory: retired ones are on disk only
            "leaf_payload_bytes": {leaf: held for leaf, (held, _) in server.leaf_payloads.items()},
            "link_refusals": refusals,
            "unauthorized": request.app[REFUSALS_KEY].unauthorized,
            **versions(),
        }
    )


async def _version(request: web.Request) -> web.Response:
    return _json(versions())


async def _submit(request: web.Request) -> web.Response:
    try:
        spec = JobSpec.model_validate_json(await request.read())
    except ValidationError as exc:
        return _json(
            {
                "status": "INVALID_REQUEST",
                "message": "invalid job spec",
                "errors": [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()],
            },
            400,
        )
    server = request.app[SERVER_KEY]
    job_id = await server.submit_job(spec)
    return _json(_status_of(server, job_id), 201)


def _status_of(server: Server, job_id: str) -> dict[str, Any]:
    """A job's status: from memory, or for a retired job from its checkpoint (a file read)."""
    if job_id in server.coordinator.jobs:
        return {**server.coordinator.status(job_id, time.monotonic()), "retired": False}
    try:
        return retired_status(job_id, server.store.load_state(job_id))
    except FileNotFoundError:
        raise JobNotFound(job_id) from None


async def _list(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    live = [_status_of(server, job_id) for job_id in server.coordinator.jobs]
    retired = [job_id for job_id in server.store.job_ids() if job_id not in server.coordinator.jobs]
    # Retired jobs' checkpoints are read off the loop: however many there are, leaves are not held up.
    return _json({"jobs": live + await asyncio.to_thread(_statuses_on_disk, server, retired)})


def _statuses_on_disk(server: Server, job_ids: list[str]) -> list[dict[str, Any]]:
    statuses = []
    for job_id in job_ids:
        try:
            statuses.append(retired_status(job_id, server.store.load_state(job_id)))
        except FileNotFoundError:  # deleted meanwhile
            continue
    return statuses


async def _status(request: web.Request) -> web.Response:
    return _json(_status_of(request.app[SERVER_KEY], request.match_info["job_id"]))


async def _delete(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    request.app[SERVER_KEY].delete_job(job_id)
    return _json({"status": "OK", "job_id": job_id, "message": "job and its checkpoints deleted"})


async def _end(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    job_id = request.match_info["job_id"]
    await server.end_job(job_id)
    return _json(_status_of(server, job_id))


async def _model(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    job_id = request.match_info["job_id"]
    job = server.coordinator.jobs.get(job_id)
    if job is not None:
        version, weights = job.version, dict(job.weights)
        body = await asyncio.to_thread(weights_to_npz, weights)
    else:  # retired: the checkpoint's weights file is the download
        version = _status_of(server, job_id)["model_version"]
        body = await asyncio.to_thread(server.store.weights_file(job_id, version).read_bytes)
    return web.Response(
        body=body,
        content_type="application/octet-stream",
        headers={
            "X-Model-Version": str(version),
            "Content-Disposition": f'attachment; filename="{job_id}-v{version}.npz"',
        },
    )


async def _program(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    job_id = request.match_info["job_id"]
    if job_id not in server.coordinator.jobs and _status_of(server, job_id)["retired"]:
        return _error(404, f"job {job_id!r} is retired: its training program is not kept; get /model")
    job = server.coordinator.job(job_id)
    if job.spec.runtime != "executorch":
        return _error(404, f"job {job.job_id!r} trains with {job.spec.runtime}: it has no .pte; get /model")
    version = job.version
    program = await asyncio.shield(server.content.program(job))
    return web.Response(
        body=program,
        content_type="application/octet-stream",
        headers={
            "X-Model-Version": str(version),
            "Content-Disposition": f'attachment; filename="{job.job_id}-v{version}.pte"',
        },
    )
