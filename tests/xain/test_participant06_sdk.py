"""Two rounds of the unmodified xain-sdk 0.6 participant against a minimal coordinator and store.

Test scaffolding for the facts in docs/XAIN.md that the 0.6 listener and object endpoint must
honour: the global model at `{round}/global` (written with `pickle_from_flat_vector`, round 0
empty), uploads at `{round}/{participant uuid}` read back only through `load_array`, and
`EndTrainingRound` naming that uuid. Heartbeats come every 10 s, so this takes about 20 s.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp import web

from device_protocol.xain.pickle_writer import pickle_from_flat_vector
from device_protocol.xain.safe_unpickle import load_array
from edge_gateway.xain.coordinator_service import ACCEPT, FINISHED, MESSAGES, ROUND, coordinator_handler

from .sdk_venvs import sdk_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTICIPANT = Path(__file__).with_name("participant06.py")
BUCKET = "edgefl-xain"
LENGTH = 37
DELTA = 0.75
SAMPLES = 42


class MiniStore:
    """Path-style HEAD/GET/PUT of whole objects: what boto3's put_object and small downloads use."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{bucket}/{key:.+}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        self.requests.append((request.method, f"/{request.match_info['bucket']}/{key}"))
        if request.match_info["bucket"] != BUCKET:
            return web.Response(status=404)
        if request.method == "PUT":
            body = await request.read()
            self.objects[key] = body
            return web.Response(headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})
        stored = self.objects.get(key)
        if stored is None:
            return web.Response(status=404)
        headers = {
            "ETag": f'"{hashlib.md5(stored).hexdigest()}"',
            "Last-Modified": email.utils.formatdate(usegmt=True),
            "Content-Length": str(len(stored)),
        }
        if request.method == "HEAD":
            return web.Response(headers=headers)
        return web.Response(body=stored, headers=headers)


async def test_sdk06_participant_trains_two_rounds_through_the_allow_list() -> None:
    python = await asyncio.to_thread(sdk_python, "xain-sdk-0.6.0")
    store = MiniStore()
    rounds_done = 0
    ended: list[Any] = []
    global_one = (np.arange(LENGTH, dtype=np.float32) - 10) / 4
    store.objects["0/global"] = pickle_from_flat_vector(np.zeros(0, np.float32))  # round 0: initialise
    store.objects["1/global"] = pickle_from_flat_vector(global_one)

    async def rendezvous(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return MESSAGES["RendezvousResponse"](reply=ACCEPT)

    async def heartbeat(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if rounds_done >= 2:
            return MESSAGES["HeartbeatResponse"](state=FINISHED, round=rounds_done)
        return MESSAGES["HeartbeatResponse"](state=ROUND, round=rounds_done)

    async def start_training_round(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return MESSAGES["StartTrainingRoundResponse"](epochs=1, epoch_base=rounds_done)

    async def end_training_round(request: Any, context: grpc.aio.ServicerContext) -> Any:
        nonlocal rounds_done
        ended.append(request)
        rounds_done += 1
        return MESSAGES["EndTrainingRoundResponse"]()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            coordinator_handler(
                {
                    "Rendezvous": rendezvous,
                    "Heartbeat": heartbeat,
                    "StartTrainingRound": start_training_round,
                    "EndTrainingRound": end_training_round,
                }
            ),
        )
    )
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    runner = web.AppRunner(store.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    store_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = None
    try:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(PARTICIPANT),
            "127.0.0.1",
            str(grpc_port),
            store_url,
            BUCKET,
            str(DELTA),
            "--length",
            str(LENGTH),
            "--samples",
            str(SAMPLES),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await server.stop(grace=None)
        await runner.cleanup()
    assert process.returncode == 0, err.decode()[-3000:]
    uuid = out.decode().split()[1]
    assert [(r.participant_id, r.number_samples) for r in ended] == [(uuid, 0), (uuid, SAMPLES)]
    assert json.loads(ended[0].metrics) == []
    assert [point["fields"] for point in json.loads(ended[1].metrics)] == [{"delta": DELTA}]
    assert ("HEAD", f"/{BUCKET}/0/global") in store.requests and ("PUT", f"/{BUCKET}/1/{uuid}") in store.requests
    assert store.objects[f"1/{uuid}"][:2] == b"\x80\x04"  # the SDK's Python default: protocol 4
    round_zero = load_array(store.objects[f"0/{uuid}"], 1 << 20)
    round_one = load_array(store.objects[f"1/{uuid}"], 1 << 20)
    assert round_zero.dtype == np.float32 and np.array_equal(round_zero, np.zeros(LENGTH, np.float32))
    assert np.array_equal(round_one, global_one + np.float32(DELTA))
