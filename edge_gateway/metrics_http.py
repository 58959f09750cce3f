"""`GET /metrics` in Prometheus' text format for the gateway's processes (aiohttp).

The server adds the route to its job API; a leaf, whose own port speaks only the internal link,
serves it on a listener of its own (`--metrics-port`). Each process has its own registry, so
several of them in one test process do not collide.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry


def process_registry() -> CollectorRegistry:
    """A registry holding this process's memory, CPU time and open files (Linux /proc)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def metrics(request: web.Request) -> web.Response:
        # Rendered on the loop: a few hundred lines, well under a millisecond.
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `/metrics` alone on host:port (0 picks one); return the runner to clean up and the port."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, int(runner.addresses[0][1])
