"""The leaf's heartbeat states for xain-sdk participants, from the job's own leases and views."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson

from device_protocol.cookies import CookieSigner
from device_protocol.tensors import tensors_to_binary
from edge_gateway.acknowledged import MemoryResults
from edge_gateway.leaf.job_state import LeafJob
from edge_gateway.leaf.payload_cache import PayloadCache
from edge_gateway.leaf.xain_endpoints import XainEndpoints
from edge_gateway.uplink import ResultUplink
from internal_link.calls import DeviceAnswer
from internal_link.messages import JobStatus, JobView

WEIGHTS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}


class ModelOnlyLink:
    """Serves the model of any version; the heartbeat path asks the server for nothing else."""

    async def call(self, method: str, payload: Any, timeout: float) -> Any:
        assert method == "model"
        return {"weights": tensors_to_binary(WEIGHTS)}


def view(job_id: str, status: JobStatus = JobStatus.RUNNING, **changes: Any) -> JobView:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "job_name": job_id,
        "status": status,
        "model_version": 0,
        "round": 0,
        "selection_id": 1,
        "quota": 1,
        "retry_wait": 1,
        "task_timeout": 30.0,
        "param_shapes": {k: list(v.shape) for k, v in WEIGHTS.items()},
        "config": {},
        "task_meta": {},
    }
    return JobView(**{**fields, **changes})


async def endpoints(*views: JobView) -> tuple[XainEndpoints, dict[str, LeafJob]]:
    jobs = {v.job_id: LeafJob(view=v, waiting_window=10.0) for v in views}
    link = ModelOnlyLink()
    payloads = PayloadCache(link, lambda job_id, version: True, max_bytes=1 << 30)
    for v in views:
        payloads.want(v)
    for _ in range(100):
        if all(payloads.ready(v) or v.status is JobStatus.DONE for v in views):
            break
        await asyncio.sleep(0.01)

    async def no_sync(timeout: float) -> None:
        return None

    return XainEndpoints(jobs, payloads, CookieSigner(b"k"), ResultUplink("leaf", link, MemoryResults()), no_sync), jobs


async def state(xain: XainEndpoints, participant: str) -> str:
    answer = xain.heartbeat(participant, wait=1.0)
    if not isinstance(answer, DeviceAnswer):
        answer = await answer
    assert answer.http_status == 200
    return str(orjson.loads(answer.body)["state"])


async def test_no_job_yet_means_wait_and_an_ended_one_means_finish() -> None:
    assert await state((await endpoints())[0], "x8-a") == "stand_by"
    assert await state((await endpoints(view("old", JobStatus.DONE)))[0], "x8-a") == "finish"


async def test_round_only_to_the_holder_of_a_slot_and_never_after_its_upload() -> None:
    xain, jobs = await endpoints(view("j"))
    assert await state(xain, "x8-a") == "round"
    assert await state(xain, "x8-a") == "round"  # the same lease: its start_training will succeed
    assert await state(xain, "x8-b") == "stand_by"  # the one slot is taken: later
    start = orjson.loads(xain.start_training("x8-a", "http://edge:4321").body)
    assert start["ok"] is True and start["url"] == "http://edge:4321"
    assert orjson.loads(xain.start_training("x8-b", "http://edge:4321").body)["ok"] is False
    job = jobs["j"]
    job.take(job.leases["x8-a"].task_id)  # its result was taken
    assert await state(xain, "x8-a") == "stand_by"


async def test_the_flagged_job_wins_and_a_joined_job_ending_means_finish() -> None:
    xain, jobs = await endpoints(view("plain"), view("for_xain", xain=True))
    assert await state(xain, "x8-a") == "round"
    assert "x8-a" in jobs["for_xain"].leases
    jobs["for_xain"].apply_view(view("for_xain", JobStatus.DONE, xain=True))
    assert await state(xain, "x8-a") == "finish"
    # Two running jobs, none flagged: which one is not for the leaf to guess.
    assert await state((await endpoints(view("a"), view("b")))[0], "x8-c") == "stand_by"


async def test_a_job_reserved_for_other_devices_rejects() -> None:
    xain, _ = await endpoints(view("phones", device_ids=["phone-1"]))
    assert await state(xain, "x8-a") == "reject"


async def test_a_finished_jobs_vector_is_dropped_when_another_is_built() -> None:
    xain, jobs = await endpoints(view("a"), view("b"))
    assert await xain._build_global(jobs["a"]) is not None
    jobs["a"].apply_view(view("a", JobStatus.DONE))
    assert await xain._build_global(jobs["b"]) is not None
    assert set(xain._globals) == {"b"}
