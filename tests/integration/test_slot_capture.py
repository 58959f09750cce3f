"""Sybil slot capture (issue 11 item 2) through a real proxy, leaf and server.

One client mints many device ids, each asking for a task and never reporting: before the lease
caps it took every slot of the round, which then waited for its whole task timeout (and again at
every reopening). Now a token (or, without device authentication, an address) holds at most its
cap of unfinished tasks per leaf, and the round closes with the honest devices. A device that
let its lease run out gives way to a reliable device waiting for the slot (no_shows.py).

One leaf, so that "per leaf" is the whole gateway and every device meets the same books.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from edge_gateway.launcher import Stack
from internal_link.messages import JobStatus

from .clients import IosDevice
from .helpers import job_status, submit_job, wait_for, wait_leaves_synced
from .stack_control import child, restart_proxy, terminate
from .test_late_and_duplicate_results import join, result_body, result_query, take_task

CAP = 2
SYBILS = 20
HONEST = 4
# Long enough that a captured round cannot close by expiry within the test's wait.
TASK_TIMEOUT = 60.0


class TokenDevice(IosDevice):
    """The iOS app with an `auth_token` in its user info (PROTOCOL.md §2, JSON shape)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, device_id: str, job_name: str, token: str):
        super().__init__(session, base_url, device_id, job_name)
        self.token = token

    def headers(self, endpoint: str) -> dict[str, str]:
        return {**super().headers(endpoint), "X-Flare-User-Info": f'{{"auth_token": "{self.token}"}}'}


async def proxy_with(stack: Stack, run_dir: Path, *flags: str) -> None:
    code, _ = await terminate(child(stack, "proxy"), 30.0)
    assert code == 0
    await restart_proxy(stack, run_dir, *flags)


async def open_round(stack: Stack, name: str, devices: int, task_timeout: float = TASK_TIMEOUT) -> str:
    job_id = await submit_job(
        stack.api_url,
        name=name,
        model="xor",
        rounds=1,
        devices_per_round=devices,
        over_selection=1.0,  # twice as many slots as results: room for the honest ones
        retry_wait=1,
        task_timeout=task_timeout,
        round_timeout=600.0,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, 1)
    return job_id


async def ask(device: IosDevice, job_id: str) -> dict[str, Any]:
    return await device.post("task", f"?job_id={quote(job_id)}", {})


async def capture_attempt(sybils: list[IosDevice], job_id: str) -> list[dict[str, Any]]:
    """Every minted id asks once, in turn (the leaf's free slots are handed out first come)."""
    await join(sybils[0])
    return [await ask(sybil, job_id) for sybil in sybils]


async def honest_round(honest: list[IosDevice], job_id: str, api_url: str) -> dict[str, Any]:
    """Each honest device takes its task and reports; the round must then close (bounded)."""
    for device in honest:
        task = await take_task(device, job_id, timeout=30.0)
        answer = await device.post("result", result_query(job_id, task), result_body(device, task))
        assert answer["status"] == "OK" and answer["counted"], answer
    return await wait_for(api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=30.0)


def assert_capped(answers: list[dict[str, Any]]) -> None:
    statuses = [a["status"] for a in answers]
    assert statuses.count("OK") == CAP, statuses
    refused = [a for a in answers if a["status"] != "OK"]
    assert all(a["status"] == "RETRY" and "credential" in a["message"] for a in refused), refused


async def test_one_token_minting_device_ids_holds_only_its_cap_of_slots(
    one_leaf: Stack, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("sybil\n" + "".join(f"honest-{i}\n" for i in range(HONEST)))
    await proxy_with(one_leaf, tmp_path, "--auth-tokens-file", str(tokens), "--max-leases-per-token", str(CAP))
    job_id = await open_round(one_leaf, "xor_sybil_token", HONEST)
    base = one_leaf.proxy_url
    sybils = [TokenDevice(http, base, f"sybil-{i}", "xor_sybil_token", "sybil") for i in range(SYBILS)]
    assert_capped(await capture_attempt(sybils, job_id))

    honest = [TokenDevice(http, base, f"honest-{i}", "xor_sybil_token", f"honest-{i}") for i in range(HONEST)]
    status = await honest_round(honest, job_id, one_leaf.api_url)
    assert [h["results"] for h in status["history"]] == [HONEST], status
    assert status["over_cap"] >= SYBILS - CAP, status


async def test_without_device_auth_one_address_holds_only_its_cap_of_slots(
    one_leaf: Stack, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    await proxy_with(one_leaf, tmp_path, "--max-leases-per-ip", str(CAP))
    job_id = await open_round(one_leaf, "xor_sybil_ip", HONEST)
    base = one_leaf.proxy_url
    sybils = [IosDevice(http, base, f"sybil-{i}", "xor_sybil_ip") for i in range(SYBILS)]  # all from 127.0.0.1
    assert_capped(await capture_attempt(sybils, job_id))

    # Honest phones each have an address of their own (127.0.0.2 ... on loopback).
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{i + 2}", 0))) for i in range(HONEST)
    ]
    try:
        honest = [IosDevice(s, base, f"honest-{i}", "xor_sybil_ip") for i, s in enumerate(sessions)]
        status = await honest_round(honest, job_id, one_leaf.api_url)
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    assert [h["results"] for h in status["history"]] == [HONEST], status
    assert status["over_cap"] >= SYBILS - CAP, status


async def test_a_device_that_let_its_lease_run_out_gives_way_to_a_reliable_one(
    one_leaf: Stack, http: aiohttp.ClientSession
) -> None:
    task_timeout = 3.0
    job_id = await submit_job(
        one_leaf.api_url,
        name="xor_no_show",
        model="xor",
        rounds=1,
        devices_per_round=1,
        over_selection=0.0,  # one slot: scarce
        retry_wait=1,
        task_timeout=task_timeout,
        round_timeout=600.0,
        evaluate=False,
    )
    await wait_leaves_synced(one_leaf.api_url, job_id, 1)
    flaky, steady = (IosDevice(http, one_leaf.proxy_url, name, "xor_no_show") for name in ("flaky", "steady"))
    await join(flaky)
    await take_task(flaky, job_id)  # and never reports
    reply = await ask(steady, job_id)
    assert (reply["status"], reply["message"]) == ("RETRY", "Device not selected"), reply

    # Past flaky's deadline its slot is free, and flaky asks for it first: it must wait, as
    # steady (which keeps asking) is waiting for it. Without the rule flaky took it again.
    await asyncio.sleep(task_timeout + 0.5)  # steady asked within the leaf's waiting window (7 s)
    reply = await ask(flaky, job_id)
    assert (reply["status"], reply["message"]) == ("RETRY", "Device not selected"), reply
    task = await take_task(steady, job_id, timeout=10.0)
    answer = await steady.post("result", result_query(job_id, task), result_body(steady, task))
    assert answer["status"] == "OK" and answer["counted"], answer
    status = await wait_for(one_leaf.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=30.0)
    assert status["results_counted"] == 1 and (await job_status(one_leaf.api_url, job_id))["late"] == 0
