"""What leaves fetch for a job's current version (the link's `"model"` call): its weights, or for a
phone job its ExecuTorch training program. Built once per version however many leaves ask, and
dropped with the version."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from device_protocol.tensors import tensors_to_binary

from .coordinator import JobState
from .programs import ProgramBuilder


class ModelContent:
    """The server's cache of what leaves fetch, one entry per job (its current version)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], dict[str, Any]] = {}
        self._programs = ProgramBuilder()
        self._base_programs: dict[str, asyncio.Task[bytes]] = {}  # exported once per job
        self._version_programs: dict[tuple[str, int], asyncio.Task[bytes]] = {}

    async def of(self, job: JobState) -> dict[str, Any]:
        """`{"version", "weights"}` or `{"version", "program"}` of the job's current version."""
        version = job.version
        key = (job.job_id, version)
        cached = self._cache.get(key)
        if cached is None:
            if job.spec.runtime == "executorch":
                program = await asyncio.shield(self.program(job))
                cached = {"version": version, "program": program}
            else:
                cached = {"version": version, "weights": tensors_to_binary(job.weights)}
            if job.version == version:  # not moved on while the program was built
                self._cache = {k: v for k, v in self._cache.items() if k[0] != job.job_id}
                self._cache[key] = cached
        return cached

    def forget(self, job_id: str) -> None:
        """A retired or deleted job: its cached content and any program being built."""
        self._cache = {k: v for k, v in self._cache.items() if k[0] != job_id}
        for key in [k for k in self._version_programs if k[0] == job_id]:
            self._version_programs.pop(key).cancel()
        if (base := self._base_programs.pop(job_id, None)) is not None:
            base.cancel()

    def close(self) -> None:
        for task in [*self._base_programs.values(), *self._version_programs.values()]:
            task.cancel()
        self._programs.close()

    def program(self, job: JobState) -> asyncio.Task[bytes]:
        """The training program of the job's current version, built once however many leaves ask."""
        key = (job.job_id, job.version)
        task = self._version_programs.get(key)
        if task is None or _failed(task):
            base = self._base_programs.get(job.job_id)
            if base is None or _failed(base):
                # Exported once per job (with whatever weights are current: they are overwritten).
                base = asyncio.ensure_future(
                    self._programs.export(job.spec.model, dict(job.weights), job.spec.batch_size)
                )
                self._base_programs[job.job_id] = base
            task = asyncio.ensure_future(self._with_weights(base, dict(job.weights)))
            self._version_programs = {k: v for k, v in self._version_programs.items() if k[0] != job.job_id}
            self._version_programs[key] = task
        return task

    async def _with_weights(self, base: asyncio.Future[bytes], weights: dict[str, np.ndarray]) -> bytes:
        return await self._programs.with_weights(await base, weights)


def _failed(task: asyncio.Future[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
