"""The leaf's answers to xain-sdk 0.8 participants, from the same leases and results path as FEG devices.

A participant is a device whose id the proxy minted at `/rendez_vous`. Its heartbeat takes the
lease (so `round` is said only to a participant that `start_training` will not refuse: the SDK
breaks on a refusal after `round`), and answers `stand_by` once the lease's result is in (the
SDK trains again on every `round` it hears). The model travels as `.npy` of the flat float32
vector (docs/XAIN.md); an upload is the participant's weights, so the update is what it
uploaded minus the global model of its token's version, with weight 1 (0.8 sends no sample
count). Every answer is HTTP 200: the SDK treats any other status as fatal.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

from device_protocol.codecs import JSON
from device_protocol.cookies import SIG, CookieSigner
from device_protocol.errors import CookieInvalid, UpdateRejected
from device_protocol.tensors import MAX_NUM_SAMPLES
from device_protocol.xain.flat_weights import flat_length, flatten, unflatten
from device_protocol.xain.npy_vector import flat_vector_from_npy, npy_from_flat_vector
from internal_link.calls import DeviceAnswer, DeviceCall, device_answer
from internal_link.messages import JobStatus
from internal_link.streams import Streamed

from ..result_log import ResultRecord
from ..robustness import ScreenBounds, Screened, screen_update
from ..uplink import ResultUplink
from .endpoints import RESULT_ANSWER_WAIT, RESULT_PATIENCE
from .job_state import LeafJob, TaskDecision
from .payload_cache import PayloadCache
from .result_verdicts import RESULT_ANSWERS, ResultFacts, ResultVerdict, judge_result

log = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"
UPLOAD_SLACK = 1024  # bytes of `.npy` header allowed beyond 4 bytes per parameter
MAX_REMEMBERED = 100_000  # participants whose job this leaf remembers (for `finish`)
OFFLOAD_VALUES = 65_536  # vectors longer than this are built and compared in a worker thread
HOLD_FOR_SLOT = 0.5  # seconds a heartbeat may wait for the server to grant a free slot


def max_upload_bytes(values: int) -> int:
    """The largest `.npy` upload a model of `values` parameters can need."""
    return 4 * values + UPLOAD_SLACK


def _serving(job: LeafJob) -> bool:
    return job.view.status is not JobStatus.DONE


XainAnswer = DeviceAnswer | Streamed


def _answer(body: dict[str, Any]) -> DeviceAnswer:
    return DeviceAnswer(200, JSON, orjson.dumps(body))


@dataclass(frozen=True)
class Upload:
    """A participant's trained model as it arrived, for the lease `task_id` on model `version`."""

    participant: str
    task_id: str
    version: int
    body: bytes
    parse: Callable[[bytes, int], np.ndarray]  # body, expected length -> flat vector; raises UpdateRejected
    weight: int  # number of samples


class _Global:
    """One job's model version as the flat vector and its `.npy` bytes, built once."""

    __slots__ = ("npy", "vector", "version")

    def __init__(self, version: int, vector: np.ndarray) -> None:
        self.version = version
        self.vector = vector
        self.npy = npy_from_flat_vector(vector)


class XainEndpoints:
    """Answers the participant calls the proxy forwards as `XAIN` (heartbeat, start, download, upload)."""

    def __init__(
        self,
        jobs: dict[str, LeafJob],
        payloads: PayloadCache,
        signer: CookieSigner,
        uplink: ResultUplink,
        sync_soon: Callable[[float], Awaitable[None]],
    ) -> None:
        self._jobs = jobs
        self._payloads = payloads
        self._signer = signer
        self._uplink = uplink
        self._sync_soon = sync_soon
        self._globals: dict[str, _Global] = {}
        self._joined: OrderedDict[str, str] = OrderedDict()  # participant id -> job id

    @property
    def jobs(self) -> dict[str, LeafJob]:
        return self._jobs

    def answer(self, call: DeviceCall) -> XainAnswer | Awaitable[XainAnswer]:
        query = call.query
        participant = query.get("id", "")
        if call.endpoint == "heartbeat":
            return self.heartbeat(participant, call.wait)
        if call.endpoint == "start_training":
            return self.start_training(participant, query.get("url", ""))
        if call.endpoint == "download":
            return self.download(participant, query.get("token", ""))
        return self.upload(participant, query.get("token", ""), call.body)

    # -- coordinator ----------------------------------------------------------------------------
    def job_for(self, participant: str) -> LeafJob | None:
        """The job the participant trains for: the one it joined, else the job admitting XAIN."""
        joined = self._joined.get(participant)
        if joined is not None and joined in self._jobs:
            return self._jobs[joined]
        chosen = self.open_job()
        if chosen is not None:
            self._joined[participant] = chosen.view.job_id
            log.info("XAIN participant %s joined job %s", participant, chosen.view.job_id)
            if len(self._joined) > MAX_REMEMBERED:
                self._joined.popitem(last=False)
        return chosen

    def open_job(self) -> LeafJob | None:
        """The job new XAIN participants join: the one flagged `xain`, else the only running one."""
        live = [j for j in self._jobs.values() if j.view.status is not JobStatus.DONE and j.view.task_kind == "WEIGHTS"]
        flagged = [j for j in live if j.view.xain]
        return flagged[0] if flagged else (live[0] if len(live) == 1 else None)

    def decide(self, job: LeafJob, participant: str) -> tuple[TaskDecision, Any]:
        now = asyncio.get_running_loop().time()
        return job.decide_task(participant, now, self._ready(job), None)

    def _ready(self, job: LeafJob) -> bool:
        return self._payloads.servable(job.view)

    def heartbeat(self, participant: str, wait: float) -> DeviceAnswer | Awaitable[DeviceAnswer]:
        job = self.job_for(participant)
        if job is None:
            # A finished job's participants are done; with no job yet they wait for one.
            done = any(j.view.status is JobStatus.DONE for j in self._jobs.values())
            return self._state("finish" if done else "stand_by", 0)
        decision, _ = self.decide(job, participant)
        hold = min(HOLD_FOR_SLOT, wait - 0.05)
        if decision is TaskDecision.NOT_SELECTED and job.view.free_slots > 0 and hold > 0:
            return self._heartbeat_held(job, participant, hold)
        return self._heartbeat_answer(job, decision)

    async def _heartbeat_held(self, job: LeafJob, participant: str, hold: float) -> DeviceAnswer:
        await self._sync_soon(hold)
        decision, _ = self.decide(job, participant)
        return self._heartbeat_answer(job, decision)

    def _heartbeat_answer(self, job: LeafJob, decision: TaskDecision) -> DeviceAnswer:
        round_number = job.view.round
        if decision is TaskDecision.TASK:
            return self._state("round", round_number)
        if decision is TaskDecision.NO_JOB:
            return self._state("finish", round_number)
        if decision is TaskDecision.NOT_ELIGIBLE:
            return self._state("reject", round_number)
        # Trained this round already, no slot free, or the model not served yet: later.
        return self._state("stand_by", round_number)

    @staticmethod
    def _state(state: str, round_number: int) -> DeviceAnswer:
        return _answer({"state": state, "round": max(round_number, 0)})

    def start_training(self, participant: str, url: str) -> DeviceAnswer:
        job = self.job_for(participant)
        if job is None:
            return _answer({"ok": False, "url": url, "token": ""})
        decision, lease = self.decide(job, participant)
        if decision is not TaskDecision.TASK or lease is None:
            return _answer({"ok": False, "url": url, "token": ""})
        cookie = self._signer.issue(job.view.job_id, participant, lease.task_id, lease.version, lease.selection_id)
        token = _token(job.view.job_id, lease.task_id, cookie)
        return _answer({"ok": True, "url": url, "token": token})

    # -- aggregator -----------------------------------------------------------------------------
    def download(self, participant: str, token: str) -> XainAnswer | Awaitable[XainAnswer]:
        try:
            job_id, _, _ = _read_token(token)
        except CookieInvalid as exc:
            return _answer({"status": "ERROR", "reason": "cookie_invalid", "message": exc.message})
        job = self._jobs.get(job_id)
        if job is None:
            return _answer({"status": "ERROR", "reason": "unknown_job"})
        current = self._global(job)
        if current is not None:
            return device_answer(200, OCTET_STREAM, (current.npy,))  # a large model is streamed
        return self._download_built(job)

    async def _download_built(self, job: LeafJob) -> XainAnswer:
        built = await self._build_global(job)
        if built is None:
            return _answer({"status": "RETRY", "reason": "model_not_ready"})
        return device_answer(200, OCTET_STREAM, (built.npy,))

    def _global(self, job: LeafJob) -> _Global | None:
        """The served version's vector if it is built and still current."""
        cached = self._globals.get(job.view.job_id)
        if cached is not None and cached.version == job.view.model_version:
            return cached
        return None

    async def global_of(self, job: LeafJob) -> _Global | None:
        """The served version's flat vector, built now if needed; None while it is not served."""
        return self._global(job) or await self._build_global(job)

    async def _build_global(self, job: LeafJob) -> _Global | None:
        payload = self._payloads.get(job.view.job_id)
        if payload is None or payload.weights is None or payload.version != job.view.model_version:
            return None
        shapes = {k: tuple(v) for k, v in job.view.param_shapes.items()}
        weights = payload.weights
        if flat_length(shapes) > OFFLOAD_VALUES:
            built = await asyncio.to_thread(lambda: _Global(payload.version, flatten(weights, shapes)))
        else:
            built = _Global(payload.version, flatten(weights, shapes))
        if payload.version == job.view.model_version:
            # Only jobs still served keep their vector: finished and retired ones' are dropped here.
            self._globals = {k: g for k, g in self._globals.items() if k in self._jobs and _serving(self._jobs[k])}
            self._globals[job.view.job_id] = built
        return built

    async def upload(self, participant: str, token: str, body: bytes) -> DeviceAnswer:
        # The same steps and verdicts as DeviceEndpoints.result; the answer is always 200.
        detail: str | None = None
        version, task_id = -1, ""
        try:
            job_id, task_id, cookie = _read_token(token)
        except CookieInvalid as exc:
            job_id, cookie, detail = "", None, exc.message
        job = self._jobs.get(job_id)
        if detail is not None:
            facts = ResultFacts(cookie_ok=False)
        elif job is None:
            facts = ResultFacts(job_known=False)
        else:
            try:
                version, _ = self._signer.verify(cookie, job_id, participant, task_id)
                facts = job.result_facts(task_id, version)
            except CookieInvalid as exc:
                facts, detail = ResultFacts(cookie_ok=False), exc.message
        # 0.8 sends no sample count: every upload weighs 1.
        upload = Upload(participant, task_id, version, body, flat_vector_from_npy, 1)
        verdict, detail = await self.submit(job, upload, facts, detail)
        answer = RESULT_ANSWERS[verdict]
        body_out: dict[str, Any] = {"status": answer.status.value, "counted": answer.counted, "reason": answer.reason}
        if detail is not None:
            body_out["message"] = detail
        return _answer(body_out)

    async def submit(
        self, job: LeafJob | None, upload: Upload, facts: ResultFacts, detail: str | None
    ) -> tuple[ResultVerdict, str | None]:
        """An uploaded model through the verdicts, screening, counters and batcher of a FEG result.

        `facts` and `detail` are what is known before the body is read (job, cookie, books)."""
        verdict = judge_result(facts)
        if verdict is None and job is not None:
            screened = Screened({}, 1.0, clipped=False, capped=False, clamped=False, norm=0.0)
            try:
                if not 0 < upload.weight <= MAX_NUM_SAMPLES:
                    raise UpdateRejected(f"number of samples must be an integer from 1 to {MAX_NUM_SAMPLES}")
                update = await self._update(job, upload)
                # Screened like any device's result, the sample count as its weight.
                screen = job.view.screen
                weight = float(upload.weight)
                if screen is None:
                    screened = replace(screened, update=update, weight=weight)
                else:
                    screened = screen_update(update, weight, ScreenBounds(**screen.model_dump()))
            except UpdateRejected as exc:
                facts, detail = replace(facts, decoded=False), exc.message
            else:
                facts = replace(job.result_facts(upload.task_id, upload.version), decoded=True)
            verdict = judge_result(facts)
            if verdict is None:
                job.take(upload.task_id, upload.version)
                record = ResultRecord(
                    job.view.job_id,
                    upload.version,
                    upload.task_id,
                    screened.weight,
                    screened.update,
                    clipped=screened.clipped,
                    capped=screened.capped,
                )
                outcome = await self._uplink.accept(record, RESULT_ANSWER_WAIT, RESULT_PATIENCE)
                verdict = judge_result(replace(facts, upstream=outcome))
        assert verdict is not None, "a result the server has answered always has a verdict"
        if job is not None:
            job.settle(upload.task_id, verdict)
        if detail is not None:
            log.info("refused upload from XAIN participant %s: %s", upload.participant, detail)
        return verdict, detail

    async def _update(self, job: LeafJob, upload: Upload) -> dict[str, np.ndarray]:
        """The update in the upload: its vector minus the global of its version. Raises `UpdateRejected`."""
        shapes = {k: tuple(v) for k, v in job.view.param_shapes.items()}
        values = flat_length(shapes)
        body = upload.body
        if len(body) > max_upload_bytes(values):
            raise UpdateRejected(
                f"upload of {len(body)} bytes, a model of {values} parameters needs at most {max_upload_bytes(values)}"
            )
        current = await self.global_of(job)
        if current is None or current.version != upload.version:
            raise UpdateRejected("the model this upload was trained on is no longer served")

        def diff() -> dict[str, np.ndarray]:
            uploaded = upload.parse(body, values)
            delta = np.subtract(uploaded, current.vector, dtype=np.float32)
            if not delta.any():
                raise UpdateRejected("upload equals the global model: nothing was trained")
            return unflatten(delta, shapes)

        return await asyncio.to_thread(diff) if values > OFFLOAD_VALUES else diff()


def _token(job_id: str, task_id: str, cookie: dict[str, Any]) -> str:
    """URL-safe text carrying the task cookie (the SDK puts the token in the path as it is)."""
    data = orjson.dumps([job_id, task_id, cookie["model_version"], cookie["device_selection_id"], cookie[SIG]])
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _read_token(token: str) -> tuple[str, str, dict[str, Any]]:
    """(job id, task id, cookie) of a token `_token` made; the cookie is verified by the caller."""
    try:
        fields = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        raise CookieInvalid("malformed token: use the token start_training gave") from None
    if type(fields) is not list or len(fields) != 5 or not all(type(f) is str for f in fields[:2]):
        raise CookieInvalid("malformed token: use the token start_training gave")
    job_id, task_id, version, selection_id, sig = fields
    return job_id, task_id, {"model_version": version, "device_selection_id": selection_id, SIG: sig}
