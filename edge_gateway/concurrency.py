"""Async mode's device slots, pure: at most `concurrency` devices training at once. No I/O.

There are no selections: a slot is held by a lease from the moment a device gets its task until
the result is taken, the lease expires or it is aborted, and is free again at once. The server
splits `concurrency` among live leaves by max-min fairness over their demands (the same
`fair_level` that splits a sync selection); within its quota a leaf re-fills a freed slot without
asking, so a device gets work whenever a slot is free.
"""

from __future__ import annotations

from collections import OrderedDict
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


class SlotLedger:
    """One leaf's leases of one async job, for its quota: which hold a slot, until when."""

    def __init__(self) -> None:
        # Task id -> lease deadline, in creation order: with one task_timeout per job that is
        # deadline order, so expiry stops at the first live lease.
        self._deadlines: OrderedDict[str, float] = OrderedDict()

    @property
    def training(self) -> int:
        return len(self._deadlines)

    def take(self, task_id: str, deadline: float, quota: int) -> bool:
        """Lease a slot to a new task if the quota has one free."""
        if len(self._deadlines) >= quota or task_id in self._deadlines:
            return False
        self._deadlines[task_id] = deadline
        return True

    def end(self, task_id: str) -> bool:
        """The task's result was taken or it was aborted: its slot is free. False if it held none."""
        return self._deadlines.pop(task_id, None) is not None

    def expire(self, now: float) -> list[str]:
        """Free the slots of leases past their deadline; returns their task ids."""
        expired = []
        while self._deadlines:
            task_id, deadline = next(iter(self._deadlines.items()))
            if deadline > now:
                break
            del self._deadlines[task_id]
            expired.append(task_id)
        return expired
