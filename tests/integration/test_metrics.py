"""`/metrics` of every process of a real stack, scraped during and after a small job: the device
funnel adds up to the job API's counts, and hostile input shows up under its refusal reason."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_gateway.launcher import Stack
from internal_link.messages import JobStatus

from .helpers import job_status, submit_job, wait_for, wait_leaves_synced
from .load import start_devices

LEAVES = ("leaf-0", "leaf-1")
ROUNDS = 3
# Verdicts the job API counts as `refused` (result_verdicts.py: Tally.REFUSED).
REFUSED_VERDICTS = ("device_error", "cookie_invalid", "update_rejected")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url) as reply:
        assert reply.status == 200, await reply.text()
        assert reply.headers["Content-Type"].startswith("text/plain; version=")  # the Prometheus text format
        text = await reply.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


def over(scrapes: Iterable[Samples], name: str, **labels: str) -> float:
    return sum(total(samples, name, **labels) for samples in scrapes)


async def scrape_all(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Samples]:
    return {name: await scrape(http, url) for name, url in stack.metrics.items()}


async def send_hostile_requests(http: aiohttp.ClientSession, proxy: str, job_id: str) -> None:
    """Three kinds the gateway must refuse: no device id (the proxy), a body that is not JSON and a
    result with a forged cookie (a leaf)."""
    hdrs = {"Content-Type": "application/json", "X-Flare-Device-ID": "hostile-1"}
    async with http.post(f"{proxy}/job", data=b"{}", headers={"Content-Type": "application/json"}) as reply:
        assert reply.status == 400
    async with http.post(f"{proxy}/task?job_id={job_id}", data=b"{not json", headers=hdrs) as reply:
        assert reply.status == 400
    body = {"result": {"kind": "et_tensor_diff", "data": {}, "meta": {}}, "cookie": {"model_version": 0}}
    url = f"{proxy}/result?job_id={job_id}&task_id=forged&task_name=train"
    async with http.post(url, data=orjson.dumps(body), headers=hdrs) as reply:
        answer = orjson.loads(await reply.read())
        assert reply.status == 200 and answer["status"] == "ERROR" and answer["reason"] == "cookie_invalid", answer


@pytest.mark.timeout(150)
async def test_metrics_of_every_process_match_the_job_api(stack: Stack, http: aiohttp.ClientSession) -> None:
    assert sorted(stack.metrics) == sorted(["server", "proxy", *LEAVES])
    name = "xor_metrics"
    job_id = await submit_job(
        stack.api_url,
        name=name,
        model="xor",
        rounds=ROUNDS,
        devices_per_round=3,
        over_selection=0.0,  # no extra tasks whose results arrive late and race the round's close
        retry_wait=1,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, len(LEAVES))
    load = start_devices(stack.proxy_url, name, 6, train_seconds=0.3, duration=100.0)
    try:
        await wait_for(stack.api_url, job_id, lambda s: s["results_counted"] >= 1, timeout=60)
        await send_hostile_requests(http, stack.proxy_url, job_id)
        during = await scrape_all(http, stack)
        await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=90)
        await load.finish(timeout=60)
    finally:
        await load.cancel()

    # During the job: every process is up, linked, and reports its memory.
    for process, samples in during.items():
        assert total(samples, "process_resident_memory_bytes") > 1e6, process
    for leaf in LEAVES:
        assert total(during["proxy"], "edgefl_proxy_leaf_healthy", leaf=leaf) == 1
        assert total(during["proxy"], "edgefl_proxy_leaf_connected", leaf=leaf) == 1
        assert total(during[leaf], "edgefl_leaf_server_connected") == 1
        assert total(during["server"], "edgefl_server_leaf_reporting", leaf=leaf) == 1
    assert total(during["server"], "edgefl_server_jobs", status="running") == 1
    assert total(during["proxy"], "edgefl_proxy_sessions") == 0

    # After it: the leaves report their counters with each sync, a fraction of a second later.
    status: dict[str, Any] = {}
    after: dict[str, Samples] = {}
    for _ in range(50):
        status, after = await job_status(stack.api_url, job_id), await scrape_all(http, stack)
        leaves = [after[leaf] for leaf in LEAVES]
        if (
            over(leaves, "edgefl_leaf_tasks_issued_total") == status["tasks_issued"]
            and sum(over(leaves, "edgefl_leaf_refusals_total", reason=v) for v in REFUSED_VERDICTS) == status["refused"]
        ):
            break
        await asyncio.sleep(0.2)
    leaves = [after[leaf] for leaf in LEAVES]
    server, proxy = after["server"], after["proxy"]
    assert status["results_counted"] >= ROUNDS * 3 and status["refused"] >= 1, status

    # The funnel equals the job API: tasks issued, results counted, results refused.
    assert over(leaves, "edgefl_leaf_tasks_issued_total") == status["tasks_issued"]
    assert over(leaves, "edgefl_leaf_results_total", verdict="counted") == status["results_counted"]
    refused = {v: over(leaves, "edgefl_leaf_refusals_total", reason=v) for v in REFUSED_VERDICTS}
    assert sum(refused.values()) == status["refused"], (refused, status)
    assert total(server, "edgefl_server_results_total") == status["results_counted"]
    # Every task handed out was an OK /task answer; the proxy passed on every leaf answer.
    assert over(leaves, "edgefl_leaf_answers_total", endpoint="task", status="OK") >= status["tasks_issued"]
    for endpoint in ("job", "task", "result"):
        leaf_answers = over(leaves, "edgefl_leaf_answers_total", endpoint=endpoint)
        assert total(proxy, "edgefl_proxy_answers_total", endpoint=endpoint) == leaf_answers > 0, endpoint

    # Each hostile request under its reason, where it was refused.
    assert refused["cookie_invalid"] == 1
    assert over(leaves, "edgefl_leaf_refusals_total", reason="malformed_body") == 1
    assert total(proxy, "edgefl_proxy_refusals_total", reason="device_id_missing") == 1

    # Durations: one round time per version made; one turnaround per result counted.
    assert total(server, "edgefl_server_round_duration_seconds_count", mode="sync") == ROUNDS
    assert total(server, "edgefl_server_round_duration_seconds_sum", mode="sync") > 0
    assert over(leaves, "edgefl_leaf_task_turnaround_seconds_count") == status["results_counted"]
    assert total(server, "edgefl_server_jobs", status="done") == 1

    # Bytes both ways, and the counters only grew since the scrape during the job.
    assert total(proxy, "edgefl_proxy_received_bytes_total") > over(leaves, "edgefl_leaf_received_bytes_total") > 0
    assert total(proxy, "edgefl_proxy_sent_bytes_total") > over(leaves, "edgefl_leaf_sent_bytes_total") > 0
    for process, samples in during.items():
        for key, value in samples.items():
            if key[0].endswith("_total"):
                assert after[process][key] >= value, (process, key)
    # The write-ahead log: every counted result was made durable, and none waits now.
    assert over(leaves, "edgefl_leaf_result_log_appended_total") >= status["results_counted"]
    assert over(leaves, "edgefl_leaf_results_undelivered") == 0
