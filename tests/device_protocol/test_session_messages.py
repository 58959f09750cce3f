"""Session messages (PROTOCOL.md §9) under both codecs, without sockets."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
import pytest

from device_protocol.session_messages import (
    BadMessage,
    DeviceMessage,
    GatewayMessage,
    decode_message,
    decode_result,
    device_state,
    encode_message,
)


@pytest.fixture(params=["json", "msgpack"])
def codec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pack(obj: Any, codec: str) -> bytes:
    return msgpack.packb(obj, use_bin_type=True) if codec == "msgpack" else orjson.dumps(obj)


def test_a_rendezvous_is_read_with_its_state(codec: str) -> None:
    message = {"type": "rendezvous", "job_name": "j", "capabilities": {}, "state": {"charging": True}}
    kind, fields = decode_message(pack(message, codec), codec)
    assert kind is DeviceMessage.RENDEZVOUS and device_state(fields) == {"charging": True}


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        ([1, 2], "malformed", "object"),
        ({"type": "teleport"}, "unknown_type", "teleport"),
        ({"type": "rendezvous"}, "invalid", "job_name"),
        ({"type": "heartbeat", "state": {"charging": 1}}, "invalid", "true or false"),
        ({"type": "heartbeat", "state": {"mood": True}}, "invalid", "mood"),
        ({"type": "end_training", "task_id": "t"}, "invalid", "result"),
        ({"type": "end_training", "result": {"kind": "x"}}, "invalid", "task_id"),
        ({"type": "abort"}, "invalid", "task_id"),
        ({"type": "start_training", "round": "one"}, "invalid", "round"),
        ({"type": "end_training", "task_id": "t", "parts": 0, "part": 0, "chunk": "x"}, "invalid", "parts"),
        ({"type": "end_training", "task_id": "t", "parts": 2, "part": 2, "chunk": "x"}, "invalid", "part"),
        ({"type": "end_training", "task_id": "t", "parts": 2, "part": 0}, "invalid", "chunk"),
    ],
)
def test_a_message_that_is_not_ours_says_why(codec: str, message: Any, code: str, words: str) -> None:
    with pytest.raises(BadMessage) as refused:
        decode_message(pack(message, codec), codec)
    assert refused.value.code == code and words in refused.value.message


def test_bytes_that_do_not_decode_are_malformed(codec: str) -> None:
    with pytest.raises(BadMessage) as refused:
        decode_message(b"\xc1{", codec)
    assert refused.value.code == "malformed"


def test_gateway_messages_leave_out_empty_fields(codec: str) -> None:
    data = encode_message(GatewayMessage.LATER, codec, retry_wait=5, reason=None)
    decoded = msgpack.unpackb(data) if codec == "msgpack" else orjson.loads(data)
    assert decoded == {"type": "later", "retry_wait": 5}


def test_joined_parts_must_make_a_result_object(codec: str) -> None:
    assert decode_result(pack({"kind": "WEIGHT_DIFF"}, codec), codec) == {"kind": "WEIGHT_DIFF"}
    with pytest.raises(BadMessage):
        decode_result(pack([1], codec), codec)
