"""Errors of the device protocol, each carrying the HTTP status it maps to.

::

    ProtocolError                 (400)  a request we refuse; base of the tree
    ├── InvalidRequest            (400)  missing/ill-typed fields, bad headers (PROTOCOL.md §2-§3)
    ├── MalformedBody             (400)  body is not JSON/msgpack, or not an object
    ├── UnsupportedMediaType      (415)  body in a content type we do not speak
    └── BodyTooLarge              (413)
    UpdateRejected                       a result that cannot count (DESIGN.md "Learning semantics")
    CookieInvalid                        a cookie that is missing, forged or for another task
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A request that is answered with an error body; `http_status` says which code."""

    http_status = 400
    status = "INVALID_REQUEST"

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or [message]


class InvalidRequest(ProtocolError):
    pass


class MalformedBody(ProtocolError):
    pass


class UnsupportedMediaType(ProtocolError):
    http_status = 415


class BodyTooLarge(ProtocolError):
    http_status = 413


class UpdateRejected(Exception):
    """A device result that must not touch the aggregate; the message tells the device why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CookieInvalid(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
