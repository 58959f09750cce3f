"""The server's job API over HTTP: submit, list, status, end, model downloads, health, version.

A thin aiohttp shell over `Server` (server.py): every answer is JSON, every error too.
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
    """The job API: submit, list, status, end, download the current model (.npz, or a phone job's .pte).

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
    app.router.add_post("/api/jobs/{job_id}/end", _end)
    app.router.add_get("/api/jobs/{job_id}/model", _model)
    app.router.add_get("/api/jobs/{job_id}/model.pte", _program)
    return app


@web.middleware
async def _errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except JobNotFound as exc:
        return _error(404, f"no job {exc.args[0]!r}")
    except JobNameTaken as exc:
        return _json({"status": "CONFLICT", "message": str(exc)}, 409)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


async def _health(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    return _json(
        {
            "status": "OK",
            "boot": server.coordinator.boot,
            "jobs": len(server.coordinator.jobs),
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
    return _json(server.coordinator.status(job_id, time.monotonic()), 201)


async def _list(request: web.Request) -> web.Response:
    coordinator = request.app[SERVER_KEY].coordinator
    now = time.monotonic()
    return _json({"jobs": [coordinator.status(job_id, now) for job_id in coordinator.jobs]})


async def _status(request: web.Request) -> web.Response:
    return _json(request.app[SERVER_KEY].coordinator.status(request.match_info["job_id"], time.monotonic()))


async def _end(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    job_id = request.match_info["job_id"]
    await server.end_job(job_id)
    return _json(server.coordinator.status(job_id, time.monotonic()))


async def _model(request: web.Request) -> web.Response:
    job = request.app[SERVER_KEY].coordinator.job(request.match_info["job_id"])
    body = await asyncio.to_thread(weights_to_npz, dict(job.weights))
    return web.Response(
        body=body,
        content_type="application/octet-stream",
        headers={
            "X-Model-Version": str(job.version),
            "Content-Disposition": f'attachment; filename="{job.job_id}-v{job.version}.npz"',
        },
    )


async def _program(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    job = server.coordinator.job(request.match_info["job_id"])
    if job.spec.runtime != "executorch":
        return _error(404, f"job {job.job_id!r} trains with {job.spec.runtime}: it has no .pte; get /model")
    version = job.version
    program = await asyncio.shield(server._program(job.job_id, version))
    return web.Response(
        body=program,
        content_type="application/octet-stream",
        headers={
            "X-Model-Version": str(version),
            "Content-Disposition": f'attachment; filename="{job.job_id}-v{version}.pte"',
        },
    )
