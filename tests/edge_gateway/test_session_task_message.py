"""A session's `task` message is its own head, the payload's one cached task data, and a tail."""

from __future__ import annotations

import msgpack
import numpy as np
import orjson
import pytest

from device_protocol.tensors import tensors_from_binary
from edge_gateway.leaf.task_payload import TaskPayload

WEIGHTS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, dtype=np.float32)}


@pytest.mark.parametrize("as_msgpack", [False, True])
def test_every_session_shares_the_cached_task_data_and_the_message_decodes_whole(as_msgpack: bool) -> None:
    payload = TaskPayload.for_weights("job", 3, WEIGHTS, {})
    first = payload.render_session("task-1", 1.5, as_msgpack)
    second = payload.render_session("task-2", 2.5, as_msgpack)
    assert first[1] is second[1]  # one cached copy, whatever the number of sessions
    message = b"".join(first)
    if as_msgpack:
        task = msgpack.unpackb(message, raw=False)
        weights = tensors_from_binary(task["task_data"]["data"])
    else:
        task = orjson.loads(message)
        weights = {k: np.asarray(v, dtype=np.float32) for k, v in task["task_data"]["data"].items()}
    assert {k: v for k, v in task.items() if k != "task_data"} == {
        "type": "task",
        "task_id": "task-1",
        "task_name": "train",
        "model_version": 3,
        "deadline": 1.5,
    }
    assert all(np.array_equal(weights[k], WEIGHTS[k]) for k in WEIGHTS)
