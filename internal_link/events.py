"""The events the link's sans-I/O core (`protocol.py`) returns from the bytes it is fed."""

from __future__ import annotations

from typing import Any, Generic, NamedTuple, TypeVar

from .errors import RemoteError

Waiter = TypeVar("Waiter")


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


class CreditGranted(NamedTuple):
    """The client may take `nbytes` more of stream `call_id`: send them when the link has room."""

    call_id: int
    nbytes: int


class StreamCancelled(NamedTuple):
    """The client wants no more of stream `call_id` (its device left): send none."""

    call_id: int


class StreamStarted(NamedTuple, Generic[Waiter]):
    """The call `waiter` was sent with is answered by a stream of `total` bytes under `call_id`."""

    waiter: Waiter
    call_id: int
    meta: Any
    total: int


class StreamChunk(NamedTuple):
    """The next bytes of stream `call_id`."""

    call_id: int
    chunk: bytes


class UploadCredit(NamedTuple):
    """The server granted more of streamed request `call_id`: send what waits, if the link has room."""

    call_id: int


class UploadCancelled(NamedTuple):
    """The server wants no more of streamed request `call_id` (its answer to the call says why)."""

    call_id: int


class StreamEnded(NamedTuple):
    """Stream `call_id` is over: `complete`, or cut short by its sender (the answer is truncated)."""

    call_id: int
    complete: bool


ACCEPTED = Accepted()


ClientEvent = (
    Answered[Waiter]
    | Failed[Waiter]
    | Accepted
    | StreamStarted[Waiter]
    | StreamChunk
    | StreamEnded
    | UploadCredit
    | UploadCancelled
)
