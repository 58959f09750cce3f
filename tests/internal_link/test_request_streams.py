"""Streamed requests in the link's sans-I/O core: a call's payload sent as a head and chunks within
the server's credit, assembled and dispatched once whole, bounded by the server's ledger, cut or
cancelled either way; a peer breaking the rules is a link error, never anything else."""

from __future__ import annotations

import pytest

from internal_link.errors import ErrorCode, FrameTampered, LinkProtocolError, RemoteError
from internal_link.events import CallReceived, Failed, UploadCancelled, UploadCredit
from internal_link.frames import (
    REQUEST_HEAD,
    STREAM_CANCEL,
    STREAM_CREDIT,
    STREAM_DATA,
    FrameDecoder,
    encode_frame,
    message_kind,
)
from internal_link.protocol import ClientConnection, ServerConnection
from internal_link.request_streams import StreamedRequest, UploadLedger
from internal_link.streams import STREAM_CHUNK, STREAM_WINDOW

from .test_protocol import CLIENT_NONCE, NONCE, sent

TOTAL = STREAM_WINDOW + 3 * STREAM_CHUNK + 5
PAYLOAD = (bytes(range(256)) * (TOTAL // 256 + 1))[:TOTAL]
META = ["result", {}, {}, b"", 30.0]


def _pair(limit: int = 10 * TOTAL) -> tuple[ServerConnection, ClientConnection[str], UploadLedger]:
    ledger = UploadLedger(limit)
    server, client = ServerConnection(b"s", NONCE, uploads=ledger), ClientConnection[str](b"s", CLIENT_NONCE)
    client.receive_data(sent(server))
    server.receive_data(sent(client))
    client.receive_data(sent(server))
    assert server.open and client.open
    return server, client, ledger


def _uploading(limit: int = 10 * TOTAL) -> tuple[ServerConnection, ClientConnection[str], UploadLedger]:
    server, client, ledger = _pair(limit)
    assert client.send_streamed_call("feg", META, TOTAL, "waiter") == 1
    assert server.receive_data(sent(client)) == []  # a head alone is no call yet
    return server, client, ledger


def _send_credit(client: ClientConnection[str], start: int) -> int:
    """Send what the stream's credit allows, in chunks; return the new start."""
    while 1 in client.sending.streams and (credit := client.sending.streams[1].credit) > 0:
        chunk = PAYLOAD[start : start + min(credit, STREAM_CHUNK)]
        client.sending.send(1, chunk)
        start += len(chunk)
    return start


def test_a_streamed_request_is_one_call_once_whole_within_its_credit() -> None:
    server, client, ledger = _uploading()
    assert ledger.held == TOTAL  # the whole body is counted from its head
    start = _send_credit(client, 0)
    assert start == STREAM_WINDOW  # no more without credit
    with pytest.raises(ValueError, match="exceeds the stream's credit"):
        client.sending.send(1, b"x")
    assert server.receive_data(sent(client)) == []
    # Each chunk taken is credit for as much more, never past the total.
    credits = client.receive_data(sent(server))
    assert credits and set(credits) == {UploadCredit(1)}
    assert client.sending.streams[1].credit == TOTAL - STREAM_WINDOW
    _send_credit(client, start)
    assert not client.sending.streams
    events = server.receive_data(sent(client))
    assert events == [CallReceived(1, "feg", StreamedRequest(META, PAYLOAD))]
    assert ledger.held == 0 and ledger.outcomes == {"started": 1, "completed": 1}
    assert not server.receiving.streams


def test_streamed_request_frames_are_sealed_and_tamper_is_caught() -> None:
    server, client, _ = _uploading()
    assert server.sealed
    client.sending.send(1, b"a" * 100)
    wire = bytearray(sent(client))
    wire[-20] ^= 1
    with pytest.raises(FrameTampered):
        server.receive_data(bytes(wire))


def test_a_request_cut_short_by_its_sender_is_never_dispatched() -> None:
    server, client, ledger = _uploading()
    _send_credit(client, 0)
    client.sending.cut(1)
    assert server.receive_data(sent(client)) == []  # the chunks, then the empty one: no call
    assert ledger.held == 0 and ledger.outcomes == {"started": 1, "cancelled": 1}
    assert not server.receiving.streams and not client.sending.streams
    client._queue([STREAM_DATA, 1, b"late"])
    with pytest.raises(LinkProtocolError, match="no open stream"):
        server.receive_data(sent(client))


def test_a_stream_past_the_ledger_is_refused_busy_and_what_was_on_its_way_dropped() -> None:
    server, client, ledger = _pair(limit=TOTAL - 1)
    client.send_streamed_call("feg", META, TOTAL, "waiter")
    _send_credit(client, 0)  # a window leaves before the refusal comes back
    assert server.receive_data(sent(client)) == []  # dropped as they come: no link error
    assert ledger.held == 0 and ledger.outcomes == {"refused": 1}
    events = client.receive_data(sent(server))
    assert events[0] == UploadCancelled(1)
    assert type(events[1]) is Failed and events[1].waiter == "waiter"
    error = events[1].error
    assert isinstance(error, RemoteError) and error.code is ErrorCode.BUSY
    assert not client.sending.streams
    assert server.receive_data(sent(client)) == []  # the client's end of the stream
    assert not server.receiving.streams


def test_a_server_stopping_cancels_what_it_receives() -> None:
    server, client, ledger = _uploading()
    assert server.receiving.receiving == 1
    assert server.receiving.stop_all(ErrorCode.SHUTTING_DOWN, "stopping") == 1
    assert ledger.held == 0 and ledger.outcomes == {"started": 1, "stopped": 1}
    events = client.receive_data(sent(server))
    assert events[0] == UploadCancelled(1)
    assert type(events[1]) is Failed and events[1].error.code is ErrorCode.SHUTTING_DOWN
    assert server.receive_data(sent(client)) == [] and not server.receiving.streams


def test_a_lost_connection_frees_what_it_was_receiving() -> None:
    server, _, ledger = _uploading()
    server.receiving.drop_all()
    assert ledger.held == 0 and ledger.outcomes == {"started": 1, "lost": 1}


def test_a_small_call_is_not_held_behind_a_stream() -> None:
    server, client, _ = _uploading()
    client.sending.send(1, PAYLOAD[:STREAM_CHUNK])
    client.send_call("feg", ["job"], "small")
    client.sending.send(1, PAYLOAD[STREAM_CHUNK : 2 * STREAM_CHUNK])
    assert server.receive_data(sent(client)) == [CallReceived(2, "feg", ["job"])]


def test_data_beyond_the_credit_is_a_link_error() -> None:
    server, client, _ = _uploading()
    client.sending.streams[1].credit += 1  # a sender ignoring its credit
    client._queue([STREAM_DATA, 1, b"a" * (STREAM_WINDOW + 1)])
    with pytest.raises(LinkProtocolError, match="past its credit"):
        server.receive_data(sent(client))


@pytest.mark.parametrize(
    "message, match",
    [
        ([STREAM_DATA, 9, b"x"], "no open stream"),
        ([REQUEST_HEAD, 1, "feg", None, 10], "streaming already"),
        ([REQUEST_HEAD, 2, "feg", None, 0], "malformed"),
        ([REQUEST_HEAD, 2, 5, None, 10], "malformed"),
        ([STREAM_DATA, 1, "text"], "malformed"),
    ],
)
def test_a_client_breaking_request_stream_rules_is_a_link_error(message: list[object], match: str) -> None:
    server, client, _ = _uploading()
    client._queue(message)
    with pytest.raises(LinkProtocolError, match=match):
        server.receive_data(sent(client))


@pytest.mark.parametrize(
    "message, match",
    [
        ([STREAM_CREDIT, 9, 10], "never started"),
        ([STREAM_CREDIT, 1, TOTAL], "past its end"),
        ([STREAM_CANCEL, 9], "never started"),
    ],
)
def test_a_server_breaking_request_stream_rules_is_a_link_error(message: list[object], match: str) -> None:
    server, client, _ = _uploading()
    server._queue(message)
    with pytest.raises(LinkProtocolError, match=match):
        client.receive_data(sent(server))


def test_credit_or_cancel_crossing_the_streams_end_is_ignored() -> None:
    server, client, _ = _uploading()
    client.sending.cut(1)
    server._queue([STREAM_CREDIT, 1, 10])
    server._queue([STREAM_CANCEL, 1])
    assert client.receive_data(sent(server)) == []


def test_a_request_head_decodes_to_its_kind() -> None:
    (decoded,) = FrameDecoder().feed(b"".join(encode_frame([REQUEST_HEAD, 1, "feg", META, 10])))
    assert message_kind(decoded) == REQUEST_HEAD
