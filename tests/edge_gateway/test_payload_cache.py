"""The leaf's payload cache: running jobs' current payloads only, within a byte budget."""

from __future__ import annotations

import asyncio

from edge_gateway.leaf.payload_cache import PayloadCache
from internal_link.messages import JobStatus, JobView

from .test_xain_endpoints import ModelOnlyLink, view


async def settled(cache: PayloadCache, *views: JobView) -> None:
    for v in views:
        cache.want(v)
    for _ in range(200):  # bounded: the fetches are in-memory
        if not cache._fetching:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("fetches never finished")


async def one_payload_bytes() -> int:
    cache = PayloadCache(ModelOnlyLink(), lambda job_id, version: True, max_bytes=1 << 30)
    await settled(cache, view("x"))
    return cache.nbytes


async def test_least_recently_served_is_evicted_and_fetched_again_on_demand() -> None:
    one = await one_payload_bytes()
    cache = PayloadCache(ModelOnlyLink(), lambda job_id, version: True, max_bytes=one * 3 // 2)
    a, b = view("a"), view("b")
    await settled(cache, a)
    await settled(cache, b)
    assert cache.nbytes == one and cache.ready(b) and not cache.ready(a)
    await settled(cache, a, b)  # a sync wants both again: the evicted one waits for a device
    assert not cache.ready(a)
    assert cache.servable(a) is False  # a device asks: fetched again, b evicted
    await settled(cache)
    assert cache.ready(a) and not cache.ready(b) and cache.nbytes == one


async def test_a_finished_jobs_payload_is_dropped() -> None:
    cache = PayloadCache(ModelOnlyLink(), lambda job_id, version: True, max_bytes=1 << 30)
    await settled(cache, view("a"), view("b"))
    two = cache.nbytes
    await settled(cache, view("a", JobStatus.DONE))
    assert not cache.ready(view("a")) and cache.nbytes == two // 2


async def test_a_payload_larger_than_the_budget_is_kept_alone() -> None:
    cache = PayloadCache(ModelOnlyLink(), lambda job_id, version: True, max_bytes=1)
    await settled(cache, view("a"))
    assert cache.ready(view("a"))
    await settled(cache, view("b"))
    assert cache.ready(view("b")) and not cache.ready(view("a"))
