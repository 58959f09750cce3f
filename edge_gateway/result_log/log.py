"""The leaf's write-ahead result log: a device may hear `OK` once its result is on disk here.

Design notes:
- Segments (a new file every `segment_bytes`): what the server has checkpointed goes by deleting
  whole files, never by rewriting acknowledged bytes.
- CRC-32 (zlib: standard library, C speed) over each frame's header and payload catches a torn
  tail and a flipped bit; it guards against accidents, not tampering (the disk is the leaf's own).
- `append` returns after write + fdatasync (data and file size); creating or deleting a segment
  also fsyncs the directory, so the file's name survives a power cut too.
- Group commit: one writer task; appends arriving during a flush share the next one (in a thread).
- After a crash, replay cuts the last segment's torn tail and appends go to a fresh segment: a new
  record never sits behind garbage that would hide it from the next replay.
- After an I/O error (a failed fsync may have dropped pages) every append is refused until restart.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from .records import Checkpointed, Record, ResultRecord
from .segments import SegmentFiles

log = logging.getLogger(__name__)

_Entry = tuple[Record, int, "asyncio.Future[None]"]


class ResultLogBroken(Exception):
    """Writing the log failed; nothing more is appended (restart the leaf to replay it)."""


class ResultLog:
    """A durable, append-only log of accepted results in `directory`.

    Iterate `replay()` once at start (the results the server may not have checkpointed),
    `append()` for each accepted result before answering the device, `truncate()` when the server
    has checkpointed a version, `close()` at the end.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        segment_bytes: int = 64 << 20,
        batch_records: int = 1024,
        batch_bytes: int = 32 << 20,
    ) -> None:
        self._files = SegmentFiles(Path(directory), segment_bytes)
        # A flush's bounds: the first appenders of a burst do not wait for the whole burst's fsync.
        self._batch_records = batch_records
        self._batch_bytes = batch_bytes
        self._pending: collections.deque[_Entry] = collections.deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one file operation at a time: a flush or a deletion
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._broken: BaseException | None = None
        self.flushes = 0  # fdatasync'd batches so far
        self.appended = 0  # records made durable so far

    async def replay(self) -> AsyncIterator[ResultRecord]:
        """Recover the directory, open it for appends, then yield every result not checkpointed
        (as far as the log knows), once per job and task id, oldest first.

        The caller sums them again and sends them to the server, which counts a task id once.
        Results are read one segment at a time; appends may go on meanwhile (to a new segment).
        """
        if self._writer is not None:
            raise RuntimeError("the result log is open already")
        old = await asyncio.to_thread(self._files.recover)
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="result-log-writer")
        seen: set[tuple[str, str]] = set()
        for path in old:
            for record in await asyncio.to_thread(self._files.live_results, path):
                if (record.job_id, record.task_id) not in seen:
                    seen.add((record.job_id, record.task_id))
                    yield record

    async def append(self, record: Record) -> None:
        """Return once `record` is durable. Raises ResultLogBroken if the log cannot write, and
        ValueError for a record that cannot be encoded (an unsupported dtype)."""
        if self._writer is None or self._closing:
            raise RuntimeError("the result log is not open")
        if self._broken is not None:
            raise ResultLogBroken("the result log failed earlier") from self._broken
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, _size(record), done))
        self._wake.set()
        await done

    async def results(self, job_id: str, version: int, task_ids: set[str]) -> list[ResultRecord]:
        """Read back the logged results of `task_ids` for a job's model version (once per task id),
        e.g. to send them again after the server lost them."""
        found: dict[str, ResultRecord] = {}
        async with self._lock:  # no flush meanwhile: the last segment has no half-written frame
            for path in self._files.paths():
                for record in await asyncio.to_thread(self._files.live_results, path):
                    if record.job_id == job_id and record.version == version and record.task_id in task_ids:
                        found.setdefault(record.task_id, record)
        return list(found.values())

    async def truncate(self, job_id: str, version: int) -> None:
        """The server has checkpointed `job_id` up to `version`: forget its results up to there.

        The mark is logged first (so a replay skips those results even where their segment
        remains), then every older segment holding nothing newer is deleted.
        """
        if version <= self._files.watermarks.get(job_id, -1):
            return
        await self.append(Checkpointed(job_id, version))
        async with self._lock:
            await asyncio.to_thread(self._files.delete_obsolete)

    async def close(self) -> None:
        """Make what is pending durable, then close the files."""
        if self._writer is None or self._closing:
            return
        self._closing = True
        self._wake.set()
        await self._writer
        async with self._lock:
            await asyncio.to_thread(self._files.close)

    def pending(self) -> int:
        """Records waiting for the next flush (their appenders wait for it)."""
        return len(self._pending)

    def segment_names(self) -> list[str]:
        """The segment files now in use, oldest first."""
        return self._files.segment_names()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._flush(self._take_batch())
            if self._closing:
                return

    def _take_batch(self) -> list[_Entry]:
        batch: list[_Entry] = []
        size = 0
        while self._pending and len(batch) < self._batch_records:
            if batch and size + self._pending[0][1] > self._batch_bytes:
                break
            entry = self._pending.popleft()
            batch.append(entry)
            size += entry[1]
        return batch

    async def _flush(self, batch: list[_Entry]) -> None:
        async with self._lock:
            try:
                refused = await asyncio.to_thread(self._files.write, [record for record, _, _ in batch])
            except Exception as exc:  # OSError mostly; anything else must not leave appenders waiting
                self._break(exc, batch)
                return
        self.flushes += 1
        for (_, _, done), error in zip(batch, refused, strict=True):
            if done.done():  # its appender was cancelled: written all the same, not acknowledged
                continue
            if error is None:
                self.appended += 1
                done.set_result(None)
            else:
                done.set_exception(error)

    def _break(self, exc: Exception, batch: list[_Entry]) -> None:
        log.error("writing the result log failed: %s; appends are refused until restart", exc)
        self._broken = exc
        failed = batch + list(self._pending)
        self._pending.clear()
        for _, _, done in failed:
            if not done.done():
                err = ResultLogBroken(f"writing the result log failed: {exc}")
                err.__cause__ = exc
                done.set_exception(err)


def _size(record: Record) -> int:
    """About how many bytes the record's frame takes (to bound a batch before encoding it)."""
    if isinstance(record, ResultRecord):
        return 256 + sum(arr.nbytes + len(name) for name, arr in record.update.items())
    return 64
