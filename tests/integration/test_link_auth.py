"""The internal links of a real stack refuse a stray process that lacks the shared secret.

tests/internal_link/ checks the handshake of `LinkServer`/`LinkClient` in one process;
this checks that the processes users start (`python -m edge_gateway server|leaf`, secret from
EDGEFL_LINK_SECRET) enforce it over real TCP: a peer with a wrong or empty secret, or one that
skips the handshake, can neither submit partial sums nor fetch a model from the server, nor send
FEG requests to a leaf — while the same calls with the right secret are answered.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_gateway.launcher import Stack
from internal_link import frames
from internal_link.calls import FEG, DeviceCall
from internal_link.client import LinkClient
from internal_link.errors import LinkUnavailable

from .helpers import job_status, submit_job


def _feg_job(job_name: str) -> DeviceCall:
    body = orjson.dumps({"job_name": job_name, "capabilities": {"methods": ["xor"]}})
    return DeviceCall("job", {}, {"x-flare-device-id": "stray-phone", "content-type": "application/json"}, body, 10.0)


async def _refused(port: int, secret: bytes, method: str, payload: Any) -> None:
    client = LinkClient("127.0.0.1", port, secret, name="stray", backoff=(0.05, 0.2))
    await client.start()
    try:
        assert not await client.wait_connected(1.5), f"{method} port {port} accepted secret {secret!r}"
        with pytest.raises(LinkUnavailable) as info:
            await client.call(method, payload, timeout=2.0)
        assert not info.value.sent  # the request never left the stray process
    finally:
        await client.close()


async def _answered(port: int, secret: bytes, method: str, payload: Any) -> Any:
    client = LinkClient("127.0.0.1", port, secret, name="insider", backoff=(0.05, 0.2))
    await client.start()
    try:
        assert await client.wait_connected(10.0)
        return await client.call(method, payload, timeout=10.0)
    finally:
        await client.close()


async def _skip_handshake(port: int, method: str, payload: Any) -> bytes:
    """Read the hello, then send a request without answering it; what the peer sends back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        header = await reader.readexactly(4)
        [kind, _nonce] = frames.FrameDecoder().feed(header + await reader.readexactly(struct.unpack(">I", header)[0]))[
            0
        ]
        assert kind == frames.HELLO
        writer.writelines(frames.encode_frame([frames.REQUEST, 1, method, payload]))
        async with asyncio.timeout(15.0):
            return await reader.read()
    finally:
        writer.close()


async def test_stray_process_cannot_use_the_links(stack: Stack, tmp_path: Path) -> None:
    job_id = await submit_job(
        stack.api_url, name="xor_links", model="xor", rounds=2, devices_per_round=2, evaluate=False
    )
    server_port = orjson.loads((tmp_path / "server.ready").read_bytes())["link_port"]
    leaf_port = orjson.loads(stack.lcp_map.read_bytes())["leaf-0"]["port"]
    secret = stack.env["EDGEFL_LINK_SECRET"].encode()
    version = (await job_status(stack.api_url, job_id))["model_version"]
    model = {"job_id": job_id, "version": version}
    partial = {
        "leaf": "leaf-0",
        "job_id": job_id,
        "version": version,
        "round": 0,
        "task_ids": ["forged"],
        "weights": [1.0],
        "sum_weight": 1.0,
        "sum_update": {},
    }

    # The calls are real ones: with the secret, the server serves the model and the leaf the job.
    assert "weights" in await _answered(server_port, secret, "model", model)
    http_status, _, body = await _answered(leaf_port, secret, FEG, _feg_job("xor_links"))
    assert http_status == 200 and orjson.loads(body)["status"] == "OK"

    for wrong in (b"", b"edgefl-development-secret", secret + b"x"):
        await _refused(server_port, wrong, "submit", partial)
        await _refused(server_port, wrong, "model", model)
        await _refused(leaf_port, wrong, FEG, _feg_job("xor_links"))
    for port, method, payload in ((server_port, "submit", partial), (leaf_port, FEG, _feg_job("xor_links"))):
        assert await _skip_handshake(port, method, payload) == b""  # closed without an answer

    status = await job_status(stack.api_url, job_id)
    assert status["results_counted"] == 0 and status["history"] == []
    assert status["leaves"] == ["leaf-0", "leaf-1"]  # no stray leaf got itself listed
