"""The link: framed msgpack RPC over one persistent, multiplexed TCP connection per peer.

The wire format lives in `device_protocol.frames`; this module is the asyncio shell around it
(ARCHITECTURE.md "The link"). Errors::

    RpcError
    ├── RpcUnavailable    not connected, connection lost, or deadline passed; `sent` tells
    │                     whether the request may have reached the peer
    └── RpcRemoteError    the peer's handler raised; the message is its error text
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from device_protocol import frames
from device_protocol.frames import AUTH, HANDSHAKE_ID, HELLO, REQUEST, RESPONSE, FrameDecoder, FrameError

logger = logging.getLogger(__name__)

# A handler answers at once (a plain value) or later (an awaitable): most proxy requests need no task.
Handler = Callable[[Any], Any]

# Before auth a peer may only send a tiny auth frame: a stranger cannot make us buffer 256 MiB.
_HANDSHAKE_MAX_FRAME = 256
_HANDSHAKE_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 10.0


class RpcError(Exception):
    """Base of the link's errors."""


class RpcUnavailable(RpcError):
    """The call could not be answered: not connected, connection lost, or deadline passed.

    `sent` is False when the request never left this process, so it is safe to try elsewhere.
    """

    def __init__(self, message: str, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class RpcRemoteError(RpcError):
    """The remote handler raised; the message is the error text it sent back."""


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class _Link(asyncio.Protocol):
    """What both ends share: framing, write flow control, and the closed signal."""

    def __init__(self, max_frame: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(_HANDSHAKE_MAX_FRAME)
        self.max_frame = max_frame
        self.paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._outbox: list[bytes] = []
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        _set_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._wake_writers()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        while self.paused and self.transport is not None:
            if self._drain_waiter is None:
                self._drain_waiter = self.loop.create_future()
            await asyncio.shield(self._drain_waiter)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
            for msg in messages:
                self.message_received(frames.message_kind(msg), msg)
        except FrameError as exc:
            self.abort(f"protocol error: {exc}")

    def message_received(self, kind: int, msg: list[Any]) -> None:
        raise NotImplementedError

    def write(self, frame: bytes) -> None:
        # Frames written in one loop iteration leave in one send: a syscall per batch, not per call.
        if not self._outbox:
            self.loop.call_soon(self.flush)
        self._outbox.append(frame)

    def flush(self) -> None:
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        if self.transport is not None and not self.transport.is_closing():
            if len(outbox) == 1:
                self.transport.write(outbox[0])
            else:
                self.transport.writelines(outbox)

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


class _ServerLink(_Link):
    def __init__(self, server: RpcServer) -> None:
        super().__init__(server.max_frame)
        self.server = server
        self.nonce = os.urandom(frames.NONCE_SIZE)
        self.authed = False
        self._auth_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.links.add(self)
        self.write(frames.hello(self.nonce))
        self._auth_timer = self.loop.call_later(_HANDSHAKE_TIMEOUT, self.abort, "no auth within the handshake timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server.links.discard(self)
        if self._auth_timer is not None:
            self._auth_timer.cancel()

    def message_received(self, kind: int, msg: list[Any]) -> None:
        if kind == REQUEST and self.authed:
            if self.server.closing:
                # The link drops in a moment and the caller retries the call elsewhere.
                return
            _, call_id, method, payload = msg
            handler = self.server.handlers.get(method)
            try:
                if handler is None:
                    raise LookupError(f"unknown method {method!r}")
                outcome = handler(payload)
            except Exception as exc:
                self.write(_error_frame(call_id, method, exc, handler is not None))
                return
            if not isinstance(outcome, Awaitable):
                # Answered without waiting: no task, the frame leaves with this turn's others.
                try:
                    frame = frames.response(call_id, None, outcome)
                except Exception as exc:
                    frame = _error_frame(call_id, method, exc, True)
                self.write(frame)
                return
            task = self.loop.create_task(self._answer(call_id, method, outcome))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
        elif kind == AUTH and not self.authed:
            if not frames.verify_auth(self.server.secret, self.nonce, msg[1]):
                raise FrameError("wrong link secret")
            self.authed = True
            if self._auth_timer is not None:
                self._auth_timer.cancel()
            self.decoder.max_frame = self.max_frame
            self.write(frames.accepted())
        else:
            raise FrameError(f"unexpected message kind {kind} (authenticated: {self.authed})")

    async def _answer(self, call_id: int, method: str, outcome: Awaitable[Any]) -> None:
        try:
            frame = frames.response(call_id, None, await outcome)
        except Exception as exc:
            frame = _error_frame(call_id, method, exc, True)
        if self.paused:
            await self.drain()
        self.write(frame)


def _error_frame(call_id: int, method: str, exc: Exception, from_handler: bool) -> bytes:
    # A handler error is an answer, never a dropped link.
    if from_handler:
        logger.debug("handler %r failed", method, exc_info=exc)
    return frames.response(call_id, f"{type(exc).__name__}: {exc}", None)


class RpcServer:
    """Serves `handlers` (method name → callable of the payload) on one port.

    A handler returning an awaitable is awaited in a task of its own; a plain value is the answer.
    A handler exception becomes an error response.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        secret: bytes = b"",
        *,
        ssl: ssl_module.SSLContext | None = None,
        max_frame: int = frames.DEFAULT_MAX_FRAME,
    ) -> None:
        self.handlers = handlers
        self.secret = secret
        self.max_frame = max_frame
        self.links: set[_ServerLink] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._ssl = ssl
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on (host, port) and return the bound port; port 0 picks a free one."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerLink(self), host, port, ssl=self._ssl, reuse_address=True
        )
        return self._server.sockets[0].getsockname()[1]

    async def close(self, grace: float = 0.0) -> None:
        """Stop listening, give in-flight handlers up to `grace` seconds, then drop every link."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if grace > 0 and self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
        # One turn so that every handler task has started: a task cancelled before its first step
        # never awaits the handler coroutine it was given (a 'never awaited' warning, and a leaf
        # whose busy count never comes down).
        await asyncio.sleep(0)
        for task in list(self.tasks):
            task.cancel()
        for link in list(self.links):
            if link.transport is not None:
                link.flush()  # answers of handlers that finished within the grace
                link.transport.close()
        waiting = [link.closed for link in self.links] + list(self.tasks)
        if waiting:
            await asyncio.wait(waiting, timeout=5.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class _ClientLink(_Link):
    def __init__(self, client: RpcClient) -> None:
        super().__init__(client.max_frame)
        self.client = client
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ready: asyncio.Future[None] = self.loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        name = self.client.name
        self.client._link_lost(self)
        if not self.ready.done():
            self.ready.set_exception(RpcUnavailable(f"{name}: closed during handshake (wrong link secret?)"))
        if self.pending:
            error = RpcUnavailable(f"{name}: connection lost")
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(error)
            self.pending.clear()

    def message_received(self, kind: int, msg: list[Any]) -> None:
        if kind == RESPONSE:
            _, call_id, error, payload = msg
            future = self.pending.pop(call_id, None)
            if future is not None:
                if not future.done():
                    if error is None:
                        future.set_result(payload)
                    else:
                        future.set_exception(RpcRemoteError(error))
            elif call_id == HANDSHAKE_ID and not self.ready.done():
                self.decoder.max_frame = self.max_frame
                self.ready.set_result(None)
        elif kind == HELLO and not self.ready.done():
            # The server's first message: prove we know the secret (no request before this).
            self.write(frames.auth(self.client.secret, msg[1]))
        else:
            raise FrameError(f"unexpected message kind {kind}")


def _settled(link: _ClientLink, call_id: int, timer: asyncio.TimerHandle) -> None:
    timer.cancel()
    link.pending.pop(call_id, None)


def _expire(future: asyncio.Future[Any], name: str, method: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(RpcUnavailable(f"{name}: {method!r} got no answer within {timeout:.3g} s"))


class RpcClient:
    """One persistent link to an `RpcServer`, kept up in the background.

    `connected` is True only while a link whose handshake succeeded is open.
    """

    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes = b"",
        name: str = "",
        *,
        ssl: ssl_module.SSLContext | None = None,
        max_frame: int = frames.DEFAULT_MAX_FRAME,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self.host = host
        self.port = port
        self.secret = secret
        self.name = name or f"{host}:{port}"
        self.max_frame = max_frame
        self._ssl = ssl
        self._backoff = backoff
        self._link: _ClientLink | None = None
        self._next_id = HANDSHAKE_ID + 1
        self._runner: asyncio.Task[None] | None = None
        self._up = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._link is not None

    async def start(self) -> None:
        """Start connecting (and reconnecting, with capped exponential backoff) in the background."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._keep_connected())

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a connected link; return whether there is one."""
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    async def call(self, method: str, payload: Any, timeout: float) -> Any:
        """Call `method` on the peer and return its result.

        Raises:
            RpcUnavailable: not connected (`sent` False), connection lost, or `timeout` passed.
            RpcRemoteError: the remote handler raised.
        """
        link = self._link
        if link is None:
            raise RpcUnavailable(f"{self.name}: not connected", sent=False)
        if link.paused:
            deadline = link.loop.time() + timeout
            # Backpressure: queue nothing more on a congested link (it may be a slow leaf).
            try:
                async with asyncio.timeout_at(deadline):
                    await link.drain()
            except TimeoutError:
                raise RpcUnavailable(f"{self.name}: link congested for {timeout} s", sent=False) from None
            timeout = deadline - link.loop.time()
        return await self.send(method, payload, timeout)

    def send(self, method: str, payload: Any, timeout: float) -> asyncio.Future[Any]:
        """Send the call now and return the future of its result (the errors of `call`).

        For callers that answer from a callback instead of a task. Raises `RpcUnavailable`
        (`sent` False) at once when not connected or when the link is congested.
        """
        link = self._link
        if link is None:
            raise RpcUnavailable(f"{self.name}: not connected", sent=False)
        if link.paused:
            raise RpcUnavailable(f"{self.name}: link congested", sent=False)
        loop = link.loop
        call_id = self._next_id
        self._next_id = call_id + 1
        frame = frames.request(call_id, method, payload)
        future: asyncio.Future[Any] = loop.create_future()
        link.pending[call_id] = future
        timer = loop.call_later(timeout, _expire, future, self.name, method, timeout)
        future.add_done_callback(lambda _: _settled(link, call_id, timer))
        link.write(frame)
        return future

    def fail_pending(self, reason: str) -> int:
        """Fail every call waiting for an answer (`RpcUnavailable`, `sent` True); return how many.

        For a peer that stopped answering while its connection looks alive (a network partition
        sends no reset): its callers hear now instead of at their deadlines.
        """
        link = self._link
        if link is None:
            return 0
        waiting = [future for future in link.pending.values() if not future.done()]
        error = RpcUnavailable(f"{self.name}: {reason}")
        for future in waiting:
            future.set_exception(error)
        return len(waiting)

    async def close(self) -> None:
        """Stop reconnecting and close the link; pending calls fail with `RpcUnavailable`."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        link = self._link
        runner.cancel()
        try:
            await runner
        except asyncio.CancelledError:
            pass
        if link is not None:
            await asyncio.wait([link.closed], timeout=5.0)

    def _link_lost(self, link: _ClientLink) -> None:
        # Synchronously, so no call is written into a dead link before the runner wakes up.
        if self._link is link:
            self._link = None
            self._up.clear()

    async def _keep_connected(self) -> None:
        delay = self._backoff[0]
        failures = 0
        while True:
            try:
                link = await self._connect()
            except (OSError, RpcUnavailable, TimeoutError) as exc:
                failures += 1
                # The first failure is news; the rest of an outage is noise.
                level = logging.WARNING if failures == 1 else logging.DEBUG
                logger.log(level, "link %s: cannot connect to %s:%s: %s", self.name, self.host, self.port, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            if failures:
                logger.info("link %s: connected after %d failed attempts", self.name, failures)
            failures = 0
            delay = self._backoff[0]
            self._link = link
            self._up.set()
            try:
                await asyncio.shield(link.closed)
            finally:
                self._link_lost(link)
                if link.transport is not None:
                    link.transport.close()
            logger.warning("link %s: connection lost", self.name)
            await asyncio.sleep(delay)

    async def _connect(self) -> _ClientLink:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            _, link = await loop.create_connection(lambda: _ClientLink(self), self.host, self.port, ssl=self._ssl)
            try:
                await link.ready
            except BaseException:
                # Nobody will read `ready` any more; don't leave an exception unretrieved.
                link.ready.cancel()
                if link.transport is not None:
                    link.transport.close()
                raise
        return link
