"""The proxy ↔ leaf calls of live sessions (PROTOCOL.md §9): many WebSocket sessions over one link.

The proxy terminates the WebSocket and relays each message's payload bytes, unparsed, to the leaf
that owns the device; the leaf keeps the session state and answers with the payloads to send
back. Pushes (a `round` the moment a device is selected, `finished`, ...) travel the other way as
the answer to a long poll each proxy process keeps pending per leaf (`SESSION_PUSHES`), so the link
stays a plain call/answer protocol. A session is named by its proxy process (`hub`, random per
process) and a number that process gives it. Named tuples checked by hand, like `calls.py`.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from .calls import BadPayload, _is_text_map
from .streams import STREAM_THRESHOLD, Streamed

SESSION_OPEN = "session_open"  # payload SessionOpen -> SessionReply
SESSION_MESSAGE = "session_message"  # payload SessionMessage -> SessionReply
SESSION_CLOSED = "session_closed"  # payload SessionClosed -> None (the socket is gone)
SESSION_PUSHES = "session_pushes"  # payload PushPoll -> list of Push, answered once any is queued

CODECS: frozenset[str] = frozenset(("json", "msgpack"))
KEEP_OPEN = 0  # a reply's close code when the session stays open
# The longest a leaf holds a push poll: the proxy's deadline for it is a little longer.
MAX_PUSH_WAIT = 30.0

_new = tuple.__new__


def _is_int(value: Any) -> bool:
    return type(value) is int and value >= 0


class SessionOpen(NamedTuple):
    """A device's WebSocket upgrade was accepted: `headers` hold its identity (lower-case
    `x-flare-*` names, also when it sent them as query parameters), `codec` its subprotocol's."""

    hub: str
    session: int
    headers: dict[str, str]
    codec: str  # one of CODECS

    @classmethod
    def check(cls, payload: Any) -> SessionOpen:
        if (
            type(payload) is list
            and len(payload) == 4
            and type(payload[0]) is str
            and _is_int(payload[1])
            and _is_text_map(payload[2], lower_case=True)
            and payload[3] in CODECS
        ):
            opened: SessionOpen = _new(cls, payload)
            return opened
        raise BadPayload(f"malformed session open: {reprlib.repr(payload)}")


class SessionMessage(NamedTuple):
    """One message a device sent: the payload of a text or binary frame, as it came."""

    hub: str
    session: int
    data: bytes

    @classmethod
    def check(cls, payload: Any) -> SessionMessage:
        if (
            type(payload) is list
            and len(payload) == 3
            and type(payload[0]) is str
            and _is_int(payload[1])
            and type(payload[2]) is bytes
        ):
            message: SessionMessage = _new(cls, payload)
            return message
        raise BadPayload(f"malformed session message: {reprlib.repr(payload)}")


class SessionClosed(NamedTuple):
    """The device's socket closed (or the proxy closed it): the leaf frees what the session held."""

    hub: str
    session: int

    @classmethod
    def check(cls, payload: Any) -> SessionClosed:
        if type(payload) is list and len(payload) == 2 and type(payload[0]) is str and _is_int(payload[1]):
            closed: SessionClosed = _new(cls, payload)
            return closed
        raise BadPayload(f"malformed session close: {reprlib.repr(payload)}")


class PushPoll(NamedTuple):
    """The proxy process `hub` asks for the pushes queued for its sessions, waiting at most `wait` s."""

    hub: str
    wait: float

    @classmethod
    def check(cls, payload: Any) -> PushPoll:
        if (
            type(payload) is list
            and len(payload) == 2
            and type(payload[0]) is str
            and type(payload[1]) in (int, float)
            and 0 <= payload[1] <= MAX_PUSH_WAIT
        ):
            poll: PushPoll = _new(cls, payload)
            return poll
        raise BadPayload(f"malformed push poll: {reprlib.repr(payload)}")


class SessionReply(NamedTuple):
    """What to send a session: message payloads in order, then a close code (KEEP_OPEN: none)."""

    messages: list[bytes]
    close: int = KEEP_OPEN

    @classmethod
    def check(cls, payload: Any) -> SessionReply:
        if (
            type(payload) is list
            and len(payload) == 2
            and type(payload[0]) is list
            and all(type(m) is bytes for m in payload[0])
            and _is_int(payload[1])
        ):
            reply: SessionReply = _new(cls, payload)
            return reply
        raise BadPayload(f"malformed session reply: {reprlib.repr(payload)}")


def session_reply(
    before: list[bytes], last: Sequence[bytes | memoryview], close: int = KEEP_OPEN
) -> SessionReply | Streamed:
    """A reply whose last message is the bytes of `last` joined (a `task`: its model part is a
    cached payload shared by every session). Up to `STREAM_THRESHOLD` bytes a `SessionReply`, as
    ever; above, a stream (`streams.py`) whose head carries `before` and `close` and whose bytes
    are the last message, its parts sent as slices, never joined (ARCHITECTURE.md "Sessions")."""
    if sum(len(part) for part in last) > STREAM_THRESHOLD:
        return Streamed([before, close], last)
    return SessionReply([*before, b"".join(last)], close)


def streamed_session_head(meta: Any) -> SessionReply:
    """A streamed session reply's head as the messages before the streamed one and the close code
    to send after it; raises `BadPayload` if malformed."""
    return SessionReply.check(meta)


class Push(NamedTuple):
    """A `SessionReply` for one session, sent on the leaf's own initiative."""

    session: int
    messages: list[bytes]
    close: int = KEEP_OPEN

    @classmethod
    def check_all(cls, payload: Any) -> list[Push]:
        if type(payload) is not list:
            raise BadPayload(f"malformed pushes: {reprlib.repr(payload)}")
        pushes = []
        for item in payload:
            if type(item) is not list or len(item) != 3 or not _is_int(item[0]):
                raise BadPayload(f"malformed push: {reprlib.repr(item)}")
            reply = SessionReply.check(item[1:])
            pushes.append(cls(item[0], reply.messages, reply.close))
        return pushes
