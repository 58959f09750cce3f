"""xain-sdk 0.8 participants' calls through a running proxy: ids minted here, every call of one id
on one leaf under the link method `xain`, uploads under the upload body limit, 200 whatever happens."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from internal_link.calls import FEG, PING, XAIN, DeviceCall, device_call_handler, xain_call_handler
from internal_link.server import LinkServer

from .helpers import Leaf, Proxy

MakeLeaf = Callable[..., Awaitable[Leaf]]
MakeProxy = Callable[..., Awaitable[Proxy]]


class XainLeaf(Leaf):
    """A stand-in leaf that also takes `xain` calls, recording them and echoing as JSON."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.xain: list[tuple[str, dict[str, str], int]] = []

    async def start(self, port: int = 0) -> int:
        handlers = {FEG: device_call_handler(self._handle), PING: self._ping, XAIN: xain_call_handler(self._xain)}
        self._server = LinkServer(handlers, self._secret)
        self.port = await self._server.start("127.0.0.1", port or self.port)
        return self.port

    async def _xain(self, call: DeviceCall) -> Any:
        self.xain.append((call.endpoint, call.query, len(call.body)))
        return [200, "application/json", orjson.dumps({"leaf": self.name, "state": "stand_by", "round": 0})]


async def started(*names: str) -> list[XainLeaf]:
    made = [XainLeaf(name) for name in names]
    for leaf in made:
        await leaf.start()
    return made


async def test_every_call_of_a_participant_goes_to_its_leaf(proxy: MakeProxy, http: aiohttp.ClientSession) -> None:
    leaves = await started("C11", "C12")
    try:
        px = await proxy(leaves, max_poll_body_bytes=1000)
        ids = []
        for _ in range(20):
            async with http.get(f"{px.url}/rendez_vous") as reply:
                assert reply.status == 200
                ids.append(orjson.loads(await reply.read())["id"])
        assert len(set(ids)) == 20
        for participant in ids:
            paths = (f"/heartbeat/{participant}", f"/start_training/{participant}", f"/{participant}/tok")
            served = set()
            for path in paths:
                async with http.get(f"{px.url}{path}", headers={"Host": "edge.example:4321"}) as reply:
                    served.add(orjson.loads(await reply.read())["leaf"])
            # An upload larger than a poll may be: the upload limit applies under minted ids.
            async with http.post(f"{px.url}/{participant}/tok", data=b"\x93NUMPY" + b"\0" * 5000) as reply:
                assert reply.status == 200
                served.add(orjson.loads(await reply.read())["leaf"])
            assert len(served) == 1, participant
        assert all(leaf.xain for leaf in leaves), "ids spread over both leaves"
        calls = [call for leaf in leaves for call in leaf.xain]
        assert {endpoint for endpoint, _, _ in calls} == {"heartbeat", "start_training", "download", "upload"}
        starts = [query for endpoint, query, _ in calls if endpoint == "start_training"]
        assert all(query["url"] == "http://edge.example:4321" for query in starts)
        assert all(size == 5006 for endpoint, _, size in calls if endpoint == "upload")
        # Polls keep their small limit.
        async with http.get(f"{px.url}/heartbeat/{ids[0]}", data=b"x" * 5000) as reply:
            assert reply.status == 413
    finally:
        for leaf in leaves:
            await leaf.stop()


async def test_participants_hear_stand_by_when_no_leaf_answers(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    leaf = await leaves("C11")  # no `xain` handler: the call fails on the leaf
    px = await proxy([leaf])
    async with http.get(f"{px.url}/heartbeat/x8-abc") as reply:
        assert reply.status == 200
        assert orjson.loads(await reply.read())["state"] == "stand_by"
    await leaf.stop()
    async with http.get(f"{px.url}/heartbeat/x8-abc") as reply:
        assert reply.status == 200
        answer = orjson.loads(await reply.read())
    assert answer["state"] == "stand_by" and answer["ok"] is False


async def test_a_large_model_upload_is_passed_on_as_it_arrives(proxy: MakeProxy, http: aiohttp.ClientSession) -> None:
    (leaf,) = await started("C11")
    try:
        px = await proxy([leaf])
        model = b"\x93NUMPY" + bytes(range(256)) * 8192  # 2 MiB: a streamed request on the link
        async with http.post(f"{px.url}/x8-abc/tok", data=io.BytesIO(model)) as reply:
            assert reply.status == 200 and orjson.loads(await reply.read())["leaf"] == "C11"
        assert leaf.xain == [("upload", {"id": "x8-abc", "token": "tok"}, len(model))]
        assert leaf._server is not None and leaf._server.uploads.outcomes == {"started": 1, "completed": 1}
        # A leaf with no room for it: the participant hears its stand-by, HTTP 200, as ever.
        leaf._server.uploads.limit = len(model) - 1
        async with http.post(f"{px.url}/x8-abc/tok", data=io.BytesIO(model)) as reply:
            assert reply.status == 200
            assert orjson.loads(await reply.read())["state"] == "stand_by"
        assert leaf._server.uploads.outcomes["refused"] == 1 and len(leaf.xain) == 1
    finally:
        await leaf.stop()
