"""The leaf's session selection must not cost a pass over every standby session: not when no slot
is free (opening N sessions was N², and at 25,000 per leaf the loop stalled past the proxy's
health ping), nor over sessions that already trained in this selection (10,000 sessions training
one round stalled it the same way): docs/BENCHMARKS.md §9."""

from __future__ import annotations

import time

from device_protocol.feg import Identity
from edge_gateway.leaf.job_state import LeafJob, Lease
from edge_gateway.leaf.payload_cache import PayloadCache
from edge_gateway.leaf.session_service import SessionService
from edge_gateway.leaf.session_table import Session
from edge_gateway.leaf.task_payload import TaskPayload
from internal_link.messages import JobStatus, JobView

STANDBY = 20_000
SELECTIONS = 2_000


TRAINED = 5_000
TRAINED_SELECTIONS = 400


def job_view(quota: int, model_version: int, selection_id: int = 0) -> JobView:
    return JobView(
        job_id="j",
        job_name="n",
        status=JobStatus.RUNNING,
        model_version=model_version,  # -1: no payload to fetch, the test needs no server
        round=0,
        selection_id=selection_id,
        quota=quota,  # 0: the other leaf holds every slot
        retry_wait=30,
        task_timeout=10.0,
        param_shapes={"w": [2]},
        config={},
        task_meta={},
    )


def full_job(quota: int = 0, model_version: int = -1) -> LeafJob:
    return LeafJob(view=job_view(quota, model_version), waiting_window=60)


def service_with_standby(job: LeafJob, sessions: int) -> SessionService:
    payloads = PayloadCache(None, lambda job_id, version: True, 1 << 20)  # type: ignore[arg-type]
    payloads._keep("j", TaskPayload("j", 0, b"{}", b"\x80"))  # version 0 is servable
    service = SessionService({"j": job}, payloads, None, None, 30.0, 100_000)  # type: ignore[arg-type]
    for i in range(sessions):
        session = Session(("hub", i), Identity(device_id=f"d{i}", device_info={}, user_info={}), "json", 0.0)
        service.table.open(session)
        service.table.to_standby(session, "j")
    return service


async def test_selecting_without_a_free_slot_does_not_read_the_standby_sessions() -> None:
    job = full_job()
    service = service_with_standby(job, STANDBY)
    started = time.perf_counter()
    for _ in range(SELECTIONS):  # one per rendezvous of a session that stays standby
        service.select("j")
    elapsed = time.perf_counter() - started
    # A pass over 20,000 sessions per call: about 7 s here (2 vCPU, loaded); without one, milliseconds.
    assert elapsed < 1.0, f"{SELECTIONS} selections over {STANDBY} standby sessions took {elapsed:.2f} s"
    assert service.table.standby_count("j") == STANDBY and not service.table.holders()


async def test_sessions_that_trained_in_this_selection_are_read_once_until_the_next() -> None:
    job = full_job(quota=TRAINED + 1, model_version=0)  # a slot is free all along
    service = service_with_standby(job, TRAINED)
    for i in range(TRAINED):  # every device reported its result (its session is standby again)
        job.leases[f"d{i}"] = Lease(f"t{i}", f"d{i}", 0, 0, 0.0, 1e12, reported=True)
    started = time.perf_counter()
    for _ in range(TRAINED_SELECTIONS):  # a rendezvous or a freed slot each
        service.select("j")
    elapsed = time.perf_counter() - started
    # Reading all of them each time: about 3 s here; once, then never again: milliseconds.
    assert elapsed < 1.0, f"{TRAINED_SELECTIONS} selections over {TRAINED} trained sessions took {elapsed:.2f} s"
    assert service.table.standby_count("j") == 0 and not service.table.holders()
    # No demand for this selection either: reported as waiting, they kept slots from the other leaf.
    service.after_sync()
    assert job.sessions_waiting == 0
    # The next selection: they wait again, in their order, and count as demand in the report.
    job.view = job_view(quota=0, model_version=0, selection_id=1)
    service.after_sync()
    assert [s.device_id for s in service.table.standby("j")] == [f"d{i}" for i in range(TRAINED)]
    assert job.sessions_waiting == TRAINED
