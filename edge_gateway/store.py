"""Checkpoints on disk: every model version as `.npz` (no pickle) plus the job's state as JSON.

Writes go to a temporary file that is fsynced and renamed, so a `kill -9` leaves either the old
or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .jobs import JobSpec

STATE = "state.json"
KEEP_VERSIONS = 3
# Job ids are the server's uuid4s; a name read from a URL must never reach outside the store.
_JOB_FOLDER = re.compile(r"[A-Za-z0-9_-]{1,100}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def weights_to_npz(weights: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **weights)  # type: ignore[arg-type]  # numpy stubs type **kwds as allow_pickle
    return buf.getvalue()


def weights_from_npz(data: bytes | Path) -> dict[str, np.ndarray]:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(source, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


class CheckpointStore:
    """One folder per job under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def save(
        self, job_id: str, spec: JobSpec, version: int, weights: Mapping[str, np.ndarray], state: Mapping[str, Any]
    ) -> None:
        folder = self.root / job_id
        folder.mkdir(exist_ok=True)
        weights_file = folder / f"v{version}.npz"
        if not weights_file.exists():  # a version's weights never change; its state may
            _write_atomic(weights_file, weights_to_npz(weights))
        # The state names the weights file, so it is written last: a crash in between leaves the
        # previous state pointing at the previous, complete weights.
        record = {"spec": spec.model_dump(), "version": version, **state}
        _write_atomic(folder / STATE, orjson.dumps(record, option=orjson.OPT_INDENT_2))
        for old in folder.glob("v*.npz"):
            if int(old.stem[1:]) <= version - KEEP_VERSIONS:
                old.unlink(missing_ok=True)

    def _folder(self, job_id: str) -> Path:
        if not _JOB_FOLDER.fullmatch(job_id):
            raise FileNotFoundError(f"no job {job_id!r}")
        return self.root / job_id

    def job_ids(self) -> list[str]:
        """Every job with a checkpoint, running, finished or retired from memory."""
        return sorted(p.name for p in self.root.iterdir() if (p / STATE).is_file())

    def load_state(self, job_id: str) -> dict[str, Any]:
        """A job's state as saved (its spec as a plain dict under "spec"), without its weights;
        raises `FileNotFoundError` for a job with no checkpoint."""
        return dict(orjson.loads((self._folder(job_id) / STATE).read_bytes()))

    def weights_file(self, job_id: str, version: int) -> Path:
        return self._folder(job_id) / f"v{version}.npz"

    def load_weights(self, job_id: str, version: int) -> dict[str, np.ndarray]:
        return weights_from_npz(self.weights_file(job_id, version))

    def delete(self, job_id: str) -> bool:
        """Remove a job's checkpoints; False when it has none. The state goes first, durably: a crash
        midway leaves a folder without state, which no listing or restart reads."""
        if not _JOB_FOLDER.fullmatch(job_id):
            return False
        folder = self.root / job_id
        state = folder / STATE
        if not state.is_file():
            return False
        state.unlink()
        _fsync_dir(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return True


def save_names(path: Path, names: set[str]) -> None:
    """A set of names (e.g. the leaves a restarted server waits for), durably."""
    _write_atomic(path, orjson.dumps(sorted(names)))


def load_names(path: Path) -> set[str]:
    return set(orjson.loads(path.read_bytes())) if path.is_file() else set()
