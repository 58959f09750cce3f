"""The xain-sdk 0.6 doors call by call, as a hostile or careless participant would use them.

gRPC calls go through edgefl's own descriptor (`coordinator_service.py`), one channel per
participant (the coordinator knows a participant by its connection); objects over plain HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import orjson
import pytest

from device_protocol.xain.flat_weights import flatten
from device_protocol.xain.safe_unpickle import load_array
from edge_gateway.launcher import Stack
from edge_gateway.xain.coordinator_service import ACCEPT, LATER, MESSAGES, METHODS, READY, ROUND, SERVICE, STANDBY

from .helpers import UNSCREENED, job_status, submit_job, wait_for
from .test_xain06_participants import next_global, stack06  # noqa: F401  (stack06: the fixture)
from .test_xain08_participants import assert_same, model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Participant:
    """One connection to the gRPC coordinator."""

    def __init__(self, target: str) -> None:
        # A connection of its own: channels of one process would share one otherwise.
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])

    async def call(self, method: str, **fields: Any) -> Any:
        request, response = METHODS[method]
        stub = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=MESSAGES[request].SerializeToString,
            response_deserializer=MESSAGES[response].FromString,
        )
        return await stub(MESSAGES[request](**fields), timeout=10)

    async def refused(self, method: str, **fields: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await self.call(method, **fields)
        return raised.value

    async def beat_until(self, state: int, round_number: int, timeout: float = 30) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            beat = await self.call("Heartbeat", state=READY, round=round_number)
            if beat.state == state or loop.time() > deadline:
                assert beat.state == state, beat
                return beat
            await asyncio.sleep(0.2)


class Pickled:
    """Unpickling this runs `open(path, "w")`: what a malicious upload would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


async def test_the_doors_by_hand(stack06: Stack, http: aiohttp.ClientSession, tmp_path: Path) -> None:  # noqa: F811
    assert stack06.xain06 is not None
    target, objects = stack06.xain06
    job_id = await submit_job(
        stack06.api_url,
        **UNSCREENED,
        name="xain06_hand",
        model="xor",
        rounds=2,
        devices_per_round=1,
        over_selection=0.0,
        xain=True,
        evaluate=False,
    )
    _, initial = await model(http, stack06, job_id)
    vector = flatten(initial, {k: v.shape for k, v in initial.items()})
    a, late = Participant(target), Participant(target)
    try:
        assert (await a.call("Rendezvous")).reply == ACCEPT
        beat = await a.beat_until(ROUND, -1)
        assert beat.round == 0
        # The one slot is taken: a late entrant is told to come back later.
        assert (await late.call("Rendezvous")).reply == LATER
        error = await a.refused("EndTrainingRound", participant_id="u0", number_samples=5)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "StartTrainingRound" in error.details()
        start = await a.call("StartTrainingRound")
        assert start.epochs >= 1 and start.epoch_base == 0

        async with http.head(f"{objects}/edgefl/0/global") as reply:
            assert reply.status == 200
            size, etag = int(reply.headers["Content-Length"]), reply.headers["ETag"]
            assert reply.headers["Last-Modified"].endswith("GMT")
        async with http.get(f"{objects}/edgefl/0/global") as reply:
            data = await reply.read()
        assert len(data) == size and etag == f'"{hashlib.md5(data).hexdigest()}"'
        assert np.array_equal(load_array(data, len(data)), vector)
        async with http.get(f"{objects}/edgefl/0/global", headers={"Range": "bytes=10-"}) as reply:
            assert reply.status == 206 and await reply.read() == data[10:]
            assert reply.headers["Content-Range"] == f"bytes 10-{size - 1}/{size}"

        refusals = {
            ("PUT", "0/global", b"x"): 403,
            ("PUT", "0/big", b"\x00" * (4 * vector.size + 2048)): 413,
            ("GET", "0/someone", b""): 404,
            ("GET", "7/global", b""): 404,
            ("GET", "../etc/passwd", b""): 404,
        }
        for (method, key, body), code in refusals.items():
            async with http.request(method, f"{objects}/edgefl/{key}", data=body or None) as reply:
                assert reply.status == code, (method, key)
                assert orjson.loads(await reply.read())["status"] == "ERROR"

        async def put(key: str, body: bytes) -> None:
            async with http.put(f"{objects}/edgefl/{key}", data=body) as reply:
                assert reply.status == 200 and reply.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'

        # Stored unread; EndTrainingRound unpickles through the allow-list only, and refuses.
        marker = tmp_path / "pwned"
        await put("0/evil", pickle.dumps(Pickled(marker)))
        bad = {
            "evil": 5,  # a pickle naming `open`
            "absent": 5,  # nothing written at 0/absent
            "short": 5,  # one value too few
            "nosamples": 0,  # 0 samples cannot weigh anything
        }
        await put("0/short", pickle.dumps(vector[:-1] + 1))
        await put("0/nosamples", pickle.dumps(vector + 1))
        for uuid, samples in bad.items():
            error = await a.refused("EndTrainingRound", participant_id=uuid, number_samples=samples)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, uuid
            assert error.details().startswith("update_rejected: "), (uuid, error.details())
        assert not marker.exists()
        # Still leased after refusals: a good upload counts, weighted by its samples.
        await put("0/good", pickle.dumps(vector + np.float32(0.5)))
        await a.call("EndTrainingRound", participant_id="good", number_samples=7)
        status = await wait_for(stack06.api_url, job_id, lambda s: s["model_version"] >= 1, timeout=30)
        assert status["refused"] == len(bad) + 2  # and the 413, and the end with no start
        _, after = await model(http, stack06, job_id)
        assert_same(after, next_global(initial, [(0.5, 7)]))
        # Round 1 is open: the late entrant is accepted now, and the first hears of it.
        assert (await late.call("Rendezvous")).reply == ACCEPT
        beat = await a.call("Heartbeat", state=READY, round=0)
        assert (beat.state, beat.round) in ((ROUND, 1), (STANDBY, 1))
        assert (await job_status(stack06.api_url, job_id))["status"] == "running"
    finally:
        await a.channel.close()
        await late.channel.close()
