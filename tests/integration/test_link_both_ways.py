"""A process on the LAN without the secret gets nothing from, and injects nothing into, the links
between real leaf and server processes (`python -m edge_gateway leaf|server`, no TLS).

- An impostor at the server's address, answering the handshake with a guessed proof, gets no
  call from a real leaf: no sync, no result. One that holds the secret gets calls at once.
- An impostor at a leaf's address gets no device request (nor its token) from a real proxy.
- A relay between a real leaf and the real server passes the handshake through, then sends a call
  of its own: the server refuses it (counted in /api/health), never answers it.
- The same relay changing one letter of a relayed call: refused and counted, not answered.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgpack
import pytest

from edge_gateway.processes import Child, free_port, spawn, wait_ready_file
from internal_link.calls import PING, PONG
from internal_link.frames import HELLO, REQUEST, RESPONSE, encode_frame
from internal_link.protocol import ServerConnection

SECRET = "both-ways-test-secret"
ENV = {"EDGEFL_LINK_SECRET": SECRET}
FORGED_ID = 999_999
WAIT = 20.0  # seconds a test waits for the processes at most (a loaded machine is slow)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(4)
    return header + await reader.readexactly(struct.unpack(">I", header)[0])


def message(frame: bytes) -> list[object]:
    """A frame's message; a sealed frame's tag is left unread behind it."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(frame[4:])
    decoded = next(unpacker)
    assert isinstance(decoded, list)
    return decoded


async def start_leaf(tmp_path: Path, server_port: int) -> Child:
    ready = tmp_path / "leaf.ready"
    args = ["edge_gateway", "leaf", "--name", "leaf-x", "--port", "0", "--server", f"127.0.0.1:{server_port}"]
    leaf = await spawn("leaf", [*args, "--data-dir", str(tmp_path / "leaf"), "--ready-file", str(ready)], tmp_path, ENV)
    try:
        await wait_ready_file(leaf, ready)
    except BaseException:
        await leaf.stop()
        raise
    return leaf


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[dict[str, int]]:
    ready = tmp_path / "server.ready"
    args = ["edge_gateway", "server", "--http-port", "0", "--link-port", "0", "--data-dir", str(tmp_path / "server")]
    child = await spawn("server", [*args, "--ready-file", str(ready)], tmp_path, ENV)
    try:
        yield await wait_ready_file(child, ready)
    finally:
        await child.stop()


async def link_refusals(http_port: int) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{http_port}/api/health") as reply:
        refusals: dict[str, int] = (await reply.json())["link_refusals"]
        return refusals


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.05)


@dataclass
class Impostor:
    """Listens at the server's (or a leaf's) address: greets, takes the peer's proof, accepts with
    `secret`'s proof (None: a guess, and then it answers pings), and records every frame it gets."""

    secret: bytes | None
    connections: int = 0
    after_handshake: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.secret is None:
                writer.write(b"".join(encode_frame([HELLO, os.urandom(16)])))
                await read_frame(reader)  # the leaf's proof
                writer.write(b"".join(encode_frame([RESPONSE, 0, None, os.urandom(32)])))
            else:
                core = ServerConnection(self.secret, os.urandom(16))
                writer.writelines(core.data_to_send())
                core.receive_data(await read_frame(reader))
                writer.writelines(core.data_to_send())
            while True:
                frame = await read_frame(reader)
                self.after_handshake.append(frame)
                call = message(frame)
                if self.secret is None and call[0] == REQUEST and call[2] == PING:
                    # Looks healthy to a proxy that took its acceptance: device requests would follow.
                    writer.write(b"".join(encode_frame([RESPONSE, call[1], None, PONG])))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def listening(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> asyncio.Server:
    return await asyncio.start_server(handle, "127.0.0.1", 0)


def port_of(listener: asyncio.Server) -> int:
    return int(listener.sockets[0].getsockname()[1])


async def test_an_impostor_server_gets_no_call_from_a_real_leaf(tmp_path: Path) -> None:
    impostor = Impostor(None)
    listener = await listening(impostor.handle)
    leaf = await start_leaf(tmp_path, port_of(listener))
    try:
        # Refused at the acceptance, and again (or, were it not refused, a call).
        await until(lambda: impostor.connections >= 3 or bool(impostor.after_handshake))
        await asyncio.sleep(1.0)
        assert impostor.after_handshake == []  # no sync, no model request, no result
        assert "the server did not prove the link secret" in leaf.log_path.read_text()
    finally:
        await leaf.stop()
        listener.close()


async def test_a_server_that_proves_the_secret_gets_the_leafs_calls(tmp_path: Path) -> None:
    # The control of the test above: the same harness sees calls as soon as the proof is right.
    insider = Impostor(SECRET.encode())
    listener = await listening(insider.handle)
    leaf = await start_leaf(tmp_path, port_of(listener))
    try:
        await until(lambda: bool(insider.after_handshake))
        assert message(insider.after_handshake[0])[0] == REQUEST
    finally:
        await leaf.stop()
        listener.close()


async def start_proxy(tmp_path: Path, leaf_port: int) -> tuple[Child, int]:
    lcp_map = tmp_path / "lcp_map.json"
    lcp_map.write_text(f'{{"C11": {{"host": "127.0.0.1", "port": {leaf_port}}}}}')
    port = free_port()
    proxy = await spawn("proxy", ["routing_proxy", str(port), str(lcp_map), "--host", "127.0.0.1"], tmp_path, ENV)
    try:
        async with asyncio.timeout(WAIT):
            while True:
                assert proxy.alive(), proxy.log_path.read_text()
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                return proxy, port
    except BaseException:
        await proxy.stop()
        raise


async def device_job_request(port: int) -> dict[str, object]:
    headers = {"X-Flare-Device-ID": "phone-1", "X-Flare-User-Info": "auth_token=device-secret-token"}
    body = {"job_name": "any", "capabilities": {"methods": ["xor"]}}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/job", json=body, headers=headers) as reply,
    ):
        answer: dict[str, object] = await reply.json()
        return answer


@pytest.mark.parametrize("secret", [None, SECRET.encode()], ids=["impostor", "insider (control)"])
async def test_an_impostor_leaf_gets_no_device_request_from_a_real_proxy(tmp_path: Path, secret: bytes | None) -> None:
    at_leaf_address = Impostor(secret)
    listener = await listening(at_leaf_address.handle)
    proxy, port = await start_proxy(tmp_path, port_of(listener))
    try:
        await until(lambda: at_leaf_address.connections >= 1)
        await asyncio.sleep(1.0)  # the proxy's pings, were it connected
        answer = await device_job_request(port)
        await asyncio.sleep(0.5)
        if secret is None:
            assert answer["status"] == "RETRY"  # no leaf to ask
            assert at_leaf_address.after_handshake == []  # no ping, no device request, no token
        else:
            assert at_leaf_address.after_handshake  # the same harness sees the proxy's calls
    finally:
        await proxy.stop()
        listener.close()


@dataclass
class Relayed:
    """One leaf connection through the relay: what the server sent after the handshake."""

    after_handshake: list[bytes] = field(default_factory=list)
    attacked: bool = False
    closed: bool = False


class Relay:
    """Poses as the server to a leaf and forwards frame by frame to the real one; once, on the first
    connection that gets that far, it `inject`s a call of its own right after the handshake, or
    `tamper`s with the leaf's first call (one letter of its method). A leaf opens two connections
    (sync and watch on one, results and models on the other): either may be the one attacked."""

    def __init__(self, server_port: int, mode: str) -> None:
        self.server_port = server_port
        self.mode = mode
        self.connections: list[Relayed] = []
        self.done = False  # the one attack was made

    async def handle(self, leaf_reader: asyncio.StreamReader, leaf_writer: asyncio.StreamWriter) -> None:
        relayed = Relayed()
        self.connections.append(relayed)
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.server_port)
        try:
            async with asyncio.TaskGroup() as both:
                both.create_task(self._down(relayed, server_reader, leaf_writer, server_writer))
                both.create_task(self._up(relayed, leaf_reader, server_writer))
        except* (asyncio.IncompleteReadError, ConnectionError):
            pass  # either side closed
        finally:
            relayed.closed = True
            leaf_writer.close()
            server_writer.close()

    async def _down(
        self, relayed: Relayed, server: asyncio.StreamReader, leaf: asyncio.StreamWriter, upstream: asyncio.StreamWriter
    ) -> None:
        count = 0
        while True:
            frame = await read_frame(server)
            count += 1
            leaf.write(frame)
            if count > 2:  # after the hello and the acceptance
                relayed.after_handshake.append(frame)
            elif count == 2 and not self.done and self.mode == "inject":
                forged = [REQUEST, FORGED_ID, "model", {"job_id": "any", "version": 0}]
                upstream.write(b"".join(encode_frame(forged)))  # before any frame of the leaf's
                relayed.attacked = self.done = True

    async def _up(self, relayed: Relayed, leaf: asyncio.StreamReader, server: asyncio.StreamWriter) -> None:
        count = 0
        while True:
            frame = await read_frame(leaf)
            count += 1
            if count == 2 and not self.done and self.mode == "tamper":  # the first call, after the proof
                method = message(frame)[2]
                assert isinstance(method, str)
                packed = msgpack.packb(method)
                at = frame.index(packed, 4) + len(packed) - 1
                frame = frame[:at] + bytes([frame[at] ^ 0x20]) + frame[at + 1 :]  # "sync" -> "synC"
                relayed.attacked = self.done = True
            server.write(frame)


@pytest.mark.parametrize("mode", ["inject", "tamper"])
async def test_a_relay_between_real_leaf_and_server_gets_nothing_acted_upon(
    tmp_path: Path, server: dict[str, int], mode: str
) -> None:
    relay = Relay(server["link_port"], mode)
    listener = await listening(relay.handle)
    leaf = await start_leaf(tmp_path, port_of(listener))
    try:
        await until(lambda: relay.done)
        attacked = next(c for c in relay.connections if c.attacked)
        await until(lambda: attacked.closed or bool(attacked.after_handshake))
        assert attacked.after_handshake == []  # not answered: neither the attacked call nor anything after
        assert await link_refusals(server["http_port"]) == {"tampered_frame": 1}
        # The server dropped that connection; the leaf reconnects through the relay, honest now, and is served.
        later = relay.connections.index(attacked) + 1
        await until(lambda: any(c.after_handshake for c in relay.connections[later:]))
    finally:
        await leaf.stop()
        listener.close()
