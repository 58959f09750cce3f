"""The device's transition table and reply classification, without any I/O."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from edge_gateway.simulator.decisions import (
    DEFAULT_RETRY_WAIT,
    TABLE,
    Decision,
    Outcome,
    Phase,
    Reply,
    Signal,
    Step,
    classify,
    decide,
)

O = Outcome


def run(
    phase: Phase,
    signal: Signal,
    *,
    retry_wait: float | None = None,
    counted: bool | None = None,
    keep_polling: bool = False,
    resends_left: int = 2,
    backoff: float = 2.5,
) -> Decision:
    return decide(
        phase, Reply(signal, retry_wait, counted), backoff=backoff, keep_polling=keep_polling, resends_left=resends_left
    )


def test_every_phase_and_signal_has_a_rule() -> None:
    assert set(TABLE) == set(itertools.product(Phase, Signal))


@pytest.mark.parametrize(
    ("phase", "signal", "step", "wait", "outcomes"),
    [
        (Phase.JOIN, Signal.OK, Step.POLL, 0.0, (O.JOINED,)),
        (Phase.JOIN, Signal.RETRY, Step.JOIN, 7.0, (O.RETRY,)),
        (Phase.JOIN, Signal.NO_JOB, Step.JOIN, 7.0, (O.NO_JOB,)),
        (Phase.JOIN, Signal.DONE, Step.STOP, 0.0, (O.JOB_OVER,)),
        (Phase.JOIN, Signal.ERROR, Step.STOP, 0.0, (O.SESSION_REFUSED,)),
        (Phase.JOIN, Signal.INVALID, Step.STOP, 0.0, (O.INVALID,)),
        (Phase.JOIN, Signal.TRANSPORT, Step.JOIN, 2.5, (O.TRANSPORT,)),
        (Phase.POLL, Signal.OK, Step.TRAIN, 0.0, (O.TASK,)),
        (Phase.POLL, Signal.RETRY, Step.POLL, 7.0, (O.RETRY,)),
        (Phase.POLL, Signal.NO_TASK, Step.POLL, 7.0, (O.RETRY,)),
        (Phase.POLL, Signal.NO_JOB, Step.STOP, 0.0, (O.JOB_OVER,)),
        (Phase.POLL, Signal.DONE, Step.STOP, 0.0, (O.JOB_OVER,)),
        (Phase.POLL, Signal.ERROR, Step.STOP, 0.0, (O.SESSION_REFUSED,)),
        (Phase.POLL, Signal.TRANSPORT, Step.POLL, 2.5, (O.TRANSPORT,)),
        (Phase.REPORT, Signal.OK, Step.POLL, 0.0, (O.ACCEPTED,)),
        (Phase.REPORT, Signal.RETRY, Step.RESEND, 7.0, (O.RETRY,)),
        (Phase.REPORT, Signal.ERROR, Step.POLL, 0.0, (O.REFUSED,)),
        (Phase.REPORT, Signal.INVALID, Step.POLL, 0.0, (O.INVALID,)),
        (Phase.REPORT, Signal.NO_JOB, Step.STOP, 0.0, (O.REFUSED,)),
        (Phase.REPORT, Signal.TRANSPORT, Step.RESEND, 2.5, (O.TRANSPORT,)),
    ],
)
def test_rows(phase: Phase, signal: Signal, step: Step, wait: float, outcomes: tuple[Outcome, ...]) -> None:
    decision = run(phase, signal, retry_wait=7)
    assert (decision.step, decision.wait, decision.outcomes) == (step, wait, outcomes)


def test_retry_without_retry_wait_waits_the_ios_default() -> None:
    assert run(Phase.POLL, Signal.RETRY).wait == DEFAULT_RETRY_WAIT == 5.0
    assert run(Phase.JOIN, Signal.NO_JOB).wait == 5.0
    assert run(Phase.POLL, Signal.RETRY, retry_wait=0).wait == 0.0


def test_only_a_task_retry_drops_the_cookie() -> None:
    dropping = {key for key in TABLE if run(*key).drop_cookie}
    assert dropping == {(Phase.POLL, Signal.RETRY), (Phase.POLL, Signal.NO_TASK)}


def test_keep_polling_sends_a_finished_job_back_to_job_after_a_pause() -> None:
    for phase in (Phase.POLL, Phase.REPORT):
        assert run(phase, Signal.NO_JOB, keep_polling=True).step is Step.JOIN
        assert run(phase, Signal.DONE, keep_polling=True, retry_wait=2).wait == 2.0
    assert run(Phase.POLL, Signal.NO_JOB, keep_polling=True).wait == DEFAULT_RETRY_WAIT
    assert run(Phase.POLL, Signal.ERROR, keep_polling=True).step is Step.STOP


def test_ok_result_not_counted() -> None:
    assert run(Phase.REPORT, Signal.OK, counted=False).outcomes == (O.NOT_COUNTED,)
    assert run(Phase.REPORT, Signal.OK, counted=True).outcomes == (O.ACCEPTED,)
    assert run(Phase.REPORT, Signal.OK).outcomes == (O.ACCEPTED,)  # an answer that does not say
    assert run(Phase.REPORT, Signal.RETRY, counted=False).outcomes == (O.RETRY,)


@pytest.mark.parametrize("signal", [Signal.RETRY, Signal.TRANSPORT])
def test_resends_are_bounded(signal: Signal) -> None:
    assert run(Phase.REPORT, signal, resends_left=1).step is Step.RESEND
    last = run(Phase.REPORT, signal, retry_wait=9, resends_left=0)
    assert (last.step, last.wait) == (Step.POLL, 0.0)
    assert last.outcomes[-1] is O.ABANDONED and len(last.outcomes) == 2


JOB_OK = {"status": "OK", "job_id": "J", "job_name": "N"}
TASK_OK = {"status": "OK", "task_id": "T", "task_name": "train", "task_data": {"kind": "WEIGHTS"}}


@pytest.mark.parametrize(
    ("phase", "http_status", "body", "expected"),
    [
        (Phase.JOIN, 200, JOB_OK, Reply(Signal.OK)),
        (Phase.JOIN, 200, {**JOB_OK, "status": "RUNNING"}, Reply(Signal.OK)),
        (Phase.JOIN, 200, {"status": "OK", "job_id": "J"}, Reply(Signal.INVALID)),
        (Phase.JOIN, 200, {"status": "NO_JOB"}, Reply(Signal.NO_JOB)),
        (Phase.POLL, 200, {**JOB_OK, "status": "RUNNING"}, Reply(Signal.INVALID)),
        (Phase.POLL, 200, TASK_OK, Reply(Signal.OK)),
        (Phase.POLL, 200, {**TASK_OK, "task_data": "base64"}, Reply(Signal.INVALID)),
        (
            Phase.POLL,
            200,
            {"status": "RETRY", "retry_wait": 30, "message": "Model not ready"},
            Reply(Signal.RETRY, 30.0),
        ),
        (Phase.POLL, 200, {"status": "RETRY", "retry_wait": -1}, Reply(Signal.RETRY)),
        (Phase.POLL, 200, {"status": "RETRY", "retry_wait": "30"}, Reply(Signal.RETRY)),
        (Phase.REPORT, 200, {"status": "OK", "counted": False, "reason": "late"}, Reply(Signal.OK, None, False)),
        (Phase.REPORT, 200, {"status": "OK", "counted": True}, Reply(Signal.OK, None, True)),
        # Meaning is never read out of the human message.
        (Phase.REPORT, 200, {"status": "OK", "message": "x: not counted"}, Reply(Signal.OK)),
        (Phase.REPORT, 200, {"status": "OK", "counted": "false"}, Reply(Signal.OK)),
        (Phase.REPORT, 200, {"status": "TRANSPORT"}, Reply(Signal.INVALID)),
        (Phase.REPORT, 200, {"status": "SOMETHING"}, Reply(Signal.INVALID)),
        (Phase.REPORT, 200, {}, Reply(Signal.INVALID)),
        (
            Phase.POLL,
            400,
            {"status": "INVALID_REQUEST", "message": "missing job_id"},
            Reply(Signal.INVALID),
        ),
        (Phase.POLL, 413, None, Reply(Signal.INVALID)),
        (Phase.POLL, 502, {"status": "OK"}, Reply(Signal.TRANSPORT)),
        (Phase.POLL, 200, None, Reply(Signal.TRANSPORT)),
        (Phase.POLL, 0, None, Reply(Signal.TRANSPORT)),
    ],
)
def test_classify(phase: Phase, http_status: int, body: dict[str, Any] | None, expected: Reply) -> None:
    assert classify(phase, http_status, body) == expected
