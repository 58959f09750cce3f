"""A connection's records: what its deadline does, why it is not read, the requests it holds."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple

from .messages import Request, Response

if TYPE_CHECKING:
    from .upload_body import UploadBody


class Deadline(enum.Enum):
    """What happens when a connection's deadline passes."""

    CLOSE = enum.auto()  # idle: close quietly
    ABORT = enum.auto()  # a client that stopped reading, or lingering after a refusal: drop it
    SLOW_HEAD = enum.auto()  # answer 408, then close
    SLOW_BODY = enum.auto()


SLOW_MESSAGES = {
    Deadline.SLOW_HEAD: "request head not received in time",
    Deadline.SLOW_BODY: "request body not received in time",
}


class Hold(enum.IntFlag):
    """Why a connection is not read (reading resumes once none holds)."""

    UNREAD_ANSWERS = enum.auto()  # the client does not read what it is sent
    BACKLOG = enum.auto()  # too many parsed requests wait their turn
    STOPPED = enum.auto()  # refused or upgraded: nothing more is parsed
    UPLOAD_ROOM = enum.auto()  # a body passed on as it arrives waits for room on its way to the leaf


class Incoming:
    """The request being parsed: all of it is dropped when it completes or is refused."""

    __slots__ = (
        "body",
        "body_bytes",
        "body_limit",
        "head_bytes",
        "header_count",
        "headers",
        "headers_done",
        "held",
        "length",
        "path",
        "query",
        "target",
        "upload",
    )

    def __init__(self) -> None:
        self.headers_done = False
        self.head_bytes = 0
        self.target = b""
        self.path = self.query = b""  # of the target, once the head is complete
        self.headers: dict[bytes, bytes] = {}
        self.header_count = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.body_limit = 0  # from the path and the budget, once the head is complete
        self.length: int | None = None  # announced by Content-Length
        self.held = 0  # of the body budget: the announced length, or what a chunked body streamed
        self.upload: UploadBody | None = None  # a body passed on as it arrives (upload_body.py)


class Pending(NamedTuple):
    """A parsed request waiting its turn, or the ready answer to a refused one."""

    item: Request | Response
    keep_alive: bool
    held: int = 0  # of the body budget, until its answer is handed to the transport
    linger: float = 0.0  # after a refusal: how long to read (and discard) what the client still sends
