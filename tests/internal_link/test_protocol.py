"""The link's sans-I/O core driven with bytes: no sockets, no loop."""

from __future__ import annotations

import struct

import pytest

from internal_link.errors import ErrorCode, LinkProtocolError, RemoteError
from internal_link.frames import AUTH, HELLO, REQUEST, RESPONSE, encode_frame
from internal_link.protocol import (
    ACCEPTED,
    HANDSHAKE_MAX_FRAME,
    Answered,
    CallReceived,
    ClientConnection,
    Failed,
    ServerConnection,
)
from internal_link.sealing import TAG_SIZE

NONCE = bytes(range(16))
CLIENT_NONCE = bytes(range(16, 32))


def frame(message: object) -> bytes:
    return b"".join(encode_frame(message))


def sent(connection: ServerConnection | ClientConnection[str]) -> bytes:
    return b"".join(connection.data_to_send())


def open_pair(
    server_secret: bytes = b"s", client_secret: bytes = b"s"
) -> tuple[ServerConnection, ClientConnection[str]]:
    server, client = ServerConnection(server_secret, NONCE), ClientConnection[str](client_secret, CLIENT_NONCE)
    assert client.receive_data(sent(server)) == []  # the hello
    assert server.receive_data(sent(client)) == [ACCEPTED]  # the auth
    assert client.receive_data(sent(server)) == [ACCEPTED]
    assert server.open and client.open
    return server, client


def test_handshake() -> None:
    open_pair()


def test_wrong_secret_is_a_protocol_error() -> None:
    server, client = ServerConnection(b"right", NONCE), ClientConnection[str](b"wrong", CLIENT_NONCE)
    client.receive_data(sent(server))
    with pytest.raises(LinkProtocolError, match="wrong link secret"):
        server.receive_data(sent(client))
    assert not server.open
    assert sent(server) == b""  # no acceptance queued


def test_handshake_byte_by_byte() -> None:
    server, client = ServerConnection(b"s", NONCE), ClientConnection[str](b"s", CLIENT_NONCE)
    for byte in sent(server):
        assert client.receive_data(bytes([byte])) == []
    events = [e for byte in sent(client) for e in server.receive_data(bytes([byte]))]
    assert events == [ACCEPTED]
    events = [e for byte in sent(server) for e in client.receive_data(bytes([byte]))]
    assert events == [ACCEPTED]


@pytest.mark.parametrize(
    "message",
    [
        [REQUEST, 1, "echo", "sneaky"],  # a call before the auth
        [RESPONSE, 0, None, None],
        [HELLO, NONCE],
    ],
)
def test_server_takes_nothing_but_an_auth_first(message: list[object]) -> None:
    with pytest.raises(LinkProtocolError, match="unexpected message kind"):
        ServerConnection(b"s", NONCE).receive_data(frame(message))


def test_frames_are_capped_until_the_handshake_succeeds() -> None:
    server = ServerConnection(b"s", NONCE)
    with pytest.raises(LinkProtocolError, match="exceeds"):
        server.receive_data(struct.pack(">I", HANDSHAKE_MAX_FRAME + 1))  # refused from the header alone
    server, client = open_pair()
    client.send_call("echo", b"x" * 100_000, "big")
    [call] = server.receive_data(sent(client))
    assert isinstance(call, CallReceived) and call.payload == b"x" * 100_000


def test_client_refuses_a_call_and_a_second_hello() -> None:
    _, client = open_pair()
    with pytest.raises(LinkProtocolError):
        client.receive_data(frame([REQUEST, 1, "echo", None]))
    with pytest.raises(LinkProtocolError):
        open_pair()[1].receive_data(frame([HELLO, NONCE]))


def test_client_wants_a_hello_before_an_acceptance() -> None:
    with pytest.raises(LinkProtocolError):
        ClientConnection[str](b"s", CLIENT_NONCE).receive_data(frame([RESPONSE, 0, None, None]))


def test_second_auth_is_a_protocol_error() -> None:
    server, _ = open_pair()
    with pytest.raises(LinkProtocolError):
        server.receive_data(frame([AUTH, CLIENT_NONCE, b"\0" * 32]))


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00\x01\xc1", frame([7, 1]), frame([RESPONSE, 1, 99, "x"])])
def test_bad_messages_are_one_typed_error(garbage: bytes) -> None:
    server, client = open_pair()
    with pytest.raises(LinkProtocolError):
        server.receive_data(garbage)
    with pytest.raises(LinkProtocolError):
        client.receive_data(garbage)


def test_calls_are_matched_to_their_answers_out_of_order_and_merged() -> None:
    server, client = open_pair()
    ids = [client.send_call("echo", i, f"waiter-{i}") for i in range(3)]
    assert len(set(ids)) == 3 and 0 not in ids  # id 0 is the handshake's
    calls = server.receive_data(sent(client))
    assert [(c.method, c.payload) for c in calls if isinstance(c, CallReceived)] == [("echo", i) for i in range(3)]
    for call in reversed(calls):
        assert isinstance(call, CallReceived)
        server.send_result(call.call_id, call.payload * 10)
    assert client.receive_data(sent(server)) == [
        Answered("waiter-2", 20),
        Answered("waiter-1", 10),
        Answered("waiter-0", 0),
    ]
    assert client.pending == {}


def test_coded_errors_round_trip() -> None:
    server, client = open_pair()
    client.send_call("register", {}, "w")
    [call] = server.receive_data(sent(client))
    assert isinstance(call, CallReceived)
    server.send_error(call.call_id, ErrorCode.TOO_MANY_DEVICES, "a job lists at most 10000 simulated devices")
    [failed] = client.receive_data(sent(server))
    assert isinstance(failed, Failed) and failed.waiter == "w"
    assert isinstance(failed.error, RemoteError)
    assert failed.error.code is ErrorCode.TOO_MANY_DEVICES
    assert failed.error.text == "a job lists at most 10000 simulated devices"


def test_an_abandoned_call_drops_its_late_answer() -> None:
    server, client = open_pair()
    call_id = client.send_call("slow", None, "gave up")
    client.send_call("echo", None, "waits")
    client.abandon(call_id)
    for call in server.receive_data(sent(client)):
        assert isinstance(call, CallReceived)
        server.send_result(call.call_id, "done")
    assert client.receive_data(sent(server)) == [Answered("waits", "done")]


def test_abandon_all_returns_every_waiter() -> None:
    _, client = open_pair()
    client.send_call("a", None, "one")
    client.send_call("b", None, "two")
    assert client.abandon_all() == ["one", "two"]
    assert client.pending == {}


def test_what_cannot_be_packed_queues_nothing() -> None:
    server, client = open_pair()
    with pytest.raises(TypeError):
        client.send_call("echo", object(), "w")
    assert client.pending == {} and sent(client) == b""
    client.send_call("echo", None, "w")
    [call] = server.receive_data(sent(client))
    assert isinstance(call, CallReceived)
    with pytest.raises(TypeError):
        server.send_result(call.call_id, object())
    assert sent(server) == b""


def test_frames_leave_as_header_and_body() -> None:
    _, client = open_pair()
    client.send_call("echo", b"payload", "w")
    header, body, tag = client.data_to_send()  # no TLS: the frame is sealed
    assert header == struct.pack(">I", len(body) + len(tag)) and len(tag) == TAG_SIZE
