"""The unmodified xain-sdk 0.6 participant talks to a grpc.aio server built on our descriptor.

Rendezvous is accepted and the first heartbeat answered FINISHED, so the participant shuts down
without training (the training path needs the object store, which this test does not start).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge_gateway.xain.coordinator_service import ACCEPT, FINISHED, MESSAGES, READY, coordinator_handler

from .sdk_venvs import sdk_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTICIPANT = Path(__file__).with_name("participant06.py")


async def test_sdk06_participant_rendezvous_heartbeat_and_finish() -> None:
    python = await asyncio.to_thread(sdk_python, "xain-sdk-0.6.0")
    calls: list[tuple[str, Any, str]] = []

    async def rendezvous(request: Any, context: grpc.aio.ServicerContext) -> Any:
        calls.append(("Rendezvous", request, context.peer()))
        return MESSAGES["RendezvousResponse"](reply=ACCEPT)

    async def heartbeat(request: Any, context: grpc.aio.ServicerContext) -> Any:
        calls.append(("Heartbeat", request, context.peer()))
        return MESSAGES["HeartbeatResponse"](state=FINISHED, round=0)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((coordinator_handler({"Rendezvous": rendezvous, "Heartbeat": heartbeat}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = None
    try:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(PARTICIPANT),
            "127.0.0.1",
            str(port),
            "http://127.0.0.1:9",  # never contacted: no round is ever started
            "unused-bucket",
            "0.5",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await server.stop(grace=None)
    assert process.returncode == 0, err.decode()[-2000:]
    assert out.decode().startswith("participant ") and out.decode().strip().endswith(" finished")
    assert [name for name, _, _ in calls] == ["Rendezvous", "Heartbeat"]
    beat = calls[1][1]
    assert (beat.state, beat.round) == (READY, -1)
    assert calls[0][2] == calls[1][2]  # the same channel: the peer is the participant's identity
