"""A live session's slot is never left held by a task it can no longer be given."""

from __future__ import annotations

import orjson

from device_protocol.feg import Identity
from edge_gateway.leaf.job_state import LeafJob
from edge_gateway.leaf.payload_cache import PayloadCache
from edge_gateway.leaf.session_service import SessionService
from edge_gateway.leaf.session_table import Session
from edge_gateway.leaf.task_payload import TaskPayload
from internal_link.messages import JobStatus, JobView


def async_view(model_version: int) -> JobView:
    return JobView(
        job_id="j",
        job_name="n",
        status=JobStatus.RUNNING,
        model_version=model_version,
        round=model_version,
        selection_id=0,
        quota=1,
        retry_wait=30,
        task_timeout=600.0,
        param_shapes={"w": [2]},
        config={},
        task_meta={},
        mode="async",
        max_staleness=2,
    )


async def test_a_session_whose_task_version_is_no_longer_served_gives_its_slot_back() -> None:
    job = LeafJob(view=async_view(0), waiting_window=60)
    payloads = PayloadCache(None, lambda job_id, version: True, 1 << 20)  # type: ignore[arg-type]
    payloads._keep("j", TaskPayload("j", 0, b"{}", b"\x80"))
    service = SessionService({"j": job}, payloads, None, None, 30.0, 100)  # type: ignore[arg-type]
    session = Session(("hub", 1), Identity(device_id="d1", device_info={}, user_info={}), "json", 0.0)
    service.table.open(session)
    service.table.to_standby(session, "j")
    service.select("j")
    assert session.holds_slot and "d1" in job.leases  # `round` pushed, a lease of version 0
    # Two versions are made before the device says it starts: version 0's payload is gone.
    job.apply_view(async_view(2))
    payloads.drop("j")
    reply = service.message(["hub", 1, orjson.dumps({"type": "start_training"})])
    assert [orjson.loads(m)["type"] for m in reply.messages] == ["standby"]  # type: ignore[union-attr]
    # The slot is free again (it stayed held until the lease ran out: the job's whole concurrency).
    assert "d1" not in job.leases and job.has_free_slot(0.0)
