"""Test doubles for the proxy's neighbours: a real leaf on the real link, and a proxy handle."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import orjson

from edge_gateway.rpc import RpcServer
from routing_proxy.server import ProxyServer

SECRET = b"test link secret"


FegHandler = Callable[[list[Any]], Awaitable[list[Any]]]


class Leaf:
    """A leaf aggregator stand-in: the real link, a `"feg"` handler that records and echoes."""

    def __init__(
        self, name: str, feg: FegHandler | None = None, secret: bytes = SECRET, tls: ssl.SSLContext | None = None
    ) -> None:
        self.name = name
        self.received: list[list[Any]] = []
        self.port = 0
        self._feg = feg
        self._secret = secret
        self._tls = tls
        self._server: RpcServer | None = None

    async def start(self, port: int = 0) -> int:
        self._server = RpcServer({"feg": self._handle, "ping": self._ping}, self._secret, ssl=self._tls)
        self.port = await self._server.start("127.0.0.1", port or self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def _ping(self, payload: None) -> str:
        return "pong"

    async def _handle(self, payload: list[Any]) -> list[Any]:
        self.received.append(payload)
        if self._feg is not None:
            return await self._feg(payload)
        return [200, "application/msgpack", msgpack.packb({"leaf": self.name, "payload": payload}, use_bin_type=True)]


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
