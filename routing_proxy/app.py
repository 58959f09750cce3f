"""The proxy's aiohttp application: routes, shared state, and the links' lifetime."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from .config import ProxyConfig
from .forwarding import Forwarder
from .lcp_map import load_lcp_map
from .responses import JSON, invalid_request
from .upstreams import Upstreams

CONFIG = web.AppKey("config", ProxyConfig)
UPSTREAMS = web.AppKey("upstreams", Upstreams)

_POST = frozenset({"POST"})
# PROTOCOL.md §1: the API lives at the root; /task takes GET too.
ENDPOINTS: dict[str, frozenset[str]] = {
    "job": _POST,
    "task": frozenset({"GET", "POST"}),
    "result": _POST,
    "selection": _POST,
}


def create_app(config: ProxyConfig) -> web.Application:
    """The proxy application for `config`; raises `LcpMapError` on a bad lcp map."""
    leaves = load_lcp_map(config.lcp_map)
    upstreams = Upstreams(
        leaves,
        secret=config.secret(),
        ssl_context=_leaf_tls(config),
        health_interval=config.health_interval,
        health_timeout=config.health_timeout,
    )
    # aiohttp's own limit is the proxy's: request.read() counts while it reads.
    app = web.Application(client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[UPSTREAMS] = upstreams
    forwarder = Forwarder(
        upstreams, max_body_bytes=config.max_body_bytes, upstream_timeout=config.upstream_timeout
    )
    for endpoint, methods in ENDPOINTS.items():
        app.router.add_route("*", f"/{endpoint}", forwarder.handler(endpoint, methods))
    app.router.add_route("*", "/health", _health)
    app.router.add_route("*", "/{path:.*}", _not_found)
    app.cleanup_ctx.append(_links)
    return app


def _leaf_tls(config: ProxyConfig) -> ssl.SSLContext | None:
    if config.root_ca is None:
        return None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.root_ca))


async def _links(app: web.Application) -> AsyncIterator[None]:
    upstreams = app[UPSTREAMS]
    await upstreams.start()
    yield
    await upstreams.close()


async def _health(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        response = invalid_request(405, f"method {request.method} not allowed on /health; use GET")
        response.headers["Allow"] = "GET, HEAD"
        return response
    leaves = request.app[UPSTREAMS].status()
    healthy = sum(leaf["healthy"] for leaf in leaves.values())
    body = {"status": "OK" if healthy else "RETRY", "healthy": healthy, "leaves": leaves}
    return web.Response(body=orjson.dumps(body), content_type=JSON)


async def _not_found(request: web.Request) -> web.StreamResponse:
    return invalid_request(404, f"no such endpoint {request.path}; use /job, /task, /result or /selection")
