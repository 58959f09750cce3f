"""What both ends of the link's asyncio shell share: the transport, batched writes, write flow
control (`flow_control.py`, shared with the proxy's HTTP front-end) and the closed signal. The
protocol itself is the sans-I/O core in `protocol.py`."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from typing import Any, cast

from .errors import LinkProtocolError
from .flow_control import FlowControl
from .protocol import ClientConnection, ServerConnection

logger = logging.getLogger(__name__)


class LinkProtocol(asyncio.Protocol):
    """One connection of either end: feeds the core, writes what it queues once per loop turn."""

    # Both made with the transport, which the loop hands over (after any TLS handshake) before anything else.
    core: ServerConnection | ClientConnection[Any]
    flow: FlowControl

    def __init__(self, refusals: Counter[str]) -> None:
        self.refusals = refusals  # the owning server's or client's, by `LinkProtocolError.reason`
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.flush_scheduled = False
        self._join_chunks = False
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.flow = FlowControl(self.transport)
        # TLS encrypts each chunk it is given as a record of its own: a 4-byte header would be one.
        self._join_chunks = transport.get_extra_info("sslcontext") is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.flow.connection_lost()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    async def drain(self) -> None:
        await self.flow.drain()

    def queued(self) -> None:
        """The core has queued bytes: they leave with the rest of this loop turn's, in one send."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        chunks = self.core.data_to_send()
        if chunks and self.transport is not None and not self.transport.is_closing():
            if self._join_chunks:
                self.transport.write(b"".join(chunks))  # copied once into the TLS records anyway
            else:
                # Headers and bodies as they are: a scatter write, no body copied behind its header.
                self.transport.writelines(chunks)

    def refuse(self, exc: LinkProtocolError) -> None:
        """The peer broke the protocol (or failed a proof, or sent a tampered frame): count, drop."""
        self.refusals[exc.reason] += 1
        self.abort(f"{exc.reason}: {exc}")

    def abort(self, reason: str) -> None:
        logger.warning("closing link to %s: %s", self.peer, reason)
        if self.transport is not None:
            self.transport.abort()

    @property
    def peer(self) -> str:
        if self.transport is None:
            return "?"
        name = self.transport.get_extra_info("peername")
        return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)


def channel_binding(transport: asyncio.BaseTransport) -> bytes:
    """The TLS connection's `tls-unique` binding, or b"" without TLS.

    Both ends of one TLS connection read the same bytes; a relay that terminates TLS has two
    connections and two bindings. (Python's ssl module offers no RFC 9266 exporter.)
    """
    tls = transport.get_extra_info("ssl_object")
    if tls is None:
        return b""
    binding: bytes | None = tls.get_channel_binding("tls-unique")
    return binding or b""
