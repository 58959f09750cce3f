"""The proxy as users start it: `python -m routing_proxy PORT lcp_map.json`, as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from internal_link.calls import DeviceCall
from routing_proxy.cli import main

from .helpers import SECRET, Leaf, echoed, write_lcp_map

MakeLeaf = Callable[..., Awaitable[Leaf]]
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration
# The loop of the test process does not matter here: the proxy picks its own.
one_loop = pytest.mark.asyncio(loop_factories=["uvloop"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A port P with P + 1 free too, for two workers' metrics (bounded: a few tries)."""
    for _ in range(20):
        port = free_port()
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def metric_total(text: str, name: str) -> float:
    """The sum of a metric's samples over all its labels, from Prometheus' text format."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


@asynccontextmanager
async def running(command: list[str], log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


async def exit_code(process: subprocess.Popen[bytes], timeout: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (code := process.poll()) is None:
        if loop.time() > deadline:
            raise AssertionError(f"process {process.pid} still running after {timeout} s")
        await asyncio.sleep(0.05)
    return code


async def wait_healthy(http: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            async with http.get(f"{url}/health") as reply:
                if orjson.loads(await reply.read())["healthy"] >= 1:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"proxy never became healthy:\n{log.read_text()}")


async def wait_workers_listening(log: Path, workers: int) -> None:
    """Until each worker has logged that it listens (bounded: 30 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while log.read_text().count("listening on") < workers:
        assert loop.time() < deadline, log.read_text()
        await asyncio.sleep(0.1)


def setup_files(tmp_path: Path, leaf: Leaf) -> tuple[Path, Path]:
    secret = tmp_path / "link.secret"
    secret.write_bytes(SECRET + b"\n")
    return write_lcp_map(tmp_path / "lcp_map.json", [leaf]), secret


@one_loop
async def test_module_serves_and_drains_on_sigterm(
    leaves: MakeLeaf, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    arrived = asyncio.Event()

    async def feg(call: DeviceCall) -> list[Any]:
        if call.endpoint == "result":
            arrived.set()
            await asyncio.sleep(1.0)  # still in flight when SIGTERM comes
        return [200, "application/json", b'{"status":"OK","endpoint":"%s"}' % call.endpoint.encode()]

    leaf = await leaves("C11", feg)
    lcp_map, secret = setup_files(tmp_path, leaf)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "routing_proxy",
        str(port),
        str(lcp_map),
        "--host",
        "127.0.0.1",
        "--link-secret-file",
        str(secret),
        "--log-level",
        "info",
    ]
    log = tmp_path / "proxy.log"
    async with running(command, log) as process:
        await wait_healthy(http, url, process, log)
        headers = {"X-Flare-Device-ID": "DEV-1", "Content-Type": "application/json"}
        async with http.get(f"{url}/task?job_id=J", headers=headers) as reply:
            assert (reply.status, await reply.read()) == (200, b'{"status":"OK","endpoint":"task"}')

        in_flight = asyncio.ensure_future(http.post(f"{url}/result?job_id=J", data=b"{}", headers=headers))
        await asyncio.wait_for(arrived.wait(), 10)
        os.kill(process.pid, signal.SIGTERM)
        reply = await asyncio.wait_for(in_flight, 10)
        assert (reply.status, await reply.read()) == (200, b'{"status":"OK","endpoint":"result"}')
        reply.release()
        assert await exit_code(process, timeout=10) == 0, log.read_text()
    assert "draining" in log.read_text()


@one_loop
async def test_start_script_with_two_workers(leaves: MakeLeaf, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    leaf = await leaves("C11")
    lcp_map, secret = setup_files(tmp_path, leaf)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_port = free_port_pair()
    command = [
        str(REPO / "scripts" / "start_rp.sh"),
        str(port),
        str(lcp_map),
        "--host",
        "127.0.0.1",
        "--workers",
        "2",
        "--metrics-port",
        str(metrics_port),
        "--link-secret-file",
        str(secret),
        "--device-rate",
        "4",
        "--device-window",
        "86400",
    ]
    log = tmp_path / "proxy.log"

    async def ask(device_id: str) -> dict[str, Any]:
        # A new connection each time, as the Python simulator does (PROTOCOL.md §6).
        async with (
            aiohttp.ClientSession() as fresh,
            fresh.post(f"{url}/task?job_id=J", headers={"X-Flare-Device-ID": device_id}) as reply,
        ):
            body = await reply.read()
            return orjson.loads(body) if reply.content_type == "application/json" else echoed(body)

    async with running(command, log) as process:
        await wait_healthy(http, url, process, log)
        await wait_workers_listening(log, 2)
        for i in range(20):
            assert (await ask(f"D{i}"))["leaf"] == "C11"
        # A device that reconnects lands on either worker (the kernel spreads connections); it is
        # counted once across them. Had each worker counted alone, 12 connections would let up to
        # 8 of its requests through (all 12 landing on one worker: 1 chance in 2,048).
        answers = [await ask("PHONE") for _ in range(12)]
        refused = [a for a in answers if a.get("message") == "too many requests from this device"]
        assert len(refused) == 8 and all(a["status"] == "RETRY" for a in refused), answers
        assert sum(a.get("leaf") == "C11" for a in answers) == 4 and len(leaf.received) == 24
        # Each worker counts what it answered, on its own metrics port: together, every request.
        texts = []
        for worker_port in (metrics_port, metrics_port + 1):
            async with http.get(f"http://127.0.0.1:{worker_port}/metrics") as reply:
                texts.append(await reply.text())
        assert sum(metric_total(t, "edgefl_proxy_answers_total") for t in texts) == 24
        assert sum(metric_total(t, "edgefl_proxy_refusals_total") for t in texts) == 8
        os.kill(process.pid, signal.SIGTERM)
        assert await exit_code(process, timeout=15) == 0, log.read_text()


def test_bad_lcp_map_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lcp_map.json"
    path.write_text(json.dumps({"C11": {"host": "localhost"}}))
    assert main(["4321", str(path)]) == 2
    assert "'C11' needs a port" in capsys.readouterr().err


def test_several_workers_need_a_fixed_metrics_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["4321", str(tmp_path / "lcp_map.json"), "--workers", "2", "--metrics-port", "0"]) == 2
    assert "2 workers need --metrics-port 1..65534" in capsys.readouterr().err


def test_a_metrics_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaves_map = tmp_path / "lcp_map.json"
    leaves_map.write_text(json.dumps({"C11": {"host": "127.0.0.1", "port": 9}}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert main(["0", str(leaves_map), "--host", "127.0.0.1", "--metrics-port", str(taken)]) == 2
    assert f"cannot listen on 127.0.0.1:{taken}" in capsys.readouterr().err


def test_several_workers_need_a_fixed_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["0", str(tmp_path / "lcp_map.json"), "--workers", "2"]) == 2
    assert "fixed port" in capsys.readouterr().err


def test_proxy_imports_nothing_heavy() -> None:
    code = (
        "import sys, routing_proxy.cli, routing_proxy.server;"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'sklearn', 'executorch', 'edge_gateway', 'aiohttp'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == []


@one_loop
async def test_device_slots_flag_sizes_the_rate_limiter(
    leaves: MakeLeaf, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # 3,000 devices, one request each, a limit of one per window: none may be refused for another's
    # sake. With 512 counters a row they share counters and most are refused (the fixed 65,536 did
    # the same to populations of ~100,000 devices); sized up by the flag, every one gets in and a
    # device's second request is still refused.
    leaf = await leaves("C11")
    lcp_map, secret = setup_files(tmp_path, leaf)
    population = [f"phone-{i}" for i in range(3000)]

    async def refused_share(slots: int) -> tuple[float, dict[str, Any]]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "routing_proxy", str(port), str(lcp_map), "--host", "127.0.0.1"]
        command += ["--link-secret-file", str(secret), "--device-rate", "1", "--device-window", "86400"]
        command += ["--device-slots", str(slots)]
        log = tmp_path / f"proxy-{slots}.log"
        async with running(command, log) as process:
            await wait_healthy(http, url, process, log)

            async def ask(device_id: str) -> dict[str, Any]:
                headers = {"X-Flare-Device-ID": device_id}
                async with http.post(f"{url}/task?job_id=J", headers=headers) as reply:
                    body = await reply.read()
                    return orjson.loads(body) if reply.content_type == "application/json" else echoed(body)

            refused = 0
            for start in range(0, len(population), 50):  # 50 at a time: bounded, and quick
                answers = await asyncio.gather(*(ask(d) for d in population[start : start + 50]))
                refused += sum(a.get("message") == "too many requests from this device" for a in answers)
            again = await ask(population[0])
            os.kill(process.pid, signal.SIGTERM)
            assert await exit_code(process, timeout=15) == 0, log.read_text()
        return refused / len(population), again

    crowded, _ = await refused_share(512)
    assert crowded > 0.5, crowded
    sized, again = await refused_share(1 << 20)
    assert sized == 0.0
    assert again["status"] == "RETRY" and again["message"] == "too many requests from this device"
