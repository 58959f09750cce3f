"""A session's relay when its leaf's link is congested: messages wait for room in order, and the
device's socket is not read meanwhile. The link is a stand-in here: congestion on a real one takes
hundreds of megabytes in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from internal_link.errors import LinkUnavailable
from internal_link.sessions import SessionOpen
from routing_proxy.sessions.relay import SessionRelay


class CongestedClient:
    """A connected link that refuses `send` while congested; `call` waits for room."""

    connected = True

    def __init__(self) -> None:
        self.room = asyncio.Event()
        self.delivered: list[Any] = []

    def send(self, method: str, payload: Any, timeout: float) -> asyncio.Future[Any]:
        if not self.room.is_set():
            raise LinkUnavailable("congested", sent=False)
        self.delivered.append(payload)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result([[], 0])
        return future

    async def call(self, method: str, payload: Any, timeout: float) -> Any:
        await self.room.wait()
        self.delivered.append(payload)
        return [[], 0]


class Upstream:
    def __init__(self) -> None:
        self.client = CongestedClient()


class Transport:
    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def test_messages_wait_for_room_in_order_and_reading_pauses_meanwhile() -> None:
    upstream = Upstream()
    opened = SessionOpen("hub", 1, {"x-flare-device-id": "d"}, "json")
    relay = SessionRelay("hub", 1, upstream, ServerProtocol(state=State.OPEN), opened, 5.0, lambda _: None)  # type: ignore[arg-type]
    transport = Transport()
    relay.connection_made(transport)  # type: ignore[arg-type]
    device = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), state=State.OPEN)
    for text in (b"one", b"two"):
        device.send_text(text)
    relay.data_received(b"".join(device.data_to_send()))
    assert not transport.reading and upstream.client.delivered == []
    upstream.client.room.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert upstream.client.delivered == [opened, ["hub", 1, b"one"], ["hub", 1, b"two"]]
    assert transport.reading
