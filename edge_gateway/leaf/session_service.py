"""The leaf's live sessions (PROTOCOL.md §9), the asyncio shell around `session_table.py`.

Handlers for the proxy's session calls (`internal_link/sessions.py`): a device's message comes in
as payload bytes and is answered with the payloads to send back; what the leaf sends on its own
(`round` when a standby session is selected, `standby` when its slot is gone, `finished`) waits in
a per-proxy outbox for that proxy's pending push poll. Slots are the job's leases (`job_state.py`),
shared with HTTP devices; results take the HTTP result path (`endpoints.py`), so an `ack` is sent
only once the result is durable in the leaf's write-ahead log, and judged by the same verdicts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

from device_protocol.cookies import CookieSigner
from device_protocol.errors import InvalidRequest
from device_protocol.feg import Identity, ResultRequest, Status
from device_protocol.headers import device_identity
from device_protocol.session_messages import (
    BadMessage,
    DeviceMessage,
    GatewayMessage,
    Received,
    decode_message,
    decode_result,
    device_state,
    encode_message,
)
from device_protocol.tensors import max_result_body_bytes
from internal_link.messages import JobStatus
from internal_link.sessions import (
    KEEP_OPEN,
    SessionClosed,
    SessionMessage,
    SessionOpen,
    SessionReply,
    session_reply,
)
from internal_link.streams import Streamed

from .endpoints import DeviceEndpoints
from .job_state import LeafJob, TaskDecision
from .payload_cache import PayloadCache
from .push_outbox import PushOutbox
from .session_table import MAX_STRIKES, Phase, Session, SessionKey, SessionTable, eligible, takes
from .task_payload import TASK_NAME
from .uploads import PartialUploads, PartOutcome

log = logging.getLogger(__name__)

NORMAL_CLOSURE = 1000  # RFC 6455 §7.4.1: the job is over (`finished`)
GOING_AWAY = 1001  # silent: the device is gone
POLICY_VIOLATION = 1008  # kept misbehaving, or refused at the door
SERVICE_RESTART = 1012  # this leaf is stopping: reconnect (the proxy routes to another leaf)
TRY_AGAIN_LATER = 1013  # shed: `later` said when
LATER_WAIT = 5  # seconds a device waits after `later` for a job that is not there yet
MAX_COOKIES = 200_000  # tasks whose results a session may still send (oldest forgotten first)
MAX_CLOSING = 100_000  # sessions closed by a push whose sockets the proxy has not reported gone
MAX_PARTIAL_BYTES = 512 * 1024 * 1024  # parts of split results held in all, until their last part
PARTIAL_IDLE_LIMIT = 600.0  # seconds an unfinished split result is kept for its device to resume


_PART_REFUSALS = {
    PartOutcome.GAP: "a part is missing: send from next_part",
    PartOutcome.MISMATCH: "this task's upload was begun by another device or with another number of parts",
    PartOutcome.TOO_LARGE: "the parts add up to more than this job's model can need",
    PartOutcome.FULL: "the gateway holds all the partial uploads it can now: send this part again later",
}


class SessionService:
    """Every live session of this leaf and the pushes waiting for each proxy process."""

    def __init__(
        self,
        jobs: dict[str, LeafJob],
        payloads: PayloadCache,
        signer: CookieSigner,
        endpoints: DeviceEndpoints,
        heartbeat_interval: float,
        max_sessions: int,
    ) -> None:
        self._jobs = jobs
        self._payloads = payloads
        self._signer = signer
        self._endpoints = endpoints
        self._max_sessions = max_sessions
        self.table = SessionTable(heartbeat_interval)
        # Each task's cookie, kept here (the device never sees it) so that a result, a repeat of
        # it, or its parts after a reconnect are judged by the HTTP rules (idempotent by task id).
        self._cookies: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.uploads = PartialUploads(MAX_PARTIAL_BYTES, PARTIAL_IDLE_LIMIT)
        self.outbox = PushOutbox()
        # Closed here by a push (`finished`, then the close): a message the device sent meanwhile
        # is answered without a close of its own, which could overtake the push on the link.
        self._closing: OrderedDict[SessionKey, None] = OrderedDict()
        self._parked_for: dict[str, tuple[int, int]] = {}  # by job: the selection sessions were parked in
        self.serving = False  # False until the leaf has synced with the server once
        self.bad_messages = 0  # malformed or out-of-order messages answered with `error`
        self.silent = 0  # sessions closed for silence
        self.rounds_pushed = 0  # `round` pushed on selection

    # -- the proxy's calls --------------------------------------------------------------------
    def open(self, payload: Any) -> SessionReply:
        opened = SessionOpen.check(payload)
        now = asyncio.get_running_loop().time()
        try:
            device_id, device_info, user_info = device_identity(opened.headers)
        except InvalidRequest as exc:
            error = encode_message(GatewayMessage.ERROR, opened.codec, code="identity", message=exc.message)
            return SessionReply([error], POLICY_VIOLATION)
        identity = Identity(device_id=device_id, device_info=device_info, user_info=user_info)
        session = Session((opened.hub, opened.session), identity, opened.codec, now)
        replaced = self.table.open(session)
        if replaced is not None:
            # PROTOCOL.md §9: a second session under one device id replaces the first.
            self._gone(replaced)
            self._push(replaced, [], NORMAL_CLOSURE)
        return SessionReply([])

    def message(self, payload: Any) -> SessionReply | Streamed | Awaitable[SessionReply]:
        call = SessionMessage.check(payload)
        session = self.table.sessions.get((call.hub, call.session))
        if session is None:
            if (call.hub, call.session) in self._closing:
                return SessionReply([])  # its push carries the close, after what it says
            return SessionReply([], GOING_AWAY)  # unknown here (this leaf restarted)
        self.table.seen(session, asyncio.get_running_loop().time())
        try:
            received = decode_message(call.data, session.codec)
            if not takes(session, received.kind):
                raise BadMessage(
                    "out_of_order", f"{received.kind.value} is not expected in phase {session.phase.value}"
                )
        except BadMessage as exc:
            return self._refuse(session, exc)
        return self._answer(session, received)

    def closed(self, payload: Any) -> None:
        call = SessionClosed.check(payload)
        self.outbox.drop(call.hub, call.session)
        self._closing.pop((call.hub, call.session), None)
        session = self.table.close((call.hub, call.session))
        if session is not None:
            self._gone(session)

    # -- device messages ----------------------------------------------------------------------
    def _answer(self, session: Session, received: Received) -> SessionReply | Streamed | Awaitable[SessionReply]:
        kind, fields = received
        state = device_state(fields)
        if state is not None:
            session.state = state
        if kind is DeviceMessage.RENDEZVOUS:
            return self._rendezvous(session, fields)
        job = self._jobs.get(session.job_id)
        if job is None or job.view.status is JobStatus.DONE:
            return SessionReply([self._encode(session, GatewayMessage.FINISHED, job_id=session.job_id)], NORMAL_CLOSURE)
        if state is not None and session.phase is Phase.STANDBY:
            asyncio.get_running_loop().call_soon(self.select, job.view.job_id)  # it may qualify now
        elif session.holds_slot and not eligible(session.state, frozenset(job.view.requires)):
            # SwiftSyft's rule: unplugged or off Wi-Fi mid-task, the slot goes to another device.
            self._give_up_slot(session)
            self.table.to_standby(session, session.job_id)
        if kind is DeviceMessage.HEARTBEAT:
            return SessionReply([self._status(session, job)])
        if kind is DeviceMessage.START_TRAINING:
            return session_reply([], self._start_training(session, job))  # a large task is streamed
        if kind is DeviceMessage.ABORT:
            return SessionReply([self._abort(session, job, fields)])
        return self._end_training(session, job, fields)

    def _rendezvous(self, session: Session, fields: dict[str, Any]) -> SessionReply:
        if not self.serving:
            return SessionReply([self._later(session, LATER_WAIT, "starting")])
        if len(self.table.sessions) > self._max_sessions:
            self.table.close(session.key)
            return SessionReply([self._later(session, LATER_WAIT, "full")], TRY_AGAIN_LATER)
        name = fields["job_name"]
        live = [j for j in self._jobs.values() if j.view.job_name == name and j.view.status is not JobStatus.DONE]
        if not live:
            return SessionReply([self._later(session, LATER_WAIT, "no_job")])
        job = live[0]
        if not job.eligible(session.device_id, session.identity.device_info.get("platform")):
            return SessionReply([self._later(session, job.view.retry_wait, "not_eligible")])
        self.table.to_standby(session, job.view.job_id)
        accept = self._encode(
            session, GatewayMessage.ACCEPT, job_id=job.view.job_id, heartbeat_interval=self.table.heartbeat_interval
        )
        # Selected at once when a slot is free: its `round` follows the accept on the push path.
        asyncio.get_running_loop().call_soon(self.select, job.view.job_id)
        return SessionReply([accept])

    def _status(self, session: Session, job: LeafJob) -> bytes:
        if session.holds_slot:
            return self._round(session, job)
        return self._encode(session, GatewayMessage.STANDBY)

    def _round(self, session: Session, job: LeafJob) -> bytes:
        view = job.view
        return self._encode(session, GatewayMessage.ROUND, round=view.round, model_version=view.model_version)

    def _start_training(self, session: Session, job: LeafJob) -> tuple[bytes, ...]:
        """The `task` message's parts (`standby` when the slot is gone)."""
        lease = job.by_task.get(session.task_id) if session.holds_slot else None
        payload = self._payloads.get(job.view.job_id)
        if lease is None or lease.reported or payload is None or payload.version != lease.version:
            if session.holds_slot:
                # An async lease outlives versions, its payload may not: held, it would keep a slot
                # of the job's concurrency until it ran out. Given back, the session may get a new one.
                self._give_up_slot(session)
                self.table.to_standby(session, session.job_id)
            return (self._encode(session, GatewayMessage.STANDBY),)
        cookie = self._signer.issue(
            job.view.job_id, session.device_id, lease.task_id, lease.version, lease.selection_id
        )
        self.table.to_training(session)
        self._cookies[lease.task_id] = cookie
        while len(self._cookies) > MAX_COOKIES:
            self._cookies.popitem(last=False)
        # The lease's deadline on the loop's clock, told as wall-clock seconds since the epoch.
        deadline = time.time() + (lease.expires_at - asyncio.get_running_loop().time())
        return payload.render_session(lease.task_id, round(deadline, 3), session.codec == "msgpack")

    def _abort(self, session: Session, job: LeafJob, fields: dict[str, Any]) -> bytes:
        task_id = fields["task_id"]
        if session.holds_slot and session.task_id == task_id:
            self.uploads.forget(task_id)
            self._give_up_slot(session)
            self.table.to_standby(session, session.job_id)  # behind every other standby session
        return self._encode(
            session, GatewayMessage.ACK, task_id=task_id, counted=False, message=f"aborted: {fields.get('reason', '')}"
        )

    def _end_training(
        self, session: Session, job: LeafJob, fields: dict[str, Any]
    ) -> SessionReply | Awaitable[SessionReply]:
        if "parts" not in fields:
            return self._result(session, job, fields["task_id"], fields["result"])
        task_id, chunk = fields["task_id"], fields["chunk"]
        if isinstance(chunk, bytes) != (session.codec == "msgpack"):
            return self._refuse(session, BadMessage("invalid", "chunk must be bytes in msgpack sessions, text in JSON"))
        now = asyncio.get_running_loop().time()
        limit = max_result_body_bytes(job.param_count())
        answer = self.uploads.add(task_id, session.device_id, fields["part"], fields["parts"], chunk, now, limit)
        if answer.outcome is PartOutcome.STORED:
            confirm = self._encode(
                session, GatewayMessage.ACK, task_id=task_id, part=fields["part"], next_part=answer.next_part
            )
            return SessionReply([confirm])
        if answer.outcome is not PartOutcome.COMPLETE:
            message = _PART_REFUSALS[answer.outcome]
            return self._refuse(session, BadMessage(answer.outcome.value, message), next_part=answer.next_part)
        try:
            result = decode_result(answer.data, session.codec)
        except BadMessage as exc:
            return self._refuse(session, exc)
        return self._result(session, job, task_id, result)

    async def _result(self, session: Session, job: LeafJob, task_id: str, result: dict[str, Any]) -> SessionReply:
        cookie = self._cookies.get(task_id)
        request = ResultRequest(
            identity=session.identity,
            job_id=job.view.job_id,
            task_id=task_id,
            task_name=TASK_NAME,
            status=Status.OK.value,
            result=result,
            cookie=cookie,
        )
        # The HTTP result path: screened, logged durably, delivered; its verdict decides the ack.
        answer = await self._endpoints.result(request, offload=True)
        if self.table.sessions.get(session.key) is session and session.task_id == task_id:
            self.table.to_standby(session, session.job_id)
            asyncio.get_running_loop().call_soon(self.select, job.view.job_id)
        counted = bool(answer.get("counted")) and answer.get("reason") != "duplicate"
        ack = self._encode(
            session,
            GatewayMessage.ACK,
            task_id=task_id,
            counted=counted,
            reason=answer.get("reason"),
            message=answer.get("message") or ("counted" if counted else None),
        )
        return SessionReply([ack])

    def _refuse(self, session: Session, exc: BadMessage, **details: Any) -> SessionReply:
        self.bad_messages += 1
        session.strikes += 1
        error = self._encode(session, GatewayMessage.ERROR, code=exc.code, message=exc.message, **details)
        if session.strikes >= MAX_STRIKES:
            self.table.close(session.key)
            self._give_up_slot(session)
            return SessionReply([error], POLICY_VIOLATION)
        return SessionReply([error])

    # -- slots --------------------------------------------------------------------------------
    def select(self, job_id: str) -> None:
        """Give the job's free slots to its standby sessions, longest waiting first, pushing `round`."""
        job = self._jobs.get(job_id)
        if job is None or job.view.status is not JobStatus.RUNNING:
            return
        now = asyncio.get_running_loop().time()
        self._unpark_after_new_selection(job)
        if not job.has_free_slot(now):
            # Every rendezvous and sync asks: without a slot, reading the standby sessions (tens of
            # thousands) for nobody made opening N sessions cost N² and stalled the leaf's loop.
            return
        ready = self._payloads.servable(job.view)
        requires = frozenset(job.view.requires)
        for session in self.table.standby(job_id):
            if not eligible(session.state, requires):
                continue
            info = session.identity.device_info
            decision, lease = job.decide_task(session.device_id, now, ready, info.get("platform"))
            if decision is TaskDecision.TASK and lease is not None:
                self.table.to_selected(session, lease.task_id)
                self._push(session, [self._round(session, job)])
                self.rounds_pushed += 1
            elif decision is TaskDecision.ALREADY_TRAINED:
                self.table.park(session)
            elif decision is TaskDecision.NOT_SELECTED or decision is TaskDecision.NOT_READY:
                job.waiting.pop(session.device_id, None)  # counted as a standby session already
                break

    def after_sync(self) -> None:
        """The jobs changed: end sessions of finished jobs, take back slots the round closed on,
        then fill the free ones; and say how many sessions wait, for the next report."""
        for job_id in {s.job_id for s in self.table.holders()} | set(self.table.standby_jobs()):
            job = self._jobs.get(job_id)
            if job is None or job.view.status is JobStatus.DONE:
                for session in self.table.in_job(job_id):
                    self.table.close(session.key)
                    self._push(session, [self._encode(session, GatewayMessage.FINISHED, job_id=job_id)], NORMAL_CLOSURE)
        for session in self.table.holders():
            job = self._jobs[session.job_id]
            lease = job.by_task.get(session.task_id)
            if lease is None:
                self.table.to_standby(session, session.job_id)
                self._push(session, [self._encode(session, GatewayMessage.STANDBY)])
        for gone in self._parked_for.keys() - self._jobs.keys():
            del self._parked_for[gone]
        for job_id, job in self._jobs.items():
            self._unpark_after_new_selection(job)
            job.sessions_waiting = self.table.standby_count(job_id)
            self.select(job_id)

    def _unpark_after_new_selection(self, job: LeafJob) -> None:
        mark = (job.view.selection_id, job.view.model_version)  # what a lease's `reported` is valid for
        if self._parked_for.get(job.view.job_id) != mark:
            self._parked_for[job.view.job_id] = mark
            self.table.unpark(job.view.job_id)

    def sweep(self) -> None:
        """Close silent sessions (their slots go to others now) and forget proxies that are gone."""
        now = asyncio.get_running_loop().time()
        jobs = set()
        for session in self.table.silent(now):
            self.silent += 1
            self.table.close(session.key)
            self._gone(session)
            self._push(session, [], GOING_AWAY)
            jobs.add(session.job_id)
        for job_id in jobs:
            self.select(job_id)
        self.uploads.expire(now)
        self.outbox.forget_gone(now)

    def shed_all(self) -> None:
        """This leaf stops: every session hears `later` and is closed, its slot freed."""
        for session in list(self.table.sessions.values()):
            self.table.close(session.key)
            self._give_up_slot(session)
            self._push(session, [self._later(session, 1, "leaf_stopping")], SERVICE_RESTART)

    def _gone(self, session: Session) -> None:
        """The session's device left (socket closed, silent, replaced): its slot goes to another
        device at once, unless it was sending its result in parts: then the lease runs its
        course, so that the device can reconnect and resume (PROTOCOL.md §9)."""
        if not self.uploads.holds(session.task_id):
            self._give_up_slot(session)

    def _give_up_slot(self, session: Session) -> None:
        job = self._jobs.get(session.job_id)
        if job is not None and session.holds_slot:
            job.release(session.task_id)
            asyncio.get_running_loop().call_soon(self.select, session.job_id)

    # -- output -------------------------------------------------------------------------------
    def _push(self, session: Session, messages: list[bytes], close: int = KEEP_OPEN) -> None:
        self.outbox.put(*session.key, messages, close)
        if close != KEEP_OPEN:
            self._closing[session.key] = None
            while len(self._closing) > MAX_CLOSING:
                self._closing.popitem(last=False)

    def _later(self, session: Session, retry_wait: int, reason: str) -> bytes:
        return self._encode(session, GatewayMessage.LATER, retry_wait=retry_wait, reason=reason)

    @staticmethod
    def _encode(session: Session, kind: GatewayMessage, **fields: Any) -> bytes:
        return encode_message(kind, session.codec, **fields)
