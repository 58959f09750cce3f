"""What a simulated device does next: the iOS app's loop as a transition table. No I/O.

A device is always in one `Phase` (waiting for the answer to `/job`, `/task` or `/result`).
Each answer is reduced to a `Signal`; `(phase, signal)` looks up a `Rule` in `TABLE`, and
`decide` turns the rule into a `Decision` (next step, seconds to wait, what to count).
The I/O shell (`device.py`) sends the requests and sleeps; it never branches on statuses itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from device_protocol.feg import Status

# iOS waits 5 s when a RETRY carries no retry_wait (PROTOCOL.md §4).
DEFAULT_RETRY_WAIT = 5.0
# iOS also accepts these as a successful /job answer (PROTOCOL.md §4).
JOB_OK_STATUSES = frozenset({"OK", "RUNNING", "SUBMITTED", "APPROVED", "DISPATCHED"})


class Phase(StrEnum):
    """The request whose answer the device is waiting for."""

    JOIN = "job"
    POLL = "task"
    REPORT = "result"


class Signal(StrEnum):
    """An answer reduced to what the decision needs."""

    OK = "OK"
    RETRY = "RETRY"
    NO_JOB = "NO_JOB"
    NO_TASK = "NO_TASK"
    DONE = "DONE"
    ERROR = "ERROR"
    INVALID = "INVALID"  # HTTP 4xx, INVALID_REQUEST, an unknown status or an OK lacking its fields
    TRANSPORT = "TRANSPORT"  # no answer: connection error, timeout, HTTP 5xx, undecodable body


class Step(StrEnum):
    """What the device does after the wait."""

    JOIN = "join"  # POST /job
    POLL = "poll"  # POST /task
    TRAIN = "train"  # train on the task just received, then POST /result
    RESEND = "resend"  # POST the same result again
    STOP = "stop"  # this device's session is over


class Wait(StrEnum):
    NONE = "none"
    SERVER = "server"  # the answer's retry_wait, else DEFAULT_RETRY_WAIT
    BACKOFF = "backoff"  # the shell's jittered transport backoff


class Outcome(StrEnum):
    """What a decision adds to the run's counters."""

    JOINED = "jobs_joined"
    TASK = "tasks_received"
    ABORTED = "tasks_aborted"  # given up on purpose (--abort-rate): never reported, or `abort` sent
    ACCEPTED = "results_accepted"
    NOT_COUNTED = "results_not_counted"
    REFUSED = "results_refused"
    ABANDONED = "results_abandoned"
    SESSION_REFUSED = "sessions_refused"
    JOB_OVER = "jobs_finished"
    NO_JOB = "no_job"
    RETRY = "retries"
    INVALID = "invalid_replies"
    TRANSPORT = "transport_errors"


@dataclass(frozen=True)
class Rule:
    step: Step
    wait: Wait
    outcome: Outcome
    end_job: bool = False  # the job is over: STOP, or JOIN again under keep_polling
    drop_cookie: bool = False


_P, _S = Phase, Signal
TABLE: Mapping[tuple[Phase, Signal], Rule] = {
    # /job: loop until a job is running (iOS asks every retry_wait or 5 s).
    (_P.JOIN, _S.OK): Rule(Step.POLL, Wait.NONE, Outcome.JOINED),
    (_P.JOIN, _S.RETRY): Rule(Step.JOIN, Wait.SERVER, Outcome.RETRY),
    (_P.JOIN, _S.NO_TASK): Rule(Step.JOIN, Wait.SERVER, Outcome.RETRY),
    (_P.JOIN, _S.NO_JOB): Rule(Step.JOIN, Wait.SERVER, Outcome.NO_JOB),
    (_P.JOIN, _S.DONE): Rule(Step.STOP, Wait.NONE, Outcome.JOB_OVER),
    (_P.JOIN, _S.ERROR): Rule(Step.STOP, Wait.NONE, Outcome.SESSION_REFUSED),
    (_P.JOIN, _S.INVALID): Rule(Step.STOP, Wait.NONE, Outcome.INVALID),
    (_P.JOIN, _S.TRANSPORT): Rule(Step.JOIN, Wait.BACKOFF, Outcome.TRANSPORT),
    # /task: iOS drops its cookie after a RETRY and ends its session on ERROR (PROTOCOL.md §4).
    (_P.POLL, _S.OK): Rule(Step.TRAIN, Wait.NONE, Outcome.TASK),
    (_P.POLL, _S.RETRY): Rule(Step.POLL, Wait.SERVER, Outcome.RETRY, drop_cookie=True),
    (_P.POLL, _S.NO_TASK): Rule(Step.POLL, Wait.SERVER, Outcome.RETRY, drop_cookie=True),
    (_P.POLL, _S.NO_JOB): Rule(Step.STOP, Wait.NONE, Outcome.JOB_OVER, end_job=True),
    (_P.POLL, _S.DONE): Rule(Step.STOP, Wait.NONE, Outcome.JOB_OVER, end_job=True),
    (_P.POLL, _S.ERROR): Rule(Step.STOP, Wait.NONE, Outcome.SESSION_REFUSED),
    (_P.POLL, _S.INVALID): Rule(Step.STOP, Wait.NONE, Outcome.INVALID),
    (_P.POLL, _S.TRANSPORT): Rule(Step.POLL, Wait.BACKOFF, Outcome.TRANSPORT),
    # /result: a refused result is counted and the device asks for the next task.
    (_P.REPORT, _S.OK): Rule(Step.POLL, Wait.NONE, Outcome.ACCEPTED),
    (_P.REPORT, _S.RETRY): Rule(Step.RESEND, Wait.SERVER, Outcome.RETRY),
    (_P.REPORT, _S.NO_TASK): Rule(Step.RESEND, Wait.SERVER, Outcome.RETRY),
    (_P.REPORT, _S.NO_JOB): Rule(Step.STOP, Wait.NONE, Outcome.REFUSED, end_job=True),
    (_P.REPORT, _S.DONE): Rule(Step.STOP, Wait.NONE, Outcome.REFUSED, end_job=True),
    (_P.REPORT, _S.ERROR): Rule(Step.POLL, Wait.NONE, Outcome.REFUSED),
    (_P.REPORT, _S.INVALID): Rule(Step.POLL, Wait.NONE, Outcome.INVALID),
    (_P.REPORT, _S.TRANSPORT): Rule(Step.RESEND, Wait.BACKOFF, Outcome.TRANSPORT),
}


@dataclass(frozen=True)
class Reply:
    """One answer as the decision sees it."""

    signal: Signal
    retry_wait: float | None = None
    # A /result answer's `counted` (ours, docs/ARCHITECTURE.md): False for a result taken but not
    # counted (late); None when the answer does not say.
    counted: bool | None = None


@dataclass(frozen=True)
class Decision:
    step: Step
    wait: float
    outcomes: tuple[Outcome, ...]
    drop_cookie: bool = False


def classify(phase: Phase, http_status: int, body: Mapping[str, Any] | None) -> Reply:
    """Reduce an HTTP answer (body already decoded, None if it could not be) to a `Reply`."""
    if http_status >= 500:
        return Reply(Signal.TRANSPORT)
    if http_status >= 400:
        return Reply(Signal.INVALID)
    if body is None:
        return Reply(Signal.TRANSPORT)
    status = body.get("status")
    retry_wait = body.get("retry_wait")
    wait = float(retry_wait) if isinstance(retry_wait, int | float) and retry_wait >= 0 else None
    counted = body.get("counted") if isinstance(body.get("counted"), bool) else None
    if phase is Phase.JOIN and status in JOB_OK_STATUSES:
        # iOS needs both job_id and job_name to start a session.
        ok = isinstance(body.get("job_id"), str) and isinstance(body.get("job_name"), str)
        return Reply(Signal.OK if ok else Signal.INVALID, wait)
    if status == Status.OK and phase is Phase.POLL:
        ok = (
            isinstance(body.get("task_id"), str)
            and isinstance(body.get("task_name"), str)
            and isinstance(body.get("task_data"), Mapping)
        )
        return Reply(Signal.OK if ok else Signal.INVALID, wait)
    try:
        signal = Signal(status) if isinstance(status, str) else Signal.INVALID
    except ValueError:
        signal = Signal.INVALID  # INVALID_REQUEST and statuses no client knows
    if signal is Signal.TRANSPORT:
        signal = Signal.INVALID
    return Reply(signal, wait, counted)


def decide(phase: Phase, reply: Reply, *, backoff: float, keep_polling: bool, resends_left: int) -> Decision:
    """The next step after `reply` to a request of `phase`.

    `backoff` is the wait to use after a transport error (the caller draws the jitter);
    `resends_left` is how many more times the current result may be sent.
    """
    rule = TABLE[(phase, reply.signal)]
    step = rule.step
    outcomes: tuple[Outcome, ...] = (rule.outcome,)
    if rule.wait is Wait.SERVER:
        wait = DEFAULT_RETRY_WAIT if reply.retry_wait is None else reply.retry_wait
    elif rule.wait is Wait.BACKOFF:
        wait = backoff
    else:
        wait = 0.0
    if rule.end_job and keep_polling:
        # Back to /job after the usual pause, so a job that stays listed cannot spin the device.
        step = Step.JOIN
        wait = DEFAULT_RETRY_WAIT if reply.retry_wait is None else reply.retry_wait
    if phase is Phase.REPORT and reply.signal is Signal.OK and reply.counted is False:
        outcomes = (Outcome.NOT_COUNTED,)
    if step is Step.RESEND and resends_left <= 0:
        # The result is given up: ask for fresh work at once.
        step, wait, outcomes = Step.POLL, 0.0, outcomes + (Outcome.ABANDONED,)
    return Decision(step, wait, outcomes, rule.drop_cookie)
