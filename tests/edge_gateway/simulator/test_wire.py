"""The device-side payloads: task data in, results out, in both codecs."""

from __future__ import annotations

import base64

import msgpack
import numpy as np
import orjson
import pytest

from device_protocol.codecs import JSON, MSGPACK
from device_protocol.headers import parse_info
from device_protocol.tensors import decode_update, tensors_to_binary
from edge_gateway.simulator import wire

WEIGHTS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.0, 2.0], dtype=np.float32)}
SHAPES = {"w": (2, 3), "b": (2,)}
META = {"model": "xor", "model_version": 3}


def task_data(codec: str) -> dict:
    data = tensors_to_binary(WEIGHTS) if codec == "msgpack" else {k: v.tolist() for k, v in WEIGHTS.items()}
    return {"kind": "WEIGHTS", "data": data, "meta": META}


def test_weights_and_shapes_from_task_data(codec: str) -> None:
    weights = wire.task_weights(task_data(codec))
    assert {k: v.dtype for k, v in weights.items()} == {"w": np.float32, "b": np.float32}
    for name, arr in WEIGHTS.items():
        np.testing.assert_array_equal(weights[name], arr)
    assert wire.task_shapes(task_data(codec)) == SHAPES
    assert wire.task_meta(task_data(codec)) == META


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "APP_DEFINED", "data": "UEsDBA==", "meta": {}},
        {"kind": "WEIGHTS", "data": {}, "meta": {}},
        {"kind": "WEIGHTS", "data": {"w": [[1.0]]}},
        {"kind": "WEIGHTS", "data": {"w": [[1.0], [1.0, 2.0]]}, "meta": {}},
        {"kind": "WEIGHTS", "data": {"w": {"dtype": "float32", "shape": [2], "data": b"\0" * 4}}, "meta": {}},
    ],
)
def test_untrainable_task_data_is_refused(bad: dict) -> None:
    with pytest.raises(wire.TaskDataError):
        wire.task_weights(bad)


def test_json_result_is_a_weight_diff_in_et_entries() -> None:
    diff = {"w": np.full((2, 3), 0.5, dtype=np.float32), "b": np.array([-1.0, 1.0], dtype=np.float32)}
    content_type, body = wire.result_body("json", diff, 42, {"v": 1})
    payload = orjson.loads(body)
    assert content_type == JSON and payload["cookie"] == {"v": 1}
    assert payload["result"]["kind"] == "WEIGHT_DIFF" and payload["result"]["meta"] == {"num_samples": 42}
    assert payload["result"]["data"]["w"] == {"sizes": [2, 3], "strides": [3, 1], "data": [0.5] * 6}
    decoded, weight = decode_update(payload["result"], SHAPES)
    assert weight == 42.0
    np.testing.assert_array_equal(decoded["b"], diff["b"])


def test_msgpack_result_carries_binary_tensors() -> None:
    diff = {"w": np.full((2, 3), 0.25, dtype=np.float64), "b": np.array([-1.0, 1.0], dtype=np.float32)}
    content_type, body = wire.result_body("msgpack", diff, 7, {"v": [1, "x"]})
    payload = msgpack.unpackb(body, raw=False)
    assert content_type == MSGPACK and payload["cookie"] == {"v": [1, "x"]}
    assert payload["result"]["data"]["w"]["dtype"] == "float32"
    decoded, weight = decode_update(payload["result"], SHAPES)
    assert weight == 7.0 and decoded["w"].dtype == np.float32


def test_error_result_is_the_ios_error_dxo(codec: str) -> None:
    _content_type, body = wire.error_result_body(codec, "boom", None)
    payload = msgpack.unpackb(body, raw=False) if codec == "msgpack" else orjson.loads(body)
    assert payload == {"result": {"kind": "error", "data": {"error": "boom"}, "meta": {}}, "cookie": None}


def test_identity_headers_parse_back() -> None:
    headers = wire.identity_headers("sim ab&c-1")
    assert headers["X-Flare-Device-ID"] == "sim ab&c-1" and headers["X-Flare-User-Info"] == ""
    assert parse_info(headers["X-Flare-Device-Info"], "x") == {
        "device_id": "sim ab&c-1",
        "app_name": "edgefl-sim",
        "app_version": "1.0",
        "platform": "sim",
    }


def test_request_bodies() -> None:
    assert orjson.loads(wire.job_body("J")) == {"job_name": "J", "capabilities": {"methods": list(wire.METHODS)}}
    assert wire.task_body(None) == b"{}"
    assert orjson.loads(wire.task_body({"a": 1})) == {"cookie": {"a": 1}}


def test_undecodable_reply_is_none() -> None:
    assert wire.decode_reply("text/html", b"<html>") is None
    assert wire.decode_reply("application/json", b"[1]") is None
    assert wire.decode_reply("application/json; charset=utf-8", b'{"status":"OK"}') == {"status": "OK"}


PTE = b"\0\0\0\0ET12" + bytes(range(40))  # only the magic is checked before the runtime loads it
PROGRAM_META = {
    "model_version": 3,
    "model_buffer_type": "executorch",
    "model_buffer_native_format": "binary",
    "model_buffer_encoding": "base64",
    "batch_size": 4,
    "learning_rate": 0.1,
    "total_epochs": 1,
    "model": "xor",
}


def test_program_task_gives_the_base64_text_and_meta() -> None:
    text = base64.b64encode(PTE).decode("ascii")
    assert wire.program_task({"kind": "APP_DEFINED", "data": text, "meta": PROGRAM_META}) == (text, PROGRAM_META)
    assert wire.decode_program(text) == PTE


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "WEIGHTS", "data": {"w": [1.0]}, "meta": PROGRAM_META},
        {"kind": "APP_DEFINED", "data": {"w": [1.0]}, "meta": PROGRAM_META},
        {"kind": "APP_DEFINED", "data": "AAAA"},
        {"kind": "APP_DEFINED", "data": "AAAA", "meta": {**PROGRAM_META, "model_buffer_type": "pytorch"}},
        {"kind": "APP_DEFINED", "data": "AAAA", "meta": {**PROGRAM_META, "model_buffer_encoding": "hex"}},
    ],
)
def test_program_task_refuses_what_the_ios_app_cannot_load(bad: dict) -> None:
    with pytest.raises(wire.TaskDataError):
        wire.program_task(bad)


@pytest.mark.parametrize("text", ["not base64!", "é", base64.b64encode(b"\0\0\0\0PK\3\4 zip").decode()])
def test_decode_program_refuses_what_is_not_a_pte(text: str) -> None:
    with pytest.raises(wire.TaskDataError):
        wire.decode_program(text)


def test_et_tensor_diff_is_posted_as_the_ios_app_posts_it(codec: str) -> None:
    diff = wire.EtTensorDiff(
        {"net.w": np.full((2, 3), 0.5, dtype=np.float32), "net.b": np.array([-1.0, 1.0])},
        {"epochs": 2, "learning_rate": 0.1, "batch_size": 4},
    )
    content_type, body = wire.result_body(codec, diff, 9, {"v": 1})  # JSON whatever the codec
    payload = orjson.loads(body)
    assert content_type == JSON and payload["cookie"] == {"v": 1}
    assert payload["result"] == {
        "kind": "et_tensor_diff",
        "data": {
            "net.w": {"sizes": [2, 3], "strides": [3, 1], "data": [0.5] * 6},
            "net.b": {"sizes": [2], "strides": [1], "data": [-1.0, 1.0]},
        },
        "meta": {"epochs": 2, "learning_rate": 0.1, "batch_size": 4, "num_samples": 9},
    }
    decoded, weight = decode_update(payload["result"], SHAPES)
    assert weight == 9.0 and set(decoded) == {"w", "b"}
