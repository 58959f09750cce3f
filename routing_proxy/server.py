"""Serving the proxy: listening (TLS optional), graceful drain, and N worker processes on one port."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import random
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from multiprocessing.connection import wait
from typing import Any

from device_protocol.codecs import JSON
from internal_link.process import freeze_startup_objects, stop_signals

from .admission import Refusal, device_counter_cells
from .config import ProxyConfig
from .forwarding import Forwarder
from .http1 import HttpLimits, HttpServer, Response
from .lcp_map import load_lcp_map
from .lease_caps import LeaseCaps
from .metrics import MetricsPage, proxy_registry
from .sessions.hub import SessionHub
from .stats import ProxyStats
from .upstreams import Upstreams
from .xain_routes import UPLOAD_PATH_PREFIX

logger = logging.getLogger(__name__)

_BACKLOG = 4096
# Past the drain bound a worker gets this long to exit before it is killed.
_EXIT_GRACE = 10.0


class ProxyServer:
    """One process's proxy: the links to the leaves and the device-facing listener."""

    def __init__(self, config: ProxyConfig, device_counts: memoryview | None = None) -> None:
        """Raises `LcpMapError` on a bad lcp map, `OSError`/`ValueError` on bad device-auth files.

        `device_counts`: admission's device-count buffer, shared by the workers of one proxy.
        """
        self.config = config
        self.upstreams = Upstreams(
            load_lcp_map(config.lcp_map),
            secret=config.secret(),
            ssl_context=_leaf_tls(config),
            health_interval=config.health_interval,
            health_timeout=config.health_timeout,
        )
        limits = HttpLimits(
            max_body_bytes=config.max_body_bytes,
            max_other_body_bytes=config.max_poll_body_bytes,
            head_timeout=config.head_timeout,
            body_timeout=config.body_timeout,
            keepalive_timeout=config.keepalive_timeout,
            max_buffered_bytes=config.max_buffered_bytes,
            max_connection_buffered_bytes=config.max_connection_buffered_bytes,
            upload_path_prefixes=(UPLOAD_PATH_PREFIX,),
        )
        stats = ProxyStats()
        device_auth = config.device_auth()
        admission = config.admission(device_counts)
        self.sessions = SessionHub(
            self.upstreams,
            timeout=config.upstream_timeout,
            max_message_bytes=config.max_body_bytes,
            device_auth=device_auth,
            admission=admission,
            stats=stats,
        )
        busy = partial(no_memory_for_body, config.refusal_retry_wait)
        forwarder = Forwarder(
            self.upstreams,
            upstream_timeout=config.upstream_timeout,
            device_auth=device_auth,
            admission=admission,
            lease_caps=LeaseCaps(config.max_leases_per_token, config.max_leases_per_ip),
            tls=config.ssl_cert is not None,
            stats=stats,
            sessions=self.sessions,
            busy=busy,
        )
        self.http = HttpServer(forwarder, limits, busy=busy)
        # Its own listener and connections: operators' scrapes never queue behind devices.
        self.metrics = HttpServer(MetricsPage(proxy_registry(stats, self.http, self.upstreams)), HttpLimits(), busy)
        self._listener: asyncio.Server | None = None
        self._metrics_listener: asyncio.Server | None = None
        self.metrics_port: int | None = None

    async def start(self) -> int:
        """Start the links to the leaves and listen; return the bound port."""
        config = self.config
        await self.upstreams.start()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self.http.protocol,
            config.host,
            config.port,
            ssl=_device_tls(config),
            backlog=_BACKLOG,
            # Several workers share the port; the kernel spreads connections over them.
            reuse_port=config.workers > 1 or None,
        )
        port: int = self._listener.sockets[0].getsockname()[1]
        logger.info("routing proxy (pid %d) listening on %s:%d", os.getpid(), config.host, port)
        if config.metrics_port is not None:
            host = config.metrics_address()
            self._metrics_listener = await loop.create_server(self.metrics.protocol, host, config.metrics_port)
            self.metrics_port = self._metrics_listener.sockets[0].getsockname()[1]
            logger.info("routing proxy (pid %d) metrics on http://%s:%d/metrics", os.getpid(), host, self.metrics_port)
        return port

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish within `drain_timeout`, then close."""
        if self._listener is not None:
            self._listener.close()
        # Idle connections close at once, busy ones after their answer; the links stay up till then.
        await self.http.drain(self.config.drain_timeout)
        await self.sessions.close()
        await self.upstreams.close()
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        if self._metrics_listener is not None:
            self._metrics_listener.close()
            await self.metrics.drain(0.0)
            await self._metrics_listener.wait_closed()
            self._metrics_listener = None


NO_MEMORY_REASON = "gateway busy: no memory for this request body now; send it again later"


def no_memory_for_body(retry_wait: int) -> Response:
    """RETRY for a body the proxy's memory budget cannot take now, with a jittered wait like
    admission control's refusals, so a crowd refused together does not come back together.

    HTTP 200, not 503: RETRY is never an HTTP error (PROTOCOL.md §4, §8). Every client reads the
    status from the JSON of a 200; on a 503 our simulator would back off as after a transport
    failure and ignore `retry_wait`, and NVFlare's treats anything but 200 as an unexplained RETRY.
    `Retry-After` says the same wait to anything that reads HTTP only.
    """
    refusal = Refusal(random.randint(retry_wait, 2 * retry_wait), NO_MEMORY_REASON)
    return Response(200, JSON, refusal.body(), headers=(("Retry-After", str(refusal.retry_wait)),), close=True)


def _leaf_tls(config: ProxyConfig) -> ssl.SSLContext | None:
    if config.root_ca is None:
        return None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.root_ca))


def _device_tls(config: ProxyConfig) -> ssl.SSLContext | None:
    if config.ssl_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.ssl_cert, config.ssl_key)
    return context


async def serve(config: ProxyConfig, device_counts: memoryview | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    server = ProxyServer(config, device_counts)
    with stop_signals() as stop:
        try:
            await server.start()
            freeze_startup_objects()
            await stop.wait()
            logger.info("routing proxy (pid %d) draining", os.getpid())
        finally:
            await server.drain()


def supervise(config: ProxyConfig, worker: Callable[[ProxyConfig, Any], Any]) -> int:
    """Run `worker(config, device_counts)` in `config.workers` processes sharing the port; return an
    exit code. `device_counts` is admission control's device-count buffer in shared memory (None
    without a device limit); the workers get one string-hash seed so that they count alike.

    SIGTERM/SIGINT are passed on to the workers, which drain; one worker dying on its own stops
    them all (exit code 1) so that the service manager restarts a whole, healthy proxy.
    """
    context = multiprocessing.get_context("spawn")
    device_counts = (
        context.RawArray(ctypes.c_uint32, device_counter_cells(config.device_slots)) if config.device_rate else None
    )
    workers: list[multiprocessing.process.BaseProcess] = []
    stopping = False
    failed = False

    def stop_all(signum: int = signal.SIGTERM, frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop_all) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _one_hash_seed():
            for index in range(config.workers):
                if stopping:
                    break
                worker_process = context.Process(
                    target=worker, args=(_worker_config(config, index), device_counts), name=f"routing-proxy-{index}"
                )
                worker_process.start()
                workers.append(worker_process)
        if stopping:
            stop_all()
        deadline: float | None = None
        while alive := [p for p in workers if p.exitcode is None]:
            wait([p.sentinel for p in alive], timeout=0.5)
            if not stopping and any(p.exitcode is not None for p in workers):
                failed = True
                logger.error("a worker exited unexpectedly; stopping the others")
                stop_all()
            if stopping and deadline is None:
                deadline = time.monotonic() + config.drain_timeout + _EXIT_GRACE
            if deadline is not None and time.monotonic() > deadline:
                for process in alive:
                    logger.error("worker %s did not drain in time; killing it", process.pid)
                    process.kill()
                    process.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    ok = not failed and all(p.exitcode == 0 for p in workers)
    return 0 if ok else 1


def _worker_config(config: ProxyConfig, index: int) -> ProxyConfig:
    # Each worker counts for itself, so each serves its own /metrics: worker i on metrics_port + i.
    if config.metrics_port is None:
        return config
    return config.model_copy(update={"metrics_port": config.metrics_port + index})


@contextmanager
def _one_hash_seed() -> Iterator[None]:
    """Workers started meanwhile hash strings alike (admission's shared device counts need it), with
    a seed drawn here, so which device ids collide still cannot be worked out from outside."""
    previous = os.environ.get("PYTHONHASHSEED")
    if previous is not None and previous != "random":
        yield  # the operator fixed one already
        return
    os.environ["PYTHONHASHSEED"] = str(secrets.randbelow(1 << 32))
    try:
        yield
    finally:
        if previous is None:
            del os.environ["PYTHONHASHSEED"]
        else:
            os.environ["PYTHONHASHSEED"] = previous
