"""Test doubles for the proxy's neighbours: a real leaf on the real link, and a proxy handle."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import orjson

from internal_link.calls import FEG, PING, PONG, DeviceCall, device_call_handler
from internal_link.server import LinkServer
from routing_proxy.server import ProxyServer

SECRET = b"test link secret"


FegHandler = Callable[[DeviceCall], Awaitable[Any]]


class Leaf:
    """A leaf aggregator stand-in: the real link, a `FEG` handler that records and echoes.

    `received` holds each call's device request, `[endpoint, query, headers, body]`; the echo
    carries it as `payload`, and the seconds the proxy still waited as `wait`.
    """

    def __init__(
        self, name: str, feg: FegHandler | None = None, secret: bytes = SECRET, tls: ssl.SSLContext | None = None
    ) -> None:
        self.name = name
        self.received: list[list[Any]] = []
        self.port = 0
        self._feg = feg
        self._secret = secret
        self._tls = tls
        self._server: LinkServer | None = None

    async def start(self, port: int = 0) -> int:
        self._server = LinkServer(
            {FEG: device_call_handler(self._handle), PING: self._ping}, self._secret, ssl=self._tls
        )
        self.port = await self._server.start("127.0.0.1", port or self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def _ping(self, payload: None) -> str:
        return PONG

    async def _handle(self, call: DeviceCall) -> Any:
        request = [call.endpoint, call.query, call.headers, call.body]
        self.received.append(request)
        if self._feg is not None:
            return await self._feg(call)
        echo = {"leaf": self.name, "payload": request, "wait": call.wait}
        return [200, "application/msgpack", msgpack.packb(echo, use_bin_type=True)]


class Proxy:
    def __init__(self, server: ProxyServer, port: int) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{port}"

    @property
    def upstreams(self) -> Any:
        return self.server.upstreams


def echoed(body: bytes) -> dict[str, Any]:
    return dict(msgpack.unpackb(body, raw=False))


def write_lcp_map(path: Path, leaves: list[Leaf]) -> Path:
    path.write_bytes(orjson.dumps({leaf.name: {"host": "127.0.0.1", "port": leaf.port} for leaf in leaves}))
    return path


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        await asyncio.sleep(0.01)
