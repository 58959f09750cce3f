"""The result batcher with an async (FedBuff) job: what a server took is kept until the version it
applies in is served, not the one after the version it was trained on."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from pathlib import Path

from edge_gateway.jobs import JobSpec
from edge_gateway.uplink import Outcome

from .test_uplink import running_job, says_it_re_sent, server_at, update

ASYNC = JobSpec(
    name="xor", model="xor", rounds=5, mode="async", concurrency=4, buffer_size=2, max_staleness=2, evaluate=False
)


async def test_a_stale_result_is_re_sent_after_a_restart_until_its_version_is_served(tmp_path: Path) -> None:
    async with AsyncExitStack() as lives:
        first, j, link, batcher = await running_job(lives, tmp_path, ASYNC)
        for task in ("t1", "t2"):
            assert await batcher.submit(j, 0, task, 1.0, update(int(task[1]))) is Outcome.ACCEPTED
        assert first.coordinator.job(j).version == 1  # a buffer step, checkpointed
        # Trained on version 0, taken into version 2's buffer: serving version 1 must not drop it.
        assert await batcher.submit(j, 0, "t3", 1.0, update(3)) is Outcome.ACCEPTED
        batcher.release(j, 1)

        second = await lives.enter_async_context(server_at(tmp_path))
        link.point_at(second)
        job = second.coordinator.job(j)
        assert (job.version, job.fedbuff.buffered) == (1, 0)  # the buffer was lost with the process
        assert await batcher.resend_retained(second.coordinator.boot)
        assert job.fedbuff.buffered == 1  # t3 only: t1 and t2 are in the checkpoint
        assert await batcher.submit(j, 1, "t4", 1.0, update(4)) is Outcome.ACCEPTED
        assert job.version == 1  # held until the leaf says it has re-sent
        await says_it_re_sent(second, "leaf-0")
        assert [e.version for e in second.coordinator.tick(time.monotonic())] == [2]
        assert job.history[-1]["staleness"] == {"0": 1, "1": 1}
        batcher.release(j, 2)
        assert await batcher.resend_retained("a third boot") is True
        assert job.fedbuff.buffered == 0  # nothing left to send: all of it is in version 2
