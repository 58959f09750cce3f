"""Serving the proxy: listening (TLS optional), graceful drain, and N worker processes on one port."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus
from multiprocessing.connection import wait
from typing import Any

from aiohttp import web

from .app import create_app
from .config import ProxyConfig
from .responses import INVALID_REQUEST, json_error

logger = logging.getLogger(__name__)

# Phones poll every few seconds; an idle connection is kept as long as nginx's default.
_KEEPALIVE_TIMEOUT = 75.0
_BACKLOG = 4096
# Past the drain bound a worker gets this long to exit before it is killed.
_EXIT_GRACE = 10.0


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering the requests it rejects itself (malformed request
    line or headers, handler crash) with a JSON error body instead of text or HTML."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response is out: the connection is broken, as in the base class.
            raise ConnectionError("response already started, cannot send the error")
        if status >= 500:
            self.log_exception("error handling request from %s", request.remote, exc_info=exc)
            response = json_error(status, "ERROR", HTTPStatus(status).phrase)
        else:
            # A device's malformed request: its problem, not worth more than a debug line.
            self.log_debug("malformed request from %s: %s", request.remote, exc)
            response = json_error(status, INVALID_REQUEST, message or HTTPStatus(status).phrase)
        response.force_close()
        return response


class ProxyServer:
    """One process's listener in front of the proxy application."""

    def __init__(self, config: ProxyConfig, app: web.Application | None = None) -> None:
        self.config = config
        self.app = app if app is not None else create_app(config)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None

    async def start(self) -> int:
        """Start the links to the leaves and listen; return the bound port."""
        config = self.config
        self._runner = runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=config.drain_timeout
        )
        await runner.setup()
        manager = runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: JsonErrorRequestHandler(
                manager, loop=loop, access_log=None, keepalive_timeout=_KEEPALIVE_TIMEOUT
            ),
            config.host,
            config.port,
            ssl=_device_tls(config),
            backlog=_BACKLOG,
            # Several workers share the port; the kernel spreads connections over them.
            reuse_port=config.workers > 1 or None,
        )
        port: int = self._listener.sockets[0].getsockname()[1]
        logger.info("routing proxy (pid %d) listening on %s:%d", os.getpid(), config.host, port)
        return port

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish within `drain_timeout`, then close."""
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            # Closes idle keep-alive connections, waits for handlers, then closes the links.
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None


def _device_tls(config: ProxyConfig) -> ssl.SSLContext | None:
    if config.ssl_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.ssl_cert, config.ssl_key)
    return context


async def serve(config: ProxyConfig) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    server = ProxyServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        await stop.wait()
        logger.info("routing proxy (pid %d) draining", os.getpid())
    finally:
        await server.drain()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def supervise(config: ProxyConfig, worker: Callable[[ProxyConfig], Any]) -> int:
    """Run `worker(config)` in `config.workers` processes sharing the port; return an exit code.

    SIGTERM/SIGINT are passed on to the workers, which drain; one worker dying on its own stops
    them all (exit code 1) so that the service manager restarts a whole, healthy proxy.
    """
    context = multiprocessing.get_context("spawn")
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
        for index in range(config.workers):
            if stopping:
                break
            process = context.Process(target=worker, args=(config,), name=f"routing-proxy-{index}")
            process.start()
            workers.append(process)
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
