"""The set of open connections: one sweep for all their deadlines, the `Date` clock, the drain."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections import Counter
from collections.abc import Callable

from .budget import BodyBudget
from .connection import HttpConnection
from .limits import HttpLimits
from .messages import Dispatcher, Response

logger = logging.getLogger(__name__)


class Clock:
    """The `Date` header value, refreshed once per second by the sweep."""

    def __init__(self) -> None:
        self.date = b""
        self.tick()

    def tick(self) -> None:
        self.date = email.utils.formatdate(time.time(), usegmt=True).encode("ascii")


class HttpServer:
    """The set of open connections: their deadlines (swept each second), their body budget, the drain.

    `busy()` makes the answer to a request whose body the budget cannot take now (the dispatcher's
    protocol decides what "come back later" looks like); a body it could never take is a 413.
    """

    def __init__(self, dispatch: Dispatcher, limits: HttpLimits, busy: Callable[[], Response]) -> None:
        self.dispatch = dispatch
        self.limits = limits
        self.busy = busy
        self.connections: set[HttpConnection] = set()
        self.budget = BodyBudget(
            limits.max_buffered_bytes, limits.max_connection_buffered_bytes, limits.max_other_body_bytes
        )
        self._refusals_logged = 0
        # Plain counts for the proxy's metrics: bytes read and written on every connection, and
        # the requests this front-end refused itself, by the HTTP status it answered them with.
        self.bytes_in = 0
        self.bytes_out = 0
        self.refused: Counter[int] = Counter()
        self.clock = Clock()
        self.draining = False
        self._sweeper: asyncio.Task[None] | None = None

    def protocol(self) -> HttpConnection:
        """A protocol factory for `loop.create_server`."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return HttpConnection(self)

    async def drain(self, timeout: float) -> None:
        """Close idle connections at once and the others after their answer; cut them at `timeout`."""
        self.draining = True
        for connection in list(self.connections):
            connection.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep(self) -> None:
        # One timer for all connections: arming a timer per request would cost more than it saves.
        while True:
            await asyncio.sleep(1.0)
            self.sweep()

    def sweep(self) -> None:
        """Act on every deadline that has passed (once a second; tests call it directly)."""
        self.clock.tick()
        self._log_refusals()
        now = asyncio.get_running_loop().time()
        for connection in [c for c in self.connections if c.deadline < now]:
            try:
                connection.deadline_passed()
            except Exception:  # one broken connection must not end the sweep for all
                logger.exception("closing a connection past its deadline failed")
                connection.abort()

    def _log_refusals(self) -> None:
        # One line a second at most, however many bodies a flood of uploads gets refused.
        refused = self.budget.refused - self._refusals_logged
        if refused:
            self._refusals_logged = self.budget.refused
            logger.warning(
                "%d request bodies told to come back later: %d of %d bytes held for bodies",
                refused,
                self.budget.held,
                self.budget.total,
            )
