"""Process plumbing shared by the CLI entry points: event loop choice, logging, signals, readiness."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed, else asyncio's default loop; no global policy change."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, for a graceful drain."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


def freeze_startup_objects() -> None:
    """Move what start-up allocated out of the collector's sight: it lives as long as the process,
    and walking it in every full collection shows up as tail latency (docs/BENCHMARKS.md §1)."""
    gc.freeze()


def write_ready_file(path: Path | None, info: dict[str, Any]) -> None:
    """Tell a launcher where this process listens (written atomically, once serving)."""
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"pid": os.getpid(), **info}))
    os.replace(tmp, path)
