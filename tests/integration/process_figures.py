"""What the streamed-transfer tests read of the processes they start: peak memory from /proc, and
a leaf's stream counters from its /metrics, polled until they say what the test waits for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp


def peak_rss_mib(pid: int) -> float:
    """The most memory the process has held (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


async def metric_values(http: aiohttp.ClientSession, url: str, prefix: str) -> dict[str, float]:
    """The samples of `url`'s metrics whose names start with `prefix`, labels included in the key."""
    async with http.get(url) as response:
        text = await response.text()
    counts = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            counts[name] = float(value)
    return counts


async def metrics_until(
    http: aiohttp.ClientSession,
    url: str,
    prefix: str,
    done: Callable[[dict[str, float]], bool],
    timeout: float = 20.0,
    pause: float = 0.2,
) -> dict[str, float]:
    """`metric_values` read until `done` holds of them or `timeout` passes (bounded); the last read."""
    give_up = time.monotonic() + timeout
    counts = await metric_values(http, url, prefix)
    while not done(counts) and time.monotonic() < give_up:
        await asyncio.sleep(pause)
        counts = await metric_values(http, url, prefix)
    return counts
