"""Refusals of a request while it is parsed: the exception that carries the answer, and the
answers about HTTP itself that it carries."""

from __future__ import annotations

import httptools

from .messages import Response, invalid_request
from .state import Incoming

# Read at most this much past a refused request before closing, so the client sees the answer
# instead of a reset (the kernel resets a socket closed with unread data).
LINGER_SECONDS = 2.0


class Refused(Exception):
    """Raised inside a parser callback to stop parsing and answer with `response`, then read (and
    discard) for `linger` seconds what the client still sends."""

    def __init__(self, response: Response, linger: float = LINGER_SECONDS) -> None:
        super().__init__(response.status)
        self.response = response
        self.linger = linger


def body_too_large(incoming: Incoming) -> Response:
    return invalid_request(413, f"request body larger than {incoming.body_limit} bytes")


def parser_error_reason(exc: httptools.HttpParserError) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
