"""A gateway spread over the hosts of a shaped `Lan`: server, one leaf behind a delaying relay,
proxy, and a host for the devices. Every process is started here and stopped by its PID."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .lan import Lan

REPO = Path(__file__).resolve().parents[2]
SERVER_HTTP, SERVER_LINK, LEAF_PORT, RELAY_PORT, PROXY_PORT = 8443, 9000, 9100, 9101, 4321


@dataclass
class Process:
    name: str
    process: asyncio.subprocess.Process
    log: Path


@dataclass
class ShapedStack:
    lan: Lan
    run_dir: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://{self.lan.hosts['server']}:{SERVER_HTTP}"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.lan.hosts['proxy']}:{PROXY_PORT}"

    async def start(self, name: str, host: str, argv: list[str], ready: Path | None = None) -> Process:
        log = self.run_dir / f"{name}.log"
        with open(log, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                *self.lan.run(host, argv),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        started = Process(name, process, log)
        self.processes.append(started)
        if ready is not None:
            await _wait_file(started, ready, 60.0)
        return started

    async def run(self, host: str, argv: list[str], timeout: float) -> bytes:
        """`argv` in `host`'s namespace to its end (bounded); its standard output."""
        process = await asyncio.create_subprocess_exec(
            *self.lan.run(host, argv), stdout=asyncio.subprocess.PIPE, env={**os.environ, **self.env}
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"{argv[:4]} did not end within {timeout} s") from None
        assert process.returncode == 0, f"{argv[:4]} exited with {process.returncode}"
        return out

    def peak_rss_mib(self) -> dict[str, float]:
        """The most memory each process has held (VmHWM), in MiB."""
        peaks = {}
        for p in self.processes:
            for line in Path(f"/proc/{p.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[p.name] = int(line.split()[1]) / 1024
        return peaks

    async def stop(self) -> None:
        os.environ.pop("EDGEFL_API_TOKEN", None)  # set by start_shaped_stack for this stack only
        for p in reversed(self.processes):
            if p.process.returncode is None:
                p.process.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                await asyncio.wait_for(p.process.wait(), 15.0)
            except TimeoutError:
                p.process.kill()
                await p.process.wait()


async def _wait_file(process: Process, path: Path, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not path.exists():
        if process.process.returncode is not None or loop.time() > deadline:
            raise AssertionError(f"{process.name} not ready: see {process.log}")
        await asyncio.sleep(0.1)


async def start_shaped_stack(
    lan: Lan, run_dir: Path, link_delay: float, device_delay: float = 0.0, device_rate_mbit: float | None = None
) -> ShapedStack:
    """Server, leaf, proxy and devices each on a host of `lan`; the proxy reaches the leaf through
    a relay on the leaf's host adding `link_delay` seconds each way, devices reach the proxy through
    one on their host adding `device_delay` (when not 0) over a link of `device_rate_mbit`."""
    for host in ("server", "leaf", "proxy"):
        lan.add_host(host)
    lan.add_host("devices", device_rate_mbit)
    # Beyond loopback both the links and the job API need secrets of their own (the processes refuse
    # to start without); the test process holds the API token too (tests/integration/helpers.py).
    env = {"PYTHONPATH": str(REPO), "EDGEFL_LINK_SECRET": secrets.token_hex(16)}
    env["EDGEFL_API_TOKEN"] = os.environ["EDGEFL_API_TOKEN"] = secrets.token_hex(16)
    stack = ShapedStack(lan, run_dir, env)
    python = [sys.executable, "-m"]
    server, leaf = lan.hosts["server"], lan.hosts["leaf"]
    await stack.start(
        "server",
        "server",
        [*python, "edge_gateway", "server", "--host", server, "--api-host", server, "--http-port", str(SERVER_HTTP)]
        + ["--link-port", str(SERVER_LINK), "--data-dir", str(run_dir / "server")]
        + ["--ready-file", str(run_dir / "server.ready")],
        run_dir / "server.ready",
    )
    await stack.start(
        "leaf",
        "leaf",
        [*python, "edge_gateway", "leaf", "--name", "leaf-0", "--host", "127.0.0.1", "--port", str(LEAF_PORT)]
        + ["--server", f"{server}:{SERVER_LINK}", "--data-dir", str(run_dir / "leaf-0")]
        + ["--ready-file", str(run_dir / "leaf.ready")],
        run_dir / "leaf.ready",
    )
    await _relay(stack, "leaf", f"{leaf}:{RELAY_PORT}", f"127.0.0.1:{LEAF_PORT}", link_delay)
    lcp_map = run_dir / "lcp_map.json"
    lcp_map.write_text(f'{{"leaf-0": {{"host": "{leaf}", "port": {RELAY_PORT}}}}}')
    proxy = await stack.start(
        "proxy",
        "proxy",
        [*python, "routing_proxy", "--host", lan.hosts["proxy"], str(PROXY_PORT), str(lcp_map)],
    )
    await _wait_health(stack, proxy)
    stack.device_url = stack.proxy_url
    if device_delay:
        await _relay(stack, "devices", f"127.0.0.1:{PROXY_PORT}", f"{lan.hosts['proxy']}:{PROXY_PORT}", device_delay)
        stack.device_url = f"http://127.0.0.1:{PROXY_PORT}"
    return stack


async def _relay(stack: ShapedStack, host: str, listen: str, target: str, delay: float) -> None:
    ready = stack.run_dir / f"relay-{host}.ready"
    relay = [sys.executable, str(REPO / "tests" / "shaped" / "delay_relay.py"), listen, target]
    await stack.start(f"relay-{host}", host, [*relay, "--delay", str(delay), "--ready-file", str(ready)], ready)


async def _wait_health(stack: ShapedStack, proxy: Process) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(300):  # bounded: 30 s
            if proxy.process.returncode is not None:
                break
            try:
                async with http.get(f"{stack.proxy_url}/health") as reply:
                    if (await reply.json()).get("healthy"):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"proxy never saw a healthy leaf: see {proxy.log}")
