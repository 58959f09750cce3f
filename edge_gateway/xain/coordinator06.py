"""xain-sdk 0.6 participants' gRPC calls, answered from the leaf's jobs, leases and results path.

The SDK sends no identity with Rendezvous, Heartbeat or StartTrainingRound: like XAIN's own
coordinator we know a participant by its connection (`context.peer()`, stable for a channel's
life), and mint it an id `x6-…` under which it holds leases like any device. The uuid in
EndTrainingRound only names its uploaded object `{round}/{uuid}` (object_store.py). The round
number we tell is the model version its lease is for, so `{round}/global` names a version.

Heartbeat `ROUND r` is said only with a lease taken for the participant (as for 0.8, see
`XainEndpoints.heartbeat`): a participant whose lease runs out (it died mid-round) frees its slot
for another, where XAIN discarded the whole round. Late entrants hear `LATER` at Rendezvous while
the job has every slot it can use; `FINISHED` once the job has ended.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from device_protocol.errors import UpdateRejected
from device_protocol.feg import Status
from device_protocol.xain.flat_weights import checked_vector
from device_protocol.xain.safe_unpickle import load_array
from internal_link.messages import JobStatus

from ..leaf.job_state import LeafJob, TaskDecision
from ..leaf.result_verdicts import RESULT_ANSWERS, ResultFacts, ResultVerdict
from ..leaf.xain_endpoints import HOLD_FOR_SLOT, Upload, XainEndpoints, max_upload_bytes
from .coordinator_service import ACCEPT, FINISHED, LATER, MESSAGES, ROUND, STANDBY, TRAINING
from .object_store import ObjectStore

log = logging.getLogger(__name__)

MAX_PEERS = 100_000  # connections whose participant id and started task this leaf remembers


@dataclass(frozen=True)
class _Started:
    """The task StartTrainingRound handed a participant: what its EndTrainingRound reports on."""

    job_id: str
    task_id: str
    version: int


def _from_pickle(body: bytes, values: int) -> Any:
    # Only ever through the allow-list unpickler: the object is whatever the participant wrote.
    return checked_vector(load_array(body, max_upload_bytes(values)), values, "uploaded object")


def _missing(key: str) -> Callable[[bytes, int], Any]:
    def refuse(body: bytes, values: int) -> Any:
        raise UpdateRejected(f"no object was written at {key} before EndTrainingRound")

    return refuse


class Coordinator06:
    """The four `xain_proto.fl.Coordinator` methods, each `(request, context) -> response`."""

    def __init__(self, xain: XainEndpoints, objects: ObjectStore, sync_soon: Callable[[float], Any]) -> None:
        self._xain = xain
        self._objects = objects
        self._sync_soon = sync_soon
        self._peers: OrderedDict[str, str] = OrderedDict()  # peer -> participant id
        self._started: OrderedDict[str, _Started] = OrderedDict()  # participant id -> its task

    def behaviours(self) -> dict[str, Callable[[Any, Any], Any]]:
        return {
            "Rendezvous": self.rendezvous,
            "Heartbeat": self.heartbeat,
            "StartTrainingRound": self.start_training_round,
            "EndTrainingRound": self.end_training_round,
        }

    def _participant(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        # A peer first seen at a heartbeat (its channel reconnected, or this leaf restarted) is
        # taken in as if it had rendezvoused: the SDK cannot rendezvous again.
        peer = context.peer()
        participant = self._peers.get(peer)
        if participant is None:
            participant = self._peers[peer] = "x6-" + secrets.token_urlsafe(16)
            log.info("XAIN 0.6 participant %s connected from %s", participant, peer)
            _bound(self._peers)
        return participant

    def _ended_any(self) -> bool:
        return any(j.view.status is JobStatus.DONE for j in self._xain.jobs.values())

    async def rendezvous(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        participant = self._participant(context)
        job = self._xain.job_for(participant)
        if job is None:
            # No job yet: try again later. Only ended jobs: accept, the heartbeat says FINISHED.
            reply = ACCEPT if self._ended_any() else LATER
        elif participant not in job.leases and job.view.free_slots == 0 and len(job.leases) >= job.view.quota:
            reply = LATER  # the round has every participant it can use
        else:
            reply = ACCEPT
        return MESSAGES["RendezvousResponse"](reply=reply)

    async def heartbeat(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # Always answered: a failed heartbeat leaves the SDK's main thread waiting forever.
        participant = self._participant(context)
        job = self._xain.job_for(participant)
        if job is None:
            return _beat(FINISHED if self._ended_any() else STANDBY, 0)
        if request.state == FINISHED:
            return _beat(FINISHED, job.view.model_version)
        if request.state == TRAINING:  # the answer is not read; taking a lease now would be wrong
            return _beat(STANDBY, job.view.model_version)
        decision, lease = self._xain.decide(job, participant)
        if decision is TaskDecision.NOT_SELECTED and job.view.free_slots > 0:
            await self._sync_soon(HOLD_FOR_SLOT)  # a free slot elsewhere: ask the server for it now
            decision, lease = self._xain.decide(job, participant)
        if decision is TaskDecision.TASK and lease is not None:
            return _beat(ROUND, lease.version)
        if decision in (TaskDecision.NO_JOB, TaskDecision.NOT_ELIGIBLE):
            return _beat(FINISHED, job.view.model_version)
        return _beat(STANDBY, job.view.model_version)

    async def start_training_round(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        participant = self._participant(context)
        job = self._xain.job_for(participant)
        lease = job.leases.get(participant) if job is not None else None
        if job is None or lease is None or lease.reported:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no round is open for this participant")
        assert job is not None and lease is not None
        self._started[participant] = _Started(job.view.job_id, lease.task_id, lease.version)
        _bound(self._started)
        epochs = _epochs(job)
        return MESSAGES["StartTrainingRoundResponse"](epochs=epochs, epoch_base=lease.version * epochs)

    async def end_training_round(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        participant = self._participant(context)
        started = self._started.get(participant)
        detail: str | None = None
        if started is None:
            # Refused, and counted on the job the participant joined.
            job = self._xain.job_for(participant)
            facts, detail = ResultFacts(cookie_ok=False), "EndTrainingRound without StartTrainingRound"
            started = _Started("", "", -1)
        else:
            job = self._xain.jobs.get(started.job_id)
        if job is None:
            facts = ResultFacts(job_known=False)
        elif detail is None:
            facts = job.result_facts(started.task_id, started.version)
        key = f"{started.version}/{request.participant_id}"
        body = self._objects.take(key)
        parse = _from_pickle if body is not None else _missing(key)
        upload = Upload(participant, started.task_id, started.version, body or b"", parse, request.number_samples)
        verdict, detail = await self._xain.submit(job, upload, facts, detail or None)
        answer = RESULT_ANSWERS[verdict]
        if verdict is ResultVerdict.UNAVAILABLE:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server unavailable: the result was not taken")
        if verdict is ResultVerdict.PENDING:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server has not answered for the result yet")
        if answer.status is not Status.OK:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{answer.reason}: {detail or verdict.value}")
        return MESSAGES["EndTrainingRoundResponse"]()


def _beat(state: int, round_number: int) -> Any:
    return MESSAGES["HeartbeatResponse"](state=state, round=max(round_number, 0))


def _epochs(job: LeafJob) -> int:
    epochs = job.view.config.get("epochs")
    return epochs if type(epochs) is int and epochs > 0 else 1


def _bound(remembered: OrderedDict[str, Any]) -> None:
    if len(remembered) > MAX_PEERS:
        remembered.popitem(last=False)
