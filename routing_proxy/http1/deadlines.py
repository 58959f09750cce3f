"""A connection's deadline: one per connection, what it does when it passes, and shutting down.

A part of `HttpConnection` (connection.py), as a base class in a module of its own. The server's
sweep (server.py) reads `deadline` once a second and calls `deadline_passed` when it is behind;
`_Connection` names what these methods use of the connection's state, for the type checker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from internal_link.flow_control import FlowControl

from .limits import HttpLimits
from .messages import Response, invalid_request
from .state import SLOW_MESSAGES, Deadline, Incoming
from .upload_body import UploadBody

logger = logging.getLogger(__name__)


class _Connection(Protocol):
    loop: asyncio.AbstractEventLoop
    limits: HttpLimits
    transport: asyncio.Transport | None
    deadline: float
    _on_deadline: Deadline
    _flow: FlowControl
    _incoming: Incoming | None
    _upload: UploadBody | None

    def _arm(self, seconds: float, action: Deadline) -> None: ...
    def _idle(self) -> bool: ...
    def _refuse(self, response: Response) -> None: ...
    def _upload_stalled(self) -> None: ...
    def close_if_idle(self) -> None: ...
    def abort(self) -> None: ...


class Deadlines:
    """When a connection's time is up, and what then (a `Deadline`), for `HttpConnection`."""

    deadline: float  # loop time
    _on_deadline: Deadline

    def _arm(self: _Connection, seconds: float, action: Deadline) -> None:
        self.deadline = self.loop.time() + seconds
        self._on_deadline = action

    def _arm_for_state(self: _Connection) -> None:
        """The deadline that fits once nothing is owed: the partial request's, or idleness'."""
        if self._flow.write_paused or not self._idle():
            return
        incoming = self._incoming
        if incoming is None:
            self._arm(self.limits.keepalive_timeout, Deadline.CLOSE)
        elif incoming.headers_done:
            self._arm(self.limits.body_timeout, Deadline.SLOW_BODY)
        else:
            self._arm(self.limits.head_timeout, Deadline.SLOW_HEAD)

    def deadline_passed(self: _Connection) -> None:
        action = self._on_deadline
        self._arm(float("inf"), Deadline.CLOSE)
        if action is Deadline.CLOSE:
            self.close_if_idle()
        elif action is Deadline.ABORT:
            self.abort()
        elif self._upload is not None:
            self._upload_stalled()
        else:
            logger.debug("closing a slow connection: %s", SLOW_MESSAGES[action])
            self._refuse(invalid_request(408, SLOW_MESSAGES[action]))

    def close_if_idle(self: _Connection) -> None:
        if self.transport is not None and self._idle() and self._incoming is None:
            self.transport.close()

    def abort(self: _Connection) -> None:
        if self.transport is not None:
            self.transport.abort()
