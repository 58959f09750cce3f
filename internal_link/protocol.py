"""The link's sans-I/O core: one connection's handshake and calls, bytes in, events and bytes out.

No asyncio, no sockets (the shell in `connection.py`, `server.py` and `client.py` does the I/O).
Feed what the socket read to `receive_data`, act on the events it returns, and write what
`data_to_send` returns. Bad bytes from the peer raise `LinkProtocolError` and nothing else: the
shell then drops the connection.

The handshake (ARCHITECTURE.md "The link"), as a table of who may send what in which state::

    server  AWAITING_AUTH  --auth ok-->  OPEN      sends hello on creation, accepted on a good auth
    client  AWAITING_HELLO --hello-->  AWAITING_ACCEPT --response 0-->  OPEN

Before OPEN a frame may be at most `HANDSHAKE_MAX_FRAME` bytes, so a stranger cannot make a
server buffer anything; a wrong secret or any other message is a protocol error.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Generic, NamedTuple, TypeVar

from .errors import ErrorCode, LinkProtocolError, RemoteError
from .frames import (
    AUTH,
    DEFAULT_MAX_FRAME,
    HANDSHAKE_ID,
    HELLO,
    REQUEST,
    RESPONSE,
    FrameDecoder,
    auth_digest,
    encode_frame,
    message_kind,
    verify_auth,
)

HANDSHAKE_MAX_FRAME = 256
# Seconds a server gives a new connection to authenticate (the shell keeps the time).
HANDSHAKE_TIMEOUT = 10.0

Waiter = TypeVar("Waiter")


class State(Enum):
    AWAITING_HELLO = "awaiting hello"  # client
    AWAITING_ACCEPT = "awaiting accept"  # client
    AWAITING_AUTH = "awaiting auth"  # server
    OPEN = "open"


class Accepted(NamedTuple):
    """The handshake succeeded: calls may flow."""


class CallReceived(NamedTuple):
    """The peer calls `method`; answer with `send_result` or `send_error` and this `call_id`."""

    call_id: int
    method: str
    payload: Any


class Answered(NamedTuple, Generic[Waiter]):
    """The call `waiter` was sent with got its result."""

    waiter: Waiter
    result: Any


class Failed(NamedTuple, Generic[Waiter]):
    """The call `waiter` was sent with was answered with an error."""

    waiter: Waiter
    error: RemoteError


ACCEPTED = Accepted()
# Builds an event from a ready tuple, without a named tuple's Python-level __new__: one per call.
_new = tuple.__new__


class _Connection:
    __slots__ = ("_decoder", "_max_frame", "_outbox", "state")

    def __init__(self, state: State, max_frame: int) -> None:
        self.state = state
        self._max_frame = max_frame
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self._outbox: list[bytes] = []

    @property
    def open(self) -> bool:
        """Whether the handshake has succeeded."""
        return self.state is State.OPEN

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet taken by `data_to_send`."""
        return sum(map(len, self._outbox))

    def data_to_send(self) -> list[bytes]:
        """Every byte string queued since the last call, in order (header and body apart)."""
        outbox, self._outbox = self._outbox, []
        return outbox

    def _queue(self, message: list[Any]) -> None:
        # Encoded before anything is queued: a message that cannot be packed leaves no trace.
        self._outbox.extend(encode_frame(message))

    def _opened(self) -> Accepted:
        self.state = State.OPEN
        self._decoder.max_frame = self._max_frame
        return ACCEPTED


class ServerConnection(_Connection):
    """The accepting end: greets with `nonce`, takes calls once the client has proved `secret`."""

    __slots__ = ("_nonce", "_secret")

    def __init__(self, secret: bytes, nonce: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        super().__init__(State.AWAITING_AUTH, max_frame)
        self._secret = secret
        self._nonce = nonce
        self._queue([HELLO, nonce])

    def receive_data(self, data: bytes) -> list[CallReceived | Accepted]:
        """The events `data` completes, in order. Raises `LinkProtocolError` on bad bytes."""
        events: list[CallReceived | Accepted] = []
        for msg in self._decoder.feed(data):
            kind = message_kind(msg)
            if kind == REQUEST and self.state is State.OPEN:
                events.append(_new(CallReceived, (msg[1], msg[2], msg[3])))
            elif kind == AUTH and self.state is State.AWAITING_AUTH:
                if not verify_auth(self._secret, self._nonce, msg[1]):
                    raise LinkProtocolError("wrong link secret")
                self._queue([RESPONSE, HANDSHAKE_ID, None, None])
                events.append(self._opened())
            else:
                raise LinkProtocolError(f"unexpected message kind {kind} in state {self.state.value}")
        return events

    def send_result(self, call_id: int, result: Any) -> None:
        """Answer a call. Raises `TypeError`/`ValueError` (and queues nothing) if `result` cannot
        be packed; answer with `send_error` then."""
        self._outbox.extend(encode_frame([RESPONSE, call_id, None, result]))

    def send_error(self, call_id: int, code: ErrorCode, text: str) -> None:
        """Answer a call with an error code (never `UNAVAILABLE`, which is local)."""
        self._queue([RESPONSE, call_id, int(code), text])


class ClientConnection(_Connection, Generic[Waiter]):
    """The connecting end: proves `secret` when greeted, then sends calls and matches answers.

    Each call is sent with a `waiter` (the shell's future) that comes back in its answer's event;
    a call abandoned (deadline passed) is forgotten, and its late answer dropped.
    """

    __slots__ = ("_next_id", "_secret", "pending")

    def __init__(self, secret: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        super().__init__(State.AWAITING_HELLO, max_frame)
        self._secret = secret
        self._next_id = HANDSHAKE_ID + 1
        self.pending: dict[int, Waiter] = {}

    def receive_data(self, data: bytes) -> list[Answered[Waiter] | Failed[Waiter] | Accepted]:
        """The events `data` completes, in order. Raises `LinkProtocolError` on bad bytes."""
        events: list[Answered[Waiter] | Failed[Waiter] | Accepted] = []
        for msg in self._decoder.feed(data):
            kind = message_kind(msg)
            if kind == RESPONSE and self.state is State.OPEN:
                _, call_id, code, result = msg
                waiter = self.pending.pop(call_id, None)
                if waiter is None:
                    continue  # answered after its caller gave up
                if code is None:
                    events.append(_new(Answered, (waiter, result)))
                else:
                    events.append(Failed(waiter, RemoteError(ErrorCode(code), result)))
            elif kind == HELLO and self.state is State.AWAITING_HELLO:
                # The server's first message: prove we know the secret (no call before this).
                self._queue([AUTH, auth_digest(self._secret, msg[1])])
                self.state = State.AWAITING_ACCEPT
            elif kind == RESPONSE and self.state is State.AWAITING_ACCEPT and msg[1] == HANDSHAKE_ID and msg[2] is None:
                events.append(self._opened())
            else:
                raise LinkProtocolError(f"unexpected message kind {kind} in state {self.state.value}")
        return events

    def send_call(self, method: str, payload: Any, waiter: Waiter) -> int:
        """Queue a call and return its id. Raises `TypeError`/`ValueError` (and queues nothing)
        if `payload` cannot be packed."""
        call_id = self._next_id
        self._outbox.extend(encode_frame([REQUEST, call_id, method, payload]))
        self._next_id = call_id + 1
        self.pending[call_id] = waiter
        return call_id

    def abandon(self, call_id: int) -> None:
        """Forget a call whose caller no longer waits: its answer, should it come, is dropped."""
        self.pending.pop(call_id, None)

    def abandon_all(self) -> list[Waiter]:
        """Forget every call waiting for an answer and return their waiters (connection lost)."""
        waiters = list(self.pending.values())
        self.pending.clear()
        return waiters
