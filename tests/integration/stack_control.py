"""Faults on a running stack: kill, stop and restart its processes on their old ports.

Every process started here replaces the old one in `stack.children`, so the fixture's teardown
stops it by PID with the rest.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from edge_gateway.launcher import Stack
from edge_gateway.processes import Child, spawn, wait_ready_file

from .helpers import job_status, wait_for

log = logging.getLogger(__name__)


def child(stack: Stack, name: str) -> Child:
    return next(c for c in stack.children if c.name == name)


def _replace(stack: Stack, old: Child, new: Child) -> None:
    stack.children[stack.children.index(old)] = new


async def kill(process: Child) -> None:
    """`kill -9`: no drain, no flush."""
    process.process.send_signal(signal.SIGKILL)
    await process.process.wait()


async def terminate(process: Child, bound: float) -> tuple[int, float]:
    """SIGTERM and wait up to `bound` seconds; (exit code, seconds taken). Kills it past the bound
    so the test fails on the code, not by hanging."""
    started = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(process.process.wait(), bound)
    except TimeoutError:
        process.process.kill()
        await process.process.wait()
        raise AssertionError(f"{process.name} did not exit within {bound} s of SIGTERM") from None
    seconds = time.monotonic() - started
    log.info("%s exited with %d %.2f s after SIGTERM", process.name, code, seconds)
    return code, seconds


async def rounds_later(stack: Stack, job_id: str, rounds: int, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until `rounds` more rounds have closed than now (bounded)."""
    now = (await job_status(stack.api_url, job_id))["round"]
    return await wait_for(stack.api_url, job_id, lambda s: s["round"] >= now + rounds, timeout=timeout)


def server_ports(run_dir: Path) -> dict[str, Any]:
    return dict(orjson.loads((run_dir / "server.ready").read_bytes()))


async def restart_server(stack: Stack, run_dir: Path, generation: int = 2) -> Child:
    """A new server on the old ports and data directory (it resumes from its checkpoints)."""
    ports = server_ports(run_dir)
    ready = run_dir / f"server{generation}.ready"
    new = await spawn(
        f"server{generation}",
        [
            "edge_gateway",
            "server",
            "--http-port",
            str(ports["http_port"]),
            "--link-port",
            str(ports["link_port"]),
            "--data-dir",
            str(run_dir / "server"),
            "--ready-file",
            str(ready),
        ],
        run_dir / "logs",
        stack.env,
    )
    _replace(stack, next(c for c in stack.children if c.name.startswith("server")), new)
    await wait_ready_file(new, ready)
    return new


async def restart_leaf(stack: Stack, run_dir: Path, name: str) -> Child:
    """A fresh leaf process under the same name and port (the proxy's lcp map is unchanged)."""
    port = orjson.loads(stack.lcp_map.read_bytes())[name]["port"]
    ready = run_dir / f"{name}-restarted.ready"
    new = await spawn(
        f"{name}-restarted",
        [
            "edge_gateway",
            "leaf",
            "--name",
            name,
            "--port",
            str(port),
            "--server",
            f"127.0.0.1:{server_ports(run_dir)['link_port']}",
            "--data-dir",
            str(run_dir / name),
            "--ready-file",
            str(ready),
        ],
        run_dir / "logs",
        stack.env,
    )
    _replace(stack, child(stack, name), new)
    await wait_ready_file(new, ready)
    return new


async def restart_proxy(stack: Stack, run_dir: Path, *flags: str) -> Child:
    """A new proxy on the old port, started the way the launcher starts it, plus `flags`."""
    port = stack.proxy_url.rsplit(":", 1)[1]
    new = await spawn(
        "proxy-restarted",
        ["routing_proxy", port, str(stack.lcp_map), "--host", "127.0.0.1", *flags],
        run_dir / "logs",
        stack.env,
    )
    _replace(stack, child(stack, "proxy"), new)
    await wait_proxy_healthy(stack, leaves=None)
    return new


async def proxy_health(stack: Stack) -> dict[str, Any] | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{stack.proxy_url}/health", timeout=aiohttp.ClientTimeout(total=5)) as reply,
        ):
            return dict(orjson.loads(await reply.read()))
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
        return None


async def wait_proxy_healthy(
    stack: Stack, leaves: int | None, timeout: float = 30.0, unhealthy: str | None = None
) -> dict[str, Any]:
    """Wait until the proxy answers /health with `leaves` healthy leaves (any, if None), and
    `unhealthy` (a leaf name), if given, among the unhealthy ones."""
    deadline = time.monotonic() + timeout
    health: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        health = await proxy_health(stack)
        if (
            health is not None
            and (leaves is None or health["healthy"] == leaves)
            and (unhealthy is None or not health["leaves"][unhealthy]["healthy"])
        ):
            return health
        await asyncio.sleep(0.2)
    raise AssertionError(f"proxy health not reached in {timeout} s: {health}")
