"""Leaf -> server: the link interface and the result batcher (group commit).

Devices' results wait in the open batch; one flush sums them (float64) and submits the partial
`(Σ w·Δ, Σ w, n)` with the task ids. Each device's request is answered only when the server has
taken its batch: acknowledged means aggregated (DESIGN.md "Guarantees"). What the server took is
also kept here, one running sum per model version, server boot and version it applies in, until
the server serves that version (and so has checkpointed it), to be sent again if the server restarts
and lost it. (In sync mode a batch applies in the version after its own; in async mode in the one
after the server's current version when it took the batch: `SubmitReply.applies_in`.)
Only what an earlier boot took is sent again: a batch the restarted server took already would make
it refuse the whole sum as duplicates, and the rest would be lost with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np

from device_protocol.tensors import tensors_to_binary
from internal_link.errors import CallRefused, LinkUnavailable, RemoteError
from internal_link.messages import SubmitBatch, SubmitReply

from .fedavg import PartialSum

log = logging.getLogger(__name__)


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
    ACCEPTED = "accepted"
    LATE = "late"
    DUPLICATE = "duplicate"
    UNAVAILABLE = "unavailable"  # not durable: the device must send it again


@dataclass
class _Pending:
    task_id: str
    weight: float
    update: dict[str, np.ndarray]
    done: asyncio.Future[Outcome]
    clipped: bool = False  # by screening (robustness.py); the server's adaptive bounds count these
    capped: bool = False


@dataclass
class _Group:
    job_id: str
    version: int
    items: list[_Pending] = field(default_factory=list)


class ResultBatcher:
    """Collects results and submits them in batches, one batch in flight at a time."""

    def __init__(self, leaf: str, link: ServerLink, hold_limit: float = 20.0, call_timeout: float = 10.0) -> None:
        self._leaf = leaf
        self._link = link
        self._hold_limit = hold_limit
        self._call_timeout = call_timeout
        self._open: dict[tuple[str, int], _Group] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # (job id, model version, version they apply in, server boot that took them) -> (their sum, their task ids)
        self._retained: dict[tuple[str, int, int, str], tuple[PartialSum, list[str]]] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="result-batcher")

    async def stop(self) -> None:
        """Flush what is waiting, then stop. A flush in flight is finished, not cut: the server may
        be taking that batch right now, and its devices are owed the answer."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task

    async def submit(
        self,
        job_id: str,
        version: int,
        task_id: str,
        weight: float,
        update: dict[str, np.ndarray],
        *,
        clipped: bool = False,
        capped: bool = False,
    ) -> Outcome:
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        group = self._open.setdefault((job_id, version), _Group(job_id, version))
        group.items.append(_Pending(task_id, weight, update, done, clipped, capped))
        self._wake.set()
        return await done

    async def _run(self) -> None:
        while not (self._stopping and not self._open):
            await self._wake.wait()
            self._wake.clear()
            await self._flush_all()

    async def _flush_all(self) -> None:
        groups, self._open = self._open, {}
        for group in groups.values():
            try:
                await self._flush(group)
            except Exception:  # never leave a device hanging: it will send again
                log.exception("flushing %d results of job %s failed", len(group.items), group.job_id)
                _resolve(group.items, Outcome.UNAVAILABLE)

    async def _flush(self, group: _Group) -> None:
        items = group.items
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._hold_limit
        while items:
            partial, batch = await loop.run_in_executor(None, self._sum, group, items)
            try:
                reply = SubmitReply.model_validate(
                    await self._link.call("submit", batch.model_dump(), self._call_timeout)
                )
            except LinkUnavailable:
                if loop.time() >= deadline:
                    log.warning(
                        "server unreachable for %.0f s: %d results not acknowledged", self._hold_limit, len(items)
                    )
                    _resolve(items, Outcome.UNAVAILABLE)
                    return
                await asyncio.sleep(0.2)
                continue
            except RemoteError as exc:
                log.error("server refused a batch of job %s: %s", group.job_id, exc)
                _resolve(items, Outcome.UNAVAILABLE)
                return
            if reply.accepted:
                self._retain(
                    group.job_id, group.version, _applies_in(reply, group.version), reply.boot, partial, batch.task_ids
                )
                _resolve(items, Outcome.ACCEPTED)
                return
            if reply.late:
                _resolve(items, Outcome.LATE)
                return
            if not reply.duplicates:
                log.error("server refused a batch of job %s: %s", group.job_id, reply.message)
                _resolve(items, Outcome.UNAVAILABLE)
                return
            # Some were counted already (sent before, or through another leaf): drop those, send the rest.
            dup = set(reply.duplicates)
            _resolve([p for p in items if p.task_id in dup], Outcome.DUPLICATE)
            items = [p for p in items if p.task_id not in dup]

    def _sum(self, group: _Group, items: list[_Pending]) -> tuple[PartialSum, SubmitBatch]:
        partial = PartialSum({name: arr.shape for name, arr in items[0].update.items()})
        for item in items:
            partial.add_update(item.update, item.weight, clipped=item.clipped, capped=item.capped)
        return partial, self._batch(group.job_id, group.version, partial, [p.task_id for p in items])

    def _batch(self, job_id: str, version: int, partial: PartialSum, task_ids: list[str]) -> SubmitBatch:
        return SubmitBatch(
            leaf=self._leaf,
            job_id=job_id,
            version=version,
            task_ids=task_ids,
            sum_weight=partial.weight,
            sum_update=tensors_to_binary(partial.sums),
            clipped=partial.clipped,
            capped=partial.capped,
        )

    # -- what the server holds, kept until it is checkpointed -----------------------------------
    def _retain(
        self, job_id: str, version: int, applies_in: int, boot: str, partial: PartialSum, task_ids: list[str]
    ) -> None:
        key = (job_id, version, applies_in, boot)
        kept = self._retained.get(key)
        if kept is None:
            self._retained[key] = (partial, list(task_ids))
        else:
            kept[0].add_partial(
                partial.sums, partial.weight, partial.count, clipped=partial.clipped, capped=partial.capped
            )
            kept[1].extend(task_ids)

    def release(self, job_id: str, current_version: int) -> None:
        """The server serves `current_version`: it and older ones are in its checkpoints."""
        for key in [k for k in self._retained if k[0] == job_id and k[2] <= current_version]:
            del self._retained[key]

    async def resend_retained(self, boot: str) -> bool:
        """After a server restart (now at `boot`): send again what earlier boots had taken but may
        not have checkpointed. (Batches `boot` took itself, sent while the server was coming back,
        are not sent again.)

        Returns False when the server could not be reached, so the caller tries again.
        """
        for key in list(self._retained):
            job_id, version, _, taken_by = key
            kept = self._retained.get(key)  # released meanwhile if its version closed
            if taken_by == boot or kept is None:
                continue
            partial, task_ids = kept
            batch = self._batch(job_id, version, partial, task_ids)
            try:
                reply = SubmitReply.model_validate(
                    await self._link.call("submit", batch.model_dump(), self._call_timeout)
                )
            except LinkUnavailable as exc:
                log.warning("re-sending %d results of job %s v%d failed: %s", len(task_ids), job_id, version, exc)
                return False
            except RemoteError as exc:
                log.error("server refused re-sent results of job %s v%d: %s", job_id, version, exc)
                continue
            if reply.accepted and self._retained.pop(key, None) is not None:
                # The new boot holds them now; should it restart too, they go again.
                self._retain(job_id, version, _applies_in(reply, version), reply.boot, partial, task_ids)
            if reply.accepted or reply.late:
                log.info(
                    "re-sent %d results of job %s v%d: %s",
                    len(task_ids),
                    job_id,
                    version,
                    "counted" if reply.accepted else "version already closed",
                )
            else:
                log.error(
                    "server refused re-sent results of job %s v%d: %s %s",
                    job_id,
                    version,
                    reply.message,
                    reply.duplicates[:5],
                )
        return True


def _applies_in(reply: SubmitReply, version: int) -> int:
    # A sync server does not say: its batches apply in the version after their own.
    return version + 1 if reply.applies_in is None else reply.applies_in


def _resolve(items: list[_Pending], outcome: Outcome) -> None:
    for item in items:
        if not item.done.done():
            item.done.set_result(outcome)
