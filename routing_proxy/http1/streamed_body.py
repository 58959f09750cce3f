"""A streamed answer's body written to a device as its chunks arrive, paced by the device.

The source (a leaf's streamed answer) may send a window ahead; more is granted only for bytes the
device's socket has taken (the transport's write buffer below its low-water mark), so the proxy
holds about a window per download however slow the phone (ARCHITECTURE.md "Streamed answers").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from internal_link.flow_control import FlowControl

from .messages import BodySource


class StreamedBody:
    """One answer's body in flight from `source` to `transport`; `wrote(n)` after each chunk,
    `done(complete)` once the source ends (False: cut short, the client must not take it as whole)."""

    __slots__ = ("_done", "_flow", "_owed", "_source", "_transport", "_wrote")

    def __init__(
        self,
        transport: asyncio.Transport,
        flow: FlowControl,
        source: BodySource,
        wrote: Callable[[int], None],
        done: Callable[[bool], None],
    ) -> None:
        self._transport = transport
        self._flow = flow
        self._source = source
        self._wrote = wrote
        self._done = done
        self._owed = 0  # bytes written while the client was behind: granted once it catches up

    def start(self) -> None:
        self._source.consume(self._chunk, self._done)

    def resume(self) -> None:
        """The client read enough: let the source send what it has been owed."""
        owed, self._owed = self._owed, 0
        if owed:
            self._source.grant(owed)

    def cancel(self) -> None:
        """The client is gone: the source stops."""
        self._source.cancel()

    def _chunk(self, chunk: bytes) -> None:
        if self._transport.is_closing():
            return  # aborted: `cancel` follows with the connection's loss
        self._transport.write(chunk)
        self._wrote(len(chunk))
        if self._flow.write_paused:
            self._owed += len(chunk)
        else:
            self._source.grant(len(chunk))
