"""Where a leaf keeps the results it has acknowledged until the server has checkpointed them.

`ResultLog` (edge_gateway.result_log) is the durable one: a device hears `OK` once its result is
on the leaf's disk. `MemoryResults` keeps them in memory only (lost with the process); it exists
so `benchmarks/upload.py` can show what the log costs, and for one-process tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from .result_log import Checkpointed, ResultRecord


class AcknowledgedResults(Protocol):
    def replay(self) -> AsyncIterator[ResultRecord]: ...

    async def append(self, record: ResultRecord | Checkpointed) -> None: ...

    async def results(self, job_id: str, version: int, task_ids: set[str]) -> list[ResultRecord]: ...

    async def truncate(self, job_id: str, version: int) -> None: ...

    async def close(self) -> None: ...


class MemoryResults:
    """The results in memory, by job and model version: nothing survives the process."""

    def __init__(self) -> None:
        self._by_version: dict[tuple[str, int], dict[str, ResultRecord]] = {}

    async def replay(self) -> AsyncIterator[ResultRecord]:
        for records in list(self._by_version.values()):
            for record in records.values():
                yield record

    async def append(self, record: ResultRecord | Checkpointed) -> None:
        if isinstance(record, ResultRecord):
            self._by_version.setdefault((record.job_id, record.version), {})[record.task_id] = record

    async def results(self, job_id: str, version: int, task_ids: set[str]) -> list[ResultRecord]:
        records = self._by_version.get((job_id, version), {})
        return [records[t] for t in task_ids if t in records]

    async def truncate(self, job_id: str, version: int) -> None:
        for key in [k for k in self._by_version if k[0] == job_id and k[1] <= version]:
            del self._by_version[key]

    async def close(self) -> None:
        self._by_version.clear()
