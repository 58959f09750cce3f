"""Devices fetching their task (and so the model) through the proxy at once.

    python tests/shaped/download_load.py PROXY_URL JOB_ID --devices 100 [--deadline 120]

First one probe device asks until the model is ready (a new job's leaves fetch it first), then
`--devices` fresh devices ask concurrently, each until it has its task: told "Device not selected"
(the leaf is still being granted slots) it asks again after `retry_wait`, as a phone does; any
other answer is its last. Prints one JSON line: last answers by status, the RETRY answers that were
asked again by message, payload bytes, seconds per download (median, max), the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter

import aiohttp
import msgpack

MSGPACK = "application/msgpack"


async def _ask(http: aiohttp.ClientSession, proxy: str, job: str, device: str) -> tuple[str, int, float]:
    started = time.monotonic()
    headers = {"X-Flare-Device-ID": device, "Accept": MSGPACK, "Content-Type": "application/json"}
    async with http.post(f"{proxy}/task", params={"job_id": job}, data=b"{}", headers=headers) as response:
        body = await response.read()
    seconds = time.monotonic() - started
    if response.content_type == MSGPACK:
        reply = msgpack.unpackb(body)
    elif response.content_type == "application/json":
        reply = json.loads(body)
    else:
        reply = {"status": f"HTTP {response.status}"}
    status = str(reply.get("status"))
    if status != "OK":
        status = f"{status} {reply.get('message', '')}".strip()
    return status, len(body), seconds


ASK_AGAIN = ("RETRY Device not selected", "RETRY Model not ready")


async def _device(
    http: aiohttp.ClientSession, proxy: str, job: str, device: str, give_up: float, retried: Counter[str]
) -> tuple[str, int, float]:
    started = time.monotonic()
    while True:  # bounded: give_up
        status, size, _ = await _ask(http, proxy, job, device)
        if status not in ASK_AGAIN or time.monotonic() > give_up:
            return status, size, time.monotonic() - started
        retried[status] += 1
        await asyncio.sleep(1.0)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("proxy")
    parser.add_argument("job")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args()
    timeout = aiohttp.ClientTimeout(total=args.deadline)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        give_up = time.monotonic() + args.deadline
        while True:  # bounded: the deadline
            status, _, _ = await _ask(http, args.proxy, args.job, "probe")
            if status == "OK" or time.monotonic() > give_up:
                break
            await asyncio.sleep(0.2)
        started = time.monotonic()
        retried: Counter[str] = Counter()
        give_up = started + args.deadline
        asks = [_device(http, args.proxy, args.job, f"device-{i}", give_up, retried) for i in range(args.devices)]
        results = await asyncio.gather(*asks, return_exceptions=True)
    wall = time.monotonic() - started
    answers: Counter[str] = Counter()
    sizes, seconds = [], []
    for result in results:
        if isinstance(result, BaseException):
            answers[f"error {type(result).__name__}"] += 1
            continue
        status, size, took = result
        answers[status] += 1
        if status == "OK":
            sizes.append(size)
            seconds.append(took)
    report = {
        "answers": dict(answers),
        "asked_again": dict(retried),
        "payload_bytes": max(sizes, default=0),
        "median_s": statistics.median(seconds) if seconds else None,
        "max_s": max(seconds, default=None),
        "wall_s": wall,
    }

    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
