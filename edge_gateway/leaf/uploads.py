"""Results split into parts (PROTOCOL.md §9): the parts a leaf holds per task until the last one
comes, so that a device whose connection broke resumes from the last part confirmed. No I/O.

Keyed by task id (one upload per task, whichever session it comes on) and bound to the device that
began it; bounded in bytes per upload and in all, and forgotten once idle for `idle_limit` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class PartOutcome(Enum):
    STORED = "stored"  # more parts to come: confirm `next_part`
    COMPLETE = "complete"  # the last part: `data` is the whole encoding
    GAP = "gap"  # a part after `next_part` came: send from `next_part`
    MISMATCH = "mismatch"  # another device's task, or another number of parts
    TOO_LARGE = "too_large"  # over the result's size limit
    FULL = "full"  # the leaf holds all the partial uploads it may: later


@dataclass
class _Upload:
    device_id: str
    parts: int
    chunks: list[str | bytes] = field(default_factory=list)
    size: int = 0
    updated: float = 0.0


@dataclass(frozen=True)
class PartAnswer:
    outcome: PartOutcome
    next_part: int = 0
    data: str | bytes = b""


class PartialUploads:
    """Uploads in progress, at most `max_bytes` held in all."""

    def __init__(self, max_bytes: int, idle_limit: float) -> None:
        self.max_bytes = max_bytes
        self.idle_limit = idle_limit
        self.held = 0
        self._uploads: dict[str, _Upload] = {}

    def add(
        self, task_id: str, device_id: str, part: int, parts: int, chunk: str | bytes, now: float, limit: int
    ) -> PartAnswer:
        """Take part `part` of `parts` of this task's result (`limit`: the most its encoding may be)."""
        upload = self._uploads.get(task_id)
        if upload is None:
            upload = self._uploads[task_id] = _Upload(device_id, parts, updated=now)
        if upload.device_id != device_id or upload.parts != parts:
            return PartAnswer(PartOutcome.MISMATCH, len(upload.chunks))
        received = len(upload.chunks)
        if part < received:  # sent again after a lost confirmation: it has it already
            return PartAnswer(PartOutcome.STORED, received)
        if part > received:
            return PartAnswer(PartOutcome.GAP, received)
        if upload.size + len(chunk) > limit:
            self.forget(task_id)
            return PartAnswer(PartOutcome.TOO_LARGE)
        if self.held + len(chunk) > self.max_bytes:
            return PartAnswer(PartOutcome.FULL, received)
        upload.chunks.append(chunk)
        upload.size += len(chunk)
        upload.updated = now
        self.held += len(chunk)
        if len(upload.chunks) < parts:
            return PartAnswer(PartOutcome.STORED, len(upload.chunks))
        self.forget(task_id)
        joined = "".join(upload.chunks) if isinstance(chunk, str) else b"".join(upload.chunks)  # type: ignore[arg-type]
        return PartAnswer(PartOutcome.COMPLETE, parts, joined)

    def holds(self, task_id: str) -> bool:
        """Whether parts of this task's result are here."""
        return task_id in self._uploads

    def forget(self, task_id: str) -> None:
        upload = self._uploads.pop(task_id, None)
        if upload is not None:
            self.held -= upload.size

    def expire(self, now: float) -> int:
        """Forget uploads idle for `idle_limit`; returns how many."""
        idle = [t for t, u in self._uploads.items() if now - u.updated > self.idle_limit]
        for task_id in idle:
            self.forget(task_id)
        return len(idle)
