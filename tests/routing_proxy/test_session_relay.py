"""A session's relay when its leaf's link is congested: messages wait for room in order, and the
device's socket is not read meanwhile. The link is a stand-in here: congestion on a real one takes
hundreds of megabytes in flight. And a streamed reply: one frame, nothing written inside it, credit
as the device reads, cut short never whole (the real link: test_streamed_session_tasks.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from internal_link.answer_stream import AnswerStream
from internal_link.errors import LinkUnavailable
from internal_link.sessions import SessionOpen
from routing_proxy.sessions import relay as relay_module
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


class LinkCore:
    """The link's end of a streamed answer, by hand: what the relay grants and cancels."""

    def __init__(self) -> None:
        self.granted: list[int] = []
        self.cancelled = False

    def grant(self, call_id: int, nbytes: int) -> None:
        self.granted.append(nbytes)

    def cancel(self, call_id: int) -> None:
        self.cancelled = True


class AnsweringClient:
    """A connected link whose answers the test gives, one future per message sent."""

    connected = True

    def __init__(self) -> None:
        self.answers: list[asyncio.Future[Any]] = []

    def send(self, method: str, payload: Any, timeout: float) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.answers.append(future)
        return future


class DeviceSocket(Transport):
    aborted = False

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class StreamingUpstream:
    def __init__(self) -> None:
        self.client = AnsweringClient()


def _streaming_relay(codec: str) -> tuple[SessionRelay, DeviceSocket, AnswerStream, LinkCore]:
    """A session whose `start_training` is answered by a stream of 6 bytes after one message."""
    upstream = StreamingUpstream()
    opened = SessionOpen("hub", 1, {"x-flare-device-id": "d"}, codec)
    relay = SessionRelay("hub", 1, upstream, ServerProtocol(state=State.OPEN), opened, 5.0, lambda _: None)  # type: ignore[arg-type]
    socket = DeviceSocket()
    relay.connection_made(socket)  # type: ignore[arg-type]
    upstream.client.answers[0].set_result([[], 0])  # the open
    device = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), state=State.OPEN)
    device.send_text(b'{"type":"start_training"}')
    relay.data_received(b"".join(device.data_to_send()))
    core = LinkCore()
    stream = AnswerStream(core, lambda: None, lambda _: None, 7, [[b"before"], 0], 6)  # type: ignore[arg-type]
    upstream.client.answers[1].set_result(stream)
    return relay, socket, stream, core


def _frames_read(written: list[bytes]) -> list[tuple[Opcode, bytes]]:
    device = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), state=State.OPEN, max_size=None)
    device.receive_data(b"".join(written))
    return [(e.opcode, bytes(e.data)) for e in device.events_received() if isinstance(e, Frame)]


async def test_a_streamed_reply_is_one_frame_with_nothing_inside_it_and_credit_as_the_device_reads() -> None:
    relay, socket, stream, core = _streaming_relay("msgpack")
    await asyncio.sleep(0)  # the answers' callbacks
    stream.chunk_arrived(b"abc")
    assert core.granted == [3]  # the device's socket took it
    relay.send([b"pushed"])  # mid-frame: must wait for its end
    assert _frames_read(socket.written) == [(Opcode.BINARY, b"before")]
    relay.pause_writing()
    stream.chunk_arrived(b"def")
    assert core.granted == [3]  # not while the device is behind
    relay.resume_writing()
    assert core.granted == [3, 3]
    stream.ended(True)
    assert _frames_read(socket.written) == [
        (Opcode.BINARY, b"before"),
        (Opcode.BINARY, b"abcdef"),
        (Opcode.BINARY, b"pushed"),
    ]


async def test_a_stream_cut_short_aborts_the_device_socket() -> None:
    relay, socket, stream, _ = _streaming_relay("json")
    await asyncio.sleep(0)
    stream.chunk_arrived(b"abc")
    relay.send([b"pushed"])
    stream.ended(False)
    assert socket.aborted
    assert _frames_read(socket.written) == [(Opcode.TEXT, b"before")]  # and 3 of 6 bytes: no whole frame


async def test_a_device_gone_mid_frame_cancels_the_stream() -> None:
    relay, _, stream, core = _streaming_relay("json")
    await asyncio.sleep(0)
    stream.chunk_arrived(b"abc")
    relay.connection_lost(None)
    assert core.cancelled


async def test_a_frame_that_stops_moving_aborts_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "STALL_TIMEOUT", 0.5)
    _, socket, stream, _ = _streaming_relay("json")
    await asyncio.sleep(0)
    stream.chunk_arrived(b"abc")
    await asyncio.sleep(0.1)
    assert not socket.aborted
    await asyncio.sleep(1.5)
    assert socket.aborted  # its loss then cancels the stream (test_a_device_gone_mid_frame_...)


async def test_pongs_wait_behind_the_frame_and_a_device_piling_up_pings_is_not_read() -> None:
    relay, socket, stream, _ = _streaming_relay("msgpack")
    await asyncio.sleep(0)
    device = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), state=State.OPEN)
    for number in range(200):  # about 20 KiB of pongs owed
        device.send_ping(b"%0100d" % number)
    relay.data_received(b"".join(device.data_to_send()))
    assert not socket.reading
    stream.chunk_arrived(b"abcdef")
    assert _frames_read(socket.written) == [(Opcode.BINARY, b"before"), (Opcode.BINARY, b"abcdef")]
    stream.ended(True)
    frames = _frames_read(socket.written)
    assert frames[2:] == [(Opcode.PONG, b"%0100d" % number) for number in range(200)]
    assert socket.reading
