"""The leaf process: lifecycle and drain, and the proxy-facing handlers.

The device endpoints, sessions, XAIN doors and the server sync live apart (endpoints.py,
session_service.py, xain_endpoints.py, server_sync.py); this module wires them to one process's
state (jobs, uplink, payloads, sessions, drain).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from device_protocol.codecs import JSON, decode_body, encode, wants_msgpack
from device_protocol.cookies import CookieSigner
from device_protocol.errors import BodyTooLarge, ProtocolError
from device_protocol.feg import (
    FegRequest,
    JobRequest,
    ResultRequest,
    Status,
    TaskRequest,
    error_response,
    parse_request,
    response,
)
from device_protocol.tensors import max_result_body_bytes
from internal_link.calls import (
    FEG,
    PING,
    PONG,
    XAIN,
    ClientLimit,
    DeviceAnswer,
    DeviceCall,
    answer_bytes,
    device_call_handler,
    xain_call_handler,
)
from internal_link.client import LinkClient
from internal_link.errors import CallRefused, ErrorCode
from internal_link.server import LinkServer
from internal_link.sessions import SESSION_CLOSED, SESSION_MESSAGE, SESSION_OPEN, SESSION_PUSHES, SessionReply

from ..acknowledged import AcknowledgedResults, MemoryResults
from ..config import LeafConfig
from ..metrics_http import serve_metrics
from ..result_log import ResultLog
from ..uplink import ResultUplink, ServerLink
from ..user_errors import UserError
from .endpoints import ANSWER_MARGIN, STARTING_RETRY_WAIT, DeviceEndpoints, FegReply
from .job_state import LeafJob
from .metrics import LeafMetrics, endpoint_label, error_kind
from .payload_cache import PayloadCache
from .server_sync import ServerSync
from .session_service import SERVICE_RESTART, SessionService
from .xain_endpoints import XainEndpoints

log = logging.getLogger(__name__)
T = TypeVar("T")

# Bodies larger than this are decoded in a worker thread so other devices are not held up.
INLINE_DECODE_LIMIT = 64 * 1024
# On SIGTERM the leaf answers requests until none has come for this long: the proxy stops sending
# once its next health ping (every second by default) fails.
DRAIN_QUIET = 1.0
DRAINING_RETRY_WAIT = 1  # another leaf will answer: no need to wait long
_XAIN_STAND_BY = b'{"state":"stand_by","round":0,"ok":false,"status":"RETRY"}'


class Leaf:
    """One leaf process: an RPC server for the proxy, a link to the server."""

    def __init__(self, config: LeafConfig, link: ServerLink | None = None) -> None:
        self.config = config
        self.name = config.name
        self.boot = uuid.uuid4().hex
        secret = config.secret_bytes()
        self._client = self._control_client = None
        if link is None:
            address = (config.server_host, config.server_port)
            tls = config.server_tls()
            self._client = LinkClient(*address, secret, name=f"{self.name}->server", ssl=tls)
            # Sync and watch on a connection of their own: behind a result batch or a model fetch
            # (megabytes each) they would miss their deadlines on a slow link, and with them the grants.
            self._control_client = LinkClient(*address, secret, name=f"{self.name}->server (sync)", ssl=tls)
        self._link: ServerLink = link if link is not None else self._client  # type: ignore[assignment]
        self._control: ServerLink = link if link is not None else self._control_client  # type: ignore[assignment]
        self._rpc = LinkServer(
            {
                FEG: device_call_handler(self.handle_feg),
                PING: self.handle_ping,
                XAIN: xain_call_handler(self.handle_xain),
                SESSION_OPEN: self._session_call(self._open_session),
                SESSION_MESSAGE: self._session_call(self._session_message),
                SESSION_CLOSED: lambda payload: self.sessions.closed(payload),
                SESSION_PUSHES: lambda payload: self.sessions.outbox.poll(payload),
            },
            secret,
            ssl=config.link_tls(),
        )
        results: AcknowledgedResults = ResultLog(config.result_log_dir()) if config.result_log else MemoryResults()
        self.uplink = ResultUplink(
            self.name, self._link, results, on_late=self._not_counted, may_promise=self._may_promise
        )
        self.metrics = LeafMetrics()
        self.metrics.watch(results, self.uplink.undelivered, self._server_connected)
        self.metrics.watch_streams(self._rpc.streams, lambda: self._rpc.open_streams)
        self.metrics.watch_uploads(self._rpc.uploads, lambda: self._rpc.open_uploads)
        self.jobs: dict[str, LeafJob] = {}
        self._payloads = PayloadCache(self._link, self._is_current, config.payload_cache_bytes)
        self._server = ServerSync(
            self.name,
            self.boot,
            self._control,
            self.jobs,
            self.uplink,
            self._payloads,
            self._after_sync,
            config.sync_interval,
        )
        self._endpoints = DeviceEndpoints(
            self.jobs,
            self._payloads,
            CookieSigner(config.cookie_key()),
            self.uplink,
            self._link,
            config.quota_hold,
            self._server.sync_soon,
            self.metrics,
        )
        self.sessions = SessionService(
            self.jobs,
            self._payloads,
            CookieSigner(config.cookie_key()),
            self._endpoints,
            config.session_heartbeat,
            config.max_sessions,
        )
        self.metrics.watch_sessions(self.sessions)
        self._xain = XainEndpoints(
            self.jobs, self._payloads, CookieSigner(config.cookie_key()), self.uplink, self._server.sync_soon
        )
        self._xain06: Any = None  # Xain06Listeners when the 0.6 ports are open
        self.xain06_ports: tuple[int, int] | None = None  # (gRPC, object) ports bound
        self._tasks: list[asyncio.Task[Any]] = []
        self.port = 0
        self.metrics_port: int | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._draining = False
        self._busy = 0  # device requests taken and not answered yet
        self._last_request = 0.0

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> int:
        if self._client is not None and self._control_client is not None:
            await self._client.start()
            await self._control_client.start()
        await self.uplink.start()  # replays the log before any device is answered
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._server.run(), name="leaf-sync"))
        self._tasks.append(loop.create_task(self._server.watch(), name="leaf-watch"))
        self._tasks.append(loop.create_task(self._sweep_loop(), name="leaf-sessions"))
        self.port = await self._rpc.start(self.config.host, self.config.port)
        log.info("leaf %s listening on %s:%d", self.name, self.config.host, self.port)
        config = self.config
        if config.xain_grpc_port is not None and config.xain_object_port is not None:
            # Imported only here: grpcio is the `edgefl[xain]` extra, a leaf without it runs fine.
            try:
                from ..xain.listeners06 import Xain06Listeners
            except ImportError as exc:
                raise UserError(f"--xain-grpc-port needs grpcio: pip install 'edgefl[xain]' ({exc})") from None

            self._xain06 = Xain06Listeners(self._xain, self._server.sync_soon)
            host = config.xain_host or config.host
            self.xain06_ports = await self._xain06.start(host, config.xain_grpc_port, config.xain_object_port)
            log.info("leaf %s: xain-sdk 0.6 gRPC on %s:%d, objects on port %d", self.name, host, *self.xain06_ports)
        if config.metrics_port is not None:
            host = config.metrics_host or config.host
            self._metrics_runner, self.metrics_port = await serve_metrics(
                self.metrics.registry, host, config.metrics_port
            )
            log.info("leaf %s metrics on http://%s:%d/metrics", self.name, host, self.metrics_port)
        return self.port

    async def stop(self) -> None:
        """Drain: fail health pings and turn new work away, but answer every result taken (and the
        ones still coming until the proxy has moved the devices away), within `drain_timeout`.
        Then flush what waits for the server and close the links."""
        self._draining = True
        self.sessions.shed_all()  # the proxy routes their reconnects to the leaves that stay
        log.info("leaf %s stopping with %d results not delivered yet", self.name, self.uplink.undelivered())
        loop = asyncio.get_running_loop()
        started, in_flight = loop.time(), self._busy
        deadline = started + self.config.drain_timeout
        # Streamed downloads too: cut, their devices would fetch the whole model again elsewhere.
        while loop.time() < deadline and (
            self._busy or self._rpc.open_streams or loop.time() - self._last_request < DRAIN_QUIET
        ):
            await asyncio.sleep(0.05)
        if self._busy:
            log.warning(
                "leaf %s: %d requests unanswered after a %.0f s drain", self.name, self._busy, self.config.drain_timeout
            )
        else:
            log.info(
                "leaf %s drained in %.1f s (%d requests were in flight)", self.name, loop.time() - started, in_flight
            )
        await self._rpc.close()
        if self._xain06 is not None:
            await self._xain06.stop()
        await self.uplink.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._payloads.close()
        if self._client is not None and self._control_client is not None:
            await self._client.close()
            await self._control_client.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()

    def _server_connected(self) -> bool:
        return self._client is None or self._client.connected  # an injected link is in-process

    # -- proxy-facing handlers ----------------------------------------------------------------
    def handle_ping(self, _: Any) -> str:
        if self._draining:
            # The proxy marks it unhealthy and moves its devices.
            raise CallRefused(ErrorCode.SHUTTING_DOWN, "leaf shutting down")
        if self._server.name_refused:  # the proxy sends its devices to leaves that can serve them
            raise CallRefused(
                ErrorCode.NAME_TAKEN, f"the server refuses this leaf: another live leaf is named {self.name!r}"
            )
        return PONG

    def handle_feg(self, call: DeviceCall) -> FegReply | Awaitable[FegReply]:
        """The answer now when it needs no waiting (most /job and /task), else an awaitable."""
        self._last_request = asyncio.get_running_loop().time()
        self.metrics.received_bytes += len(call.body)
        if self._draining and call.endpoint != "result":
            # A result is still answered (Android ends its session on anything but OK); new work
            # is for the leaves that stay.
            reply = response(Status.RETRY, retry_wait=DRAINING_RETRY_WAIT, message="leaf shutting down")
            return self._answer(call.endpoint, reply, wants_msgpack(call.headers.get("accept", "")))
        outcome = self._answer_feg(call)
        if isinstance(outcome, Awaitable):
            return self._in_flight(self._sent(outcome))
        self.metrics.sent_bytes += answer_bytes(outcome)
        return outcome

    def _session_call(self, handle: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """A session handler counted like a device request, so a draining leaf answers it first."""

        def handler(payload: Any) -> Any:
            self._last_request = asyncio.get_running_loop().time()
            outcome = handle(payload)
            return self._in_flight(outcome) if isinstance(outcome, Awaitable) else outcome

        return handler

    def _open_session(self, payload: Any) -> Any:
        if self._draining:
            return SessionReply([], SERVICE_RESTART)  # the device reconnects and reaches another leaf
        return self.sessions.open(payload)

    def _session_message(self, payload: Any) -> Any:
        return self.sessions.message(payload)

    def handle_xain(self, call: DeviceCall) -> FegReply | Awaitable[FegReply]:
        """A xain-sdk participant's call (xain_endpoints.py); while draining or starting, `stand_by`."""
        self._last_request = asyncio.get_running_loop().time()
        self.metrics.received_bytes += len(call.body)
        if (self._draining and call.endpoint == "heartbeat") or not self._server.synced_once():
            outcome: FegReply | Awaitable[FegReply] = DeviceAnswer(200, JSON, _XAIN_STAND_BY)
        else:
            outcome = self._xain.answer(call)
        if isinstance(outcome, Awaitable):
            return self._in_flight(self._sent(outcome))
        self.metrics.sent_bytes += answer_bytes(outcome)
        return outcome

    def _in_flight(self, outcome: Awaitable[T]) -> Awaitable[T]:
        """`outcome`, counted as in flight (a draining leaf answers those first) until it is done."""
        self._busy += 1
        return self._until_done(outcome)

    async def _until_done(self, outcome: Awaitable[T]) -> T:
        try:
            return await outcome
        finally:
            self._busy -= 1

    async def _sent(self, outcome: Awaitable[FegReply]) -> FegReply:
        answer = await outcome
        self.metrics.sent_bytes += answer_bytes(answer)
        return answer

    def _answer_feg(self, call: DeviceCall) -> FegReply | Awaitable[FegReply]:
        endpoint, query, headers, body, wait = call
        if len(body) > INLINE_DECODE_LIMIT:
            if endpoint == "result" and len(body) > (limit := self._result_body_limit(query.get("job_id"))):
                # Refused unparsed: junk the size of an upload would become millions of objects.
                return self._refused(
                    endpoint,
                    BodyTooLarge(f"result body larger than {limit} bytes, more than this job's model can need"),
                )
            return self._feg_decoded_in_thread(endpoint, query, headers, body, wait)
        try:
            fields = decode_body(headers.get("content-type", ""), body)
            request = parse_request(endpoint, query, headers, fields)
        except ProtocolError as exc:
            return self._refused(endpoint, exc)
        return self._feg(endpoint, request, headers, len(body), wait)

    async def _feg_decoded_in_thread(
        self, endpoint: str, query: Any, headers: Any, body: bytes, wait: float
    ) -> FegReply:
        started = asyncio.get_running_loop().time()
        try:
            fields = await asyncio.to_thread(decode_body, headers.get("content-type", ""), body)
            request = parse_request(endpoint, query, headers, fields)
        except ProtocolError as exc:
            return self._refused(endpoint, exc)
        wait -= asyncio.get_running_loop().time() - started
        outcome = self._feg(endpoint, request, headers, len(body), wait)
        return await outcome if isinstance(outcome, Awaitable) else outcome

    def _result_body_limit(self, job_id: str | None) -> int:
        job = self.jobs.get(job_id or "")
        if job is not None:
            return max_result_body_bytes(job.param_count())
        # An unknown job is answered as such once parsed; the body is bounded by the largest model.
        return max_result_body_bytes(max((j.param_count() for j in self.jobs.values()), default=0))

    def _refused(self, endpoint: str, exc: ProtocolError) -> FegReply:
        log.info("refused %s request: %s", endpoint, exc.message)
        self.metrics.answers[endpoint_label(endpoint), exc.status] += 1
        self.metrics.refusals[error_kind(exc)] += 1
        return DeviceAnswer(exc.http_status, JSON, orjson.dumps(error_response(exc.status, exc.message, exc.errors)))

    def _feg(
        self, endpoint: str, request: FegRequest, headers: Any, body_size: int, wait: float
    ) -> FegReply | Awaitable[FegReply]:
        as_msgpack = wants_msgpack(headers.get("accept", ""))
        if not self._server.synced_once():
            reply = response(Status.RETRY, retry_wait=STARTING_RETRY_WAIT, message="Gateway starting")
        elif isinstance(request, JobRequest):
            reply = self._endpoints.job(request)
        elif isinstance(request, TaskRequest):
            return self._endpoints.task(request, as_msgpack, wait, ClientLimit.of(headers))
        elif isinstance(request, ResultRequest):
            offload = body_size > INLINE_DECODE_LIMIT
            patience = wait - ANSWER_MARGIN
            return self._encoded("result", self._endpoints.result(request, offload, patience), as_msgpack)
        else:
            return self._encoded("selection", self._endpoints.selection(request), as_msgpack)
        return self._answer(endpoint, reply, as_msgpack)

    async def _encoded(self, endpoint: str, reply: Awaitable[dict[str, Any]], as_msgpack: bool) -> FegReply:
        return self._answer(endpoint, await reply, as_msgpack)

    def _answer(self, endpoint: str, reply: dict[str, Any], as_msgpack: bool) -> FegReply:
        """`reply` encoded for the device, and counted in the funnel by its status."""
        self.metrics.answers[endpoint_label(endpoint), reply["status"]] += 1
        content_type, data = encode(reply, as_msgpack)
        return DeviceAnswer(200, content_type, data)

    # -- sessions, and what the uplink and payload cache ask of the jobs ------------------------
    def _after_sync(self) -> None:
        self.sessions.serving = True
        self.sessions.after_sync()

    async def _sweep_loop(self) -> None:
        # Silent sessions are found within half a heartbeat interval (at most a second) of going silent.
        period = min(1.0, self.config.session_heartbeat / 2)
        while True:
            await asyncio.sleep(period)
            try:
                self.sessions.sweep()
            except Exception:
                log.exception("session sweep failed")

    def _not_counted(self, job_id: str, task_ids: list[str], acknowledged: int) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.not_counted(task_ids, acknowledged)

    def _may_promise(self, job_id: str, version: int) -> bool:
        job = self.jobs.get(job_id)
        return job is not None and job.may_promise(version)

    def _is_current(self, job_id: str, version: int) -> bool:
        job = self.jobs.get(job_id)
        return job is not None and job.view.model_version == version
