"""Task responses built once per model version (PROTOCOL.md §4 "Selected").

The model part of a `/task` OK answer is the same for every device, so it is encoded once, in
JSON and in msgpack; per request only the task id and the cookie are spliced in.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
import orjson

from device_protocol.codecs import JSON, MSGPACK
from device_protocol.tensors import tensors_to_binary

TASK_NAME = "train"


class TaskPayload:
    """The encoded task data of one job's model version."""

    def __init__(
        self,
        job_id: str,
        version: int,
        task_json: bytes,
        task_msgpack: bytes,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.version = version
        # Kept for XAIN participants, who upload weights, not diffs (xain_endpoints.py).
        self.weights = weights
        job = orjson.dumps(job_id)
        self._task_json = task_json
        self._task_msgpack = task_msgpack
        self._json_head = (
            b'{"status":"OK","job_id":' + job + b',"retry_wait":0,"task_name":"train","task_data":' + task_json
        )
        # A msgpack map of 7 entries; the head holds 5 of them.
        self._msgpack_head = (
            b"\x87"
            + b"".join(
                msgpack.packb(x, use_bin_type=True)
                for x in ("status", "OK", "job_id", job_id, "retry_wait", 0, "task_name", TASK_NAME)
            )
            + msgpack.packb("task_data")
            + task_msgpack
        )
        # What holding it costs (the payload cache's budget counts this).
        self.nbytes = len(self._json_head) + len(self._msgpack_head) + sum(w.nbytes for w in (weights or {}).values())

    @classmethod
    def for_weights(
        cls, job_id: str, version: int, weights: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> TaskPayload:
        """Simulated/PyTorch clients: `{"kind": "WEIGHTS"}` with nested lists, or raw tensors in msgpack."""
        full_meta = {**meta, "model_version": version}
        task_json = orjson.dumps(
            {"kind": "WEIGHTS", "data": {k: np.ascontiguousarray(v) for k, v in weights.items()}, "meta": full_meta},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        task_msgpack = msgpack.packb(
            {"kind": "WEIGHTS", "data": tensors_to_binary(weights), "meta": full_meta}, use_bin_type=True
        )
        return cls(job_id, version, task_json, task_msgpack, weights)

    @classmethod
    def for_program(cls, job_id: str, version: int, program: bytes, meta: Mapping[str, Any]) -> TaskPayload:
        """Phones: the ExecuTorch training program as base64 text (PROTOCOL.md §4, `APP_DEFINED`)."""
        task = {
            "kind": "APP_DEFINED",
            "data": base64.b64encode(program).decode("ascii"),
            "meta": {**meta, "model_version": version},
        }
        return cls(job_id, version, orjson.dumps(task), msgpack.packb(task, use_bin_type=True))

    def render(self, task_id: str, cookie: Mapping[str, Any], as_msgpack: bool) -> tuple[str, bytes]:
        content_type, parts = self.render_parts(task_id, cookie, as_msgpack)
        return content_type, b"".join(parts)

    def render_parts(
        self, task_id: str, cookie: Mapping[str, Any], as_msgpack: bool
    ) -> tuple[str, tuple[bytes, bytes]]:
        """The answer as (the shared head, this task's tail): streamed, every download sends the
        one cached head, never a copy of its own."""
        if as_msgpack:
            tail = msgpack.packb("task_id") + msgpack.packb(task_id) + msgpack.packb("cookie") + msgpack.packb(cookie)
            return MSGPACK, (self._msgpack_head, tail)
        return JSON, (
            self._json_head,
            b',"task_id":' + orjson.dumps(task_id) + b',"cookie":' + orjson.dumps(cookie) + b"}",
        )

    def render_session(self, task_id: str, deadline: float, as_msgpack: bool) -> tuple[bytes, bytes, bytes]:
        """The `task` message of a live session (PROTOCOL.md §9) as (its own head, the shared task
        data, its tail): streamed, every session sends the one cached task data, never a copy of
        its own. The cookie stays at the leaf."""
        fields: tuple[Any, ...] = ("type", "task", "task_id", task_id, "task_name", TASK_NAME)
        fields += ("model_version", self.version, "deadline", deadline)
        if as_msgpack:  # a map of 6 entries, task_data last
            head = b"\x86" + b"".join(msgpack.packb(x, use_bin_type=True) for x in fields)
            return head + msgpack.packb("task_data"), self._task_msgpack, b""
        head = orjson.dumps(dict(zip(fields[::2], fields[1::2], strict=True)))
        return head[:-1] + b',"task_data":', self._task_json, b"}"
