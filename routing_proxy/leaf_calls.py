"""One device request's way to a leaf: the candidate leaves in preference order, one shared
deadline, the leaf's answer (whole or streamed) turned into the device's (forwarding.py builds them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

from device_protocol.codecs import JSON
from internal_link.answer_stream import AnswerStream
from internal_link.calls import FEG, XAIN, BadPayload, DeviceAnswer, DeviceCall, streamed_answer_head
from internal_link.errors import ErrorCode, LinkUnavailable, RemoteError

from .http1 import BodySink, Reply, Response, StreamedResponse
from .stats import ProxyStats
from .upstreams import Upstream

logger = logging.getLogger(__name__)

# PROTOCOL.md §8: an unreachable upstream is RETRY with no retry_wait, never ERROR or an HTTP error.
_RETRY_BODY = b'{"status":"RETRY"}'


# Tasks of congested calls, held so that they are not collected while they wait.
_waiting_for_room: set[asyncio.Task[None]] = set()


def retry() -> Response:
    return Response(200, JSON, _RETRY_BODY)


class LeafCall:
    """One request's way to a leaf: the candidates in preference order, one shared deadline."""

    __slots__ = ("call", "candidates", "deadline", "index", "loop", "reply", "stats", "upstream")
    METHOD = FEG

    def __init__(
        self, candidates: list[Upstream], call: DeviceCall, reply: Reply, timeout: float, stats: ProxyStats
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.stats = stats
        self.candidates = candidates
        self.call = call
        self.reply = reply
        # Failing over shares one deadline: the device must hear back in time (PROTOCOL.md §6).
        self.deadline = self.loop.time() + timeout
        self.index = 0
        self.upstream: Upstream | None = None

    def _candidates_left(self) -> Iterator[tuple[Upstream, float]]:
        """The leaves still to try, each with what is left of the deadline, until it runs out."""
        while self.index < len(self.candidates):
            upstream = self.candidates[self.index]
            self.index += 1
            timeout = self.deadline - self.loop.time()
            if timeout <= 0:
                return
            self.upstream = upstream
            if self.index > 1:
                # Failing over: the next leaf has only what is left of the deadline (PROTOCOL.md §6).
                self.call = self.call._replace(wait=timeout)
            yield upstream, timeout

    def next(self) -> None:
        """Send to the next candidate that takes it now; RETRY when none is left or time is out."""
        for upstream, timeout in self._candidates_left():
            try:
                future = upstream.client.send(self.METHOD, self.call, timeout)
            except LinkUnavailable:
                if upstream.client.connected:
                    # Congested (a big upload still leaving): wait for room rather than fail over.
                    task = self.loop.create_task(self._call_when_writable(upstream, timeout))
                    _waiting_for_room.add(task)
                    task.add_done_callback(_waiting_for_room.discard)
                    return
                continue  # never left this process: the next leaf in preference order may take it
            future.add_done_callback(self._answered)
            return
        self._unanswered("no_leaf")  # no healthy leaf, or out of time (PROTOCOL.md §8)

    async def _call_when_writable(self, upstream: Upstream, timeout: float) -> None:
        future: asyncio.Future[Any] = self.loop.create_future()
        try:
            future.set_result(await upstream.client.call(self.METHOD, self.call._replace(wait=timeout), timeout))
        except LinkUnavailable as exc:
            if not exc.sent:
                self.next()
                return
            future.set_exception(exc)
        except RemoteError as exc:
            future.set_exception(exc)
        self._answered(future)

    @staticmethod
    def retry() -> Response:
        return retry()

    def _answered(self, future: asyncio.Future[Any]) -> None:
        name = self.upstream.leaf.name if self.upstream is not None else "?"
        try:
            result = future.result()
            if type(result) is AnswerStream:
                self._streamed(result, name)
                return
            answer = DeviceAnswer.check(result)
        except LinkUnavailable as exc:
            # Sent and unanswered: the leaf may have acted on it, so it is not re-sent elsewhere.
            logger.warning("leaf %s: %s", name, exc)
            self._unanswered("link_lost")
            return
        except RemoteError as exc:
            if exc.code is ErrorCode.BUSY:  # no room for a streamed request now: come back later
                self._busy()
                return
            logger.error("leaf %s failed on a request: %s", name, exc)
            self._unanswered("leaf_failed")
            return
        except BadPayload as exc:
            logger.error("leaf %s answered a malformed result: %.120s", name, exc)
            self._unanswered("malformed_answer")
            return
        self.stats.answered[self.call.endpoint, answer.http_status] += 1
        self.reply(Response(answer.http_status, answer.content_type, answer.body))

    def _streamed(self, stream: AnswerStream, name: str) -> None:
        """A large answer: its head now, its body passed on as the device reads (streamed_body.py)."""
        try:
            status, content_type = streamed_answer_head(stream.meta)
        except BadPayload as exc:
            stream.cancel()
            logger.error("leaf %s answered a malformed result: %.120s", name, exc)
            self._unanswered("malformed_answer")
            return
        self.stats.answered[self.call.endpoint, status] += 1
        self.reply(StreamedResponse(status, content_type, stream.total, stream))

    def _unanswered(self, cause: str) -> None:
        self.stats.unanswered[self.call.endpoint, cause] += 1
        self.reply(self.retry())

    def _busy(self) -> None:
        self._unanswered("leaf_busy")


class UploadCall(LeafCall):
    """A request whose body, `length` bytes, is passed on as it arrives (http1/upload_body.py): a
    streamed request to the first leaf that takes its head, the body's sink handed to `attach`.
    No failing over once the head is sent: the body is not held to be sent again. A leaf with no
    room for it answers `busy()` (a RETRY with a wait, as the proxy's own body budget does)."""

    __slots__ = ("attach", "busy", "length")

    def __init__(
        self,
        candidates: list[Upstream],
        call: DeviceCall,
        reply: Reply,
        timeout: float,
        stats: ProxyStats,
        length: int,
        attach: Callable[[BodySink], None],
        busy: Callable[[], Response],
    ) -> None:
        super().__init__(candidates, call, reply, timeout, stats)
        self.length = length
        self.attach = attach
        self.busy = busy

    def next(self) -> None:
        for upstream, timeout in self._candidates_left():
            try:
                # The head goes even on a congested link: the body's chunks wait for room.
                future, sink = upstream.client.send_upload(self.METHOD, self.call, self.length, timeout)
            except LinkUnavailable:
                continue  # not connected: the next leaf in preference order may take it
            future.add_done_callback(self._answered)
            self.attach(sink)
            return
        self._unanswered("no_leaf")

    def _busy(self) -> None:
        self.stats.unanswered[self.call.endpoint, "leaf_busy"] += 1
        self.reply(self.busy())


# What a participant hears when no leaf answers: a heartbeat waits (`stand_by`; anything that is
# not a state ends the SDK's participant), the other calls read what they need from this too.
_XAIN_RETRY_BODY = b'{"state":"stand_by","round":0,"ok":false,"url":"","token":"","status":"RETRY"}'


class XainLeafCall(LeafCall):
    """A xain-sdk participant's call: method `XAIN`, and HTTP 200 whatever happens (docs/XAIN.md)."""

    __slots__ = ()
    METHOD = XAIN

    @staticmethod
    def retry() -> Response:
        return Response(200, JSON, _XAIN_RETRY_BODY)


class XainUploadCall(UploadCall):
    """A xain-sdk participant's large upload: method `XAIN`, HTTP 200 and its RETRY whatever happens."""

    __slots__ = ()
    METHOD = XAIN

    @staticmethod
    def retry() -> Response:
        return XainLeafCall.retry()

    def _busy(self) -> None:
        self._unanswered("leaf_busy")
