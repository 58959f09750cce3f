"""The link's errors, and the codes that carry a failed call's meaning across it.

A handler refuses a call by raising `CallRefused(code, text)`; the caller gets `RemoteError` with
the same code, so it can tell "unknown job" from "too many devices" without reading the text. Any
other handler exception arrives as `ErrorCode.INTERNAL`.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Why a call got no result. The values travel in responses (ARCHITECTURE.md "The link")."""

    UNAVAILABLE = 1  # local only: no answer (not connected, connection lost, deadline passed)
    UNKNOWN_METHOD = 2  # the peer serves no such method
    BAD_PAYLOAD = 3  # the payload does not have the method's shape
    UNKNOWN_JOB = 4  # no job with that id
    TOO_MANY_DEVICES = 5  # a device group refused: the job lists enough simulated devices
    NOT_CURRENT = 6  # the model version asked for is not the current one
    SHUTTING_DOWN = 7  # the peer is draining and takes no new work
    INTERNAL = 8  # the handler failed unexpectedly
    NAME_TAKEN = 9  # another live leaf syncs under this leaf's name
    TOO_MANY_GROUPS = 10  # a device group refused: the job lists as many groups as it may
    BUSY = 11  # no room for this now (a streamed request past the bytes being received): try later


# Codes a response may carry: UNAVAILABLE never crosses the link.
WIRE_CODES = frozenset(code.value for code in ErrorCode if code is not ErrorCode.UNAVAILABLE)


class LinkError(Exception):
    """Base of the link's errors."""


class LinkProtocolError(LinkError):
    """The peer sent bytes or a message it should not have: the connection must be closed.

    `reason` names the refusal in the counts a link end keeps (`LinkServer.refusals`).
    """

    reason = "protocol_error"


class WrongSecret(LinkProtocolError):
    """The peer's proof of the link secret did not verify (wrong secret, or relayed from elsewhere)."""

    reason = "wrong_secret"


class FrameTampered(LinkProtocolError):
    """A frame failed its integrity check: changed, inserted, dropped, replayed or reordered on the way."""

    reason = "tampered_frame"


class LinkUnavailable(LinkError):
    """The call got no answer: not connected, connection lost, or deadline passed.

    `sent` is False when the request never left this process, so it is safe to try elsewhere.
    """

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class CallRefused(LinkError):
    """Raised by a handler to answer its call with `code` (and `text` for the logs)."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{code.name}: {text}")
        self.code = code
        self.text = text


class RemoteError(LinkError):
    """The peer answered the call with an error `code`; the message is its text."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{code.name}: {text}")
        self.code = code
        self.text = text
