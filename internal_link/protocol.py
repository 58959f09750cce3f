"""The link's sans-I/O core: one connection's handshake and calls, bytes in, events and bytes out.

No asyncio, no sockets (the shell in `connection.py`, `server.py` and `client.py` does the I/O).
Feed what the socket read to `receive_data`, act on the events it returns, and write what
`data_to_send` returns. Bad bytes from the peer raise `LinkProtocolError` and nothing else: the
shell then drops the connection.

The handshake (ARCHITECTURE.md "The link"), as a table of who may send what in which state::

    server  AWAITING_AUTH  --auth, client proof ok-->  OPEN     sends hello on creation, accept + its proof
    client  AWAITING_HELLO --hello-->  AWAITING_ACCEPT --accept, server proof ok-->  OPEN

Both proofs cover both nonces and the channel binding (`proofs.py`), so each end knows the other
holds the secret, on this very connection. Without a binding (no TLS) every frame after the
handshake is sealed (`sealing.py`). Before OPEN a frame may be at most `HANDSHAKE_MAX_FRAME` bytes,
so a stranger cannot make a server buffer anything, and frames are read one at a time, so none
sent behind the handshake's last one escapes the seal; a wrong proof is `WrongSecret`, any other
message a protocol error.

Once open, a server may answer a call with a stream instead of one response (`streams.py`): a head,
then chunks within the credit the client grants; a client may send a call's payload the same way,
within the server's credit (`request_streams.py`). A chunk beyond its credit or on a stream never
headed, a credit past a stream's end or for no stream, is a protocol error.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Generic

from .errors import ErrorCode, LinkProtocolError, RemoteError, WrongSecret
from .events import (
    ACCEPTED,
    Accepted,
    Answered,
    CallReceived,
    ClientEvent,
    CreditGranted,
    Failed,
    StreamCancelled,
    StreamChunk,
    StreamEnded,
    StreamStarted,
    UploadCancelled,
    UploadCredit,
    Waiter,
)
from .frames import (
    AUTH,
    DEFAULT_MAX_FRAME,
    HANDSHAKE_ID,
    HELLO,
    REQUEST,
    REQUEST_HEAD,
    RESPONSE,
    STREAM_CANCEL,
    STREAM_CREDIT,
    STREAM_DATA,
    STREAM_HEAD,
    FrameDecoder,
    encode_frame,
    message_kind,
)
from .proofs import CLIENT, SERVER, frame_key, proof, transcript, verify_proof
from .request_streams import Receiving, Sending, UploadLedger
from .sealing import Opener, Sealer
from .streams import Incoming, Outgoing

HANDSHAKE_MAX_FRAME = 256
# Seconds a server gives a new connection to authenticate (the shell keeps the time).
HANDSHAKE_TIMEOUT = 10.0

# Builds an event from a ready tuple, without a named tuple's Python-level __new__: one per call.
_new = tuple.__new__


class State(Enum):
    AWAITING_HELLO = "awaiting hello"  # client
    AWAITING_ACCEPT = "awaiting accept"  # client
    AWAITING_AUTH = "awaiting auth"  # server
    OPEN = "open"


class _Connection:
    __slots__ = ("_binding", "_decoder", "_max_frame", "_outbox", "_sealer", "_secret", "queued_bytes", "state")

    def __init__(self, state: State, secret: bytes, binding: bytes, max_frame: int) -> None:
        self.state = state
        self._secret = secret
        self._binding = binding
        self._max_frame = max_frame
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self._outbox: list[bytes] = []
        self.queued_bytes = 0  # of frame bodies in the outbox: counted as queued, not summed when asked
        self._sealer: Sealer | None = None

    @property
    def sealed(self) -> bool:
        """Whether frames carry integrity tags (an open link without a TLS channel binding)."""
        return self._sealer is not None

    @property
    def open(self) -> bool:
        """Whether the handshake has succeeded."""
        return self.state is State.OPEN

    def data_to_send(self) -> list[bytes]:
        """Every byte string queued since the last call, in order (header and body apart)."""
        outbox, self._outbox = self._outbox, []
        self.queued_bytes = 0
        return outbox

    def _queue(self, message: list[Any]) -> None:
        # Encoded before anything is queued: a message that cannot be packed leaves no trace.
        frame = encode_frame(message, self._sealer)
        self._outbox.extend(frame)
        self.queued_bytes += len(frame[1])

    def _read_handshake(self, data: bytes) -> bool:
        """Handshake messages one at a time, the rest held back (the step that opens changes how
        later frames are read); whether the handshake is done."""
        messages = self._decoder.feed(data, one=True)
        while messages:
            if self._handshake_step(messages[0]):
                return True
            messages = self._decoder.feed(b"", one=True)
        return False

    def _handshake_step(self, msg: Any) -> bool:
        """Act on one handshake message; whether it completed the handshake."""
        raise NotImplementedError

    def _open(self, covered: bytes, sends: bytes, receives: bytes) -> None:
        self.state = State.OPEN
        self._decoder.max_frame = self._max_frame
        if not self._binding:
            # No TLS to protect the frames: each direction seals its own with a key of this connection.
            self._sealer = Sealer(frame_key(self._secret, sends, covered))
            self._decoder.opener = Opener(frame_key(self._secret, receives, covered))


class ServerConnection(_Connection):
    """The accepting end: greets with `nonce`, takes calls once the client has proved `secret`
    over this connection (`binding`: the TLS channel binding, empty without TLS), and proves it back.
    Streamed requests are assembled within `uploads`, shared by a server's connections."""

    __slots__ = ("_nonce", "receiving", "streams")

    def __init__(
        self,
        secret: bytes,
        nonce: bytes,
        max_frame: int = DEFAULT_MAX_FRAME,
        binding: bytes = b"",
        uploads: UploadLedger | None = None,
    ) -> None:
        super().__init__(State.AWAITING_AUTH, secret, binding, max_frame)
        self._nonce = nonce
        self.streams: dict[int, Outgoing] = {}  # by call id, while bytes are left to send
        self.receiving = Receiving(uploads if uploads is not None else UploadLedger(), self._queue)
        self._queue([HELLO, nonce])

    def receive_data(self, data: bytes) -> list[CallReceived | Accepted | CreditGranted | StreamCancelled]:
        """The events `data` completes, in order. Raises `LinkProtocolError` on bad bytes."""
        events: list[CallReceived | Accepted | CreditGranted | StreamCancelled] = []
        if self.state is not State.OPEN:
            if not self._read_handshake(data):
                return events
            events.append(ACCEPTED)
            data = b""
        for msg in self._decoder.feed(data):
            kind = message_kind(msg)
            if kind == REQUEST:
                events.append(_new(CallReceived, (msg[1], msg[2], msg[3])))
            elif kind == STREAM_CREDIT:
                stream = self.streams.get(msg[1])
                if stream is None or not stream.grant(msg[2]):
                    raise LinkProtocolError(f"credit of {msg[2]} bytes for stream {msg[1]} past its end or unknown")
                events.append(CreditGranted(msg[1], msg[2]))
            elif kind == STREAM_CANCEL:
                # Unknown: it ended before the cancel crossed it. Else its end is acknowledged.
                if self.streams.pop(msg[1], None) is not None:
                    self._queue([STREAM_DATA, msg[1], b""])
                    events.append(StreamCancelled(msg[1]))
            elif kind == STREAM_DATA:  # of a streamed request: a call once its last byte is in
                if (call := self.receiving.data(msg[1], msg[2])) is not None:
                    events.append(_new(CallReceived, (msg[1], call[0], call[1])))
            elif kind == REQUEST_HEAD:
                self.receiving.head(msg[1], msg[2], msg[3], msg[4])
            else:
                raise LinkProtocolError(f"unexpected message kind {msg[0]} in state {self.state.value}")
        return events

    def _handshake_step(self, msg: Any) -> bool:
        kind = message_kind(msg)
        if kind != AUTH:
            raise LinkProtocolError(f"unexpected message kind {kind} in state {self.state.value}")
        covered = transcript(self._nonce, msg[1], self._binding)
        if not verify_proof(self._secret, CLIENT, covered, msg[2]):
            raise WrongSecret("wrong link secret")
        # The acceptance leaves unsealed: the client opens (and starts checking tags) on reading it.
        self._queue([RESPONSE, HANDSHAKE_ID, None, proof(self._secret, SERVER, covered)])
        self._open(covered, sends=SERVER, receives=CLIENT)
        return True

    def send_result(self, call_id: int, result: Any) -> None:
        """Answer a call. Raises `TypeError`/`ValueError` (and queues nothing) if `result` cannot
        be packed; answer with `send_error` then."""
        self._queue([RESPONSE, call_id, None, result])

    def send_error(self, call_id: int, code: ErrorCode, text: str) -> None:
        """Answer a call with an error code (never `UNAVAILABLE`, which is local)."""
        self._queue([RESPONSE, call_id, int(code), text])

    def start_stream(self, call_id: int, meta: Any, total: int) -> None:
        """Answer a call with a stream of `total` bytes: its head now, its chunks with `send_chunk`.
        Raises `TypeError`/`ValueError` (and queues nothing) if `meta` cannot be packed."""
        self._queue([STREAM_HEAD, call_id, meta, total])
        if total:
            self.streams[call_id] = Outgoing(total)

    def send_chunk(self, call_id: int, chunk: bytes | memoryview) -> None:
        """Queue the next chunk of a stream (at most its credit: `ValueError` otherwise)."""
        stream = self.streams[call_id]
        stream.sent(len(chunk))
        self._queue([STREAM_DATA, call_id, chunk])
        if not stream.left:
            del self.streams[call_id]


class ClientConnection(_Connection, Generic[Waiter]):
    """The connecting end: proves `secret` when greeted (with its own `nonce`), checks the server's
    proof, then sends calls and matches answers. `binding` as for `ServerConnection`.

    Each call is sent with a `waiter` (the shell's future) that comes back in its answer's event;
    a call abandoned (deadline passed) is forgotten, and its late answer dropped.
    """

    __slots__ = ("_covered", "_next_id", "_nonce", "pending", "sending", "streams")

    def __init__(self, secret: bytes, nonce: bytes, max_frame: int = DEFAULT_MAX_FRAME, binding: bytes = b"") -> None:
        super().__init__(State.AWAITING_HELLO, secret, binding, max_frame)
        self._nonce = nonce
        self._covered = b""
        self._next_id = HANDSHAKE_ID + 1
        self.pending: dict[int, Waiter] = {}
        self.streams: dict[int, Incoming] = {}  # by call id, until their last chunk
        self.sending = Sending(self._queue, self._issued)  # streamed requests with bytes left to send

    def receive_data(self, data: bytes) -> list[ClientEvent[Waiter]]:
        """The events `data` completes, in order. Raises `LinkProtocolError` on bad bytes."""
        events: list[ClientEvent[Waiter]] = []
        if self.state is not State.OPEN:
            if not self._read_handshake(data):
                return events
            events.append(ACCEPTED)
            data = b""
        for msg in self._decoder.feed(data):
            kind = message_kind(msg)
            if kind != RESPONSE:
                if kind == STREAM_DATA:
                    self._stream_data(msg[1], msg[2], events)
                elif kind == STREAM_HEAD:
                    self._stream_head(msg[1], msg[2], msg[3], events)
                elif kind == STREAM_CREDIT:
                    if self.sending.credit(msg[1], msg[2]):
                        events.append(UploadCredit(msg[1]))
                elif kind == STREAM_CANCEL:
                    if self.sending.cancelled(msg[1]):
                        events.append(UploadCancelled(msg[1]))
                else:
                    raise LinkProtocolError(f"unexpected message kind {msg[0]} in state {self.state.value}")
                continue
            _, call_id, code, result = msg
            waiter = self.pending.pop(call_id, None)
            if waiter is None:
                continue  # answered after its caller gave up
            if code is None:
                events.append(_new(Answered, (waiter, result)))
            else:
                events.append(Failed(waiter, RemoteError(ErrorCode(code), result)))
        return events

    def _handshake_step(self, msg: Any) -> bool:
        kind = message_kind(msg)
        if kind == HELLO and self.state is State.AWAITING_HELLO:
            # The server's first message: prove we know the secret (no call before this).
            self._covered = transcript(msg[1], self._nonce, self._binding)
            self._queue([AUTH, self._nonce, proof(self._secret, CLIENT, self._covered)])
            self.state = State.AWAITING_ACCEPT
            return False
        if kind == RESPONSE and self.state is State.AWAITING_ACCEPT and msg[1] == HANDSHAKE_ID and msg[2] is None:
            # Whoever cannot prove the secret gets no call, hence no device request and no result.
            if type(msg[3]) is not bytes or not verify_proof(self._secret, SERVER, self._covered, msg[3]):
                raise WrongSecret("the server did not prove the link secret")
            self._open(self._covered, sends=CLIENT, receives=SERVER)
            return True
        raise LinkProtocolError(f"unexpected message kind {kind} in state {self.state.value}")

    def send_call(self, method: str, payload: Any, waiter: Waiter) -> int:
        """Queue a call and return its id. Raises `TypeError`/`ValueError` (and queues nothing)
        if `payload` cannot be packed."""
        call_id = self._next_id
        self._queue([REQUEST, call_id, method, payload])
        self._next_id = call_id + 1
        self.pending[call_id] = waiter
        return call_id

    def send_streamed_call(self, method: str, meta: Any, total: int, waiter: Waiter) -> int:
        """Queue the head of a call whose payload follows as `total` bytes (`sending.send` each
        chunk within its credit) and return its id. Raises as `send_call` does for `meta`."""
        call_id = self._next_id
        self._queue([REQUEST_HEAD, call_id, method, meta, total])
        self._next_id = call_id + 1
        self.pending[call_id] = waiter
        self.sending.start(call_id, total)
        return call_id

    def _issued(self, call_id: int) -> bool:
        return HANDSHAKE_ID < call_id < self._next_id

    def abandon(self, call_id: int) -> None:
        """Forget a call whose caller no longer waits: its answer, should it come, is dropped."""
        self.pending.pop(call_id, None)

    def abandon_all(self) -> list[Waiter]:
        """Forget every call waiting for an answer and return their waiters (connection lost)."""
        waiters = list(self.pending.values())
        self.pending.clear()
        self.streams.clear()
        self.sending.streams.clear()
        return waiters

    def grant(self, call_id: int, nbytes: int) -> None:
        """Let the server send up to `nbytes` more of a stream (never past its end)."""
        stream = self.streams.get(call_id)
        if stream is not None and (nbytes := stream.grantable(nbytes)):
            self._queue([STREAM_CREDIT, call_id, nbytes])

    def cancel(self, call_id: int) -> None:
        """Want no more of a stream: the server stops; chunks already on their way are dropped."""
        stream = self.streams.get(call_id)
        if stream is not None and not stream.cancelled:
            stream.cancelled = True
            self._queue([STREAM_CANCEL, call_id])

    def _stream_head(self, call_id: int, meta: Any, total: int, events: list[ClientEvent[Waiter]]) -> None:
        if call_id in self.streams or not HANDSHAKE_ID < call_id < self._next_id:
            raise LinkProtocolError(f"stream head for call {call_id}, which is not waiting for one")
        waiter = self.pending.pop(call_id, None)
        if waiter is None:  # its caller gave up: stop the stream, drop what is already on its way
            if total:
                self.streams[call_id] = Incoming(total, cancelled=True)
                self._queue([STREAM_CANCEL, call_id])
            return
        events.append(StreamStarted(waiter, call_id, meta, total))
        if total:
            self.streams[call_id] = Incoming(total)
        else:
            events.append(StreamEnded(call_id, True))

    def _stream_data(self, call_id: int, chunk: bytes, events: list[ClientEvent[Waiter]]) -> None:
        stream = self.streams.get(call_id)
        if stream is None:
            raise LinkProtocolError(f"stream data for call {call_id}, which has no open stream")
        if not chunk:  # cut short by the server (or the end of a cancel)
            del self.streams[call_id]
            if not stream.cancelled:
                events.append(StreamEnded(call_id, False))
            return
        if not stream.take(len(chunk)):
            raise LinkProtocolError(f"stream {call_id} sent past its credit")
        if not stream.cancelled:
            events.append(StreamChunk(call_id, chunk))
        if stream.complete:
            del self.streams[call_id]
            if not stream.cancelled:
                events.append(StreamEnded(call_id, True))
