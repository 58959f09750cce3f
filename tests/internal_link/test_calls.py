"""The proxy ↔ leaf contract: what `DeviceCall.check` and `DeviceAnswer.check` take and refuse."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from internal_link.calls import (
    BadPayload,
    DeviceAnswer,
    DeviceCall,
    device_answer,
    device_call_handler,
    streamed_answer_head,
)
from internal_link.errors import ErrorCode
from internal_link.request_streams import StreamedRequest
from internal_link.streams import STREAM_THRESHOLD, Streamed

GOOD = ["task", {"job_id": "J"}, {"x-flare-device-id": "D", "accept": "application/json"}, b"{}", 24.5]


def over_the_link(value: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def test_a_call_crosses_the_link_field_by_field() -> None:
    call = DeviceCall("result", {"job_id": "J"}, {"content-type": "application/msgpack"}, b"\x00\xff", 3.0)
    assert DeviceCall.check(over_the_link(call.to_wire())) == call
    checked = DeviceCall.check(list(GOOD))
    assert (checked.endpoint, checked.query, checked.headers, checked.body, checked.wait) == tuple(GOOD)
    assert DeviceCall.check(GOOD[:4] + [0]).wait == 0  # an integer number of seconds is fine


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (None, "not a list of 5 fields"),
        (GOOD[:4], "not a list of 5 fields"),
        (["upload", *GOOD[1:]], "endpoint 'upload'"),
        ([b"task", *GOOD[1:]], "endpoint b'task'"),
        (["task", {"job_id": 1}, *GOOD[2:]], "query is not a map"),
        (["task", ["job_id"], *GOOD[2:]], "query is not a map"),
        ([*GOOD[:2], {"X-Flare-Device-ID": "D"}, *GOOD[3:]], "headers are not a map of lower-case names"),
        ([*GOOD[:2], {"accept": b"json"}, *GOOD[3:]], "headers are not a map"),
        ([*GOOD[:3], "{}", GOOD[4]], "body is str, not bytes"),
        ([*GOOD[:4], -1.0], "wait -1.0"),
        ([*GOOD[:4], float("nan")], "wait nan"),
        ([*GOOD[:4], True], "wait True"),
        ([*GOOD[:4], "5"], "wait '5'"),
    ],
)
def test_malformed_calls_are_refused_as_bad_payload(payload: Any, problem: str) -> None:
    with pytest.raises(BadPayload, match="malformed device call") as info:
        DeviceCall.check(payload)
    assert info.value.code is ErrorCode.BAD_PAYLOAD
    assert problem in info.value.text


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(BadPayload) as info:
        DeviceCall.check(["upload", {}, {"Accept": "x"}, None, -1])
    assert info.value.text.count(";") == 3  # endpoint; headers; body; wait


def test_answers() -> None:
    answer = DeviceAnswer(202, "application/json", b"{}")
    assert DeviceAnswer.check(over_the_link(answer.to_wire())) == answer
    for bad in ([200, "application/json"], "nonsense", [200, "application/json", "not bytes"], [99, "x", b""], None):
        with pytest.raises(BadPayload, match="malformed device answer"):
            DeviceAnswer.check(bad)


def test_handler_gets_the_checked_call_and_refuses_the_rest() -> None:
    seen: list[DeviceCall] = []
    handler = device_call_handler(lambda call: seen.append(call) or "answered")
    assert handler(list(GOOD)) == "answered"
    assert seen == [DeviceCall.check(list(GOOD))]
    with pytest.raises(BadPayload):
        handler(["task", {}, {}, b""])  # the old four-field call
    assert len(seen) == 1


def test_client_limit_round_trips_through_headers_and_refuses_malformed_ones():
    from internal_link.calls import CLIENT_HEADER, CLIENT_LEASES_HEADER, ClientLimit

    limit = ClientLimit("ip:127.0.0.2", 3)
    assert ClientLimit.of({"x-flare-device-id": "d", **limit.headers()}) == limit
    assert ClientLimit.of({}) is None
    for cap in ("0", "-1", "x", "²", ""):
        assert ClientLimit.of({CLIENT_HEADER: "ip:a", CLIENT_LEASES_HEADER: cap}) is None
    assert ClientLimit.of({CLIENT_LEASES_HEADER: "3"}) is None


def test_a_device_answer_above_the_threshold_is_streamed_unjoined() -> None:
    head = b"h" * STREAM_THRESHOLD
    small = device_answer(200, "application/json", (b"{", b"}"))
    assert small == DeviceAnswer(200, "application/json", b"{}")
    large = device_answer(200, "application/msgpack", (head, b"tail"))
    assert isinstance(large, Streamed) and large.parts[0] is head  # the cached head itself, no copy
    assert streamed_answer_head(large.meta) == (200, "application/msgpack")
    for meta in ([200], [99, "x"], [200, b"x"], None):
        with pytest.raises(BadPayload):
            streamed_answer_head(meta)


def test_a_streamed_call_is_checked_with_its_body_in_place() -> None:
    call = DeviceCall("result", {"job_id": "j"}, {"content-type": "application/json"}, b"", 30.0)
    body = b"x" * 10
    assert DeviceCall.check(StreamedRequest(list(call), body)) == call._replace(body=body)
    xain = DeviceCall.check_xain(StreamedRequest(["upload", {"id": "p"}, {}, b"", 5.0], body))
    assert (xain.endpoint, xain.body) == ("upload", body)
    with pytest.raises(BadPayload, match="not a list of 5 fields"):
        DeviceCall.check(StreamedRequest({"not": "a call"}, body))
