"""The Flare Edge Gateway (FEG) requests and responses (PROTOCOL.md §1, §3, §4). No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from .errors import InvalidRequest
from .headers import device_identity
from .identifiers import length_problem

ENDPOINTS: tuple[str, ...] = ("job", "task", "result", "selection")


class Status(StrEnum):
    OK = "OK"
    RETRY = "RETRY"
    NO_JOB = "NO_JOB"
    NO_TASK = "NO_TASK"
    DONE = "DONE"
    ERROR = "ERROR"
    INVALID_REQUEST = "INVALID_REQUEST"


# Plain records, not validating models: `parse_request` checks every field before it builds one,
# and a second validation would cost each device request microseconds on the leaf's hot path.
@dataclass(frozen=True, slots=True)
class Identity:
    device_id: str
    device_info: dict[str, str]
    user_info: dict[str, str]


@dataclass(frozen=True, slots=True)
class JobRequest:
    identity: Identity
    job_name: str
    methods: list[str]


@dataclass(frozen=True, slots=True)
class TaskRequest:
    identity: Identity
    job_id: str
    cookie: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ResultRequest:
    identity: Identity
    job_id: str
    task_id: str
    task_name: str
    status: str
    result: dict[str, Any]
    cookie: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SelectionRequest:
    identity: Identity
    job_id: str


FegRequest = JobRequest | TaskRequest | ResultRequest | SelectionRequest


def parse_request(
    endpoint: str, query: Mapping[str, str], headers: Mapping[str, str], body: Mapping[str, Any]
) -> FegRequest:
    """Validate one device request; `headers` have lower-case names.

    Fields merge query args then body, later wins (PROTOCOL.md §1). Every problem is collected;
    the exception's message is the first one, in the exact words clients and tests know (§3).
    """
    device_id, device_info, user_info = device_identity(headers)
    identity = Identity(device_id=device_id, device_info=device_info, user_info=user_info)
    fields: dict[str, Any] = {**query, **body}
    errors: list[str] = []
    if endpoint == "job":
        request: FegRequest | None = _job(identity, fields, errors)
    elif endpoint in ("task", "selection"):
        job_id = _text(fields, "job_id", errors, empty_ok=True)
        cookie = _cookie(fields, errors)
        if errors:
            request = None
        elif endpoint == "task":
            request = TaskRequest(identity=identity, job_id=job_id or "", cookie=cookie)
        else:
            request = SelectionRequest(identity=identity, job_id=job_id or "")
    elif endpoint == "result":
        request = _result(identity, fields, errors)
    else:
        raise InvalidRequest(f"unknown endpoint {endpoint!r}")
    if errors or request is None:
        raise InvalidRequest(errors[0], errors)
    return request


def _text(fields: Mapping[str, Any], name: str, errors: list[str], empty_ok: bool = False) -> str | None:
    value = fields.get(name)
    if value is None or (value == "" and not empty_ok):
        errors.append(f"missing {name}")
        return None
    if not isinstance(value, str):
        errors.append(f"invalid {name} type {type(value)}")
        return None
    if (problem := length_problem(name, value)) is not None:
        errors.append(problem)
        return None
    return value


def _cookie(fields: Mapping[str, Any], errors: list[str]) -> dict[str, Any] | None:
    cookie = fields.get("cookie")
    if cookie is None:
        return None
    problem = _object_problem("cookie", cookie)
    if problem is not None:
        errors.append(problem)
        return None
    return cast(dict[str, Any], cookie)  # checked just above


def _object_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"invalid {name} type {type(value)}"
    # A msgpack map may have bytes keys; the models hold str keys (and pydantic would raise).
    if not all(isinstance(key, str) for key in value):
        return f"invalid {name}: keys must be strings"
    return None


def _job(identity: Identity, fields: Mapping[str, Any], errors: list[str]) -> JobRequest | None:
    job_name = _text(fields, "job_name", errors)
    capabilities = fields.get("capabilities")
    methods: Any = None
    if not capabilities:
        errors.append("missing capabilities")
    elif not isinstance(capabilities, dict):
        errors.append(f"invalid capabilities type {type(capabilities)}")
    else:
        methods = capabilities.get("methods")
        if methods is None or methods == []:
            errors.append("missing methods")
        elif not isinstance(methods, list):
            errors.append(f"invalid methods type {type(methods)}")
        elif not all(isinstance(m, str) for m in methods):
            errors.append("invalid methods: every method must be a string")
    if errors or job_name is None:
        return None
    return JobRequest(identity=identity, job_name=job_name, methods=methods)


def _result(identity: Identity, fields: Mapping[str, Any], errors: list[str]) -> ResultRequest | None:
    job_id = _text(fields, "job_id", errors, empty_ok=True)
    task_id = _text(fields, "task_id", errors)
    task_name = _text(fields, "task_name", errors)
    status = fields.get("status", Status.OK.value)
    if not isinstance(status, str):
        errors.append(f"invalid status type {type(status)}")
    result = fields.get("result")
    if result is None:
        errors.append("missing result")
    elif (problem := _object_problem("result", result)) is not None:
        errors.append(problem)
    cookie = _cookie(fields, errors)
    if errors or result is None:
        return None
    return ResultRequest(
        identity=identity,
        job_id=job_id or "",
        task_id=task_id or "",
        task_name=task_name or "",
        status=status,
        result=result,
        cookie=cookie,
    )


def response(status: Status, **fields: Any) -> dict[str, Any]:
    """A response object; keys whose value is None are left out (PROTOCOL.md §4)."""
    body: dict[str, Any] = {"status": status.value}
    body.update((k, v) for k, v in fields.items() if v is not None)
    return body


def error_response(status: str, message: str, errors: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status, "message": message}
    if errors and len(errors) > 1:
        body["errors"] = errors
    return body
