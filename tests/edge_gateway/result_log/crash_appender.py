"""A child process for the crash test: appends results to a log and prints each acknowledged task id.

    python -m tests.edge_gateway.result_log.crash_appender DIRECTORY APPENDERS COUNT

The test kills it with SIGKILL mid-stream; every id printed must then be found by a replay.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np

from edge_gateway.result_log import ResultLog, ResultRecord


async def main(directory: str, appenders: int, count: int) -> None:
    log = ResultLog(directory, segment_bytes=1 << 20)
    async for _ in log.replay():
        pass
    update = {"w": np.arange(16_000, dtype=np.float32)}  # 64 kB: a few appends per flush and segment
    queue = iter(range(count))

    async def appender() -> None:
        for i in queue:
            task_id = f"task-{i}"
            await log.append(ResultRecord("job", 1, task_id, 1.0, update))
            sys.stdout.write(task_id + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(appender() for _ in range(appenders)))
    await log.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
