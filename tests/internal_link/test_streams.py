"""Streamed answers in the link's sans-I/O core: head, chunks within credit, cancel, and a peer
that breaks the rules (a link error, never anything else)."""

from __future__ import annotations

import pytest

from internal_link.errors import FrameTampered, LinkProtocolError
from internal_link.frames import (
    STREAM_CANCEL,
    STREAM_CREDIT,
    STREAM_DATA,
    STREAM_HEAD,
    FrameDecoder,
    encode_frame,
    message_kind,
)
from internal_link.protocol import (
    ClientConnection,
    CreditGranted,
    ServerConnection,
    StreamCancelled,
    StreamChunk,
    StreamEnded,
    StreamStarted,
)
from internal_link.streams import STREAM_CHUNK, STREAM_WINDOW, chunk_at

from .test_protocol import open_pair, sent

TOTAL = STREAM_WINDOW + 3 * STREAM_CHUNK + 5


def _streaming() -> tuple[ServerConnection, ClientConnection[str]]:
    server, client = open_pair()
    server.receive_data(sent(client))  # nothing yet
    client.send_call("feg", None, "waiter")
    server.receive_data(sent(client))
    server.start_stream(1, [200, "application/msgpack"], TOTAL)
    assert client.receive_data(sent(server)) == [StreamStarted("waiter", 1, [200, "application/msgpack"], TOTAL)]
    return server, client


def _send_credit(server: ServerConnection, payload: bytes, start: int) -> int:
    """Send what the stream's credit allows, in chunks; return the new start."""
    while (credit := server.streams[1].credit) > 0:
        chunk = chunk_at([payload], start, min(credit, STREAM_CHUNK))
        server.send_chunk(1, chunk)
        start += len(chunk)
        if 1 not in server.streams:
            break
    return start


def test_a_stream_arrives_whole_within_its_credit() -> None:
    server, client = _streaming()
    payload = bytes(range(256)) * (TOTAL // 256 + 1)
    payload = payload[:TOTAL]
    start = _send_credit(server, payload, 0)
    assert start == STREAM_WINDOW  # no more without credit
    with pytest.raises(ValueError, match="exceeds the stream's credit"):
        server.send_chunk(1, b"x")
    received = b"".join(e.chunk for e in client.receive_data(sent(server)) if isinstance(e, StreamChunk))
    client.grant(1, 10 * TOTAL)  # clamped to what is left
    assert server.receive_data(sent(client)) == [CreditGranted(1, TOTAL - STREAM_WINDOW)]
    _send_credit(server, payload, start)
    events = client.receive_data(sent(server))
    received += b"".join(e.chunk for e in events if isinstance(e, StreamChunk))
    assert events[-1] == StreamEnded(1, True)
    assert received == payload
    assert not server.streams and not client.streams


def test_frames_of_a_stream_are_sealed_and_tamper_is_caught() -> None:
    server, client = _streaming()
    assert server.sealed
    server.send_chunk(1, b"a" * 100)
    wire = bytearray(sent(server))
    wire[-20] ^= 1
    with pytest.raises(FrameTampered):
        client.receive_data(bytes(wire))


def test_cancel_stops_the_sender_and_drops_what_was_on_its_way() -> None:
    server, client = _streaming()
    server.send_chunk(1, b"a" * 1000)
    on_the_way = sent(server)
    client.cancel(1)
    client.grant(1, 5000)  # nothing granted once cancelled
    assert server.receive_data(sent(client)) == [StreamCancelled(1)]
    assert not server.streams
    assert client.receive_data(on_the_way) == []  # dropped, no error
    assert client.receive_data(sent(server)) == []  # the empty chunk acknowledging the cancel
    assert not client.streams
    client.cancel(1)  # again, or after the end: nothing
    assert server.receive_data(sent(client)) == []


def test_a_stream_cut_short_by_its_sender_ends_incomplete() -> None:
    server, client = _streaming()
    server.send_chunk(1, b"a" * 10)
    server._queue([STREAM_DATA, 1, b""])  # a sender that could not finish
    assert client.receive_data(sent(server)) == [StreamChunk(1, b"a" * 10), StreamEnded(1, False)]


def test_a_stream_whose_caller_gave_up_is_cancelled() -> None:
    server, client = open_pair()
    call_id = client.send_call("feg", None, "waiter")
    client.abandon(call_id)
    server.receive_data(sent(client))
    server.start_stream(call_id, None, TOTAL)
    server.send_chunk(call_id, b"a" * 10)
    assert client.receive_data(sent(server)) == []
    assert server.receive_data(sent(client)) == [StreamCancelled(call_id)]


@pytest.mark.parametrize(
    "message, match",
    [
        ([STREAM_DATA, 1, b"x"], "no open stream"),  # no head
        ([STREAM_HEAD, 7, None, 10], "not waiting"),  # a call never made
        ([STREAM_HEAD, 0, None, 10], "not waiting"),  # the handshake's id
        ([STREAM_CREDIT, 7, 10], "never started"),  # credit for a streamed request never sent
        ([STREAM_HEAD, 1, None, -1], "malformed"),
        ([STREAM_DATA, 1, "text"], "malformed"),
    ],
)
def test_a_server_breaking_stream_rules_is_a_link_error(message: list[object], match: str) -> None:
    server, client = open_pair()
    client.send_call("feg", None, "waiter")
    server._queue(message)
    with pytest.raises(LinkProtocolError, match=match):
        client.receive_data(sent(server))


def test_data_beyond_the_credit_is_a_link_error() -> None:
    server, client = _streaming()
    server.streams[1].credit += 1  # a sender ignoring its credit
    server._queue([STREAM_DATA, 1, b"a" * (STREAM_WINDOW + 1)])
    with pytest.raises(LinkProtocolError, match="past its credit"):
        client.receive_data(sent(server))


def test_a_second_head_for_one_call_is_a_link_error() -> None:
    server, client = _streaming()
    server._queue([STREAM_HEAD, 1, None, 10])
    with pytest.raises(LinkProtocolError, match="not waiting"):
        client.receive_data(sent(server))


@pytest.mark.parametrize(
    "message, match",
    [
        ([STREAM_CREDIT, 9, 10], "unknown"),  # no such stream
        ([STREAM_CREDIT, 1, TOTAL], "past its end"),
        ([STREAM_CREDIT, 1, 0], "malformed"),
        ([STREAM_DATA, 1, b"x"], "no open stream"),  # a streamed request never headed
    ],
)
def test_a_client_breaking_stream_rules_is_a_link_error(message: list[object], match: str) -> None:
    server, client = _streaming()
    client._queue(message)
    with pytest.raises(LinkProtocolError, match=match):
        server.receive_data(sent(client))


def test_stream_frames_are_refused_before_the_handshake() -> None:
    with pytest.raises(LinkProtocolError, match="unexpected message kind"):
        ServerConnection(b"s", bytes(16)).receive_data(b"".join(encode_frame([STREAM_CANCEL, 1])))


def test_stream_frames_decode_to_their_kinds() -> None:
    decoder = FrameDecoder()
    for message in ([STREAM_HEAD, 1, [200, "x"], 0], [STREAM_DATA, 1, b""], [STREAM_CREDIT, 1, 1], [STREAM_CANCEL, 1]):
        (decoded,) = decoder.feed(b"".join(encode_frame(message)))
        assert message_kind(decoded) == message[0]


def test_chunks_are_slices_of_the_parts() -> None:
    head, tail = b"abcdef", b"ghij"
    assert bytes(chunk_at([head, tail], 1, 3)) == b"bcd"
    assert isinstance(chunk_at([head, tail], 1, 3), memoryview)  # within one part: no copy
    assert chunk_at([head, tail], 4, 4) == b"efgh"
    assert bytes(chunk_at([head, tail], 8, 100)) == b"ij"
