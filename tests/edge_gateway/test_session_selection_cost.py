"""The leaf's session selection when no slot is free: a rendezvous must not cost a pass over every
standby session (opening N sessions was N², and at 25,000 per leaf the loop stalled past the
proxy's health ping: docs/BENCHMARKS.md §9)."""

from __future__ import annotations

import time

from device_protocol.feg import Identity
from edge_gateway.leaf.job_state import LeafJob
from edge_gateway.leaf.payload_cache import PayloadCache
from edge_gateway.leaf.session_service import SessionService
from edge_gateway.leaf.session_table import Session
from internal_link.messages import JobStatus, JobView

STANDBY = 20_000
SELECTIONS = 2_000


def full_job() -> LeafJob:
    view = JobView(
        job_id="j",
        job_name="n",
        status=JobStatus.RUNNING,
        model_version=-1,  # no payload to fetch: the test needs no server
        round=0,
        selection_id=0,
        quota=0,  # the other leaf holds every slot
        retry_wait=30,
        task_timeout=10.0,
        param_shapes={"w": [2]},
        config={},
        task_meta={},
    )
    return LeafJob(view=view, waiting_window=60)


async def test_selecting_without_a_free_slot_does_not_read_the_standby_sessions() -> None:
    job = full_job()
    payloads = PayloadCache(None, lambda job_id, version: True, 1 << 20)  # type: ignore[arg-type]
    service = SessionService({"j": job}, payloads, None, None, 30.0, 100_000)  # type: ignore[arg-type]
    for i in range(STANDBY):
        session = Session(("hub", i), Identity(device_id=f"d{i}", device_info={}, user_info={}), "json", 0.0)
        service.table.open(session)
        service.table.to_standby(session, "j")
    started = time.perf_counter()
    for _ in range(SELECTIONS):  # one per rendezvous of a session that stays standby
        service.select("j")
    elapsed = time.perf_counter() - started
    # A pass over 20,000 sessions per call: about 7 s here (2 vCPU, loaded); without one, milliseconds.
    assert elapsed < 1.0, f"{SELECTIONS} selections over {STANDBY} standby sessions took {elapsed:.2f} s"
    assert service.table.standby_count("j") == STANDBY and not service.table.holders()
