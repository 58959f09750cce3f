"""Checkpoints on disk: every model version as `.npz` (no pickle) plus the job's state as JSON.

Writes go to a temporary file that is fsynced and renamed, so a `kill -9` leaves either the old
or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .jobs import JobSpec

STATE = "state.json"
KEEP_VERSIONS = 3


@dataclass(frozen=True)
class Checkpoint:
    job_id: str
    spec: JobSpec
    weights: dict[str, np.ndarray]
    state: dict[str, Any]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
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

    def load_all(self) -> list[Checkpoint]:
        checkpoints = []
        for folder in sorted(p for p in self.root.iterdir() if (p / STATE).is_file()):
            state = orjson.loads((folder / STATE).read_bytes())
            spec = JobSpec.model_validate(state.pop("spec"))
            weights = weights_from_npz(folder / f"v{state['version']}.npz")
            checkpoints.append(Checkpoint(folder.name, spec, weights, state))
        return checkpoints


def save_names(path: Path, names: set[str]) -> None:
    """A set of names (e.g. the leaves a restarted server waits for), durably."""
    _write_atomic(path, orjson.dumps(sorted(names)))


def load_names(path: Path) -> set[str]:
    return set(orjson.loads(path.read_bytes())) if path.is_file() else set()
