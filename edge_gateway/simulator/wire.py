"""The device's side of the wire: headers, request bodies, task data and results. No I/O."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlencode

import msgpack
import numpy as np
import orjson

from device_protocol.codecs import JSON, MSGPACK, decode_body
from device_protocol.errors import ProtocolError
from device_protocol.tensors import ERROR_KIND, from_binary, from_json_entry, tensors_to_binary, to_et_tensor_diff

Codec = Literal["json", "msgpack"]
CODECS: tuple[str, ...] = ("json", "msgpack")
APP_NAME = "edgefl-sim"
APP_VERSION = "1.0"
PLATFORM = "sim"
# The models our trainers can run, announced as capabilities on /job.
METHODS: tuple[str, ...] = ("xor", "digits", "cifar10", "cifar10_wide")
RESULT_KIND = "WEIGHT_DIFF"
TASK_KIND = "WEIGHTS"
# What phones get and send back (PROTOCOL.md §4-§5): an ExecuTorch program, an `et_tensor_diff`.
PROGRAM_TASK_KIND = "APP_DEFINED"
ET_RESULT_KIND = "et_tensor_diff"
PTE_MAGIC = b"ET12"  # bytes 4..8 of a .pte


class TaskDataError(ValueError):
    """Task data this simulator cannot train on (wrong kind, malformed tensors or program)."""


class EtTensorDiff(dict[str, np.ndarray]):
    """A diff to upload as the iOS app does: `et_tensor_diff` JSON with `meta`, whatever the codec.

    The keys are already the program's `net.`-prefixed names; `meta` holds the task's epochs,
    learning_rate and batch_size (`result_body` adds num_samples).
    """

    def __init__(self, diff: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super().__init__(diff)
        self.meta = dict(meta)


def _dumps(payload: Any) -> bytes:
    """`orjson.dumps` copied into a right-sized bytes object.

    orjson (3.12+) rounds the returned object's allocation up to a power of two: 4 KiB for a `{}`
    body, 2 MiB for a 210 KB digits result. A device holds its body in flight, across retry waits
    and resends, so thousands of devices kept ~10x the bytes they send; the copy is one memcpy.
    """
    return bytes(memoryview(orjson.dumps(payload)))


def identity_headers(device_id: str) -> dict[str, str]:
    """The headers every request of one device carries (PROTOCOL.md §2, query-string form)."""
    info = urlencode({"device_id": device_id, "app_name": APP_NAME, "app_version": APP_VERSION, "platform": PLATFORM})
    return {"X-Flare-Device-ID": device_id, "X-Flare-Device-Info": info, "X-Flare-User-Info": "", "Content-Type": JSON}


def job_body(job_name: str) -> bytes:
    return _dumps({"job_name": job_name, "capabilities": {"methods": list(METHODS)}})


def task_body(cookie: Mapping[str, Any] | None) -> bytes:
    return _dumps({} if cookie is None else {"cookie": cookie})


def result_object(codec: Codec, diff: Mapping[str, np.ndarray], num_samples: int) -> dict[str, Any]:
    """The `result` of a weight diff: msgpack tensors, or JSON `et_tensor_diff` entries (always for
    an `EtTensorDiff`, exactly as the iOS app posts it, PROTOCOL.md §5)."""
    if isinstance(diff, EtTensorDiff):
        return to_et_tensor_diff(diff, {**diff.meta, "num_samples": num_samples}, kind=ET_RESULT_KIND, prefix="")
    meta = {"num_samples": num_samples}
    if codec == "msgpack":
        arrays = {name: np.asarray(arr, dtype=np.float32) for name, arr in diff.items()}
        return {"kind": RESULT_KIND, "data": tensors_to_binary(arrays), "meta": meta}
    return to_et_tensor_diff(diff, meta, kind=RESULT_KIND, prefix="")


def result_body(
    codec: Codec, diff: Mapping[str, np.ndarray], num_samples: int, cookie: Mapping[str, Any] | None
) -> tuple[str, bytes]:
    """(content type, body) of a `/result` carrying a weight diff; the cookie goes back verbatim."""
    result = result_object(codec, diff, num_samples)
    if codec == "msgpack" and not isinstance(diff, EtTensorDiff):
        return MSGPACK, msgpack.packb({"result": result, "cookie": cookie}, use_bin_type=True)
    return JSON, _dumps({"result": result, "cookie": cookie})


def error_result_body(codec: Codec, error: str, cookie: Mapping[str, Any] | None) -> tuple[str, bytes]:
    """A failed training, reported as the iOS app does (PROTOCOL.md §5)."""
    payload = {"result": {"kind": ERROR_KIND, "data": {"error": error}, "meta": {}}, "cookie": cookie}
    if codec == "msgpack":
        return MSGPACK, msgpack.packb(payload, use_bin_type=True)
    return JSON, _dumps(payload)


def decode_reply(content_type: str, body: bytes) -> dict[str, Any] | None:
    """A reply body as a dict, or None when it is neither a JSON nor a msgpack object."""
    try:
        return decode_body(content_type, body)
    except ProtocolError:
        return None


def task_meta(task_data: Mapping[str, Any]) -> dict[str, Any]:
    if task_data.get("kind") != TASK_KIND:
        raise TaskDataError(f"task data of kind {task_data.get('kind')!r}; this simulator trains on {TASK_KIND}")
    meta = task_data.get("meta")
    if not isinstance(meta, Mapping):
        raise TaskDataError("task data has no meta object")
    return dict(meta)


def program_task(task_data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(base64 text of the .pte, meta) of APP_DEFINED task data, checked as the iOS app checks it."""
    kind = task_data.get("kind")
    if kind != PROGRAM_TASK_KIND:
        raise TaskDataError(f"task data of kind {kind!r}; an executorch device trains on {PROGRAM_TASK_KIND}")
    data, meta = task_data.get("data"), task_data.get("meta")
    if not isinstance(data, str):
        raise TaskDataError("APP_DEFINED task data is not a string")
    if not isinstance(meta, Mapping):
        raise TaskDataError("task data has no meta object")
    for key, expected in (("model_buffer_type", "executorch"), ("model_buffer_encoding", "base64")):
        if meta.get(key, expected) != expected:
            raise TaskDataError(f"task meta {key} is {meta[key]!r}, expected {expected!r}")
    return data, dict(meta)


def decode_program(text: str) -> bytes:
    """The .pte bytes of an APP_DEFINED task's base64 `data`."""
    try:
        program = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TaskDataError(f"program is not valid base64: {exc}") from None
    if program[4:8] != PTE_MAGIC:
        raise TaskDataError(f"program is not a .pte (bytes 4..8 are {program[4:8]!r}, expected {PTE_MAGIC!r})")
    return program


def task_weights(task_data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The global weights in WEIGHTS task data: nested lists (JSON) or `{dtype, shape, data}` (msgpack)."""
    task_meta(task_data)
    try:
        return {name: _tensor(entry) for name, entry in _tensor_entries(task_data).items()}
    except ValueError as exc:
        raise TaskDataError(f"malformed weights: {exc}") from None


def task_shapes(task_data: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The weights' shapes, read without decoding the values (a synthetic device needs no more)."""
    task_meta(task_data)
    return {name: _shape(entry) for name, entry in _tensor_entries(task_data).items()}


def _tensor_entries(task_data: Mapping[str, Any]) -> Mapping[str, Any]:
    data = task_data.get("data")
    if not isinstance(data, Mapping) or not data:
        raise TaskDataError("task data holds no tensors")
    return data


def _tensor(entry: Any) -> np.ndarray:
    if isinstance(entry, Mapping) and "dtype" in entry:
        return from_binary(entry).astype(np.float32)
    return from_json_entry(entry)


def _shape(entry: Any) -> tuple[int, ...]:
    if isinstance(entry, Mapping):
        shape = entry.get("shape", entry.get("sizes"))
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise TaskDataError("tensor has no valid shape")
        return tuple(shape)
    dims: list[int] = []
    while isinstance(entry, list):  # nested lists are regular: the first element speaks for all
        dims.append(len(entry))
        if not entry:
            break
        entry = entry[0]
    if not dims:
        raise TaskDataError("tensor is neither a nested list nor an object with a shape")
    return tuple(dims)
