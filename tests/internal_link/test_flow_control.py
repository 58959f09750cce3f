"""FlowControl on its own: read pauses by reason, write pauses with a drain many writers share."""

from __future__ import annotations

import asyncio
import enum
from typing import Any, cast

from internal_link.flow_control import FlowControl


class Hold(enum.IntFlag):
    BACKLOG = enum.auto()
    UNREAD = enum.auto()


class Transport:
    """Counts what the flow control asks of the transport."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def flow_control() -> tuple[FlowControl, Transport]:
    transport = Transport()
    return FlowControl(cast(Any, transport)), transport


def test_reading_resumes_only_when_no_reason_holds() -> None:
    flow, transport = flow_control()
    flow.pause_reading(Hold.BACKLOG)
    flow.pause_reading(Hold.UNREAD)
    flow.pause_reading(Hold.BACKLOG)
    flow.resume_reading(Hold.BACKLOG)
    assert not flow.reading and flow.paused_for(Hold.UNREAD) and not flow.paused_for(Hold.BACKLOG)
    flow.resume_reading(Hold.BACKLOG)  # not held: nothing changes
    flow.resume_reading(Hold.UNREAD)
    assert flow.reading
    assert transport.calls == ["pause", "resume"]  # the transport is told once each way


def test_resuming_regardless_and_after_the_connection_is_lost() -> None:
    flow, transport = flow_control()
    flow.pause_reading(Hold.BACKLOG | Hold.UNREAD)
    flow.resume_reading_regardless()
    assert flow.reading and transport.calls == ["pause", "resume"]
    flow.connection_lost()
    flow.pause_reading(Hold.BACKLOG)
    flow.resume_reading(Hold.BACKLOG)
    assert transport.calls == ["pause", "resume"]  # a gone transport is not called


async def test_drain_waits_for_resume_and_survives_a_cancelled_writer() -> None:
    flow, _ = flow_control()
    await asyncio.wait_for(flow.drain(), 1)  # not paused: at once
    flow.pause_writing()
    first = asyncio.ensure_future(flow.drain())
    second = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    first.cancel()
    await asyncio.sleep(0.01)
    assert not second.done()  # one writer giving up does not wake the others
    flow.resume_writing()
    await asyncio.wait_for(second, 1)
    assert first.cancelled() and not flow.write_paused


async def test_losing_the_connection_wakes_the_writers() -> None:
    flow, _ = flow_control()
    flow.pause_writing()
    waiting = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0.01)
    flow.connection_lost()
    await asyncio.wait_for(waiting, 1)
    await asyncio.wait_for(flow.drain(), 1)  # still paused, but there is nothing to wait for
