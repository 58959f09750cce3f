"""What a leaf pushes to live sessions, waiting for each proxy process's poll (PROTOCOL.md §9,
`internal_link/sessions.py: SESSION_PUSHES`). The asyncio side of the session shell.

Each proxy process (`hub`) keeps one poll pending here; it is answered the moment something is
queued for one of its sessions, else after the wait it asked for. A hub that has not polled for
`HUB_GONE_AFTER` seconds is gone, and what was queued for it is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from internal_link.sessions import KEEP_OPEN, Push, PushPoll

HUB_GONE_AFTER = 90.0


class PushOutbox:
    def __init__(self) -> None:
        self._boxes: dict[str, dict[int, Push]] = {}
        self._filled: dict[str, asyncio.Event] = {}
        self._last_poll: dict[str, float] = {}

    def put(self, hub: str, session: int, messages: list[bytes], close: int = KEEP_OPEN) -> None:
        """Queue messages (then a close code, unless KEEP_OPEN) for one session, after any queued."""
        box = self._boxes.setdefault(hub, {})
        queued = box.get(session)
        if queued is not None:
            messages = queued.messages + messages
            close = close or queued.close
        box[session] = Push(session, messages, close)
        self._filled.setdefault(hub, asyncio.Event()).set()

    def drop(self, hub: str, session: int) -> None:
        """The session's socket is gone: nothing more to send it."""
        box = self._boxes.get(hub)
        if box is not None:
            box.pop(session, None)

    def poll(self, payload: Any) -> list[Push] | Awaitable[list[Push]]:
        """The `SESSION_PUSHES` handler: what is queued now, or the next pushes within the wait."""
        poll = PushPoll.check(payload)
        self._last_poll[poll.hub] = asyncio.get_running_loop().time()
        if self._boxes.get(poll.hub):
            return self._take(poll.hub)
        return self._later(poll)

    async def _later(self, poll: PushPoll) -> list[Push]:
        filled = self._filled.setdefault(poll.hub, asyncio.Event())
        try:
            await asyncio.wait_for(filled.wait(), poll.wait)
        except TimeoutError:
            pass
        self._last_poll[poll.hub] = asyncio.get_running_loop().time()
        return self._take(poll.hub)

    def _take(self, hub: str) -> list[Push]:
        box = self._boxes.pop(hub, {})
        filled = self._filled.get(hub)
        if filled is not None:
            filled.clear()
        return list(box.values())

    def forget_gone(self, now: float) -> None:
        """Drop the queues of proxy processes that stopped polling."""
        for hub in [h for h, seen in self._last_poll.items() if now - seen > HUB_GONE_AFTER]:
            del self._last_poll[hub]
            self._boxes.pop(hub, None)
            self._filled.pop(hub, None)
