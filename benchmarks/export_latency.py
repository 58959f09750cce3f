"""Does exporting a phone job's training program slow devices down? (issue: export off the request path)

Starts server + 2 leaves + proxy, keeps 100 devices polling `/task` through the proxy, submits a
`cifar10_et` job (the server exports the CNN's ExecuTorch program in its worker process while
devices hear "Model not ready"), and compares `/task` latency while the export runs with latency
once the program is served. Bounded: 100 devices, at most `--seconds` of load.

    python benchmarks/export_latency.py [--seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from edge_gateway.launcher import start_stack

DEVICES = 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def poll(
    session: aiohttp.ClientSession,
    url: str,
    device: str,
    job: dict[str, str],
    stop_at: float,
    samples: list[tuple[float, float, str]],
) -> None:
    headers = {"X-Flare-Device-ID": device, "Content-Type": "application/json"}
    while time.monotonic() < stop_at:
        if not job:
            await asyncio.sleep(0.05)
            continue
        started = time.monotonic()
        async with session.post(f"{url}/task?job_id={job['id']}", data=b"{}", headers=headers) as reply:
            body = orjson.loads(await reply.read())
        samples.append((started, time.monotonic() - started, body.get("message", body["status"])))
        await asyncio.sleep(0.1)  # a device polling ten times a second, far faster than retry_wait


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = await start_stack(Path(tmp), leaves=2, proxy_host="127.0.0.1", proxy_port=0)
        try:
            samples: list[tuple[float, float, str]] = []
            job: dict[str, str] = {}
            stop_at = time.monotonic() + seconds
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=DEVICES)) as session:
                pollers = [
                    asyncio.create_task(poll(session, stack.proxy_url, f"dev-{i}", job, stop_at, samples))
                    for i in range(DEVICES)
                ]
                spec = {
                    "name": "cifar10_et",
                    "model": "cifar10",
                    "runtime": "executorch",
                    "rounds": 1,
                    "devices_per_round": 1000,
                    "batch_size": 4,
                    "retry_wait": 1,
                }
                submitted = time.monotonic()
                async with session.post(
                    f"{stack.api_url}/api/jobs", data=orjson.dumps(spec), headers={"Content-Type": "application/json"}
                ) as reply:
                    job["id"] = orjson.loads(await reply.read())["job_id"]
                await asyncio.gather(*pollers)
        finally:
            await stack.stop()
    during = [lat for _, lat, msg in samples if msg == "Model not ready"]
    ready = [t for t, _, msg in samples if msg != "Model not ready"]
    after = [lat for _, lat, msg in samples if msg != "Model not ready"]
    export_s = (min(ready) - submitted) if ready else float("nan")
    print(f"program ready {export_s:.1f} s after submission; {len(samples)} /task requests from {DEVICES} devices")
    print("| window | requests | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for name, values in (
        ("while exporting (Model not ready)", during),
        ("program served (task or not selected)", after),
    ):
        print(
            f"| {name} | {len(values)} | {statistics.median(values) * 1e3:.2f} | {percentile(values, 0.99) * 1e3:.2f} |"
        )
    if during and after:
        print(f"p99 ratio exporting / served: {percentile(during, 0.99) / percentile(after, 0.99):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    asyncio.run(main(parser.parse_args().seconds))
