"""Results that must not count twice or at all (issue 5), through the real proxy and leaves:

- a device that takes its task and vanishes loses its lease at `task_timeout`; its slot goes to
  another device; its result, when it comes after all, is answered OK "not counted" and counted
  nowhere (DESIGN.md "Learning semantics");
- the same result uploaded again (a retry after a lost answer) counts once, and the repeat still
  gets OK — on the same leaf, on another leaf (as after a failover), and both at once.

A job here is one round of two or three results, so the server's count of that round says exactly
what was counted.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from edge_gateway.launcher import Stack
from internal_link.calls import FEG, DeviceAnswer, DeviceCall
from internal_link.client import LinkClient
from internal_link.messages import JobStatus
from routing_proxy.routing import Router

from .clients import IosDevice
from .helpers import job_status, submit_job, wait_for, wait_leaves_synced

TASK_TIMEOUT = 3.0


async def one_round_job(stack: Stack, name: str, results: int) -> str:
    job_id = await submit_job(
        stack.api_url,
        name=name,
        model="xor",
        rounds=1,
        devices_per_round=results,
        over_selection=0.0,
        retry_wait=1,
        task_timeout=TASK_TIMEOUT,
        round_timeout=120.0,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, 2)
    return job_id


async def join(device: IosDevice) -> str:
    reply = await device.post("job", "", {"job_name": device.job_name, "capabilities": {"methods": ["xor"]}})
    assert reply["status"] == "OK", reply
    return str(reply["job_id"])


async def take_task(device: IosDevice, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Ask for a task until one comes (bounded); every other answer must be RETRY."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reply = await device.post("task", f"?job_id={quote(job_id)}", {})
        if reply["status"] == "OK":
            return reply
        assert reply["status"] == "RETRY", reply
        assert loop.time() < deadline, f"{device.device_id} got no task in {timeout} s"
        await asyncio.sleep(0.3)


def result_query(job_id: str, task: dict[str, Any]) -> str:
    return f"?job_id={quote(job_id)}&task_id={quote(task['task_id'])}&task_name={task['task_name']}"


def result_body(device: IosDevice, task: dict[str, Any]) -> dict[str, Any]:
    return {"result": device.result_payload(task["task_data"]), "cookie": task["cookie"]}


async def test_vanished_device_loses_its_lease_and_its_late_result_counts_nowhere(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    job_id = await one_round_job(stack, "xor_lease", results=2)
    gone, stays, stand_in = (
        IosDevice(http, stack.proxy_url, f"lease-{n}", "xor_lease") for n in ("gone", "stays", "stand-in")
    )
    for device in (gone, stays, stand_in):
        await join(device)
    loop = asyncio.get_running_loop()
    gone_task = await take_task(gone, job_id)
    leased_at = loop.time()
    stays_task = await take_task(stays, job_id)

    # Both slots are out: nobody else is selected while the lease runs.
    reply = await stand_in.post("task", f"?job_id={quote(job_id)}", {})
    assert (reply["status"], reply.get("message")) == ("RETRY", "Device not selected"), reply
    answer = await stays.post("result", result_query(job_id, stays_task), result_body(stays, stays_task))
    assert answer == {"status": "OK", "task_id": stays_task["task_id"], "task_name": "train", "counted": True}

    # `gone` never reports: at the deadline its slot is refilled, never before.
    stand_in_task = await take_task(stand_in, job_id)
    assert loop.time() - leased_at >= TASK_TIMEOUT
    assert stand_in_task["task_id"] != gone_task["task_id"]

    # Its result arrives after all: OK (Android would end its session on anything else), not counted.
    late = await gone.post("result", result_query(job_id, gone_task), result_body(gone, gone_task))
    assert late["status"] == "OK" and "not counted" in late["message"], late
    assert (late["counted"], late["reason"]) == (False, "late"), late
    status = await job_status(stack.api_url, job_id)
    assert (status["reported"], status["results_counted"]) == (1, 1), status

    answer = await stand_in.post("result", result_query(job_id, stand_in_task), result_body(stand_in, stand_in_task))
    assert answer["status"] == "OK" and "message" not in answer, answer
    status = await wait_for(
        stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE and s["late"] >= 1, timeout=15
    )
    assert [h["results"] for h in status["history"]] == [2] and status["results_counted"] == 2, status
    assert status["late"] == 1 and status["duplicates"] == 0, status


async def feg_to_leaf(stack: Stack, leaf: str, device: IosDevice, query: str, body: dict[str, Any]) -> dict[str, Any]:
    """One `/result` as the proxy forwards it (ARCHITECTURE.md "Proxy → leaf"), to the leaf chosen
    here rather than by hashing: what a device's retry does when its leaf failed in between."""
    where = orjson.loads(stack.lcp_map.read_bytes())[leaf]
    client = LinkClient(where["host"], where["port"], stack.env["EDGEFL_LINK_SECRET"].encode(), name=f"test->{leaf}")
    await client.start()
    try:
        assert await client.wait_connected(10.0)
        headers = {k.lower(): v for k, v in device.headers("result").items()}
        params = dict(p.split("=", 1) for p in query.lstrip("?").split("&"))
        call = DeviceCall("result", params, headers, orjson.dumps(body), 30.0)
        status, content_type, data = DeviceAnswer.check(await client.call(FEG, call, 30.0))
    finally:
        await client.close()
    assert (status, content_type) == (200, "application/json")
    return dict(orjson.loads(data))


async def test_the_same_result_twice_counts_once_and_both_get_ok(stack: Stack, http: aiohttp.ClientSession) -> None:
    job_id = await one_round_job(stack, "xor_twice", results=3)
    leaves = list(orjson.loads(stack.lcp_map.read_bytes()))
    router = Router(leaves)

    def other_leaf(device: IosDevice) -> str:
        return leaves[router.ranking(device.device_id)[1]]

    first, second, third = (IosDevice(http, stack.proxy_url, f"twice-{n}", "xor_twice") for n in (1, 2, 3))
    for device in (first, second, third):
        await join(device)
    task = await take_task(first, job_id)
    query, body = result_query(job_id, task), result_body(first, task)
    ids = {"task_id": task["task_id"], "task_name": "train"}
    counted_once = {
        "status": "OK",
        "message": "duplicate result for this task: counted once",
        "counted": True,
        "reason": "duplicate",
        **ids,
    }
    assert await first.post("result", query, body) == {"status": "OK", "counted": True, **ids}
    # Its answer "lost": the device sends it again, through the proxy to the same leaf...
    assert await first.post("result", query, body) == counted_once
    # ...and to the other leaf, which has never seen it: the server refuses it as a duplicate.
    assert await feg_to_leaf(stack, other_leaf(first), first, query, body) == counted_once
    status = await job_status(stack.api_url, job_id)
    assert (status["reported"], status["results_counted"]) == (1, 1), status

    # Sent twice at once, to both leaves (a retry racing the original): one counts, both get OK.
    task = await take_task(second, job_id)
    query, body = result_query(job_id, task), result_body(second, task)
    ids = {"task_id": task["task_id"], "task_name": "train"}
    answers = await asyncio.gather(
        second.post("result", query, body), feg_to_leaf(stack, other_leaf(second), second, query, body)
    )
    counted_once = {
        "status": "OK",
        "message": "duplicate result for this task: counted once",
        "counted": True,
        "reason": "duplicate",
        **ids,
    }
    assert sorted(answers, key=len) == [{"status": "OK", "counted": True, **ids}, counted_once], answers
    status = await job_status(stack.api_url, job_id)
    assert (status["reported"], status["results_counted"]) == (2, 2), status

    task = await take_task(third, job_id)
    answer = await third.post("result", result_query(job_id, task), result_body(third, task))
    assert answer["status"] == "OK" and "message" not in answer, answer
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=15)
    assert [h["results"] for h in status["history"]] == [3] and status["results_counted"] == 3, status
