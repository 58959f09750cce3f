"""The leaf's result batcher against real server handlers over the in-memory link: what a restarted
server had taken is sent again, exactly once, whatever reached it first."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge_gateway.config import ServerConfig
from edge_gateway.jobs import JobSpec
from edge_gateway.models import initial_weights
from edge_gateway.server import Server
from edge_gateway.store import load_names
from edge_gateway.uplink import LocalServerLink, Outcome, ResultBatcher
from internal_link.messages import SyncRequest

# Results go to the batcher unscreened here (no leaf endpoint): the server's batch check is off.
UNSCREENED = {"weight_cap": "fixed", "clip": "off", "max_update_value_ratio": None}
SPEC = JobSpec(name="xor", model="xor", rounds=3, devices_per_round=10, evaluate=False, **UNSCREENED)


class SwitchableLink(LocalServerLink):
    """The in-memory link, pointed at whichever server process is "running" now."""

    def point_at(self, server: Server) -> None:
        self._handlers = {"submit": server.handle_submit}


@asynccontextmanager
async def server_at(data_dir: Path) -> AsyncIterator[Server]:
    """A server process's life: it resumes from the checkpoints in `data_dir` (ports picked at random;
    the batcher reaches its handlers over the in-memory link)."""
    server = Server(ServerConfig(data_dir=data_dir, http_port=0, link_port=0))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def running_job(
    lives: AsyncExitStack, data_dir: Path, spec: JobSpec
) -> tuple[Server, str, SwitchableLink, ResultBatcher]:
    """A server with `spec` submitted, and leaf-0's batcher sending to it over the in-memory link."""
    server = await lives.enter_async_context(server_at(data_dir))
    job_id = await server.submit_job(spec)
    link = SwitchableLink({})
    link.point_at(server)
    batcher = ResultBatcher("leaf-0", link)
    batcher.start()
    lives.push_async_callback(batcher.stop)
    return server, job_id, link, batcher


def update(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in initial_weights("xor", 0).items()}


async def test_only_what_an_earlier_boot_took_is_sent_again(tmp_path: Path) -> None:
    async with AsyncExitStack() as lives:
        _first, j, link, batcher = await running_job(lives, tmp_path, SPEC)
        assert await batcher.submit(j, 0, "t1", 1.0, update(1)) is Outcome.ACCEPTED
        assert await batcher.submit(j, 0, "t2", 1.0, update(2)) is Outcome.ACCEPTED

        # The server process is lost; the new one resumes from the checkpoint (version 0, nothing
        # counted). A batch reaches it before the leaf's next sync notices the new boot and re-sends.
        second = await lives.enter_async_context(server_at(tmp_path))
        link.point_at(second)
        assert await batcher.submit(j, 0, "t3", 1.0, update(3)) is Outcome.ACCEPTED
        assert await batcher.resend_retained(second.coordinator.boot)

        job = second.coordinator.job(j)
        assert job.counted == {"t1", "t2", "t3"}
        expected = sum(update(i)["linear1.weight"].astype(np.float64) for i in (1, 2, 3))
        np.testing.assert_allclose(job.partial.sums["linear1.weight"], expected)
        # Sent once: a second restart notice from the same boot sends nothing more.
        assert await batcher.resend_retained(second.coordinator.boot)
        assert job.partial.count == 3


async def says_it_re_sent(server: Server, leaf: str) -> None:
    """The leaf's sync after its re-send: it names the boot it has re-sent everything to."""
    await server.handle_sync(SyncRequest(leaf=leaf, boot="leaf-boot", server_boot=server.coordinator.boot).model_dump())


async def test_a_resumed_job_closes_no_round_before_the_leaves_re_sent(tmp_path: Path) -> None:
    """New results can reach a restarted server before a leaf's re-send; had they closed the round,
    the re-sent (acknowledged) results would have been turned away as late. The restarted server
    knows which leaf to wait for from disk, and waits for its word, not for a guessed time."""
    spec = SPEC.model_copy(update={"devices_per_round": 2})
    async with AsyncExitStack() as lives:
        _first, j, link, batcher = await running_job(lives, tmp_path, spec)
        assert await batcher.submit(j, 0, "t1", 1.0, update(1)) is Outcome.ACCEPTED
        second = await lives.enter_async_context(server_at(tmp_path))
        assert second.coordinator.awaiting_resends == {"leaf-0"}
        link.point_at(second)
        assert await batcher.submit(j, 0, "t2", 1.0, update(2)) is Outcome.ACCEPTED
        assert await batcher.submit(j, 0, "t3", 1.0, update(3)) is Outcome.ACCEPTED
        job = second.coordinator.job(j)
        assert (job.version, job.partial.count) == (0, 2)  # a quorum, held
        assert await batcher.resend_retained(second.coordinator.boot)
        assert second.coordinator.tick(time.monotonic() + 10.0) == []  # re-sent, but not yet said so
        await says_it_re_sent(second, "leaf-0")
        events = second.coordinator.tick(time.monotonic())
        assert [e.version for e in events] == [1] and job.history[-1]["results"] == 3


async def test_leaves_on_disk_are_those_that_may_hold_uncheckpointed_results(tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"devices_per_round": 2})
    async with AsyncExitStack() as lives:
        first, j, _link, batcher = await running_job(lives, tmp_path, spec)
        assert load_names(tmp_path / "leaves.json") == set()
        assert await batcher.submit(j, 0, "t1", 1.0, update(1)) is Outcome.ACCEPTED
        assert load_names(tmp_path / "leaves.json") == {"leaf-0"}  # written before the batch was taken
        assert await batcher.submit(j, 0, "t2", 1.0, update(2)) is Outcome.ACCEPTED
        assert first.coordinator.job(j).version == 1
        # Version 1 on disk holds them, and leaf-0 has not synced lately: nothing to wait for.
        assert load_names(tmp_path / "leaves.json") == set()
        second = await lives.enter_async_context(server_at(tmp_path))
        assert second.coordinator.awaiting_resends == set()
        assert not second.coordinator.rounds_held(time.monotonic())


async def test_a_restarted_server_screens_with_the_bounds_the_last_one_had_reached(tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"devices_per_round": 2, "clip": "adaptive", "clip_norm": 0.5})
    async with AsyncExitStack() as lives:
        first, j, _link, batcher = await running_job(lives, tmp_path, spec)
        small = {k: v * 1e-3 for k, v in update(1).items()}
        for task in ("t1", "t2"):
            assert await batcher.submit(j, 0, task, 1.0, small, clipped=True) is Outcome.ACCEPTED
        reached = first.coordinator.job(j).bounds
        assert reached.norm_bound != 0.5  # every result was clipped: the bound moved
        second = await lives.enter_async_context(server_at(tmp_path))
        assert second.coordinator.job(j).bounds == reached
