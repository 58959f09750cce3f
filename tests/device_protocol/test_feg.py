import pytest

from device_protocol.errors import InvalidRequest
from device_protocol.feg import (
    JobRequest,
    ResultRequest,
    SelectionRequest,
    Status,
    TaskRequest,
    error_response,
    parse_request,
    response,
)

H = {"x-flare-device-id": "D"}


def msg(endpoint, query=None, body=None, headers=H):
    with pytest.raises(InvalidRequest) as err:
        parse_request(endpoint, query or {}, headers, body or {})
    return err.value.message


def test_job_ok():
    req = parse_request("job", {}, H, {"job_name": "xor_et", "capabilities": {"methods": ["xor"]}})
    assert isinstance(req, JobRequest) and req.job_name == "xor_et" and req.methods == ["xor"]


@pytest.mark.parametrize(
    "body,message",
    [
        ({"capabilities": {"methods": ["x"]}}, "missing job_name"),
        ({"job_name": "", "capabilities": {"methods": ["x"]}}, "missing job_name"),
        ({"job_name": "j"}, "missing capabilities"),
        ({"job_name": "j", "capabilities": {}}, "missing capabilities"),
        ({"job_name": "j", "capabilities": {"other": 1}}, "missing methods"),
        ({"job_name": "j", "capabilities": {"methods": []}}, "missing methods"),
        ({"job_name": "j", "capabilities": {"methods": "cnn"}}, "invalid methods type <class 'str'>"),
    ],
)
def test_job_validation_messages(body, message):
    assert msg("job", body=body) == message


def test_every_error_is_reported():
    with pytest.raises(InvalidRequest) as err:
        parse_request("result", {}, H, {})
    assert err.value.errors == ["missing job_id", "missing task_id", "missing task_name", "missing result"]
    assert error_response("INVALID_REQUEST", err.value.message, err.value.errors)["errors"] == err.value.errors


@pytest.mark.parametrize("endpoint", ["task", "selection", "result"])
def test_missing_job_id(endpoint):
    assert msg(endpoint, body={"task_id": "t", "task_name": "train", "result": {}}) == "missing job_id"


def test_empty_job_id_passes():
    assert isinstance(parse_request("task", {"job_id": ""}, H, {}), TaskRequest)


def test_merge_order_query_then_body_and_identity_from_headers_only():
    req = parse_request("task", {"job_id": "q"}, H, {"job_id": "b", "device_id": "evil", "cookie": {"a": 1}})
    assert req.job_id == "b" and req.identity.device_id == "D" and req.cookie == {"a": 1}


def test_result_fields_from_query_and_body():
    req = parse_request(
        "result",
        {"job_id": "j", "task_id": "t", "task_name": "train"},
        H,
        {"result": {"kind": "number"}, "cookie": {"x": 1}},
    )
    assert isinstance(req, ResultRequest) and req.status == "OK" and req.result == {"kind": "number"}
    # The Python simulator also puts task_name and status in the body.
    req = parse_request(
        "result", {"job_id": "j", "task_id": "t"}, H, {"result": {}, "task_name": "train", "status": "EXCEPTION"}
    )
    assert req.task_name == "train" and req.status == "EXCEPTION"


@pytest.mark.parametrize(
    "body,message",
    [
        ({"task_name": "train", "result": {}}, "missing task_id"),
        ({"task_id": "t", "result": {}}, "missing task_name"),
        ({"task_id": "t", "task_name": "train"}, "missing result"),
        ({"task_id": "t", "task_name": "train", "result": "x"}, "invalid result type <class 'str'>"),
        ({"task_id": 5, "task_name": "train", "result": {}}, "invalid task_id type <class 'int'>"),
    ],
)
def test_result_validation_messages(body, message):
    assert msg("result", {"job_id": "j"}, body) == message


def test_selection_and_cookie_type():
    assert isinstance(parse_request("selection", {"job_id": "j"}, H, {}), SelectionRequest)
    assert msg("task", {"job_id": "j"}, {"cookie": "abc"}) == "invalid cookie type <class 'str'>"


def test_header_errors_come_first():
    assert msg("job", body={}, headers={}) == "Device ID missing"


def test_response_drops_nulls():
    assert response(Status.RETRY, job_id="j", retry_wait=30, message=None) == {
        "status": "RETRY",
        "job_id": "j",
        "retry_wait": 30,
    }


@pytest.mark.parametrize(
    ("endpoint", "query", "body", "message"),
    [
        ("job", {}, {"job_name": "n" * 257, "capabilities": {"methods": ["t"]}}, "job_name longer than 256 characters"),
        ("task", {"job_id": "j" * 257}, {}, "job_id longer than 256 characters"),
        ("selection", {"job_id": "j" * 257}, {}, "job_id longer than 256 characters"),
        ("result", {"job_id": "j"}, {"task_id": "t" * 257, "task_name": "train", "result": {}}, "task_id longer than 256 characters"),
        ("result", {"job_id": "j"}, {"task_id": "t", "task_name": "n" * 257, "result": {}}, "task_name longer than 256 characters"),
    ],
)  # fmt: skip
def test_identifiers_longer_than_the_bound(endpoint, query, body, message):
    assert msg(endpoint, query, body) == message


def test_device_id_longer_than_the_bound():
    assert msg("job", body={}, headers={"x-flare-device-id": "d" * 257}) == "Device ID longer than 256 characters"
    request = parse_request("task", {"job_id": "j" * 256}, {"x-flare-device-id": "d" * 256}, {})
    assert isinstance(request, TaskRequest) and len(request.identity.device_id) == 256
