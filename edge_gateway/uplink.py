"""Leaf -> server: the link interface and the result uplink (acknowledge durably, deliver later).

A device's result is acknowledged once it is in the leaf's acknowledged results (the write-ahead
log, edge_gateway.acknowledged). One task delivers them in the background, per (job, model
version) summed in float64 as `(Σ w·Δ, Σ w, n)` with the task ids, one batch in flight at a time,
and tries again for as long as the server cannot be reached. A device waits a moment for the
server's answer (to hear "late" or "counted once" when that is so), never longer: then OK —
unless the server has said its next version is due and would make the result late (closing.py):
then the device waits for the server's answer as long as it still waits at all, and past that
hears RETRY (its re-send waits for the same answer).

What the server took stays in the log until the server serves a newer version (so has checkpointed
that one); in memory only its task ids are kept, per server boot. After a server restart the ids an
earlier boot took are read back from the log and delivered again; after a leaf restart everything
the log replays is. The server counts a task id once: its `duplicates` answer means "counted
already", and the rest of such a batch is summed again without them and sent, never dropped. A
`late` answer for a result whose device heard OK already (the round closed before the leaf could
deliver it: the server's closing leaves only a leaf gone past its limits that way) is counted as late.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from device_protocol.tensors import tensors_to_binary
from internal_link.errors import CallRefused, ErrorCode, LinkUnavailable, RemoteError
from internal_link.messages import SubmitBatch, SubmitReply

from .acknowledged import AcknowledgedResults
from .fedavg import PartialSum
from .result_log import ResultLogBroken, ResultRecord

log = logging.getLogger(__name__)

RETRY_PAUSE = 0.2  # seconds between attempts to reach the server
STOP_DELIVERY_LIMIT = 3.0  # seconds a stopping leaf still tries to deliver (the log keeps the rest)
# The server's refusals that no later attempt changes: the results are dropped (logged).
FINAL_REFUSALS = frozenset({ErrorCode.UNKNOWN_JOB, ErrorCode.BAD_PAYLOAD, ErrorCode.UNKNOWN_METHOD})


class ServerLink(Protocol):
    """What a leaf needs of the server; `LinkClient` is the network one."""

    async def call(self, method: str, payload: Any, timeout: float) -> Any: ...


class LocalServerLink:
    """The in-memory link: calls the server's handlers directly (one-process tests)."""

    def __init__(self, handlers: Mapping[str, Callable[[Any], Awaitable[Any]]]) -> None:
        self._handlers = handlers

    async def call(self, method: str, payload: Any, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(self._handlers[method](payload), timeout)
        except CallRefused as exc:  # as the network link delivers a handler's refusal
            raise RemoteError(exc.code, exc.text) from exc


class Outcome(Enum):
    """What a device's result became by the time it is answered (every one but UNAVAILABLE is in the log)."""

    ACCEPTED = "accepted"  # the server took it
    DURABLE = "durable"  # in the log; the server has not answered yet: it is delivered later
    LATE = "late"  # the server had closed its round
    DUPLICATE = "duplicate"  # the server had counted this task id already (sent before, or by another leaf)
    PENDING = "pending"  # in the log; no answer yet, and the next version may make it late: ask again
    UNAVAILABLE = "unavailable"  # not durable: the device must send it again


@dataclass
class _Group:
    """Undelivered results of one job's model version: new records, and those summed already."""

    items: list[ResultRecord] = field(default_factory=list)
    partial: PartialSum | None = None
    task_ids: list[str] = field(default_factory=list)


class ResultUplink:
    """Acknowledges results durably and delivers them to the server, exactly once per task id."""

    def __init__(
        self,
        leaf: str,
        link: ServerLink,
        results: AcknowledgedResults,
        on_late: Callable[[str, list[str], int], None] = lambda job_id, task_ids, acknowledged: None,
        may_promise: Callable[[str, int], bool] = lambda job_id, version: True,
        call_timeout: float = 10.0,
    ) -> None:
        self._leaf = leaf
        self._link = link
        self._results = results
        # (job id, task ids, how many of them were answered OK): results the server did not count
        self._on_late = on_late
        # (job id, model version): whether a device may hear OK before the server has answered
        self._may_promise = may_promise
        self._call_timeout = call_timeout
        self._open: dict[tuple[str, int], _Group] = {}
        self._appending: dict[tuple[str, str], asyncio.Future[bool]] = {}  # (job, task) -> made durable?
        # (job, task) -> the server's answer, until it comes (devices and their re-sends wait on it)
        self._answers: dict[tuple[str, str], asyncio.Future[Outcome]] = {}
        self._owed: set[tuple[str, str]] = set()  # answered OK before the server had answered
        # (job id, model version, server boot that took them) -> their task ids
        self._taken: dict[tuple[str, int, str], list[str]] = {}
        self._replayed: dict[str, dict[int, set[str]]] = {}  # job -> version -> task ids, until the job is seen
        self._truncated: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._behind = False  # results wait that the server could not be reached for (or replayed, re-sent)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Replay the log (what the server may not have checkpointed), then start delivering."""
        replayed = 0
        async for record in self._results.replay():
            self._group(record.job_id, record.version).items.append(record)
            self._replayed.setdefault(record.job_id, {}).setdefault(record.version, set()).add(record.task_id)
            replayed += 1
        if replayed:
            log.info("replayed %d acknowledged results from the log: delivering them again", replayed)
            self._behind = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name="result-uplink")
        self._wake.set()

    async def stop(self) -> None:
        """Deliver what waits for a moment, then close the log (which keeps what is left)."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_DELIVERY_LIMIT)
            except TimeoutError:
                log.warning("stopping with %d results undelivered: the log keeps them", self.undelivered())
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._results.close()

    # -- devices' results ---------------------------------------------------------------------
    async def accept(self, record: ResultRecord, answer_wait: float = 0.0, patience: float = 0.0) -> Outcome:
        """Make `record` durable, then wait up to `answer_wait` seconds for the server's answer
        (so the device hears whether it counted); DURABLE if none came by then: it is delivered in
        the background, however long the server takes. While the next version is due and would make
        it late, the wait goes on for up to `patience` seconds in all (what the device still
        waits), then PENDING. UNAVAILABLE if it could not be made durable."""
        started = asyncio.get_running_loop().time()
        key = (record.job_id, record.task_id)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._appending[key] = done
        try:
            await self._results.append(record)
        except (ResultLogBroken, ValueError, RuntimeError) as exc:
            log.error("result %s of job %s not acknowledged: %s", record.task_id, record.job_id, exc)
            done.set_result(False)
            return Outcome.UNAVAILABLE
        finally:
            del self._appending[key]
        done.set_result(True)
        self._answers[key] = asyncio.get_running_loop().create_future()
        self._group(record.job_id, record.version).items.append(record)
        self._wake.set()
        patience -= asyncio.get_running_loop().time() - started
        outcome = await self.answer_for(record.job_id, record.task_id, record.version, answer_wait, patience)
        assert outcome is not None, "a result just taken has its answer to come"
        return outcome

    async def answer_for(
        self, job_id: str, task_id: str, version: int, answer_wait: float, patience: float
    ) -> Outcome | None:
        """The server's answer on a result taken before, waited for as `accept` does (a re-send
        hears what its first copy became); None when there is none to wait for: it came already."""
        key = (job_id, task_id)
        if key in self._owed:
            return Outcome.DURABLE
        answer = self._answers.get(key)
        if answer is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(answer), answer_wait)
        except TimeoutError:
            if answer.done():  # answered in the turn the wait ran out
                return answer.result()
        if self._may_promise(job_id, version):
            self._owed.add(key)  # the device hears OK now: the server holds its rounds until it is in
            return Outcome.DURABLE
        try:
            return await asyncio.wait_for(asyncio.shield(answer), max(0.0, patience - answer_wait))
        except TimeoutError:
            return Outcome.PENDING

    def first_copy(self, job_id: str, task_id: str) -> asyncio.Future[bool] | None:
        """While a task's first result is being made durable: whether it will have been."""
        return self._appending.get((job_id, task_id))

    def replayed(self, job_id: str) -> dict[int, set[str]]:
        """Once per job: the task ids the log replayed for it, by model version."""
        return self._replayed.pop(job_id, {})

    def keep_jobs(self, job_ids: set[str]) -> None:
        """Only these jobs exist at the server (its sync lists them): forget what was kept for the
        others, retired or deleted (their results still in the log are refused and dropped)."""
        self._replayed = {j: v for j, v in self._replayed.items() if j in job_ids}
        self._truncated = {j: v for j, v in self._truncated.items() if j in job_ids}

    def undelivered(self) -> int:
        return sum(len(g.items) + len(g.task_ids) for g in self._open.values())

    def behind(self) -> bool:
        """Whether results wait that could not be delivered when they came (the server was slow or
        unreachable, restarted, or this leaf restarted): the server holds its rounds meanwhile."""
        return self._behind or bool(self._owed)

    # -- what the server holds, kept until it is checkpointed -----------------------------------
    def release(self, job_id: str, current_version: int, max_staleness: int = 0) -> None:
        """The server serves `current_version`: older versions are in its checkpoints. A result
        trained on version v goes into a version at most v + max_staleness + 1 (async jobs apply
        results up to max_staleness versions old; sync jobs: 0), so those up to `current_version`
        − max_staleness − 1 are in the checkpoints too."""
        obsolete = current_version - max_staleness - 1
        for key in [k for k in self._taken if k[0] == job_id and k[1] <= obsolete]:
            del self._taken[key]
        if obsolete > self._truncated.get(job_id, -1):
            self._truncated[job_id] = obsolete
            task = asyncio.get_running_loop().create_task(self._truncate(job_id, obsolete))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _truncate(self, job_id: str, version: int) -> None:
        try:
            await self._results.truncate(job_id, version)
        except Exception as exc:  # the log refuses appends from now on; the leaf goes on answering RETRY
            log.error("truncating the result log failed: %s", exc)

    async def resend_taken(self, boot: str) -> None:
        """The server restarted (now `boot`): deliver again what earlier boots took (read back
        from the log), as they may not have checkpointed it."""
        for key in [k for k in self._taken if k[2] != boot]:
            job_id, version, _ = key
            task_ids = self._taken.pop(key, None)
            if task_ids is None:  # released meanwhile: its version is checkpointed
                continue
            records = await self._results.results(job_id, version, set(task_ids))
            if len(records) != len(task_ids):
                log.error(
                    "%d results of job %s v%d missing from the log", len(task_ids) - len(records), job_id, version
                )
            self._group(job_id, version).items.extend(records)
            self._behind = True
            log.info(
                "re-sent %d results of job %s v%d an earlier server process took (from the log)",
                len(records),
                job_id,
                version,
            )
        self._wake.set()

    # -- delivery -----------------------------------------------------------------------------
    def _group(self, job_id: str, version: int) -> _Group:
        return self._open.setdefault((job_id, version), _Group())

    async def _run(self) -> None:
        while not (self._stopping and not self._open):
            await self._wake.wait()
            self._wake.clear()
            if await self._deliver_all():
                self._wake.set()  # the server was unreachable: try again after a pause
                await asyncio.sleep(RETRY_PAUSE)

    async def _deliver_all(self) -> bool:
        """One attempt at every waiting group; True if the server could not be reached."""
        for key in list(self._open):
            try:
                await self._deliver(key)
            except LinkUnavailable as exc:
                log.debug("server unreachable: %d results wait (%s)", self.undelivered(), exc)
                self._behind = True
                return True
            except RemoteError as exc:
                log.warning("server failed to take results of job %s v%d (%s): trying again", *key, exc)
                self._behind = True
                return True
            except Exception:
                log.exception("delivering results of job %s v%d failed; trying again", *key)
                return True
        self._behind = False
        return False

    async def _deliver(self, key: tuple[str, int]) -> None:
        """Send what one group holds now, until the server has answered for each of them."""
        job_id, version = key
        loop = asyncio.get_running_loop()
        group = self._open[key]
        resend = True
        while resend and (group.items or group.task_ids):
            resend = False
            new, group.items = group.items, []
            new = _once_each(new, set(group.task_ids))  # a task id twice in a batch is refused whole
            group.task_ids.extend(r.task_id for r in new)  # first: `undelivered` counts them meanwhile
            group.partial = await loop.run_in_executor(None, _summed, group.partial, new)
            batch = SubmitBatch(
                leaf=self._leaf,
                job_id=job_id,
                version=version,
                task_ids=group.task_ids,
                sum_weight=group.partial.weight,
                sum_update=tensors_to_binary(group.partial.sums),
                clipped=group.partial.clipped,
                capped=group.partial.capped,
            )
            try:
                reply = SubmitReply.model_validate(
                    await self._link.call("submit", batch.model_dump(), self._call_timeout)
                )
            except RemoteError as exc:
                if exc.code not in FINAL_REFUSALS:  # e.g. INTERNAL: a checkpoint failed; try again
                    raise
                log.error("server refused %d results of job %s v%d: %s", len(batch.task_ids), job_id, version, exc)
                self._answer(job_id, batch.task_ids, Outcome.LATE)
                self._forget(group)
                continue
            if reply.accepted:
                self._taken.setdefault((job_id, version, reply.boot), []).extend(batch.task_ids)
                self._answer(job_id, batch.task_ids, Outcome.ACCEPTED)
                self._forget(group)
            elif reply.late:
                log.warning(
                    "%d results of job %s v%d reached the server after the round closed: counted as late",
                    len(batch.task_ids),
                    job_id,
                    version,
                )
                self._answer(job_id, batch.task_ids, Outcome.LATE)
                self._forget(group)
            elif reply.duplicates:
                await self._without(key, group, set(reply.duplicates), reply.boot)
                resend = True
            else:
                n = len(batch.task_ids)
                log.error("server refused %d results of job %s v%d: %s", n, job_id, version, reply.message)
                self._answer(job_id, batch.task_ids, Outcome.LATE)
                self._forget(group)
        if not group.items and not group.task_ids and self._open.get(key) is group:
            del self._open[key]

    async def _without(self, key: tuple[str, int], group: _Group, counted: set[str], boot: str) -> None:
        """Some of the batch were counted already (sent before, or through another leaf): the rest
        are read back from the log and summed again."""
        job_id, version = key
        if boot:  # counted by this boot: should it restart, they go again
            self._taken.setdefault((job_id, version, boot), []).extend(t for t in group.task_ids if t in counted)
        self._answer(job_id, [t for t in group.task_ids if t in counted], Outcome.DUPLICATE)
        rest = {t for t in group.task_ids if t not in counted}
        self._forget(group)
        # In front of anything that came meanwhile: the batch's order does not matter, only its ids.
        group.items[:0] = await self._results.results(job_id, version, rest)

    def _answer(self, job_id: str, task_ids: list[str], outcome: Outcome) -> None:
        """Tell the devices still waiting; report those the server did not count, and how many of
        them were answered OK before it refused."""
        acknowledged = 0
        for task_id in task_ids:
            key = (job_id, task_id)
            if key in self._owed:
                self._owed.discard(key)
                acknowledged += 1
            waiting = self._answers.pop(key, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(outcome)
        if outcome is Outcome.LATE:
            self._on_late(job_id, task_ids, acknowledged)

    @staticmethod
    def _forget(group: _Group) -> None:
        group.partial, group.task_ids = None, []


def _once_each(records: list[ResultRecord], task_ids: set[str]) -> list[ResultRecord]:
    """`records` without those of `task_ids`, and each task id once."""
    kept = []
    for record in records:
        if record.task_id not in task_ids:
            task_ids.add(record.task_id)
            kept.append(record)
    return kept


def _summed(partial: PartialSum | None, records: list[ResultRecord]) -> PartialSum:
    if partial is None:
        partial = PartialSum({name: arr.shape for name, arr in records[0].update.items()})
    for record in records:
        partial.add_update(record.update, record.weight, clipped=record.clipped, capped=record.capped)
    return partial
