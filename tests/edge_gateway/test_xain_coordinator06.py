"""The 0.6 coordinator's answers, over a real grpc.aio server on loopback, from a leaf's jobs in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from edge_gateway.leaf.job_state import LeafJob
from edge_gateway.xain.coordinator06 import Coordinator06
from edge_gateway.xain.coordinator_service import (
    ACCEPT,
    FINISHED,
    LATER,
    MESSAGES,
    METHODS,
    READY,
    ROUND,
    SERVICE,
    STANDBY,
    TRAINING,
    coordinator_handler,
)
from edge_gateway.xain.object_store import ObjectStore
from internal_link.messages import JobStatus, JobView

from .test_xain_endpoints import endpoints, view


class Connection:
    """One participant: a channel with a connection of its own."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])

    async def __call__(self, method: str, **fields: Any) -> Any:
        request, response = METHODS[method]
        stub = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=MESSAGES[request].SerializeToString,
            response_deserializer=MESSAGES[response].FromString,
        )
        return await stub(MESSAGES[request](**fields), timeout=10)


async def serve(*views: JobView) -> AsyncIterator[tuple[str, dict[str, LeafJob]]]:
    xain, jobs = await endpoints(*views)

    async def no_sync(timeout: float) -> None:
        return None

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (coordinator_handler(Coordinator06(xain, ObjectStore(xain), no_sync).behaviours()),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", jobs
    finally:
        await server.stop(0)


@pytest.fixture
async def one_slot() -> AsyncIterator[tuple[str, dict[str, LeafJob]]]:
    async for served in serve(view("job", xain=True, quota=1)):
        yield served


async def test_a_lease_is_taken_only_for_a_waiting_participant(one_slot: tuple[str, dict[str, LeafJob]]) -> None:
    target, jobs = one_slot
    busy, waiting = Connection(target), Connection(target)
    # A participant busy training hears nothing that takes the slot away from others.
    beat = await busy("Heartbeat", state=TRAINING, round=0)
    assert beat.state == STANDBY and not jobs["job"].leases
    beat = await waiting("Heartbeat", state=READY, round=-1)  # never rendezvoused: taken in all the same
    assert (beat.state, beat.round) == (ROUND, 0) and len(jobs["job"].leases) == 1
    assert (await waiting("Heartbeat", state=READY, round=-1)).state == ROUND  # the same lease again
    # The only slot is leased: the other is turned away until the next round.
    assert (await busy("Rendezvous")).reply == LATER
    assert (await busy("Heartbeat", state=READY, round=-1)).state == STANDBY
    start = await waiting("StartTrainingRound")
    assert (start.epochs, start.epoch_base) == (1, 0)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await busy("StartTrainingRound")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for connection in (busy, waiting):
        await connection.channel.close()


async def test_no_job_is_later_and_an_ended_job_is_finished() -> None:
    async for target, _ in serve():
        participant = Connection(target)
        assert (await participant("Rendezvous")).reply == LATER
        assert (await participant("Heartbeat", state=READY, round=-1)).state == STANDBY
        await participant.channel.close()
    async for target, _ in serve(view("old", JobStatus.DONE, xain=True)):
        participant = Connection(target)
        assert (await participant("Rendezvous")).reply == ACCEPT
        assert (await participant("Heartbeat", state=READY, round=-1)).state == FINISHED
        await participant.channel.close()
