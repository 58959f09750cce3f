"""Flow control of one asyncio connection, shared by the device-facing HTTP server and the link.

Two directions, one owner each:

- **Reading** stops while any reason to stop holds and resumes only when the last is gone. A
  reason is one bit of an int (name them with an `enum.IntFlag`): a protocol that pauses for its
  backlog and, separately, because its peer does not read its answers must not resume on the first
  reason clearing while the other still holds.
- **Writing** follows the transport's water marks: the protocol passes its `pause_writing` and
  `resume_writing` callbacks on; callers that write from a task `await drain()`, callers that write
  from callbacks look at `write_paused`.

No I/O of its own: it only calls the transport's `pause_reading`/`resume_reading`.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    """Read pauses by reason and write pauses with an awaitable drain, for one transport.

    Make it in `connection_made` and call `connection_lost()` from the protocol's own: after it,
    read calls do nothing and `drain()` returns at once (the caller's next write finds the
    connection gone).
    """

    __slots__ = ("_drain_waiter", "_paused_by", "_transport", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport: asyncio.Transport | None = transport
        self._paused_by = 0
        self._drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False

    # Reading

    @property
    def reading(self) -> bool:
        """No reason to stop reading holds."""
        return not self._paused_by

    def paused_for(self, reason: int) -> bool:
        return bool(self._paused_by & reason)

    def pause_reading(self, reason: int) -> None:
        """Stop reading until `reason` (and any other reason given meanwhile) is resumed."""
        if not self._paused_by and self._transport is not None:
            self._transport.pause_reading()
        self._paused_by |= reason

    def resume_reading(self, reason: int) -> None:
        """`reason` no longer holds; read again if no other does."""
        if not self._paused_by & reason:
            return
        self._paused_by &= ~reason
        if not self._paused_by and self._transport is not None:
            self._transport.resume_reading()

    def resume_reading_regardless(self) -> None:
        """Drop every reason and read: for a connection that will only discard what it reads."""
        if self._paused_by:
            self._paused_by = 0
            if self._transport is not None:
                self._transport.resume_reading()

    # Writing

    def pause_writing(self) -> None:
        """The transport's write buffer went above its high-water mark."""
        self.write_paused = True

    def resume_writing(self) -> None:
        """The transport's write buffer drained below its low-water mark."""
        self.write_paused = False
        self._wake_writers()

    async def drain(self) -> None:
        """Wait while writing is paused and the connection is open."""
        while self.write_paused and self._transport is not None:
            if self._drain_waiter is None:
                self._drain_waiter = asyncio.get_running_loop().create_future()
            # Shared by every waiting writer: one of them being cancelled must not wake the others.
            await asyncio.shield(self._drain_waiter)

    def connection_lost(self) -> None:
        """The transport is gone: wake the writers, and let later read calls do nothing."""
        self._transport = None
        self._wake_writers()

    def _wake_writers(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
