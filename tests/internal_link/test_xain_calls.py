"""XAIN calls travel as device calls under their own method and endpoints, checked like FEG ones."""

from __future__ import annotations

import pytest

from internal_link.calls import BadPayload, DeviceCall


def test_a_xain_call_passes() -> None:
    call = DeviceCall.check_xain(["upload", {"id": "x8-a", "token": "t"}, {}, b"npy", 2.5])
    assert call == DeviceCall("upload", {"id": "x8-a", "token": "t"}, {}, b"npy", 2.5)


@pytest.mark.parametrize(
    "payload",
    [
        ["task", {}, {}, b"", 1.0],  # a FEG endpoint is not a XAIN call
        ["heartbeat", {"id": 1}, {}, b"", 1.0],
        ["heartbeat", {}, {}, "text", 1.0],
        ["heartbeat", {}, {}, b"", -1.0],
        ["heartbeat", {}, {}, b""],
        "heartbeat",
    ],
)
def test_malformed_xain_calls_are_refused(payload: object) -> None:
    with pytest.raises(BadPayload):
        DeviceCall.check_xain(payload)


def test_a_xain_endpoint_is_no_feg_call() -> None:
    with pytest.raises(BadPayload):
        DeviceCall.check(["heartbeat", {}, {}, b"", 1.0])
