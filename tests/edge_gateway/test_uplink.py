"""The leaf's result uplink against real server handlers over the in-memory link, with a real
result log: what a device was told OK for is counted exactly once, whatever the server did meanwhile
(restarted, out of reach, counted some of it already through another leaf)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from device_protocol.tensors import tensors_to_binary
from edge_gateway.config import ServerConfig
from edge_gateway.jobs import JobSpec
from edge_gateway.models import initial_weights
from edge_gateway.result_log import ResultLog, ResultRecord
from edge_gateway.server import Server
from edge_gateway.store import load_names
from edge_gateway.uplink import LocalServerLink, Outcome, ResultUplink
from internal_link.errors import LinkUnavailable
from internal_link.messages import SubmitBatch, SyncRequest

# Results reach the uplink unscreened here (no leaf endpoint): the server's batch check is off.
UNSCREENED = {"weight_cap": "fixed", "clip": "off", "max_update_value_ratio": None}
ACKNOWLEDGED = (Outcome.ACCEPTED, Outcome.DURABLE)  # the server took it by the answer, or not yet
SPEC = JobSpec(name="xor", model="xor", rounds=3, devices_per_round=10, evaluate=False, **UNSCREENED)


class SwitchableLink(LocalServerLink):
    """The in-memory link, pointed at whichever server process is "running" now (None: none is)."""

    def point_at(self, server: Server | None) -> None:
        self._handlers = {} if server is None else {"submit": server.handle_submit}

    async def call(self, method: str, payload: Any, timeout: float) -> Any:
        if method not in self._handlers:
            raise LinkUnavailable("server down")
        return await super().call(method, payload, timeout)


@asynccontextmanager
async def server_at(data_dir: Path) -> AsyncIterator[Server]:
    """A server process's life: it resumes from the checkpoints in `data_dir` (ports picked at random;
    the uplink reaches its handlers over the in-memory link)."""
    server = Server(ServerConfig(data_dir=data_dir, http_port=0, link_port=0))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def leaf_uplink(lives: AsyncExitStack, log_dir: Path, link: SwitchableLink) -> ResultUplink:
    """leaf-0's uplink over `link`, its log in `log_dir` (replayed on start, closed at the end)."""
    uplink = ResultUplink("leaf-0", link, ResultLog(log_dir))
    await uplink.start()
    lives.push_async_callback(uplink.stop)
    return uplink


async def running_job(
    lives: AsyncExitStack, data_dir: Path, spec: JobSpec
) -> tuple[Server, str, SwitchableLink, ResultUplink]:
    """A server with `spec` submitted, and leaf-0's uplink sending to it over the in-memory link."""
    server = await lives.enter_async_context(server_at(data_dir))
    job_id = await server.submit_job(spec)
    link = SwitchableLink({})
    link.point_at(server)
    return server, job_id, link, await leaf_uplink(lives, data_dir / "leaf-0", link)


def update(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in initial_weights("xor", 0).items()}


def record(job_id: str, seed: int, version: int = 0) -> ResultRecord:
    return ResultRecord(job_id, version, f"t{seed}", 1.0, update(seed))


async def delivered(uplink: ResultUplink) -> None:
    """Until nothing waits for the server (bounded: 10 s)."""
    for _ in range(1000):
        if not uplink.undelivered() and not uplink.behind():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{uplink.undelivered()} results still undelivered")


def summed(*seeds: int) -> Any:
    return sum(update(i)["linear1.weight"].astype(np.float64) for i in seeds)


async def test_only_what_an_earlier_boot_took_is_sent_again(tmp_path: Path) -> None:
    async with AsyncExitStack() as lives:
        _first, j, link, uplink = await running_job(lives, tmp_path, SPEC)
        assert await uplink.accept(record(j, 1)) in ACKNOWLEDGED
        assert await uplink.accept(record(j, 2)) in ACKNOWLEDGED
        await delivered(uplink)

        # The server process is lost; the new one resumes from the checkpoint (version 0, nothing
        # counted). A batch reaches it before the leaf's next sync notices the new boot and re-sends.
        second = await lives.enter_async_context(server_at(tmp_path))
        link.point_at(second)
        assert await uplink.accept(record(j, 3)) in ACKNOWLEDGED
        await delivered(uplink)
        await uplink.resend_taken(second.coordinator.boot)
        await delivered(uplink)

        job = second.coordinator.job(j)
        assert job.counted == {"t1", "t2", "t3"}
        np.testing.assert_allclose(job.partial.sums["linear1.weight"], summed(1, 2, 3))
        # Sent once: a second restart notice from the same boot sends nothing more.
        await uplink.resend_taken(second.coordinator.boot)
        await delivered(uplink)
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
        _first, j, link, uplink = await running_job(lives, tmp_path, spec)
        assert await uplink.accept(record(j, 1)) in ACKNOWLEDGED
        await delivered(uplink)
        second = await lives.enter_async_context(server_at(tmp_path))
        assert second.coordinator.awaiting_resends == {"leaf-0"}
        link.point_at(second)
        assert await uplink.accept(record(j, 2)) in ACKNOWLEDGED
        assert await uplink.accept(record(j, 3)) in ACKNOWLEDGED
        await delivered(uplink)
        job = second.coordinator.job(j)
        assert (job.version, job.partial.count) == (0, 2)  # a quorum, held
        await uplink.resend_taken(second.coordinator.boot)
        await delivered(uplink)
        assert second.coordinator.tick(time.monotonic() + 10.0) == []  # re-sent, but not yet said so
        await says_it_re_sent(second, "leaf-0")
        events = second.coordinator.tick(time.monotonic())
        assert [e.version for e in events] == [1] and job.history[-1]["results"] == 3


async def test_leaves_on_disk_are_those_that_may_hold_uncheckpointed_results(tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"devices_per_round": 2})
    async with AsyncExitStack() as lives:
        first, j, _link, uplink = await running_job(lives, tmp_path, spec)
        assert load_names(tmp_path / "leaves.json") == set()
        assert await uplink.accept(record(j, 1)) in ACKNOWLEDGED
        await delivered(uplink)
        assert load_names(tmp_path / "leaves.json") == {"leaf-0"}  # written before the batch was taken
        assert await uplink.accept(record(j, 2)) in ACKNOWLEDGED
        await delivered(uplink)
        assert first.coordinator.job(j).version == 1
        # Version 1 on disk holds them, and leaf-0 has not synced lately: nothing to wait for.
        assert load_names(tmp_path / "leaves.json") == set()
        second = await lives.enter_async_context(server_at(tmp_path))
        assert second.coordinator.awaiting_resends == set()
        assert not second.coordinator.rounds_held(time.monotonic())


async def test_a_restarted_server_screens_with_the_bounds_the_last_one_had_reached(tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"devices_per_round": 2, "clip": "adaptive", "clip_norm": 0.5})
    async with AsyncExitStack() as lives:
        first, j, _link, uplink = await running_job(lives, tmp_path, spec)
        small = {k: v * 1e-3 for k, v in update(1).items()}
        for task in ("t1", "t2"):
            clipped = ResultRecord(j, 0, task, 1.0, small, clipped=True)
            assert await uplink.accept(clipped, answer_wait=5.0) is Outcome.ACCEPTED
        reached = first.coordinator.job(j).bounds
        assert reached.norm_bound != 0.5  # every result was clipped: the bound moved
        second = await lives.enter_async_context(server_at(tmp_path))
        assert second.coordinator.job(j).bounds == reached


async def test_results_are_acknowledged_while_the_server_is_out_of_reach_and_delivered_after(
    tmp_path: Path,
) -> None:
    async with AsyncExitStack() as lives:
        server, j, link, uplink = await running_job(lives, tmp_path, SPEC)
        link.point_at(None)
        for seed in (1, 2, 3):
            assert await uplink.accept(record(j, seed)) in ACKNOWLEDGED  # no wait on the server
        await asyncio.sleep(0.5)
        assert uplink.behind() and uplink.undelivered() == 3
        link.point_at(server)
        await delivered(uplink)
        assert server.coordinator.job(j).counted == {"t1", "t2", "t3"}


async def test_a_batch_refused_for_one_duplicate_is_sent_again_without_it(tmp_path: Path) -> None:
    """Another leaf delivered t2 first (a device moved); the rest of this leaf's batch still counts."""
    async with AsyncExitStack() as lives:
        server, j, link, uplink = await running_job(lives, tmp_path, SPEC)
        other = SubmitBatch(
            leaf="leaf-1", job_id=j, version=0, task_ids=["t2"], sum_weight=1.0, sum_update=_binary(update(2))
        )
        assert (await server.handle_submit(other.model_dump()))["accepted"]
        link.point_at(None)  # so the three go in one batch
        for seed in (1, 2, 3):
            assert await uplink.accept(record(j, seed)) in ACKNOWLEDGED
        link.point_at(server)
        await delivered(uplink)
        job = server.coordinator.job(j)
        assert job.counted == {"t1", "t2", "t3"} and job.partial.count == 3
        np.testing.assert_allclose(job.partial.sums["linear1.weight"], summed(1, 2, 3))


async def test_a_restarted_leaf_delivers_what_its_log_holds_exactly_once(tmp_path: Path) -> None:
    async with AsyncExitStack() as lives:
        server, j, link, uplink = await running_job(lives, tmp_path, SPEC)
        assert await uplink.accept(record(j, 1)) in ACKNOWLEDGED
        await delivered(uplink)  # t1 reached the server
        link.point_at(None)
        assert await uplink.accept(record(j, 2)) in ACKNOWLEDGED  # t2 did not
        await uplink.stop()  # the leaf process ends (a kill -9 leaves the same log: appends are fsync'd)

        link.point_at(server)
        again = await leaf_uplink(lives, tmp_path / "leaf-0", link)
        assert again.replayed(j) == {0: {"t1", "t2"}}
        await delivered(again)
        job = server.coordinator.job(j)
        assert job.counted == {"t1", "t2"} and job.partial.count == 2
        np.testing.assert_allclose(job.partial.sums["linear1.weight"], summed(1, 2))


async def test_the_log_is_truncated_once_the_server_serves_a_newer_version(tmp_path: Path) -> None:
    async with AsyncExitStack() as lives:
        _server, j, link, uplink = await running_job(lives, tmp_path, SPEC)
        assert await uplink.accept(record(j, 1)) in ACKNOWLEDGED
        await delivered(uplink)
        uplink.release(j, 1)
        await uplink.stop()
        again = await leaf_uplink(lives, tmp_path / "leaf-0", link)
        assert again.replayed(j) == {}


def _binary(arrays: dict[str, Any]) -> dict[str, Any]:
    from device_protocol.tensors import tensors_to_binary

    return tensors_to_binary({k: v.astype(np.float64) for k, v in arrays.items()})


async def test_a_repeat_can_wait_for_the_first_copy_to_be_durable(tmp_path: Path) -> None:
    async with AsyncExitStack() as lives:
        _server, j, _link, uplink = await running_job(lives, tmp_path, SPEC)
        assert uplink.first_copy(j, "t1") is None
        accepting = asyncio.ensure_future(uplink.accept(record(j, 1)))
        await asyncio.sleep(0)  # the append has begun, not ended
        first = uplink.first_copy(j, "t1")
        assert first is not None and not first.done()
        assert await first is True and await accepting in ACKNOWLEDGED
        assert uplink.first_copy(j, "t1") is None


async def test_a_device_hears_the_servers_answer_when_it_comes_in_time(tmp_path: Path) -> None:
    async with AsyncExitStack() as lives:
        _server, j, link, uplink = await running_job(lives, tmp_path, SPEC)
        assert await uplink.accept(record(j, 1), answer_wait=10.0) is Outcome.ACCEPTED
        link.point_at(None)
        assert await uplink.accept(record(j, 2), answer_wait=0.3) is Outcome.DURABLE


async def test_a_job_the_server_no_longer_lists_is_forgotten(tmp_path: Path) -> None:
    async with AsyncExitStack() as lives:
        _server, j, link, uplink = await running_job(lives, tmp_path, SPEC)
        uplink.release(j, 1)
        assert await uplink.accept(record(j, 1)) in ACKNOWLEDGED
        await uplink.stop()
        again = await leaf_uplink(lives, tmp_path / "leaf-0", link)
        again.release(j, 1)
        again.keep_jobs({"another-job"})  # j was retired: the server's sync no longer lists it
        assert again.replayed(j) == {} and again._truncated == {}


async def test_while_a_version_is_due_a_device_hears_ok_only_from_the_server(tmp_path: Path) -> None:
    """No promise the next version could break (closing.py): the device waits for the server's
    answer as long as it waits at all, then hears PENDING; its re-send hears what the first became."""
    async with AsyncExitStack() as lives:
        server = await lives.enter_async_context(server_at(tmp_path))
        j = await server.submit_job(SPEC)
        link = SwitchableLink({})
        link.point_at(None)  # paused, as far as this leaf can tell
        not_counted: list[tuple[list[str], int]] = []
        uplink = ResultUplink(
            "leaf-0",
            link,
            ResultLog(tmp_path / "leaf-0"),
            on_late=lambda job_id, task_ids, acknowledged: not_counted.append((task_ids, acknowledged)),
            may_promise=lambda job_id, version: version > 0,  # version 0's successor is due
        )
        await uplink.start()
        lives.push_async_callback(uplink.stop)
        assert await uplink.accept(record(j, 1), answer_wait=0.1, patience=0.5) is Outcome.PENDING
        assert await uplink.answer_for(j, "t1", 0, answer_wait=0.1, patience=0.3) is Outcome.PENDING
        # Version 1 is made from other results (no leaf waited for: none synced) ...
        others = SubmitBatch(
            leaf="leaf-1",
            job_id=j,
            version=0,
            task_ids=[f"o{i}" for i in range(10)],
            sum_weight=10.0,
            sum_update=tensors_to_binary({k: v.astype(np.float64) for k, v in update(9).items()}),
        )
        assert (await server.handle_submit(others.model_dump()))["accepted"]
        assert server.coordinator.job(j).version == 1
        # ... so t1 reaches the server late: its re-send hears that, and it was promised to nobody.
        repeat = asyncio.ensure_future(uplink.answer_for(j, "t1", 0, answer_wait=10.0, patience=10.0))
        link.point_at(server)
        assert await repeat is Outcome.LATE
        assert not_counted == [(["t1"], 0)]
        # A result the next version cannot make late is promised as before.
        assert await uplink.accept(record(j, 2, version=1), answer_wait=0.0) is Outcome.DURABLE
