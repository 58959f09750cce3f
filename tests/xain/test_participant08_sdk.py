"""The unmodified xain-sdk 0.8 runs `participant08.py` against a minimal coordinator on loopback.

The coordinator here is test scaffolding for the facts in docs/XAIN.md that edgefl's routes must
honour (aggregator routes at the root path whatever URL path is announced, `stand_by` once a
participant has uploaded for the round, every status 200) and for the `.npy` codec: every upload
is read with `flat_vector_from_npy`, every download written with `npy_from_flat_vector`. With
deltas that are exact binary fractions the final model is known exactly.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from device_protocol.xain.npy_vector import flat_vector_from_npy, npy_from_flat_vector

from .sdk_venvs import sdk_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTICIPANT = Path(__file__).with_name("participant08.py")
LENGTH = 37
ROUNDS = 3
DELTAS = [0.5, 1.0, -0.75]  # their mean, 0.25, and every sum below are exact in float32


class MiniCoordinator:
    def __init__(self, expected: int, rounds: int, initial: np.ndarray) -> None:
        self.expected, self.rounds, self.model = expected, rounds, initial
        self.ids: list[str] = []
        self.round = 0
        self.uploads: dict[str, np.ndarray] = {}
        self.ignored_uploads = 0
        self.base_url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/rendez_vous", self.rendez_vous)
        app.router.add_get("/heartbeat/{id}", self.heartbeat)
        app.router.add_get("/start_training/{id}", self.start_training)
        app.router.add_get("/{id}/{token}", self.download)
        app.router.add_post("/{id}/{token}", self.upload)
        return app

    async def rendez_vous(self, request: web.Request) -> web.Response:
        self.ids.append(f"p-{len(self.ids)}")
        return web.json_response({"id": self.ids[-1]})

    async def heartbeat(self, request: web.Request) -> web.Response:
        participant = request.match_info["id"]
        if participant not in self.ids:
            return web.json_response({"state": "reject", "round": self.round})
        if self.round >= self.rounds:
            return web.json_response({"state": "finish", "round": self.round})
        if len(self.ids) < self.expected or participant in self.uploads:
            return web.json_response({"state": "stand_by", "round": self.round})
        return web.json_response({"state": "round", "round": self.round})

    async def start_training(self, request: web.Request) -> web.Response:
        # A path on the announced URL: the SDK keeps only scheme://netloc, so routes are at the root.
        token = f"round-{self.round}"
        return web.json_response({"ok": True, "url": f"{self.base_url}/ignored/by/the/sdk", "token": token})

    async def download(self, request: web.Request) -> web.Response:
        return web.Response(body=npy_from_flat_vector(self.model))

    async def upload(self, request: web.Request) -> web.Response:
        vector = flat_vector_from_npy(await request.read(), LENGTH)
        participant, token = request.match_info["id"], request.match_info["token"]
        # A heartbeat answered just before an upload can make the SDK train the round again.
        if token != f"round-{self.round}" or participant in self.uploads:
            self.ignored_uploads += 1
            return web.Response()
        self.uploads[participant] = vector
        if len(self.uploads) == self.expected:
            self.model = np.asarray(np.stack(list(self.uploads.values())).mean(axis=0, dtype=np.float64), np.float32)
            self.uploads = {}
            self.round += 1
        return web.Response()  # 200: the SDK treats anything else, 204 included, as an error


async def test_sdk_participants_train_every_round_and_average_exactly() -> None:
    python = await asyncio.to_thread(sdk_python, "xain-sdk-0.8.0")
    initial = (np.arange(LENGTH, dtype=np.float32) - 18) / 8
    coordinator = MiniCoordinator(len(DELTAS), ROUNDS, initial)
    runner = web.AppRunner(coordinator.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    coordinator.base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the SDK's venv, not edgefl's
    processes = []
    try:
        for delta in DELTAS:
            processes.append(
                await asyncio.create_subprocess_exec(
                    str(python),
                    str(PARTICIPANT),
                    coordinator.base_url,
                    str(delta),
                    "--heartbeat-period",
                    "0.1",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                )
            )
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), timeout=90)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await runner.cleanup()
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err.decode()[-2000:]
        assert out.decode().strip() == f"finished after {ROUNDS} rounds", err.decode()[-2000:]
    assert coordinator.round == ROUNDS
    expected = initial + np.float32(ROUNDS * 0.25)
    assert np.array_equal(coordinator.model, expected), (coordinator.model - expected).max()
    print(f"{sys.version_info[:2]} ignored duplicate uploads: {coordinator.ignored_uploads}")
