"""The server's "watch" long poll: leaves hear of a new model version at once, not at their next sync."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from device_protocol.tensors import tensors_to_binary
from edge_gateway.config import ServerConfig
from edge_gateway.jobs import JobSpec
from edge_gateway.models import initial_weights
from edge_gateway.server import Server
from internal_link.messages import SubmitBatch

SPEC = JobSpec(name="xor", model="xor", rounds=3, devices_per_round=1, evaluate=False)


def closing_batch(server: Server) -> dict[str, object]:
    shapes = server.coordinator.job("j").shapes
    update = {name: np.full(shape, 1e-3) for name, shape in shapes.items()}  # within the screen's bounds
    return SubmitBatch(
        leaf="leaf-0",
        job_id="j",
        version=0,
        task_ids=["t1"],
        sum_weight=1.0,
        sum_update=tensors_to_binary(update),
    ).model_dump()


async def test_watch_answers_when_behind_and_wakes_on_a_new_version(tmp_path: Path) -> None:
    server = Server(ServerConfig(data_dir=tmp_path))  # no sockets: handlers called directly
    server.coordinator.add_job("j", SPEC, initial_weights("xor", 0), time.monotonic())
    seen = await server.handle_watch({"seen": -1, "wait": 5.0})  # a leaf that just started: at once
    assert await server.handle_watch({"seen": seen, "wait": 0.05}) == seen  # nothing new: after `wait`
    waiting = asyncio.ensure_future(server.handle_watch({"seen": seen, "wait": 5.0}))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    reply = await server.handle_submit(closing_batch(server))  # quorum: the round closes, v1
    assert reply["accepted"] and server.coordinator.job("j").version == 1
    assert await asyncio.wait_for(waiting, 1.0) == seen + 1
