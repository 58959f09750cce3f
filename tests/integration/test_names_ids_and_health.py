"""Issue 11, item 7, through real processes: identifiers have a length bound (a 400 at the proxy or
the leaf before anything is stored), a result for an unknown job is NO_JOB, two running jobs may
not share a name, the proxy's /health is 503 with no healthy leaf, and leaves started without
--name get names that cannot collide while the server refuses a second live leaf under one name."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp
import orjson

from device_protocol.identifiers import MAX_ID_LENGTH
from edge_gateway.launcher import Stack
from edge_gateway.processes import Child, free_port, spawn, wait_ready_file

from .helpers import job_status, submit_job, wait_for, wait_leaves_synced
from .stack_control import child, kill, proxy_health, server_ports
from .test_validation import call, headers, task_for

TOO_LONG = "d" * (MAX_ID_LENGTH + 1)


def invalid(message: str) -> tuple[int, dict[str, str]]:
    return 400, {"status": "INVALID_REQUEST", "message": message}  # PROTOCOL.md §3


async def test_identifiers_over_the_bound_are_refused_before_anything_is_stored(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    job_id = await submit_job(stack.api_url, name="ids", model="xor", rounds=2, devices_per_round=50, evaluate=False)
    await wait_leaves_synced(stack.api_url, job_id, 2)
    p, job = stack.proxy_url, {"job_name": "ids", "capabilities": {"methods": ["train"]}}
    result = {"result": {"kind": "number", "data": {}}, "cookie": {}}
    cases = [
        # The proxy: the device id header and the query.
        (f"{p}/job", job, headers(TOO_LONG), "Device ID longer than 256 characters"),
        (f"{p}/task?job_id={job_id}", {}, headers(TOO_LONG), "Device ID longer than 256 characters"),
        (f"{p}/task?job_id={TOO_LONG}", {}, headers(), "job_id longer than 256 characters"),
        (f"{p}/result?job_id={job_id}&task_id={TOO_LONG}&task_name=train", result, headers(), "task_id longer than 256 characters"),
        (f"{p}/result?job_id={job_id}&task_id=t&task_name={TOO_LONG}", result, headers(), "task_name longer than 256 characters"),
        # The leaf: the body, which only it parses.
        (f"{p}/job", {**job, "job_name": TOO_LONG}, headers(), "job_name longer than 256 characters"),
        (f"{p}/selection", {"job_id": TOO_LONG}, headers(), "job_id longer than 256 characters"),
        (f"{p}/result?job_id={job_id}&task_name=train", {**result, "task_id": TOO_LONG}, headers(), "task_id longer than 256 characters"),
    ]  # fmt: skip
    for url, body, hdrs, message in cases:
        assert await call(http, url, body, hdrs) == invalid(message), url[:80]
    health = await proxy_health(stack)
    assert health is not None and health["ids_refused"] == 5  # the proxy's five (one worker)
    status = await job_status(stack.api_url, job_id)
    assert (status["tasks_issued"], status["refused"], status["selected"]) == (0, 0, 0), status
    # At the bound, an id is an ordinary one: the device gets its task.
    await task_for(http, p, job_id, headers("d" * MAX_ID_LENGTH))
    await wait_for(stack.api_url, job_id, lambda s: s["tasks_issued"] == 1, timeout=30)  # leaves report each sync


async def test_a_result_for_an_unknown_job_is_no_job(stack: Stack, http: aiohttp.ClientSession) -> None:
    url = f"{stack.proxy_url}/result?job_id=no-such-job&task_id=t1&task_name=train"
    code, reply = await call(http, url, {"result": {"kind": "number", "data": {}}, "cookie": {}}, headers())
    # PROTOCOL.md §4: NO_JOB sends the device back to /job (ERROR ends an Android session).
    assert (code, reply["status"], reply["message"]) == (200, "NO_JOB", "unknown job 'no-such-job'"), reply


async def test_two_running_jobs_may_not_share_a_name(stack: Stack, http: aiohttp.ClientSession) -> None:
    spec = {"name": "twin", "model": "xor", "rounds": 50, "devices_per_round": 2, "evaluate": False}
    first = await submit_job(stack.api_url, **spec)
    async with http.post(f"{stack.api_url}/api/jobs", data=orjson.dumps(spec)) as reply:
        answer = orjson.loads(await reply.read())
        assert reply.status == 409, answer
    assert answer == {
        "status": "CONFLICT",
        "message": f"a running job is already named 'twin' ({first}): end it or choose another name",
    }
    async with http.get(f"{stack.api_url}/api/jobs") as reply:
        assert [j["job_id"] for j in orjson.loads(await reply.read())["jobs"]] == [first]
    async with http.post(f"{stack.api_url}/api/jobs/{first}/end") as reply:
        assert reply.status == 200
    second = await submit_job(stack.api_url, **spec)  # the name is free once the first job is over
    assert second != first


async def test_proxy_health_is_503_retry_without_a_healthy_leaf(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{stack.proxy_url}/health") as reply:
        assert reply.status == 200 and (await reply.json())["status"] == "OK"
    for name in ("leaf-0", "leaf-1"):
        await kill(child(stack, name))
    deadline = time.monotonic() + 30
    while (health := await proxy_health(stack)) is None or health["healthy"]:
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as session, session.get(f"{stack.proxy_url}/health") as reply:
        body = await reply.json()
        assert (reply.status, body["status"], body["healthy"]) == (503, "RETRY", 0), body


async def start_leaf(stack: Stack, run_dir: Path, tag: str, port: int, *name: str) -> Child:
    """A leaf of this stack's server on `port`, named `name` if given (else its default). Stopped
    by PID with the stack."""
    ready = run_dir / f"{tag}.ready"
    link = f"127.0.0.1:{server_ports(run_dir)['link_port']}"
    args = ["edge_gateway", "leaf", *name, "--port", str(port), "--server", link, "--ready-file", str(ready)]
    leaf = await spawn(tag, [*args, "--data-dir", str(run_dir / tag)], run_dir / "logs", stack.env)
    stack.children.insert(1, leaf)  # stopped before the server
    await wait_ready_file(leaf, ready)
    return leaf


async def test_leaves_without_a_name_never_share_one(stack: Stack, tmp_path: Path) -> None:
    job_id = await submit_job(stack.api_url, name="names", model="xor", rounds=50, devices_per_round=2, evaluate=False)
    await wait_leaves_synced(stack.api_url, job_id, 2)
    ports = [free_port(), free_port()]
    for tag, port in zip(("unnamed-a", "unnamed-b"), ports, strict=True):
        await start_leaf(stack, tmp_path, tag, port)
    host = socket.gethostname()
    expected = sorted(["leaf-0", "leaf-1", f"{host}-{ports[0]}", f"{host}-{ports[1]}"])
    await wait_for(stack.api_url, job_id, lambda s: s["leaves"] == expected, timeout=60)
    # A third process under a live leaf's name is refused by the server: it takes no slots and
    # no reports, and says why in its log.
    impostor_port = free_port()
    await start_leaf(stack, tmp_path, "impostor", impostor_port, "--name", "leaf-0")
    log = tmp_path / "logs" / "impostor.log"
    deadline = time.monotonic() + 30
    while "the server refuses this leaf: another live leaf is named 'leaf-0'" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        await asyncio.sleep(0.2)
    assert (await job_status(stack.api_url, job_id))["leaves"] == expected
    server_log = (tmp_path / "logs" / "server.log").read_text()
    assert "another live leaf is named 'leaf-0'" in server_log
    # A proxy that lists it sees it connected but unhealthy: its devices go to leaves that serve.
    lcp_map = tmp_path / "impostor_map.json"
    lcp_map.write_bytes(orjson.dumps({"leaf-0": {"host": "127.0.0.1", "port": impostor_port}}))
    proxy_port = free_port()
    proxy = await spawn(
        "impostor-proxy",
        ["routing_proxy", str(proxy_port), str(lcp_map), "--host", "127.0.0.1"],
        tmp_path / "logs",
        stack.env,
    )
    stack.children.append(proxy)  # stopped first, with the stack
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{proxy_port}/health") as reply:
                    health = await reply.json()
                if health["leaves"]["leaf-0"]["connected"]:
                    break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the impostor's proxy never connected"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.5)  # two more health pings (1 s apart): it stays unhealthy
        async with session.get(f"http://127.0.0.1:{proxy_port}/health") as reply:
            health = await reply.json()
            assert (reply.status, health["leaves"]["leaf-0"]["healthy"]) == (503, False), health
