"""The 0.6 object endpoint keeps what waits for EndTrainingRound within its count and byte bounds."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edge_gateway.xain import object_store
from edge_gateway.xain.object_store import ObjectStore

from .test_xain_endpoints import endpoints, view


async def test_uploads_are_kept_within_the_byte_bound_oldest_dropped_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(object_store, "MAX_STORED_BYTES", 100)
    xain, _ = await endpoints(view("job", xain=True))
    store = ObjectStore(xain)
    async with TestServer(store.app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        for i in range(5):
            async with http.put(server.make_url(f"/b/0/u{i}"), data=bytes([i]) * 40) as reply:
                assert reply.status == 200
        # Written again: replaced, not counted twice.
        async with http.put(server.make_url("/b/0/u4"), data=b"\x09" * 40) as reply:
            assert reply.status == 200
    assert [store.take(f"0/u{i}") for i in range(5)] == [None, None, None, b"\x03" * 40, b"\x09" * 40]
    assert store.take("0/u4") is None
