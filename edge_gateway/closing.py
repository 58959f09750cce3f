"""A new model version, once due, waits for the leaves' word on what they acknowledged. No I/O.

A leaf tells a device its result counts before the server has it when the server is slow to answer
(uplink.py). Such a result is safe only if no version that makes it late is made before it
arrives, and the server cannot know of these acknowledgements while it is not reading (paused,
stalled): a batch it reads first could make the quorum and close the round ahead of them. So a
version that comes due (a quorum, a deadline, a full FedBuff buffer) is announced first
(`JobView.closing`). Each leaf that may have acknowledged results answers with a sync naming it
(`SyncRequest.closing`), saying `undelivered` if it holds any (the server then holds its rounds
until they are in: `Coordinator.hold_for`); from then on it acknowledges no result the new version
would make late before the server has answered for it. The version is made once every such leaf
has answered, or has been silent for `silent_after` since the version came due (its process is
gone: what it acknowledged and did not deliver is late), or after `limit` in all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class LeafSeen(Protocol):
    """What the coordinator knows of a leaf on one job (`coordinator.LeafSlots`)."""

    seen_at: float
    serving: bool
    missed_close: bool


@dataclass
class Closing:
    """A job's next version, due since `since`, waiting for the leaves in `waiting`."""

    version: int  # the version the new one follows: what leaves name in their answer
    closed_by: str  # the history's `closed_by`: a RoundEnd value, or the async buffer's
    since: float
    waiting: set[str]


def begin_closing(
    version: int, closed_by: str, leaves: Mapping[str, LeafSeen], now: float, seen_within: float
) -> Closing:
    """The leaves that must answer: those serving the job seen within `seen_within` (a paused
    server's clock ran on: its leaves all look stale when it resumes), except any that stayed
    silent through an earlier closing (dead, most likely) until they sync again."""
    waiting = {
        name
        for name, leaf in leaves.items()
        if leaf.serving and not leaf.missed_close and now - leaf.seen_at <= seen_within
    }
    return Closing(version, closed_by, now, waiting)


def record_answer(closing: Closing, leaf: str, named: int | None, serving: bool) -> None:
    """A leaf synced, naming the version it knows is closing (`named`), or none."""
    if named == closing.version or not serving:  # a leaf without the job acknowledged none of it
        closing.waiting.discard(leaf)


def closing_settled(
    closing: Closing, leaves: Mapping[str, LeafSeen], now: float, silent_after: float, limit: float
) -> bool:
    """Whether the new version may be made now; leaves given up on are marked `missed_close`."""
    if now - closing.since > limit:
        given_up = set(closing.waiting)
    else:
        given_up = {
            name
            for name in closing.waiting
            if name not in leaves or now - max(leaves[name].seen_at, closing.since) > silent_after
        }
    for name in given_up:
        if name in leaves:
            leaves[name].missed_close = True
    closing.waiting -= given_up
    return not closing.waiting
