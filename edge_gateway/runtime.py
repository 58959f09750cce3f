"""Readiness files: how a launched process tells its launcher where it listens.

The rest of a process's set-up (loop, logging, signals, secret) is `internal_link.process`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson


def write_ready_file(path: Path | None, info: dict[str, Any]) -> None:
    """Tell a launcher where this process listens (written atomically, once serving)."""
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"pid": os.getpid(), **info}))
    os.replace(tmp, path)
