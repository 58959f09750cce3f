"""Whether a device's result counts, and what the device is told. No I/O.

The `/result` endpoint gathers what is known about a result step by step (`ResultFacts`): the
job, the device's status and cookie, the job's books before the update is decoded, again after
(the round may have closed meanwhile), and the server's answer. After each step
`judge_result` gives the verdict, or None while the next step is needed. `RESULT_ANSWERS` holds
per verdict the device's answer and the leaf counter it moves; the endpoint renders from it with
`result_answer` and never branches on messages itself.

Every answer judged here carries `counted` (and `reason` unless plainly counted): clients of our
own read those, never the human `message` (docs/ARCHITECTURE.md "Device-facing payloads of our own").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from device_protocol.feg import Status, response

from ..uplink import Outcome

# Seconds a device waits before sending again a result the server could not take.
RESULT_RETRY_WAIT = 5


class ResultVerdict(StrEnum):
    UNKNOWN_JOB = "unknown_job"
    DEVICE_ERROR = "device_error"  # the device reported a failed task (a non-OK status)
    COOKIE_INVALID = "cookie_invalid"
    UPDATE_REJECTED = "update_rejected"  # the update does not decode or fit the model
    DUPLICATE = "duplicate"  # this task's result was counted already: it counts once
    LATE_VERSION = "late_version"  # for a model version no longer current, or the job is not running
    LATE = "late"  # the lease ran out, or the round closed while the update was decoded
    LATE_UPSTREAM = "late_upstream"  # the server had closed the round before the result reached it
    UNAVAILABLE = "unavailable"  # the server did not take it: the device sends it again
    PENDING = "pending"  # durable, but whether it counts is the server's answer still to come
    COUNTED = "counted"


class Tally(StrEnum):
    """The leaf's per-job counters (`LeafJobReport`) a verdict adds one to."""

    REFUSED = "refused"
    LATE = "late"
    DUPLICATES = "duplicates"


@dataclass(frozen=True)
class ResultAnswer:
    status: Status
    message: str | None  # a `str.format` template (see `result_answer`); None: no message
    counted: bool  # the result counts in the model (now, or when it was first sent)
    reason: str | None  # machine-readable why, for answers other than a plain count
    tally: Tally | None
    retry_wait: int | None = None


_S, _T = Status, Tally
RESULT_ANSWERS: Mapping[ResultVerdict, ResultAnswer] = {
    # PROTOCOL.md §4: a job over or unknown is NO_JOB, which sends the device back to /job.
    ResultVerdict.UNKNOWN_JOB: ResultAnswer(_S.NO_JOB, "unknown job {job_id!r}", False, "unknown_job", None),
    ResultVerdict.DEVICE_ERROR: ResultAnswer(
        _S.ERROR, "device reported status {device_status!r}: result not counted", False, "device_error", _T.REFUSED
    ),
    ResultVerdict.COOKIE_INVALID: ResultAnswer(_S.ERROR, "{detail}", False, "cookie_invalid", _T.REFUSED),
    ResultVerdict.UPDATE_REJECTED: ResultAnswer(_S.ERROR, "{detail}", False, "update_rejected", _T.REFUSED),
    # OK, not ERROR, from here on: Android ends its session on anything but OK (PROTOCOL.md §4).
    ResultVerdict.DUPLICATE: ResultAnswer(
        _S.OK, "duplicate result for this task: counted once", True, "duplicate", _T.DUPLICATES
    ),
    ResultVerdict.LATE_VERSION: ResultAnswer(
        _S.OK, "late result for model version {version}: not counted", False, "late", _T.LATE
    ),
    ResultVerdict.LATE: ResultAnswer(
        _S.OK, "late result (lease expired or round closed): not counted", False, "late", _T.LATE
    ),
    ResultVerdict.LATE_UPSTREAM: ResultAnswer(_S.OK, "late result (round closed): not counted", False, "late", _T.LATE),
    ResultVerdict.UNAVAILABLE: ResultAnswer(
        _S.RETRY, "server unavailable: send the result again", False, "unavailable", None, RESULT_RETRY_WAIT
    ),
    # Only while the server makes its next version and does not answer (closing.py): the re-send
    # hears what the first copy became.
    ResultVerdict.PENDING: ResultAnswer(
        _S.RETRY,
        "the server has not answered for this result yet: send it again",
        False,
        "pending",
        None,
        RESULT_RETRY_WAIT,
    ),
    ResultVerdict.COUNTED: ResultAnswer(_S.OK, None, True, None, None),
}

_UPSTREAM: Mapping[Outcome, ResultVerdict] = {
    Outcome.ACCEPTED: ResultVerdict.COUNTED,
    Outcome.DURABLE: ResultVerdict.COUNTED,
    Outcome.LATE: ResultVerdict.LATE_UPSTREAM,
    Outcome.DUPLICATE: ResultVerdict.DUPLICATE,
    Outcome.UNAVAILABLE: ResultVerdict.UNAVAILABLE,
    Outcome.PENDING: ResultVerdict.PENDING,
}


@dataclass(frozen=True)
class ResultFacts:
    """What is known about one result. Facts not gathered yet keep their defaults, which is sound
    because they are gathered in the order `judge_result` reads them and it stops at the first
    that decides."""

    job_known: bool = True
    device_ok: bool = True  # the device reported status OK
    cookie_ok: bool = True  # authentic, and issued for this job, device and task
    reported: bool = False  # a result of this task was taken before (this model version or the one before)
    current: bool = True  # for the job's current model version, and the job is running
    lease_expired: bool = False
    decoded: bool | None = None  # None: not decoded yet; False: the update was rejected
    upstream: Outcome | None = None  # the server's answer; None: not submitted yet


def judge_result(facts: ResultFacts) -> ResultVerdict | None:
    """The verdict on a result, or None: take the next step (decode it; then take and submit it)."""
    if not facts.job_known:
        return ResultVerdict.UNKNOWN_JOB
    if not facts.device_ok:
        return ResultVerdict.DEVICE_ERROR
    if not facts.cookie_ok:
        return ResultVerdict.COOKIE_INVALID
    if facts.decoded is None:
        # Turned away before the work of decoding. An expired lease is not: its result may still
        # be malformed, and is then refused rather than late.
        if facts.reported:
            return ResultVerdict.DUPLICATE
        return None if facts.current else ResultVerdict.LATE_VERSION
    if not facts.decoded:
        return ResultVerdict.UPDATE_REJECTED
    if facts.upstream is None:
        if facts.reported:
            return ResultVerdict.DUPLICATE
        if not facts.current or facts.lease_expired:
            return ResultVerdict.LATE
        return None
    return _UPSTREAM[facts.upstream]


def result_answer(verdict: ResultVerdict, task_id: str, task_name: str, **values: Any) -> dict[str, Any]:
    """The device's answer. `values` fill the message: job_id, device_status, detail, version."""
    answer = RESULT_ANSWERS[verdict]
    return response(
        answer.status,
        retry_wait=answer.retry_wait,
        message=None if answer.message is None else answer.message.format(**values),
        task_id=task_id,
        task_name=task_name,
        counted=answer.counted,
        reason=answer.reason,
    )
