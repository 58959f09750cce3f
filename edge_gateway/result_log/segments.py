"""The result log's files: numbered segments in one directory, read and written synchronously.

`ResultLog` (log.py) calls this from a worker thread, one call at a time. The last segment is the
one appended to; every segment begins with the checkpoint marks known when it was made, so an old
segment's marks are never the only copy and a segment whose results are all checkpointed can go.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .records import Checkpointed, Record, ResultRecord, decode_records, encode_record, find_next_record

log = logging.getLogger(__name__)

_NAME = re.compile(r"segment-(\d{10})\.log")


@dataclass
class _Segment:
    number: int
    path: Path
    size: int = 0
    # job id -> the newest model version of a result held here: the segment is obsolete once the
    # server has checkpointed each of them.
    versions: dict[str, int] = field(default_factory=dict)

    def hold(self, record: ResultRecord) -> None:
        self.versions[record.job_id] = max(record.version, self.versions.get(record.job_id, record.version))


class SegmentFiles:
    """A directory of segment files and what each holds."""

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.watermarks: dict[str, int] = {}  # job id -> the version the server has checkpointed
        self._segments: list[_Segment] = []  # oldest first
        self._fd: int | None = None

    def recover(self) -> list[Path]:
        """Check every segment, cut a torn tail, drop obsolete segments and start a new one.

        Returns the older segments still kept, oldest first, for `live_results` to read again:
        their results are not all held in memory at once (a round can leave gigabytes of them).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        numbers = sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name)))
        for i, number in enumerate(numbers):
            segment = _Segment(number, self._path(number))
            for record in self._check(segment, last=i == len(numbers) - 1):
                if isinstance(record, Checkpointed):
                    self._mark(record)
                else:
                    segment.hold(record)
            self._segments.append(segment)
        # Appends go to a new segment: the old ones stay byte for byte as they were acknowledged.
        self._open(numbers[-1] + 1 if numbers else 1)
        self.delete_obsolete()
        return [s.path for s in self._segments[:-1]]

    def live_results(self, path: Path) -> list[ResultRecord]:
        """The results of a segment `recover` kept that the server has not checkpointed."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # deleted meanwhile: all its results were checkpointed
            return []
        return [
            r
            for r in _scan(data).records
            if isinstance(r, ResultRecord) and r.version > self.watermarks.get(r.job_id, -1)
        ]

    def write(self, records: Sequence[Record]) -> list[Exception | None]:
        """Encode and append records, then make them durable; rolls to a new segment when full.

        A record that cannot be encoded (an unsupported dtype) is left out: its error is returned
        in its place. Each frame is written as soon as it is made, so one at a time is in memory.
        """
        errors: list[Exception | None] = []
        for record in records:
            try:
                frame = encode_record(record)
            except (ValueError, TypeError) as exc:
                errors.append(exc)
                continue
            errors.append(None)
            segment = self._segments[-1]
            # A segment holding no result yet takes the next one whatever its size: no endless rolls.
            if segment.versions and segment.size + len(frame) > self.segment_bytes:
                self._sync()
                self._open(segment.number + 1)
                segment = self._segments[-1]
            self._append(segment, frame)
            if isinstance(record, ResultRecord):
                segment.hold(record)
            else:
                self._mark(record)
        self._sync()
        return errors

    def delete_obsolete(self) -> None:
        """Delete every segment but the last whose results have all been checkpointed."""
        keep = [s for s in self._segments[:-1] if not self._obsolete(s)]
        gone = [s for s in self._segments[:-1] if self._obsolete(s)]
        for segment in gone:
            segment.path.unlink()
            log.info("deleted result log segment %s: all its results are checkpointed", segment.path.name)
        self._segments = keep + self._segments[-1:]
        if gone:
            self._sync_directory()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def paths(self) -> list[Path]:
        return [s.path for s in self._segments]

    def segment_names(self) -> list[str]:
        return [s.path.name for s in self._segments]

    # -- helpers -------------------------------------------------------------------------------
    def _path(self, number: int) -> Path:
        return self.directory / f"segment-{number:010d}.log"

    def _check(self, segment: _Segment, last: bool) -> list[Record]:
        data = segment.path.read_bytes()
        scan = _scan(data)
        for offset, problem, skipped in scan.damage:
            # Damage in the middle: the records after it were acknowledged too, and are kept.
            log.error(
                "result log %s: %s at byte %d; %d bytes skipped (a record lost)",
                segment.path.name,
                problem,
                offset,
                skipped,
            )
        segment.size = len(data)
        if scan.tail_problem is None:
            return scan.records
        torn = len(data) - scan.end
        if last:  # a crash mid-append: nothing in the tail was acknowledged
            log.warning(
                "result log %s: %s at byte %d; cutting the torn tail of %d bytes",
                segment.path.name,
                scan.tail_problem,
                scan.end,
                torn,
            )
            os.truncate(segment.path, scan.end)
            with open(segment.path, "rb+") as f:
                os.fsync(f.fileno())
            segment.size = scan.end
        else:
            log.error(
                "result log %s: %s at byte %d; its last %d bytes are unreadable",
                segment.path.name,
                scan.tail_problem,
                scan.end,
                torn,
            )
        return scan.records

    def _open(self, number: int) -> None:
        self.close()
        segment = _Segment(number, self._path(number))
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._segments.append(segment)
        for job_id, version in self.watermarks.items():
            self._append(segment, encode_record(Checkpointed(job_id, version)))
        self._sync()
        self._sync_directory()  # the new name itself must survive a power cut

    def _append(self, segment: _Segment, frame: bytes) -> None:
        assert self._fd is not None
        view = memoryview(frame)
        while view:
            view = view[os.write(self._fd, view) :]
        segment.size += len(frame)

    def _mark(self, record: Checkpointed) -> None:
        if record.version > self.watermarks.get(record.job_id, -1):
            self.watermarks[record.job_id] = record.version

    def _obsolete(self, segment: _Segment) -> bool:
        return all(v <= self.watermarks.get(job, -1) for job, v in segment.versions.items())

    def _sync(self) -> None:
        assert self._fd is not None
        os.fdatasync(self._fd)  # the data and the file size (what reading it back needs)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class _Scan:
    records: list[Record]
    damage: list[tuple[int, str, int]]  # (offset, problem, bytes skipped) of each bad stretch
    end: int  # just past the last valid record
    tail_problem: str | None  # why the bytes after `end` are no record (None: there are none)


def _scan(data: bytes) -> _Scan:
    """Every valid record of a segment, reading on past damage to the next valid frame."""
    scan = _Scan([], [], 0, None)
    pos = 0
    while True:
        decoded = decode_records(data, pos)
        scan.records += decoded.records
        scan.end = decoded.end
        if decoded.problem is None:
            return scan
        resume = find_next_record(data, decoded.end)
        if resume is None:
            scan.tail_problem = decoded.problem
            return scan
        scan.damage.append((decoded.end, decoded.problem, resume - decoded.end))
        pos = resume
