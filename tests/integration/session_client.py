"""A live-session device for tests: the `websockets` library's asyncio client speaking only
PROTOCOL.md §9 (JSON text frames, or msgpack binary frames), every wait bounded."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import msgpack
import numpy as np
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from device_protocol.tensors import tensors_from_binary

from .clients import diff_for

WAIT = 20.0  # seconds any one expected message may take (the machine may be slow)


class SessionDevice:
    def __init__(self, connection: ClientConnection, device_id: str, binary: bool) -> None:
        self.ws = connection
        self.device_id = device_id
        self.binary = binary

    @classmethod
    async def connect(
        cls, proxy_url: str, device_id: str, binary: bool = False, sock: socket.socket | None = None
    ) -> SessionDevice:
        """A session; on `sock` (connected already, e.g. with a small receive buffer) if given,
        then with no keep-alive pings: a device that pauses reading would time its own pongs out."""
        url = proxy_url.replace("http://", "ws://") + "/ws"
        subprotocol = "edgefl.v1.msgpack" if binary else "edgefl.v1.json"
        connection = await connect(
            url,
            subprotocols=[subprotocol],  # type: ignore[list-item]
            additional_headers={"X-Flare-Device-ID": device_id, "X-Flare-Device-Info": "platform=sim"},
            open_timeout=WAIT,
            max_size=None,
            sock=sock,
            ping_interval=None if sock is not None else 20,
        )
        assert connection.subprotocol == subprotocol
        return cls(connection, device_id, binary)

    async def send(self, message: dict[str, Any]) -> None:
        if self.binary:
            await self.ws.send(msgpack.packb(message, use_bin_type=True))
        else:
            await self.ws.send(orjson.dumps(message).decode())

    async def receive(self, timeout: float = WAIT) -> dict[str, Any]:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        if self.binary:
            assert isinstance(data, bytes), "msgpack sessions get binary frames"
            message: dict[str, Any] = msgpack.unpackb(data, raw=False)
        else:
            assert isinstance(data, str), "JSON sessions get text frames"
            message = orjson.loads(data)
        return message

    async def expect(self, kind: str, timeout: float = WAIT) -> dict[str, Any]:
        message = await self.receive(timeout)
        assert message["type"] == kind, message
        return message

    async def until(self, kind: str, passing: frozenset[str], timeout: float = WAIT) -> dict[str, Any]:
        """Read until a `kind` message; pushes of the types in `passing` may come before it."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.receive()
                if message["type"] == kind:
                    return message
                assert message["type"] in passing, message

    async def rendezvous(self, job_name: str, state: dict[str, bool] | None = None) -> dict[str, Any]:
        await self.send(
            {"type": "rendezvous", "job_name": job_name, "capabilities": {"methods": ["xor"]}, "state": state or {}}
        )
        return await self.expect("accept")

    async def train(self, number: int) -> dict[str, Any]:
        """start_training, then the task it answers."""
        await self.send({"type": "start_training", "round": number})
        return await self.expect("task")

    async def end_training(self, task: dict[str, Any]) -> dict[str, Any]:
        result = self.result_for(task)
        await self.send({"type": "end_training", "task_id": task["task_id"], "result": result, "metrics": {}})
        return await self.until("ack", frozenset(("round", "finished")))

    def result_for(self, task: dict[str, Any]) -> dict[str, Any]:
        weights = task["task_data"]["data"]
        diff = diff_for(tensors_from_binary(weights) if self.binary else weights)
        if self.binary:
            data: dict[str, Any] = {
                k: {"dtype": "float32", "shape": list(v.shape), "data": v.tobytes()} for k, v in diff.items()
            }
        else:
            data = {k: np.asarray(v).tolist() for k, v in diff.items()}
        return {"kind": "WEIGHT_DIFF", "data": data, "meta": {"num_samples": 4}}

    async def closed_with(self, timeout: float = WAIT) -> int | None:
        """Read until the gateway closes the session; the close code it sent."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None

    async def close(self) -> None:
        await self.ws.close()
