"""The link over real sockets on 127.0.0.1, under both event loops."""

from __future__ import annotations

import asyncio
import gc
import os
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from edge_gateway.processes import free_port
from internal_link import frames
from internal_link.client import LinkClient
from internal_link.errors import CallRefused, ErrorCode, LinkUnavailable, RemoteError
from internal_link.server import LinkServer

from ..certificates import self_signed

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
Runner = Callable[[Callable[[], Awaitable[None]]], None]


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Runner:
    def run(main: Callable[[], Awaitable[None]]) -> None:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            runner.run(main())  # type: ignore[arg-type]

    return run


async def echo(payload: Any) -> Any:
    return payload


async def fail(payload: Any) -> Any:
    raise ValueError(f"bad payload {payload!r}")


async def slow(payload: float) -> str:
    await asyncio.sleep(payload)
    return "late"


async def refuse(payload: Any) -> Any:
    raise CallRefused(ErrorCode.UNKNOWN_JOB, f"no job {payload!r}")


HANDLERS = {"echo": echo, "fail": fail, "slow": slow, "refuse": refuse}


@asynccontextmanager
async def link(
    handlers: Mapping[str, Any] = HANDLERS,
    server_secret: bytes = b"",
    client_secret: bytes = b"",
    server_ssl: ssl.SSLContext | None = None,
    client_ssl: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[tuple[LinkServer, LinkClient, int]]:
    server = LinkServer(handlers, server_secret, ssl=server_ssl)
    port = await server.start("127.0.0.1", 0)
    client = LinkClient(host, port, client_secret, name="test", ssl=client_ssl, backoff=(0.02, 0.2))
    await client.start()
    try:
        yield server, client, port
    finally:
        await client.close()
        await server.close()


def test_round_trip(run: Runner) -> None:
    async def main() -> None:
        async with link(server_secret=b"s3cret", client_secret=b"s3cret") as (_, client, _port):
            assert await client.wait_connected(5)
            payload = ["task", {"job_id": "j"}, {"x-flare-device-id": "d"}, b"\x00{}\xff"]
            assert await client.call("echo", payload, timeout=5) == payload
            result = await client.call("echo", {"s": "text", "b": b"bytes", "n": None}, timeout=5)
            assert type(result["b"]) is bytes and type(result["s"]) is str

    run(main)


def test_many_concurrent_calls(run: Runner) -> None:
    async def main() -> None:
        async with link() as (_, client, _port):
            assert await client.wait_connected(5)
            results = await asyncio.gather(*(client.call("echo", i, timeout=20) for i in range(3000)))
            assert results == list(range(3000))

    run(main)


def test_large_payloads_both_ways(run: Runner) -> None:
    async def main() -> None:
        async with link() as (_, client, _port):
            assert await client.wait_connected(5)
            big = bytes(range(256)) * (20 * 1024 * 1024 // 256)
            small = asyncio.ensure_future(client.call("echo", "small", timeout=30))
            assert await client.call("echo", big, timeout=30) == big
            assert await small == "small"

    run(main)


def test_handler_error_is_a_remote_error_and_the_link_survives(run: Runner) -> None:
    async def main() -> None:
        async with link() as (_, client, _port):
            assert await client.wait_connected(5)
            with pytest.raises(RemoteError, match="ValueError: bad payload 7") as info:
                await client.call("fail", 7, timeout=5)
            assert info.value.code is ErrorCode.INTERNAL
            with pytest.raises(RemoteError, match="unknown method 'nope'") as info:
                await client.call("nope", None, timeout=5)
            assert info.value.code is ErrorCode.UNKNOWN_METHOD
            with pytest.raises(RemoteError) as info:
                await client.call("refuse", "j", timeout=5)
            assert (info.value.code, info.value.text) == (ErrorCode.UNKNOWN_JOB, "no job 'j'")
            assert await client.call("echo", "still up", timeout=5) == "still up"

    run(main)


def test_unencodable_result_is_a_remote_error(run: Runner) -> None:
    async def odd(payload: Any) -> Any:
        return object()

    async def main() -> None:
        async with link({"odd": odd}) as (_, client, _port):
            assert await client.wait_connected(5)
            with pytest.raises(RemoteError, match="TypeError"):
                await client.call("odd", None, timeout=5)

    run(main)


def test_wrong_secret_is_refused(run: Runner) -> None:
    async def main() -> None:
        async with link(server_secret=b"right", client_secret=b"wrong") as (server, client, _port):
            assert not await client.wait_connected(0.5)
            assert not client.connected
            assert not any(link.authenticated for link in server.links)
            with pytest.raises(LinkUnavailable) as info:
                await client.call("echo", 1, timeout=5)
            assert not info.value.sent

    run(main)


def test_no_request_is_served_before_auth(run: Runner) -> None:
    async def main() -> None:
        async with link() as (_, _client, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            header = await reader.readexactly(4)
            [kind, nonce] = frames.FrameDecoder().feed(
                header + await reader.readexactly(struct.unpack(">I", header)[0])
            )[0]
            assert kind == frames.HELLO and len(nonce) == frames.NONCE_SIZE
            writer.writelines(frames.encode_frame([frames.REQUEST, 1, "echo", "sneaky"]))
            assert await reader.read() == b""  # closed without an answer
            writer.close()
            await writer.wait_closed()

    run(main)


def test_not_connected_fails_at_once(run: Runner) -> None:
    async def main() -> None:
        client = LinkClient("127.0.0.1", free_port(), name="nobody", backoff=(0.02, 0.1))
        await client.start()
        try:
            started = time.monotonic()
            with pytest.raises(LinkUnavailable, match="not connected") as info:
                await client.call("echo", 1, timeout=10)
            assert not info.value.sent
            assert time.monotonic() - started < 0.5
        finally:
            await client.close()

    run(main)


def test_deadline(run: Runner) -> None:
    async def main() -> None:
        async with link() as (_, client, _port):
            assert await client.wait_connected(5)
            started = time.monotonic()
            with pytest.raises(LinkUnavailable, match=r"no answer within 0\.2") as info:
                await client.call("slow", 1.0, timeout=0.2)
            assert info.value.sent
            assert time.monotonic() - started < 0.9
            # The late answer is dropped; the link goes on.
            assert await client.call("echo", "next", timeout=5) == "next"
            await asyncio.sleep(1.0)
            assert await client.call("echo", "after", timeout=5) == "after"

    run(main)


def test_server_close_fails_pending_calls_and_client_reconnects(run: Runner) -> None:
    async def main() -> None:
        async with link() as (server, client, port):
            assert await client.wait_connected(5)
            pending = [asyncio.ensure_future(client.call("slow", 30.0, timeout=60)) for _ in range(5)]
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await server.close()
            for call in pending:
                with pytest.raises(LinkUnavailable, match="connection lost"):
                    await call
            assert time.monotonic() - started < 2
            assert not client.connected
            with pytest.raises(LinkUnavailable, match="not connected"):
                await client.call("echo", 1, timeout=5)

            revived = LinkServer(HANDLERS)
            assert await revived.start("127.0.0.1", port) == port
            try:
                assert await client.wait_connected(5)
                assert await client.call("echo", "back", timeout=5) == "back"
            finally:
                await client.close()
                await revived.close()

    run(main)


def test_server_close_grace_lets_handlers_finish(run: Runner) -> None:
    async def main() -> None:
        async with link() as (server, client, _port):
            assert await client.wait_connected(5)
            call = asyncio.ensure_future(client.call("slow", 0.2, timeout=5))
            await asyncio.sleep(0.05)
            await server.close(grace=2.0)
            assert await call == "late"

    run(main)


def test_server_close_in_the_turn_a_call_arrives_starts_its_handler_and_fails_the_call(run: Runner) -> None:
    # A handler that wraps another coroutine, and a close scheduled before the handler's task
    # takes its first step: cancelling that task unstarted would leave the inner coroutine never
    # awaited (a RuntimeWarning, an error under this suite's filterwarnings) and its bookkeeping
    # undone. The finally below is that bookkeeping.
    finished: list[str] = []
    closing: list[asyncio.Task[None]] = []

    async def inner() -> str:
        await asyncio.sleep(30)
        return "never"

    async def wrapper(payload: Any) -> str:
        try:
            return await inner()
        finally:
            finished.append(payload)

    def wrapped(payload: Any) -> Awaitable[str]:
        closing.append(asyncio.ensure_future(server.close()))
        return wrapper(payload)

    async def main() -> None:
        nonlocal server
        async with link({"wrapped": wrapped, "echo": echo}) as (server, client, _port):
            assert await client.wait_connected(5)
            with pytest.raises(LinkUnavailable, match="connection lost"):
                await client.call("wrapped", "first", timeout=5)
            await closing[0]
            assert finished == ["first"]
            gc.collect()  # an unawaited coroutine would be reported here

    server: LinkServer
    run(main)


def test_tls(run: Runner, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    client_ssl = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with link(
            server_ssl=server_ssl, client_ssl=client_ssl, host="localhost", server_secret=b"k", client_secret=b"k"
        ) as (_, client, _port):
            assert await client.wait_connected(5)
            assert await client.call("echo", b"x" * 1_000_000, timeout=10) == b"x" * 1_000_000

    run(main)


def test_tls_with_an_untrusted_server_never_connects(run: Runner, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)

    async def main() -> None:
        async with link(server_ssl=server_ssl, client_ssl=ssl.create_default_context(), host="localhost") as (
            _,
            client,
            _port,
        ):
            assert not await client.wait_connected(0.5)

    run(main)


def test_a_peer_that_does_not_read_its_answers_gets_no_more_calls_handled(run: Runner) -> None:
    # 60 calls whose answers are 1 MB each, from a peer that reads nothing: were every call answered
    # at once, the server would hold 60 MB of answers; it handles calls only as its answers leave.
    from internal_link.protocol import ClientConnection

    handled = []

    def megabyte(payload: int) -> bytes:
        handled.append(payload)
        return bytes(1_000_000)

    async def main() -> None:
        async with link({"megabyte": megabyte}) as (_, _client, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            core: ClientConnection[int] = ClientConnection(b"", os.urandom(frames.NONCE_SIZE))
            while not core.open:
                core.receive_data(await reader.read(4096))
                writer.writelines(core.data_to_send())
            for i in range(60):
                core.send_call("megabyte", i, i)
            writer.writelines(core.data_to_send())
            await asyncio.sleep(0.5)
            held_back = len(handled)
            answers: list[Any] = []
            while len(answers) < 60:  # bounded: 60 MB on loopback, or the test's timeout
                answers += core.receive_data(await reader.read(1 << 20))
            writer.close()
            # Kernel socket buffers take a few answers before the server's transport backs up.
            assert held_back < 30, held_back
            assert handled == list(range(60)) and [a.waiter for a in answers] == list(range(60))

    run(main)
