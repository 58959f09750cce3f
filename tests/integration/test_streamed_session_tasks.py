"""A live session's large `task` message is streamed from leaf to device in bounded chunks (issue 10).

Twenty msgpack sessions of a 6.3 MB model (`cifar10_wide`) ask for their task and then stop
reading: the proxy must hold about a window per session, not the whole message, and the leaf must
send every session's task from its one cached payload. Each task still arrives as one whole
WebSocket message (binary for msgpack sessions, text for JSON ones). A device that leaves
mid-message frees its stream at the leaf.
"""

from __future__ import annotations

import asyncio
import math
import socket

import aiohttp
import numpy as np
import pytest

from device_protocol.tensors import tensors_from_binary
from edge_gateway.launcher import Stack
from edge_gateway.models.specs import param_shapes

from .helpers import UNSCREENED, submit_job, wait_leaves_synced
from .process_figures import metrics_until, peak_rss_mib
from .session_client import SessionDevice
from .stack_control import child
from .test_streamed_downloads import DOWNLOAD_STREAMS, cancelled_once

pytestmark = pytest.mark.integration

SESSIONS = 20
# A device's receive buffer, kept small so that what it does not read stays in the proxy.
DEVICE_RCVBUF = 64 * 1024
# Peak RSS while 20 sessions' tasks stall, measured in this test: 170-182 MiB at the proxy and
# 160 MiB at the leaf when each session's task was one joined message (a 6.3 MB copy each);
# 51 MiB and 131 MiB streamed, a window per session from the one cached payload.
PROXY_PEAK_RSS_MIB = 90
LEAF_PEAK_RSS_MIB = 148
PARAMS = sum(math.prod(shape) for shape in param_shapes("cifar10_wide").values())


async def _wide_job(stack: Stack, devices: int) -> None:
    job_id = await submit_job(
        stack.api_url,
        name="wide",
        model="cifar10_wide",
        rounds=1,
        devices_per_round=devices,
        over_selection=0.0,
        task_timeout=300.0,
        round_timeout=300.0,
        evaluate=False,
        **UNSCREENED,
    )
    await wait_leaves_synced(stack.api_url, job_id, 1)


async def _slow_reader(proxy_url: str, device_id: str, binary: bool = True) -> SessionDevice:
    """A session on a socket with a small receive buffer, selected for the round."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DEVICE_RCVBUF)
    sock.setblocking(False)
    port = int(proxy_url.rsplit(":", 1)[1])
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    device = await SessionDevice.connect(proxy_url, device_id, binary=binary, sock=sock)
    await device.rendezvous("wide")
    await device.until("round", frozenset(("standby",)), timeout=90)  # the model may still be building
    return device


def _stop_reading(device: SessionDevice) -> None:
    device.ws.transport.pause_reading()


def _parameters(task: dict[str, object], binary: bool) -> int:
    data = task["task_data"]
    assert isinstance(data, dict), data
    weights = tensors_from_binary(data["data"]) if binary else data["data"]
    return sum(int(np.asarray(v).size) for v in weights.values())


async def test_stalled_session_tasks_hold_a_window_each(one_leaf: Stack) -> None:
    await _wide_job(one_leaf, SESSIONS)
    url = one_leaf.proxy_url
    devices = await asyncio.wait_for(asyncio.gather(*(_slow_reader(url, f"session-{i}") for i in range(SESSIONS))), 120)
    try:
        for device in devices:
            _stop_reading(device)
            await device.send({"type": "start_training", "round": 1})
        # Nobody reads: whatever the proxy and the leaf hold for them, they hold now.
        await asyncio.sleep(4.0)
        proxy_peak = peak_rss_mib(child(one_leaf, "proxy").process.pid)
        leaf_peak = peak_rss_mib(child(one_leaf, "leaf-0").process.pid)
        for device in devices:
            device.ws.transport.resume_reading()
        tasks = await asyncio.wait_for(asyncio.gather(*(d.expect("task", 60) for d in devices)), 120)
    finally:
        await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
    print(f"proxy peak RSS {proxy_peak:.0f} MiB, leaf {leaf_peak:.0f} MiB")
    assert [_parameters(task, binary=True) for task in tasks] == [PARAMS] * SESSIONS
    assert len({task["task_id"] for task in tasks}) == SESSIONS
    assert proxy_peak < PROXY_PEAK_RSS_MIB, proxy_peak
    assert leaf_peak < LEAF_PEAK_RSS_MIB, leaf_peak


async def test_a_json_session_gets_its_large_task_whole_in_one_text_frame(one_leaf: Stack) -> None:
    await _wide_job(one_leaf, 2)
    device = await _slow_reader(one_leaf.proxy_url, "json-session", binary=False)
    try:
        await device.send({"type": "start_training", "round": 1})
        task = await device.expect("task", 60)  # `receive` checks it came as a text frame
        await device.send({"type": "heartbeat"})
        after = await device.expect("round")  # the session goes on after the long frame
    finally:
        await device.close()
    assert _parameters(task, binary=False) == PARAMS
    assert after["type"] == "round"


async def test_a_session_closed_mid_task_frees_its_stream_at_the_leaf(one_leaf: Stack) -> None:
    await _wide_job(one_leaf, 2)
    metrics = one_leaf.metrics["leaf-0"]
    device = await _slow_reader(one_leaf.proxy_url, "leaver")
    _stop_reading(device)
    await device.send({"type": "start_training", "round": 1})
    await asyncio.sleep(1.0)  # the task's first window is on its way
    device.ws.transport.abort()  # the device is gone mid-message
    async with aiohttp.ClientSession() as http:
        counts = await metrics_until(http, metrics, DOWNLOAD_STREAMS, cancelled_once)
    assert counts.get('edgefl_leaf_download_streams_total{outcome="started"}') == 1, counts
    assert counts.get('edgefl_leaf_download_streams_total{outcome="cancelled"}') == 1, counts
    assert counts.get("edgefl_leaf_download_streams_open") == 0, counts
