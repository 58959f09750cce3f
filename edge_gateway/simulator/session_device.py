"""One simulated device over a live session (PROTOCOL.md §9): `websockets`' asyncio client.

It rendezvous, heartbeats at the interval the gateway sets, trains when pushed a `round`, sends
`end_training` and counts the `ack`; with `abort_rate` it gives some tasks up part-way (`abort`,
as when the OS cuts a background task). A closed session (leaf gone, gateway draining) is opened
again after a backoff; `finished` ends the device's run.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import msgpack
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from . import wire
from .decisions import Outcome
from .device import DeviceSettings, Sleep
from .stats import Stats
from .trainers import Trainer, training_wait

log = logging.getLogger(__name__)

SUBPROTOCOLS = {"json": Subprotocol("edgefl.v1.json"), "msgpack": Subprotocol("edgefl.v1.msgpack")}
# Reported at rendezvous and in heartbeats: a phone on the charger and on Wi-Fi, screen off.
STATE = {"charging": True, "unmetered": True, "idle": True}
OPEN_TIMEOUT = 30.0


class _Finished(Exception):
    """The job is over for this device."""


class SessionDevice:
    """A device that keeps one live session and trains whenever it is pushed a round."""

    def __init__(
        self,
        device_id: str,
        trainer: Trainer,
        settings: DeviceSettings,
        *,
        stats: Stats,
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
        slowdown: float = 1.0,
        train_seconds: float = 0.0,
        abort_rate: float = 0.0,
    ) -> None:
        self.device_id = device_id
        self._trainer = trainer
        self._settings = settings
        self._codec = settings.codec
        self._stats = stats
        self._rng = rng
        self._sleep = sleep
        self._slowdown = slowdown
        self._train_seconds = train_seconds
        self._abort_rate = abort_rate
        url = settings.base_url.with_scheme("wss" if settings.base_url.scheme == "https" else "ws")
        self._url = str(url.with_path("/ws"))
        self._headers = {k: v for k, v in wire.identity_headers(device_id).items() if k.startswith("X-Flare")}

    async def run(self) -> None:
        """Keep a session until the job is over for this device (bounded by the run's deadline)."""
        while True:
            try:
                async with connect(
                    self._url,
                    subprotocols=[SUBPROTOCOLS[self._codec]],
                    additional_headers=self._headers,
                    open_timeout=OPEN_TIMEOUT,
                    max_size=None,
                ) as ws:
                    self._stats.requests += 1
                    await self._session(ws)
            except _Finished:
                self._stats.devices_finished += 1
                return
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as exc:
                log.debug("device %s: session ended: %r", self.device_id, exc)
                self._stats.add((Outcome.TRANSPORT,))
            await self._sleep(self._rng.uniform(*self._settings.backoff))

    async def _session(self, ws: ClientConnection) -> None:
        await self._send(ws, {"type": "rendezvous", "job_name": self._settings.job_name, "state": STATE})
        heartbeats: asyncio.Task[None] | None = None
        training: asyncio.Task[None] | None = None
        try:
            async for data in ws:
                message = self._decode(data)
                kind = message.get("type")
                if kind == "accept":
                    self._stats.add((Outcome.JOINED,))
                    interval = float(message["heartbeat_interval"])
                    heartbeats = asyncio.create_task(self._heartbeats(ws, interval))
                elif kind == "later":
                    self._stats.add((Outcome.NO_JOB if message.get("reason") == "no_job" else Outcome.RETRY,))
                    await self._sleep(float(message.get("retry_wait", 5)))
                    await self._send(ws, {"type": "rendezvous", "job_name": self._settings.job_name, "state": STATE})
                elif kind == "round" and training is None:
                    await self._send(ws, {"type": "start_training", "round": message.get("round")})
                elif kind == "task" and training is None:
                    self._stats.add((Outcome.TASK,))
                    training = asyncio.create_task(self._train(ws, message))
                elif kind == "ack":
                    self._count_ack(message)
                    training = None
                elif kind == "finished":
                    self._stats.add((Outcome.JOB_OVER,))
                    raise _Finished
                elif kind == "error":
                    self._stats.add((Outcome.INVALID,))
                    log.warning("device %s: gateway error %s", self.device_id, message)
        finally:
            for task in (heartbeats, training):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    async def _heartbeats(self, ws: ClientConnection, interval: float) -> None:
        while True:
            await self._sleep(interval * 0.5)  # well inside the gateway's three intervals
            await self._send(ws, {"type": "heartbeat", "state": STATE})

    async def _train(self, ws: ClientConnection, task: dict[str, Any]) -> None:
        try:
            diff, num_samples = await self._trainer.train(task["task_data"])
        except Exception as exc:  # a trainer failure gives the task up, never ends the run
            self._stats.training_errors += 1
            log.warning("device %s could not train on task %s: %s", self.device_id, task.get("task_id"), exc)
            await self._send(ws, {"type": "abort", "task_id": task["task_id"], "reason": "training_failed"})
            return
        wait = training_wait(self._trainer.compute_s, self._train_seconds, self._slowdown)
        if wait > 0.0:
            await self._sleep(wait)
        if self._abort_rate and self._rng.random() < self._abort_rate:
            self._stats.add((Outcome.ABORTED,))
            await self._send(ws, {"type": "abort", "task_id": task["task_id"], "reason": "expired"})
            return
        result = wire.result_object(self._codec, diff, num_samples)
        await self._send(ws, {"type": "end_training", "task_id": task["task_id"], "result": result})

    def _count_ack(self, ack: dict[str, Any]) -> None:
        if "part" in ack:
            return  # a part confirmed; this device sends whole results
        if ack.get("counted") or ack.get("reason") == "duplicate":
            self._stats.add((Outcome.ACCEPTED,))
        elif ack.get("message", "").startswith("aborted"):
            return  # the answer to our abort, counted when sent
        elif ack.get("reason") in ("unavailable", "pending"):  # RETRY: this device does not send it again
            self._stats.add((Outcome.ABANDONED,))
        else:
            self._stats.add((Outcome.NOT_COUNTED,))

    async def _send(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        data = (
            msgpack.packb(message, use_bin_type=True)
            if self._codec == "msgpack"
            else orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        )
        try:
            await ws.send(data)
        except ConnectionClosed:
            pass  # the gateway closed the session: what it sent before (`finished`) is still read

    def _decode(self, data: str | bytes) -> dict[str, Any]:
        message = msgpack.unpackb(data, raw=False) if isinstance(data, bytes) else orjson.loads(data)
        return message if isinstance(message, dict) else {}
