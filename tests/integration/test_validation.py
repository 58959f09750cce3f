"""Every validation message and error code of PROTOCOL.md §2-§4, and every bad-result case of
DESIGN.md, through the real proxy and leaves; the aggregate is untouched by what is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from edge_gateway.launcher import Stack

from .helpers import submit_job, wait_for, wait_leaves_synced


def headers(device: str | None = "dev-1", info: str | None = None, ctype: str = "application/json") -> dict[str, str]:
    h = {"Content-Type": ctype}
    if device is not None:
        h["X-Flare-Device-ID"] = device
    if info is not None:
        h["X-Flare-Device-Info"] = info
    return h


async def call(
    http: aiohttp.ClientSession, url: str, body: Any, hdrs: dict[str, str], method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.request(method, url, data=data, headers=hdrs) as reply:
        assert reply.content_type == "application/json", await reply.text()
        return reply.status, orjson.loads(await reply.read())


@pytest.fixture
async def job(stack: Stack) -> str:
    job_id = await submit_job(
        stack.api_url,
        name="xor_checks",
        model="xor",
        rounds=3,
        devices_per_round=40,
        over_selection=0.0,
        retry_wait=1,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, 2)
    return job_id


async def test_request_validation_messages(stack: Stack, http: aiohttp.ClientSession, job: str) -> None:
    p = stack.proxy_url
    invalid = "INVALID_REQUEST"
    cases = [
        ("/job", {"job_name": "x", "capabilities": {"methods": ["a"]}}, headers(None), "Device ID missing"),
        (
            "/job",
            {"job_name": "x", "capabilities": {"methods": ["a"]}},
            headers("a", "device_id=b"),
            "Device ID mismatch: X-Flare-Device-ID does not match X-Flare-Device-Info",
        ),
        ("/job", {"capabilities": {"methods": ["a"]}}, headers(), "missing job_name"),
        ("/job", {"job_name": "x"}, headers(), "missing capabilities"),
        ("/job", {"job_name": "x", "capabilities": {"methods": []}}, headers(), "missing methods"),
        (
            "/job",
            {"job_name": "x", "capabilities": {"methods": "cnn"}},
            headers(),
            "invalid methods type <class 'str'>",
        ),
        ("/task", {}, headers(), "missing job_id"),
        ("/selection", {}, headers(), "missing job_id"),
        ("/result", {"task_id": "t", "task_name": "train", "result": {}}, headers(), "missing job_id"),
        (f"/result?job_id={job}", {"task_name": "train", "result": {}}, headers(), "missing task_id"),
        (f"/result?job_id={job}&task_id=t", {"result": {}}, headers(), "missing task_name"),
        (f"/result?job_id={job}&task_id=t&task_name=train", {}, headers(), "missing result"),
        ("/task?job_id=j", b"{not json", headers(), None),
        ("/task?job_id=j", b"[1, 2]", headers(), "request body must be a JSON object"),
    ]
    for path, body, hdrs, message in cases:
        status, reply = await call(http, p + path, body, hdrs)
        assert status == 400 and reply["status"] == invalid, (path, status, reply)
        if message is not None:
            assert reply["message"] == message, (path, reply)
    # The device-id case is the proxy's own answer; the exact body matters to clients.
    status, reply = await call(http, p + "/job", {}, headers(None))
    assert reply == {"status": invalid, "message": "Device ID missing"}
    assert (await call(http, p + "/task?job_id=j", b"<x/>", headers(ctype="text/xml")))[0] == 415
    assert (await call(http, p + "/nope", {}, headers()))[0] == 404
    assert (await call(http, p + "/job", None, headers(), method="DELETE"))[0] == 405
    # Still serving after all of that.
    status, reply = await call(
        http, p + "/job", {"job_name": "xor_checks", "capabilities": {"methods": ["a"]}}, headers()
    )
    assert status == 200 and reply["status"] == "OK" and reply["job_id"] == job


async def test_statuses_before_and_after(stack: Stack, http: aiohttp.ClientSession, job: str) -> None:
    p = stack.proxy_url
    status, reply = await call(http, p + "/job", {"job_name": "nope", "capabilities": {"methods": ["a"]}}, headers())
    assert status == 200 and reply["status"] == "NO_JOB"
    status, reply = await call(http, p + "/task?job_id=unknown", {}, headers())
    assert reply["status"] == "NO_JOB"
    status, reply = await call(http, p + f"/selection?job_id={job}", {}, headers())
    assert reply["status"] == "OK" and reply["job_id"] == job and reply["selection"] == {}
    # An empty job_id passes the proxy (PROTOCOL.md §3) and is simply an unknown job.
    status, reply = await call(http, p + "/task?job_id=", {}, headers())
    assert status == 200 and reply["status"] == "NO_JOB"


async def get_task(http: aiohttp.ClientSession, proxy: str, job: str, device: str) -> dict[str, Any]:
    return await task_for(http, proxy, job, headers(device))


async def task_for(http: aiohttp.ClientSession, proxy: str, job: str, hdrs: dict[str, str]) -> dict[str, Any]:
    """The device's task. Leaves hear of a new job at once and fetch its model right after, so a
    first ask may meet "Model not ready": ask again, as a device does, for a bounded time only."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        status, reply = await call(http, f"{proxy}/task?job_id={job}", {}, hdrs)
        if reply.get("message") != "Model not ready" or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert status == 200 and reply["status"] == "OK", reply
    return reply


def diff(task: dict[str, Any], value: float = 0.01) -> dict[str, Any]:
    data = {
        f"net.{k}": {"sizes": list(np.shape(v)), "data": np.full(np.size(v), value).tolist()}
        for k, v in task["task_data"]["data"].items()
    }
    return {"kind": "et_tensor_diff", "data": data, "meta": {}}


async def post_result(
    http: aiohttp.ClientSession,
    proxy: str,
    job: str,
    device: str,
    task: dict[str, Any],
    result: dict[str, Any],
    cookie: Any = "same",
    task_id: str | None = None,
    status: str = "OK",
) -> dict[str, Any]:
    tid = task_id or task["task_id"]
    body = {"result": result, "cookie": task["cookie"] if cookie == "same" else cookie}
    code, reply = await call(
        http, f"{proxy}/result?job_id={job}&task_id={tid}&task_name=train&status={status}", body, headers(device)
    )
    assert code == 200, reply
    return reply


async def test_bad_results_never_touch_the_aggregate(stack: Stack, http: aiohttp.ClientSession, job: str) -> None:
    p = stack.proxy_url
    task = await get_task(http, p, job, "dev-a")
    other = await get_task(http, p, job, "dev-b")
    good = diff(task)

    def with_value(v: float) -> dict[str, Any]:
        r = diff(task)
        first = next(iter(r["data"].values()))
        first["data"][0] = v
        return r

    wrong_shape = diff(task)
    next(iter(wrong_shape["data"].values()))["sizes"] = [1, 1]
    missing = diff(task)
    missing["data"].pop(next(iter(missing["data"])))
    extra = diff(task)
    extra["data"]["net.extra.weight"] = {"sizes": [1], "data": [0.5]}
    forged = {**task["cookie"], "model_version": task["cookie"]["model_version"] + 1}
    refusals = [
        ({"kind": "error", "data": {"error": "training failed"}, "meta": {}}, "same", None, "OK", "training error"),
        ({"kind": "et_tensor_diff", "data": {}, "meta": {}}, "same", None, "OK", "empty result"),
        (diff(task, 0.0), "same", None, "OK", "all-zero"),
        (with_value(float("nan")), "same", None, "OK", None),  # orjson writes NaN as null
        (wrong_shape, "same", None, "OK", "data has"),
        (missing, "same", None, "OK", "missing parameters"),
        (extra, "same", None, "OK", "unknown parameters"),
        (good, None, None, "OK", "missing cookie"),
        (good, forged, None, "OK", "signature"),
        (good, other["cookie"], None, "OK", "signature"),  # another device's cookie
        (good, "same", other["task_id"], "OK", "signature"),  # another task's id
        (good, "same", None, "EXCEPTION", "status"),
    ]
    for result, cookie, task_id, status, message in refusals:
        reply = await post_result(http, p, job, "dev-a", task, result, cookie, task_id, status)
        assert reply["status"] == "ERROR" and reply["counted"] is False, (message, reply)
        if message:
            assert message in reply["message"], (message, reply)
    # Leaves report their counters with each sync, a fraction of a second later.
    before = await wait_for(stack.api_url, job, lambda s: s["refused"] == len(refusals), timeout=5)
    assert before["results_counted"] == 0 and before["reported"] == 0

    ok = await post_result(http, p, job, "dev-a", task, good)
    assert ok == {"status": "OK", "task_id": task["task_id"], "task_name": "train", "counted": True}
    again = await post_result(http, p, job, "dev-a", task, good)  # a retry after a lost answer
    assert again["status"] == "OK" and "counted once" in again["message"]
    assert (again["counted"], again["reason"]) == (True, "duplicate"), again
    # OK means durable at the leaf; the server has it a moment later (ARCHITECTURE.md "Acknowledged results").
    after = await wait_for(stack.api_url, job, lambda s: s["reported"] >= 1, timeout=10)
    assert after["reported"] == 1 and after["results_counted"] == 1
    # Having trained in this selection, the device is not selected again until the next one.
    _code, reply = await call(http, f"{p}/task?job_id={job}", {}, headers("dev-a"))
    assert reply["status"] == "RETRY" and reply["message"] == "Device not selected" and reply["retry_wait"] == 1
