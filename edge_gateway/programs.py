"""ExecuTorch training programs for phone jobs, built off the event loop.

Exporting takes seconds and importing `executorch.exir` 6-9 s more, so both happen in one worker
process the server owns, once per job; each new model version only has its weights written into
a copy of that program (microseconds, docs: edge_gateway/models/executorch_program.py).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

log = logging.getLogger(__name__)
MPS_SWITCH = "NVFLARE_EDGE_ENABLE_MPS"


class ProgramBuilder:
    """One worker process, started on first use; the server's loop only awaits it."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def _worker(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a forked copy of a running event loop and its sockets is no worker to trust.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def export(self, model: str, weights: dict[str, np.ndarray], batch_size: int) -> bytes:
        from .models.executorch_program import export_training_program

        if os.environ.get(MPS_SWITCH) and sys.platform != "darwin":
            # Apple's Metal backend exists only in macOS builds of executorch.
            log.warning("%s is set but ignored: MPS needs macOS; exporting for portable kernels", MPS_SWITCH)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker(), export_training_program, model, weights, batch_size)

    async def with_weights(self, program: bytes, weights: dict[str, np.ndarray]) -> bytes:
        from .models.executorch_program import write_weights

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker(), write_weights, program, weights)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
