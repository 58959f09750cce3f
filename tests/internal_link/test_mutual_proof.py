"""Both ends prove the secret on this very connection, and frames without TLS are sealed.

Sans-I/O: the attacks are played with bytes between `ServerConnection`s and `ClientConnection`s
(tests/integration/test_link_relay.py plays them against real processes).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from internal_link.errors import FrameTampered, LinkProtocolError, WrongSecret
from internal_link.frames import REQUEST, RESPONSE, FrameDecoder, encode_frame
from internal_link.proofs import SERVER, proof, transcript
from internal_link.protocol import ACCEPTED, CallReceived, ClientConnection, ServerConnection
from internal_link.sealing import LARGE_FRAME, Sealer

SERVER_NONCE = bytes(range(16))
CLIENT_NONCE = bytes(range(16, 32))
ATTACKER_NONCE = bytes(range(32, 48))


def sent(connection: ServerConnection | ClientConnection[str]) -> bytes:
    return b"".join(connection.data_to_send())


def frame(message: object) -> bytes:
    return b"".join(encode_frame(message))


def handshake(
    server: ServerConnection, client: ClientConnection[str]
) -> tuple[ServerConnection, ClientConnection[str]]:
    assert client.receive_data(sent(server)) == []
    assert server.receive_data(sent(client)) == [ACCEPTED]
    assert client.receive_data(sent(server)) == [ACCEPTED]
    return server, client


def sealed_pair() -> tuple[ServerConnection, ClientConnection[str]]:
    return handshake(ServerConnection(b"s", SERVER_NONCE), ClientConnection[str](b"s", CLIENT_NONCE))


def test_a_server_without_the_secret_gets_no_call() -> None:
    client = ClientConnection[str](b"s", CLIENT_NONCE)
    client.receive_data(sent(ServerConnection(b"guess", SERVER_NONCE)))
    # An impostor accepts whatever the client proves, but can only prove its guess back.
    guess = proof(b"guess", SERVER, transcript(SERVER_NONCE, CLIENT_NONCE, b""))
    with pytest.raises(WrongSecret, match="server did not prove"):
        client.receive_data(frame([RESPONSE, 0, None, guess]))
    assert not client.open


@pytest.mark.parametrize("claimed", [None, b"", b"\0" * 32])
def test_an_acceptance_without_a_valid_proof_is_refused(claimed: bytes | None) -> None:
    client = ClientConnection[str](b"s", CLIENT_NONCE)
    client.receive_data(sent(ServerConnection(b"s", SERVER_NONCE)))
    with pytest.raises(WrongSecret):
        client.receive_data(frame([RESPONSE, 0, None, claimed]))


def test_a_client_proof_reflected_as_the_server_proof_is_refused() -> None:
    client = ClientConnection[str](b"s", CLIENT_NONCE)
    client.receive_data(sent(ServerConnection(b"s", SERVER_NONCE)))
    [[_, _, client_proof]] = FrameDecoder().feed(sent(client))
    with pytest.raises(WrongSecret):
        client.receive_data(frame([RESPONSE, 0, None, client_proof]))


def test_a_relay_of_the_handshake_cannot_send_a_call_of_its_own() -> None:
    # The relay poses as the server to a real client and forwards both ways: the handshake passes,
    # but the relay has no frame key, so its own call (unsealed, or sealed with a guess) is refused.
    forged = [REQUEST, 7, "submit", "forged"]
    for attempt in (frame(forged), b"".join(encode_frame(forged, Sealer(b"guessed key")))):
        server, _ = sealed_pair()
        with pytest.raises(FrameTampered):
            server.receive_data(attempt)


def test_a_call_sent_behind_a_relayed_auth_is_not_read_unsealed() -> None:
    server, client = ServerConnection(b"s", SERVER_NONCE), ClientConnection[str](b"s", CLIENT_NONCE)
    client.receive_data(sent(server))
    relayed_auth = sent(client)
    with pytest.raises(FrameTampered):
        server.receive_data(relayed_auth + frame([REQUEST, 1, "submit", "forged"]))


def test_a_changed_byte_is_refused() -> None:
    server, client = sealed_pair()
    client.send_call("submit", {"weights": [1.0]}, "w")
    frame = bytearray(sent(client))
    frame[-20] ^= 1  # in the body, not the tag
    with pytest.raises(FrameTampered):
        server.receive_data(bytes(frame))


def test_replayed_dropped_and_reordered_frames_are_refused() -> None:
    server, client = sealed_pair()
    client.send_call("a", 1, "one")
    first = sent(client)
    assert server.receive_data(first) == [CallReceived(1, "a", 1)]
    with pytest.raises(FrameTampered):
        server.receive_data(first)  # replayed
    server, client = sealed_pair()
    client.send_call("a", 1, "one")
    sent(client)  # dropped on the way
    client.send_call("b", 2, "two")
    with pytest.raises(FrameTampered):
        server.receive_data(sent(client))
    server, client = sealed_pair()
    client.send_call("a", 1, "one")
    first = sent(client)
    client.send_call("b", 2, "two")
    with pytest.raises(FrameTampered):
        server.receive_data(sent(client) + first)  # reordered


def test_answers_are_sealed_too() -> None:
    server, client = sealed_pair()
    client.send_call("a", 1, "one")
    [call] = server.receive_data(sent(client))
    assert isinstance(call, CallReceived)
    server.send_result(call.call_id, "result")
    answer = bytearray(sent(server))
    answer[-1] ^= 1  # in the tag
    with pytest.raises(FrameTampered):
        client.receive_data(bytes(answer))


def test_over_tls_the_proofs_cover_the_binding_and_frames_are_not_sealed() -> None:
    server, client = handshake(
        ServerConnection(b"s", SERVER_NONCE, binding=b"tls-unique"),
        ClientConnection[str](b"s", CLIENT_NONCE, binding=b"tls-unique"),
    )
    assert not server.sealed and not client.sealed
    client.send_call("a", 1, "one")
    assert len(client.data_to_send()) == 2  # header and body, no tag: TLS protects them
    # A relay terminating TLS on each side has two connections, hence two bindings.
    server = ServerConnection(b"s", SERVER_NONCE, binding=b"relay <-> server")
    client = ClientConnection[str](b"s", CLIENT_NONCE, binding=b"client <-> relay")
    client.receive_data(sent(server))
    with pytest.raises(WrongSecret):
        server.receive_data(sent(client))


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(
        st.binary(max_size=64) | st.text(max_size=16) | st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=5
    ),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_a_sealed_stream_with_any_byte_changed_gives_only_original_messages(
    payloads: list[object], position: int, flip: int
) -> None:
    server, client = sealed_pair()
    for payload in payloads:
        client.send_call("echo", payload, "w")
    stream = bytearray(sent(client))
    stream[position % len(stream)] ^= flip
    try:
        calls = server.receive_data(bytes(stream))
    except LinkProtocolError:
        return  # refused: the connection is dropped
    # Never a changed call: at most the ones before the change (a header changed to a longer
    # frame waits for bytes that never come).
    assert [call.payload for call in calls if isinstance(call, CallReceived)] == payloads[: len(calls)]


@pytest.mark.parametrize("size", [100, LARGE_FRAME - 200, LARGE_FRAME, 3 * LARGE_FRAME])
def test_a_changed_byte_is_refused_whichever_mac_seals_the_frame(size: int) -> None:
    # Below LARGE_FRAME frames carry a keyed BLAKE2b tag, from it an HMAC-SHA256 one.
    server, client = sealed_pair()
    client.send_call("submit", bytes(size), "w")
    untouched = sent(client)
    changed = bytearray(untouched)
    changed[len(changed) // 2] ^= 1
    other, _ = sealed_pair()
    with pytest.raises(FrameTampered):
        server.receive_data(bytes(changed))
    assert [type(e) for e in other.receive_data(untouched)] == [CallReceived]
