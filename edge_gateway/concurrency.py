"""Async mode's device slots, pure: at most `concurrency` devices training at once. No I/O.

There are no selections: a slot is held by a lease from the moment a device gets its task until
the result is taken, the lease expires or it is aborted, and is free again at once. The server
splits `concurrency` among live leaves by max-min fairness over their demands (the same
`fair_level` that splits a sync selection); within its quota a leaf re-fills a freed slot without
asking, so a device gets work whenever a slot is free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .fair_share import fair_level


@dataclass(frozen=True)
class LeafDemand:
    """One leaf's last report on one async job."""

    training: int  # leases out now (not reported, expired or aborted)
    waiting: int  # devices asking for a task it could not give
    granted: int = 0  # the quota the server last gave it


@dataclass(frozen=True)
class Grant:
    quota: int  # leases the leaf may have out at once
    free_slots: int  # more it could get by asking again


def grant_slots(concurrency: int, asking: LeafDemand, others: Iterable[LeafDemand]) -> Grant:
    """The asking leaf's quota, given the other live leaves' last reports.

    Another leaf holds what it trains or was granted, whichever is more, so two leaves never get
    the same slot; the asking leaf keeps every lease it has out (slots are never taken back) and
    gets at most its fair share more.
    """
    held = 0
    demands = []
    for other in others:
        holds = max(other.training, other.granted)
        held += holds
        demands.append(max(holds, other.training + other.waiting))
    free = max(0, concurrency - held - asking.training)
    cap = fair_level(concurrency, demands)
    share = max(0, min(asking.waiting, free, cap - asking.training))
    return Grant(asking.training + share, max(0, min(free - share, cap - asking.training - share)))
