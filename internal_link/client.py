"""The connecting end of the link's asyncio shell: `LinkClient` keeps one link to a `LinkServer`."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as ssl_module
from collections import Counter
from typing import Any

from .answer_stream import AnswerStream
from .connection import LinkProtocol, channel_binding
from .errors import LinkProtocolError, LinkUnavailable
from .events import Answered, Failed, StreamChunk, StreamEnded, StreamStarted, UploadCancelled, UploadCredit
from .frames import DEFAULT_MAX_FRAME, NONCE_SIZE
from .protocol import ClientConnection
from .upload_stream import UploadStream

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 10.0

CallFuture = asyncio.Future[Any]


class _ClientProtocol(LinkProtocol):
    core: ClientConnection[CallFuture]

    def __init__(self, client: LinkClient) -> None:
        super().__init__(client.refusals)
        self.client = client
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.streams: dict[int, AnswerStream] = {}  # answers arriving as streams, by call id
        self.uploads: dict[int, UploadStream] = {}  # streamed requests with bytes left to send

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        client = self.client
        self.core = ClientConnection(
            client.secret, os.urandom(NONCE_SIZE), client.max_frame, channel_binding(transport)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        name = self.client.name
        self.client._link_lost(self)
        if not self.ready.done():
            self.ready.set_exception(LinkUnavailable(f"{name}: closed during handshake (wrong link secret?)"))
        waiting = self.core.abandon_all()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.ended(False)
        uploads, self.uploads = self.uploads, {}
        for upload in uploads.values():
            upload.stopped()
        if waiting:
            error = LinkUnavailable(f"{name}: connection lost")
            for future in waiting:
                if not future.done():
                    future.set_exception(error)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.core.receive_data(data)
        except LinkProtocolError as exc:
            self.refuse(exc)
            return
        if not self.ready.done():
            self.queued()  # the auth, when this was the hello
        credit = False
        for event in events:
            if type(event) is Answered:
                if not event.waiter.done():
                    event.waiter.set_result(event.result)
            elif type(event) is Failed:
                if not event.waiter.done():
                    event.waiter.set_exception(event.error)
            elif type(event) is StreamChunk:
                if (stream := self.streams.get(event.call_id)) is not None:  # None: cancelled this turn
                    stream.chunk_arrived(event.chunk)
            elif type(event) is StreamEnded:
                if (stream := self.streams.pop(event.call_id, None)) is not None:  # None: cancelled
                    stream.ended(event.complete)
            elif type(event) is StreamStarted:
                self._stream_started(event)
            elif type(event) is UploadCredit:
                credit = True
            elif type(event) is UploadCancelled:
                if (upload := self.uploads.pop(event.call_id, None)) is not None:
                    upload.stopped()
                self.queued()  # the stream's end, acknowledging the cancel
            elif not self.ready.done():  # Accepted
                self.ready.set_result(None)
        if credit:
            self.pump_uploads()

    def resume_writing(self) -> None:
        super().resume_writing()
        # Later in this turn: the calls that waited for room are queued first, the chunks behind them.
        if self.uploads:
            self.loop.call_soon(self.pump_uploads)

    def pump_uploads(self) -> None:
        """Send streamed requests' chunks, one per stream in turn, while credit and the link allow."""
        while self.uploads and not self.flow.write_paused and self.transport is not None:
            sent = False
            for call_id, upload in list(self.uploads.items()):
                sent = upload.send_one() or sent
                if call_id not in self.core.sending.streams:
                    self.uploads.pop(call_id, None)  # all sent
            if not sent:
                return  # every stream waits for credit or for its caller's bytes
            self.flush()  # may pause writing: the rest waits for the server to read

    def _stream_started(self, event: StreamStarted[CallFuture]) -> None:
        stream = AnswerStream(self.core, self.queued, self._forget_stream, event.call_id, event.meta, event.total)
        self.streams[event.call_id] = stream
        if event.waiter.done():  # its deadline passed this very turn
            stream.cancel()
        else:
            event.waiter.set_result(stream)

    def _forget_stream(self, call_id: int) -> None:
        self.streams.pop(call_id, None)


def _settled(pending: dict[int, CallFuture], call_id: int, timer: asyncio.TimerHandle) -> None:
    timer.cancel()
    pending.pop(call_id, None)  # `ClientConnection.abandon`, one call less on every call's path


def _expire(future: CallFuture, name: str, method: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(LinkUnavailable(f"{name}: {method!r} got no answer within {timeout:.3g} s"))


class LinkClient:
    """One persistent link to a `LinkServer`, kept up in the background.

    `connected` is True only while a link whose handshake succeeded is open, hence only with a
    server that proved the secret. `refusals` counts links dropped for breaking the protocol.
    """

    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes = b"",
        name: str = "",
        *,
        ssl: ssl_module.SSLContext | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self.host = host
        self.port = port
        self.secret = secret
        self.name = name or f"{host}:{port}"
        self.max_frame = max_frame
        self._ssl = ssl
        self._backoff = backoff
        self._link: _ClientProtocol | None = None
        self.refusals: Counter[str] = Counter()
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
            LinkUnavailable: not connected (`sent` False), connection lost, or `timeout` passed.
            RemoteError: the peer answered with an error code.
        """
        link = self._link
        if link is None:
            raise LinkUnavailable(f"{self.name}: not connected", sent=False)
        if link.flow.write_paused:
            deadline = link.loop.time() + timeout
            # Backpressure: queue nothing more on a congested link (it may be a slow leaf).
            try:
                async with asyncio.timeout_at(deadline):
                    await link.drain()
            except TimeoutError:
                raise LinkUnavailable(f"{self.name}: link congested for {timeout} s", sent=False) from None
            timeout = deadline - link.loop.time()
        return await self.send(method, payload, timeout)

    def send(self, method: str, payload: Any, timeout: float) -> CallFuture:
        """Send the call now and return the future of its result (the errors of `call`).

        For callers that answer from a callback instead of a task. Raises `LinkUnavailable`
        (`sent` False) at once when not connected or when the link is congested.
        """
        link = self._link
        if link is None:
            raise LinkUnavailable(f"{self.name}: not connected", sent=False)
        if link.flow.write_paused:
            raise LinkUnavailable(f"{self.name}: link congested", sent=False)
        loop = link.loop
        future: CallFuture = loop.create_future()
        core = link.core
        call_id = core.send_call(method, payload, future)
        timer = loop.call_later(timeout, _expire, future, self.name, method, timeout)
        future.add_done_callback(lambda _: _settled(core.pending, call_id, timer))
        if not link.flush_scheduled:
            link.queued()
        return future

    def send_upload(self, method: str, meta: Any, total: int, timeout: float) -> tuple[CallFuture, UploadStream]:
        """Send the head of a call whose payload is `total` bytes written to the returned stream,
        and the future of its result (the errors of `call`). The head goes even on a congested
        link: the chunks wait for room. `timeout` runs from the body's last byte.

        Raises `LinkUnavailable` (`sent` False) at once when not connected.
        """
        link = self._link
        if link is None:
            raise LinkUnavailable(f"{self.name}: not connected", sent=False)
        loop = link.loop
        future: CallFuture = loop.create_future()
        core = link.core
        call_id = core.send_streamed_call(method, meta, total, future)
        timer: list[asyncio.TimerHandle] = []

        def sent_all() -> None:
            link.uploads.pop(call_id, None)
            if not future.done():
                timer.append(loop.call_later(timeout, _expire, future, self.name, method, timeout))

        def fail(reason: str) -> None:
            if not future.done():
                future.set_exception(LinkUnavailable(f"{self.name}: {method!r}: {reason}"))

        def settled(_: CallFuture) -> None:
            core.pending.pop(call_id, None)
            link.uploads.pop(call_id, None)
            for handle in timer:
                handle.cancel()

        future.add_done_callback(settled)
        upload = UploadStream(link, core, call_id, sent_all, fail)
        link.uploads[call_id] = upload
        link.queued()
        return future, upload

    def fail_pending(self, reason: str) -> int:
        """Fail every call waiting for an answer (`LinkUnavailable`, `sent` True); return how many.

        For a peer that stopped answering while its connection looks alive (a network partition
        sends no reset): its callers hear now instead of at their deadlines.
        """
        link = self._link
        if link is None:
            return 0
        waiting = [future for future in link.core.pending.values() if not future.done()]
        error = LinkUnavailable(f"{self.name}: {reason}")
        for future in waiting:
            future.set_exception(error)
        return len(waiting)

    async def close(self) -> None:
        """Stop reconnecting and close the link; pending calls fail with `LinkUnavailable`."""
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

    def _link_lost(self, link: _ClientProtocol) -> None:
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
            except (OSError, LinkUnavailable, TimeoutError) as exc:
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

    async def _connect(self) -> _ClientProtocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            _, link = await loop.create_connection(lambda: _ClientProtocol(self), self.host, self.port, ssl=self._ssl)
            try:
                await link.ready
            except BaseException:
                # Nobody will read `ready` any more; don't leave an exception unretrieved.
                link.ready.cancel()
                if link.transport is not None:
                    link.transport.close()
                raise
        return link
