"""The status page: `GET /status` (one self-contained HTML file) and `GET /api/status` (what it polls).

The page is package data (`static/status.html`): inline script and style, its plot drawn in SVG by
its own code, nothing fetched from elsewhere, so it works on a LAN without internet. Its
Content-Security-Policy lets it run its own inline script (by hash) and talk to this server only.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from .proxy_probe import ProxyProbe
from .status_view import status_view

if TYPE_CHECKING:  # server.py builds the API: imported there, not here
    from .server import Server

PAGE_FILE = "static/status.html"
PROBE_KEY: web.AppKey[ProxyProbe | None] = web.AppKey("proxy_probe", ProxyProbe)


def add_status_routes(app: web.Application, server: Server) -> None:
    page = resources.files("edge_gateway").joinpath(PAGE_FILE).read_bytes()
    headers = {
        "Content-Security-Policy": _policy(page),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }

    async def status_page(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=headers)

    async def status_json(request: web.Request) -> web.Response:
        probe = request.app[PROBE_KEY]
        proxy = None if probe is None else await probe.health()
        view = status_view(server.coordinator, time.monotonic(), proxy)
        return web.Response(body=orjson.dumps(view), content_type="application/json")

    async def proxy_probe(app: web.Application) -> AsyncIterator[None]:
        url = server.config.proxy_url
        app[PROBE_KEY] = probe = None if url is None else ProxyProbe(url)
        yield
        if probe is not None:
            await probe.close()

    app.cleanup_ctx.append(proxy_probe)
    app.router.add_get("/status", status_page)
    app.router.add_get("/api/status", status_json)


def _policy(page: bytes) -> str:
    """Only the page's own inline script runs (named by its hash); it may fetch from this origin only."""
    scripts = re.findall(rb"<script>(.*?)</script>", page, re.DOTALL)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts)
    return (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
