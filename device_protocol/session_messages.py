"""The messages of a live session (PROTOCOL.md §9): decoding and checking what a device sends,
encoding what the gateway sends. No I/O.

A message is an object with a `type`; under the `edgefl.v1.json` subprotocol (or none) one JSON
object per text frame, under `edgefl.v1.msgpack` one msgpack map per binary frame. A message that
is not one of ours raises `BadMessage`, which the leaf answers with an `error` message.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

import msgpack
import orjson

JSON_SUBPROTOCOL = "edgefl.v1.json"
MSGPACK_SUBPROTOCOL = "edgefl.v1.msgpack"
# The codec name each subprotocol uses on the link (internal_link.sessions.CODECS).
SUBPROTOCOL_CODECS = {JSON_SUBPROTOCOL: "json", MSGPACK_SUBPROTOCOL: "msgpack"}
STATE_KEYS = frozenset(("charging", "battery_full", "unmetered", "idle"))
MAX_PARTS = 10_000  # of one split end_training


class DeviceMessage(StrEnum):
    RENDEZVOUS = "rendezvous"
    HEARTBEAT = "heartbeat"
    START_TRAINING = "start_training"
    END_TRAINING = "end_training"
    ABORT = "abort"


class GatewayMessage(StrEnum):
    ACCEPT = "accept"
    LATER = "later"
    STANDBY = "standby"
    ROUND = "round"
    TASK = "task"
    ACK = "ack"
    FINISHED = "finished"
    ERROR = "error"


class BadMessage(Exception):
    """A device message the gateway cannot act on; `code` goes into the `error` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Received(NamedTuple):
    """One checked device message: its type and its fields (the `type` key included)."""

    kind: DeviceMessage
    fields: dict[str, Any]


def decode_message(data: bytes, codec: str) -> Received:
    """The message one frame carried; raises `BadMessage` for anything else."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True) if codec == "msgpack" else orjson.loads(data)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadMessage("malformed", f"not a {codec} message: {exc}") from None
    if not isinstance(obj, dict):
        raise BadMessage("malformed", "a message must be an object")
    try:
        kind = DeviceMessage(str(obj.get("type")))
    except ValueError:
        names = ", ".join(m.value for m in DeviceMessage)
        raise BadMessage("unknown_type", f"unknown message type {obj.get('type')!r}: send one of {names}") from None
    problem = _CHECKS[kind](obj)
    if problem:
        raise BadMessage("invalid", f"{kind.value}: {problem}")
    return Received(kind, obj)


def decode_result(data: str | bytes, codec: str) -> dict[str, Any]:
    """The result a split `end_training` carried, from its parts' chunks joined."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True) if codec == "msgpack" else orjson.loads(data)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BadMessage("invalid", f"end_training: the parts do not make a {codec} result: {exc}") from None
    if not isinstance(obj, dict) or not obj:
        raise BadMessage("invalid", "end_training: the parts do not make a result object")
    return obj


def device_state(fields: dict[str, Any]) -> dict[str, bool] | None:
    """The `state` a message reported (checked), or None when it carried none."""
    state = fields.get("state")
    return None if state is None else {key: bool(value) for key, value in state.items()}


def encode_message(kind: GatewayMessage, codec: str, **fields: Any) -> bytes:
    """One gateway message as the payload of a frame of the session's codec; None values left out."""
    obj = {"type": kind.value, **{k: v for k, v in fields.items() if v is not None}}
    if codec == "msgpack":
        data: bytes = msgpack.packb(obj, use_bin_type=True)
        return data
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _state_problem(obj: dict[str, Any]) -> str | None:
    state = obj.get("state")
    if state is None:
        return None
    if not isinstance(state, dict):
        return "state must be an object"
    unknown = set(state) - STATE_KEYS
    if unknown:
        return f"unknown state keys {sorted(map(str, unknown))}; known: {sorted(STATE_KEYS)}"
    if not all(isinstance(v, bool) for v in state.values()):
        return "state values must be true or false"
    return None


def _text_problem(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return None if isinstance(value, str) and value else f"missing {name}"


def _rendezvous(obj: dict[str, Any]) -> str | None:
    capabilities = obj.get("capabilities")
    if capabilities is not None and not isinstance(capabilities, dict):
        return "capabilities must be an object"
    return _text_problem(obj, "job_name") or _state_problem(obj)


def _start_training(obj: dict[str, Any]) -> str | None:
    number = obj.get("round")
    return None if number is None or type(number) is int else "round must be an integer"


def _end_training(obj: dict[str, Any]) -> str | None:
    if "parts" in obj:  # one part of a split result: `chunk` holds the next piece of its encoding
        return _text_problem(obj, "task_id") or _part_problem(obj)
    if not isinstance(obj.get("result"), dict) or not obj["result"]:
        return _text_problem(obj, "task_id") or "missing result"
    metrics = obj.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        return "metrics must be an object"
    return _text_problem(obj, "task_id")


def _part_problem(obj: dict[str, Any]) -> str | None:
    parts, part = obj.get("parts"), obj.get("part")
    if type(parts) is not int or not 1 <= parts <= MAX_PARTS:
        return f"parts must be an integer from 1 to {MAX_PARTS}"
    if type(part) is not int or not 0 <= part < parts:
        return "part must be an integer from 0 to parts - 1"
    if not isinstance(obj.get("chunk"), str | bytes):
        return "chunk must be text (JSON sessions) or bytes (msgpack sessions)"
    return None


def _abort(obj: dict[str, Any]) -> str | None:
    reason = obj.get("reason")
    if reason is not None and not isinstance(reason, str):
        return "reason must be a string"
    return _text_problem(obj, "task_id")


_CHECKS = {
    DeviceMessage.RENDEZVOUS: _rendezvous,
    DeviceMessage.HEARTBEAT: _state_problem,
    DeviceMessage.START_TRAINING: _start_training,
    DeviceMessage.END_TRAINING: _end_training,
    DeviceMessage.ABORT: _abort,
}
