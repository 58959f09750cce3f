"""A device told `OK` for a result never loses it (issue 10), on real processes:

1. a re-send answered "counted once" while the first copy was not safe yet, then the server out of
   reach for longer than the leaf used to hold a result;
2. a batch whose answer was lost (the server paused past the leaf's call timeout), so the leaf's
   retry is answered "duplicates", then the server killed in the same round;
3. the server and every leaf killed at once (`kill -9`) mid-round, then started again;
4. the server down for longer than the leaf used to hold a result, while Android-shaped devices
   upload: none hears a non-OK result answer (Android ends its session on one, PROTOCOL.md §4);
5. the server paused with the batch that makes its quorum in flight, while leaves acknowledge more
   results of the round: once it resumes, they count in it (not late after it closed).

Each job is one round, so the server's count of that round says exactly what was counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from edge_gateway.launcher import Stack
from internal_link.messages import JobStatus

from .clients import AndroidDevice, IosDevice
from .helpers import job_status, submit_job, wait_for, wait_leaves_synced
from .stack_control import child, kill, restart_leaf, restart_server

# Longer than the old leaf's hold of a result (20 s) and the proxy's wait (25 s): long enough that
# a device waiting on the server hears something else than OK. EDGEFL_TEST_OUTAGE sets it.
OUTAGE = float(os.environ.get("EDGEFL_TEST_OUTAGE", "27"))


async def one_round_job(stack: Stack, name: str, results: int) -> str:
    job_id = await submit_job(
        stack.api_url,
        name=name,
        model="xor",
        rounds=1,
        devices_per_round=results,
        over_selection=0.0,
        retry_wait=1,
        task_timeout=600.0,
        round_timeout=600.0,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, 2)
    return job_id


async def take_task(device: IosDevice, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await device.post("job", "", {"job_name": device.job_name, "capabilities": {"methods": ["xor"]}})
    while True:
        reply = await device.post("task", f"?job_id={quote(job_id)}", {})
        if reply["status"] == "OK":
            return reply
        assert loop.time() < deadline, f"{device.device_id} got no task in {timeout} s: {reply}"
        await asyncio.sleep(0.3)


async def send_result(device: IosDevice, job_id: str, task: dict[str, Any]) -> dict[str, Any]:
    query = f"?job_id={quote(job_id)}&task_id={quote(task['task_id'])}&task_name={task['task_name']}"
    return await device.post(
        "result", query, {"result": device.result_payload(task["task_data"]), "cookie": task["cookie"]}
    )


def acknowledged(answer: dict[str, Any]) -> bool:
    """The device was told its result counts (now, or when it was first sent)."""
    return answer["status"] == "OK" and answer.get("counted") is True


async def counted_in_the_round(stack: Stack, job_id: str, results: int, timeout: float) -> None:
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=timeout)
    assert [h["results"] for h in status["history"]] == [results], status


async def test_counted_once_only_after_the_first_copy_is_safe(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    job_id = await one_round_job(stack, "xor_first_copy", results=2)
    phone, other = (IosDevice(http, stack.proxy_url, f"first-copy-{n}", "xor_first_copy") for n in ("a", "b"))
    task = await take_task(phone, job_id)
    await kill(child(stack, "server"))

    first = asyncio.ensure_future(send_result(phone, job_id, task))
    await asyncio.sleep(1.0)  # the re-send comes while the first is still at the leaf
    again = await send_result(phone, job_id, task)
    assert acknowledged(again), again
    answer = await first  # the old leaf held it for the server, then answered RETRY, and forgot it
    assert acknowledged(answer), answer

    await restart_server(stack, tmp_path)
    late_task = await take_task(other, job_id)
    assert acknowledged(await send_result(other, job_id, late_task))
    await counted_in_the_round(stack, job_id, 2, timeout=30)


async def test_a_batch_whose_answer_was_lost_is_kept_for_re_send(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    job_id = await one_round_job(stack, "xor_lost_answer", results=3)
    phones = [IosDevice(http, stack.proxy_url, f"lost-answer-{i}", "xor_lost_answer") for i in range(3)]
    tasks = [await take_task(p, job_id) for p in phones]
    server = child(stack, "server")
    # Paused past the leaves' 10 s call timeout: the batches wait in the server's sockets, are
    # taken when it resumes, and their answers go to calls that gave up; the retries hear "duplicates".
    server.process.send_signal(signal.SIGSTOP)
    try:
        sent = [asyncio.ensure_future(send_result(p, job_id, t)) for p, t in zip(phones[:2], tasks[:2], strict=True)]
        await asyncio.sleep(12.0)
    finally:
        server.process.send_signal(signal.SIGCONT)
    for answer in await asyncio.gather(*sent):
        assert acknowledged(answer), answer
    await wait_for(stack.api_url, job_id, lambda s: s["reported"] == 2, timeout=30)
    await asyncio.sleep(1.0)  # any retry still in flight has been answered

    await kill(server)  # the round is still open: nothing of it is checkpointed
    await restart_server(stack, tmp_path)
    assert acknowledged(await send_result(phones[2], job_id, tasks[2]))
    await counted_in_the_round(stack, job_id, 3, timeout=45)


async def test_results_acknowledged_while_the_server_paused_count_in_the_round_its_quorum_closes(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # Two results make the quorum; the selection has five tasks, so three more may still count.
    job_id = await submit_job(
        stack.api_url,
        name="xor_paused_quorum",
        model="xor",
        rounds=1,
        devices_per_round=2,
        over_selection=1.5,
        retry_wait=1,
        task_timeout=600.0,
        round_timeout=600.0,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, 2)
    phones = [IosDevice(http, stack.proxy_url, f"paused-quorum-{i}", "xor_paused_quorum") for i in range(5)]
    tasks = [await take_task(p, job_id) for p in phones]
    assert acknowledged(await send_result(phones[0], job_id, tasks[0]))
    await wait_for(stack.api_url, job_id, lambda s: s["reported"] == 1, timeout=10)

    server = child(stack, "server")
    # Paused for less than the leaves' sync and submit timeouts (5 s, 10 s): their calls wait in
    # the server's sockets, the one sync among them sent before any result below was acknowledged.
    server.process.send_signal(signal.SIGSTOP)
    try:
        quorum = asyncio.ensure_future(send_result(phones[1], job_id, tasks[1]))
        await asyncio.sleep(0.5)  # its batch is in flight when the next results reach the leaves
        more = [asyncio.ensure_future(send_result(p, job_id, t)) for p, t in zip(phones[2:], tasks[2:], strict=True)]
        answers = await asyncio.gather(quorum, *more)  # each told OK after its leaf's answer wait
    finally:
        server.process.send_signal(signal.SIGCONT)
    assert all(acknowledged(a) for a in answers), answers
    # The old server read the quorum's batch first and closed the round: three results told they
    # count arrived late (history [2], late 3).
    await counted_in_the_round(stack, job_id, 5, timeout=30)
    status = await job_status(stack.api_url, job_id)
    assert status["late"] == 0, status


async def test_kill_9_of_the_server_and_every_leaf_loses_no_acknowledged_result(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    before, after = 6, 2
    job_id = await one_round_job(stack, "xor_kill_all", results=before + after)
    phones = [IosDevice(http, stack.proxy_url, f"kill-all-{i}", "xor_kill_all") for i in range(before + after)]
    tasks = [await take_task(p, job_id) for p in phones]
    answers = await asyncio.gather(*(send_result(p, job_id, t) for p, t in zip(phones[:before], tasks, strict=False)))
    assert all(acknowledged(a) for a in answers), answers

    processes = [child(stack, name) for name in ("server", "leaf-0", "leaf-1")]
    for process in processes:
        process.process.send_signal(signal.SIGKILL)
    for process in processes:
        await process.process.wait()
    await restart_server(stack, tmp_path)
    for name in ("leaf-0", "leaf-1"):
        await restart_leaf(stack, tmp_path, name)

    for phone, task in zip(phones[before:], tasks[before:], strict=True):
        # The restarted leaves answer RETRY until they have synced; the task's cookie still holds.
        for _ in range(100):
            answer = await send_result(phone, job_id, task)
            if answer["status"] != "RETRY":
                break
            await asyncio.sleep(0.2)
        assert acknowledged(answer), answer
    await counted_in_the_round(stack, job_id, before + after, timeout=45)
    status = await job_status(stack.api_url, job_id)
    assert status["results_counted"] == before + after, status


class SessionEnded(Exception):
    pass


class AndroidSession(AndroidDevice):
    """The Android app's session: it ends on any /result answer but OK (PROTOCOL.md §4)."""

    quit_on: dict[str, Any] | None = None

    async def post(self, endpoint: str, query: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await super().post(endpoint, query, body)
        if endpoint == "result" and answer["status"] != "OK":
            self.quit_on = answer
            raise SessionEnded(answer)
        return answer


async def outage_while_android_devices_upload(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path, outage: float
) -> None:
    results = 8
    job_id = await one_round_job(stack, "xor_outage", results=results)
    phones = [AndroidSession(http, stack.proxy_url, f"outage-{i}", "xor_outage") for i in range(results)]
    tasks = [await take_task(p, job_id) for p in phones]
    await kill(child(stack, "server"))
    loop = asyncio.get_running_loop()
    back_at = loop.time() + outage

    async def upload(phone: AndroidSession, task: dict[str, Any], at: float) -> dict[str, Any] | None:
        await asyncio.sleep(at)
        try:
            return await send_result(phone, job_id, task)
        except SessionEnded:
            return None

    # Spread over the outage: the last come just before the server is back.
    spread = [
        upload(p, t, i * max(outage - 2.0, 0.0) / results) for i, (p, t) in enumerate(zip(phones, tasks, strict=True))
    ]
    uploads = asyncio.gather(*spread)
    await asyncio.sleep(max(back_at - loop.time(), 0.0))
    await restart_server(stack, tmp_path)
    answers = await uploads
    assert [p.quit_on for p in phones] == [None] * results
    assert all(a is not None and acknowledged(a) for a in answers), answers
    await counted_in_the_round(stack, job_id, results, timeout=45)


async def test_server_down_while_android_devices_upload(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await outage_while_android_devices_upload(stack, http, tmp_path, OUTAGE)


@pytest.mark.slow
async def test_server_down_60_s_while_android_devices_upload(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await outage_while_android_devices_upload(stack, http, tmp_path, 60.0)
