"""Whether a result counts and what its device hears: the pure judge, the answer table, the books."""

from __future__ import annotations

from typing import Any

import pytest

from edge_gateway.leaf.job_state import LeafJob
from edge_gateway.leaf.result_verdicts import (
    RESULT_ANSWERS,
    ResultFacts,
    ResultVerdict,
    judge_result,
    result_answer,
)
from edge_gateway.uplink import Outcome
from internal_link.messages import JobStatus, JobView, LeafJobReport

V = ResultVerdict
DECODED = ResultFacts(decoded=True)

JUDGED = [
    (ResultFacts(job_known=False, device_ok=False, cookie_ok=False), V.UNKNOWN_JOB),
    (ResultFacts(device_ok=False, cookie_ok=False), V.DEVICE_ERROR),
    (ResultFacts(cookie_ok=False, reported=True), V.COOKIE_INVALID),
    # Before decoding.
    (ResultFacts(reported=True, current=False), V.DUPLICATE),
    (ResultFacts(current=False), V.LATE_VERSION),
    (ResultFacts(current=False, lease_expired=True), V.LATE_VERSION),
    # After decoding.
    (ResultFacts(decoded=False, reported=True, current=False), V.UPDATE_REJECTED),
    (ResultFacts(decoded=True, reported=True, lease_expired=True), V.DUPLICATE),
    (ResultFacts(decoded=True, current=False), V.LATE),
    (ResultFacts(decoded=True, lease_expired=True), V.LATE),
    # After the server's answer.
    (ResultFacts(decoded=True, upstream=Outcome.ACCEPTED), V.COUNTED),
    (ResultFacts(decoded=True, upstream=Outcome.LATE), V.LATE_UPSTREAM),
    (ResultFacts(decoded=True, upstream=Outcome.DUPLICATE), V.DUPLICATE),
    (ResultFacts(decoded=True, upstream=Outcome.UNAVAILABLE), V.UNAVAILABLE),
    (ResultFacts(decoded=True, upstream=Outcome.DURABLE), V.COUNTED),
    (ResultFacts(decoded=True, upstream=Outcome.PENDING), V.PENDING),
]


@pytest.mark.parametrize(("facts", "verdict"), JUDGED)
def test_judge_result(facts: ResultFacts, verdict: ResultVerdict) -> None:
    assert judge_result(facts) is verdict


def test_every_verdict_can_be_reached_and_has_an_answer() -> None:
    assert {verdict for _, verdict in JUDGED} == set(ResultVerdict) == set(RESULT_ANSWERS)


def test_a_result_goes_on_to_be_decoded_then_submitted_when_nothing_stops_it() -> None:
    assert judge_result(ResultFacts()) is None  # decode it
    # An expired lease is no reason to skip decoding: a malformed update is refused, not late.
    assert judge_result(ResultFacts(lease_expired=True)) is None
    assert judge_result(ResultFacts(decoded=False, lease_expired=True)) is V.UPDATE_REJECTED
    assert judge_result(DECODED) is None  # take it and submit it


IDS = {"task_id": "T", "task_name": "train"}
# Every row of the table, as the device gets it. The messages are those devices always got.
ANSWERS: dict[ResultVerdict, dict[str, Any]] = {
    V.UNKNOWN_JOB: {"status": "NO_JOB", "message": "unknown job 'J'", "counted": False, "reason": "unknown_job"},
    V.DEVICE_ERROR: {
        "status": "ERROR",
        "message": "device reported status 'FAILED': result not counted",
        "counted": False,
        "reason": "device_error",
    },
    V.COOKIE_INVALID: {"status": "ERROR", "message": "why", "counted": False, "reason": "cookie_invalid"},
    V.UPDATE_REJECTED: {"status": "ERROR", "message": "why", "counted": False, "reason": "update_rejected"},
    V.DUPLICATE: {
        "status": "OK",
        "message": "duplicate result for this task: counted once",
        "counted": True,
        "reason": "duplicate",
    },
    V.LATE_VERSION: {
        "status": "OK",
        "message": "late result for model version 3: not counted",
        "counted": False,
        "reason": "late",
    },
    V.LATE: {
        "status": "OK",
        "message": "late result (lease expired or round closed): not counted",
        "counted": False,
        "reason": "late",
    },
    V.LATE_UPSTREAM: {
        "status": "OK",
        "message": "late result (round closed): not counted",
        "counted": False,
        "reason": "late",
    },
    V.UNAVAILABLE: {
        "status": "RETRY",
        "retry_wait": 5,
        "message": "server unavailable: send the result again",
        "counted": False,
        "reason": "unavailable",
    },
    V.PENDING: {
        "status": "RETRY",
        "retry_wait": 5,
        "message": "the server has not answered for this result yet: send it again",
        "counted": False,
        "reason": "pending",
    },
    V.COUNTED: {"status": "OK", "counted": True},
}


@pytest.mark.parametrize("verdict", list(ResultVerdict))
def test_answers(verdict: ResultVerdict) -> None:
    answer = result_answer(verdict, "T", "train", job_id="J", device_status="FAILED", detail="why", version=3)
    assert answer == {**ANSWERS[verdict], **IDS}


def view(**kw: Any) -> JobView:
    base: dict[str, Any] = dict(
        job_id="j",
        job_name="n",
        status=JobStatus.RUNNING,
        model_version=0,
        round=0,
        selection_id=0,
        quota=2,
        retry_wait=30,
        task_timeout=10.0,
        param_shapes={"w": [2]},
        config={},
        task_meta={},
    )
    return JobView(**{**base, **kw})


def counters(job: LeafJob) -> tuple[int, int, int]:
    report: LeafJobReport = job.report(0.0)
    return report.refused, report.late, report.duplicates


@pytest.mark.parametrize(
    ("verdict", "moved"),
    [
        (V.UNKNOWN_JOB, (0, 0, 0)),
        (V.DEVICE_ERROR, (1, 0, 0)),
        (V.COOKIE_INVALID, (1, 0, 0)),
        (V.UPDATE_REJECTED, (1, 0, 0)),
        (V.DUPLICATE, (0, 0, 1)),
        (V.LATE_VERSION, (0, 1, 0)),
        (V.LATE, (0, 1, 0)),
        (V.LATE_UPSTREAM, (0, 1, 0)),
        (V.UNAVAILABLE, (0, 0, 0)),
        (V.PENDING, (0, 0, 0)),
        (V.COUNTED, (0, 0, 0)),
    ],
)
def test_each_verdict_moves_its_counter_once(verdict: ResultVerdict, moved: tuple[int, int, int]) -> None:
    job = LeafJob(view=view(), waiting_window=60)
    job.settle("t", verdict)
    assert counters(job) == moved


def test_a_result_the_server_could_not_take_counts_when_sent_again() -> None:
    job = LeafJob(view=view(), waiting_window=60)
    _, lease = job.decide_task("a", 0.0, True)
    assert lease is not None
    job.take(lease.task_id)
    assert job.result_facts(lease.task_id, 0).reported
    job.settle(lease.task_id, V.UNAVAILABLE)
    facts = job.result_facts(lease.task_id, 0)
    assert not facts.reported and judge_result(facts) is None
    assert job.selection() == {"a": 0} and not job.leases["a"].reported  # its slot is still its own


def test_a_result_whose_answer_is_pending_is_a_repeat_when_sent_again() -> None:
    """Its first copy is in the log and on its way: the re-send waits for that one's answer."""
    job = LeafJob(view=view(), waiting_window=60)
    job.take("t")
    job.settle("t", V.PENDING)
    assert judge_result(job.result_facts("t", 0)) is V.DUPLICATE


def test_a_result_the_server_called_late_is_late_when_sent_again() -> None:
    job = LeafJob(view=view(), waiting_window=60)
    job.take("t")
    job.settle("t", V.LATE_UPSTREAM)
    assert not job.result_facts("t", 0).reported


def test_the_books_give_the_facts() -> None:
    job = LeafJob(view=view(model_version=2), waiting_window=60)
    assert job.result_facts("t", 2) == ResultFacts()
    assert job.result_facts("t", 1) == ResultFacts(current=False)
    job.apply_view(view(model_version=2, status=JobStatus.DONE))
    assert job.result_facts("t", 2) == ResultFacts(current=False)
