"""A job's leases still waiting for their result, in deadline order, counted per client. No I/O."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar


class _Lease(Protocol):
    @property
    def task_id(self) -> str: ...
    @property
    def client(self) -> str | None: ...


L = TypeVar("L", bound=_Lease)


class UnreportedLeases(Generic[L]):
    """Leases by task id, oldest first, with how many each client (credential) holds.

    An OrderedDict, not a dict: taking a plain dict's first item walks every slot deleted before it
    (quadratic over a round). Every lease of a job has the same timeout, so creation order is
    deadline order and expiry stops at the first live one.
    """

    def __init__(self) -> None:
        self._by_task: OrderedDict[str, L] = OrderedDict()
        self._per_client: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_task)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_task

    def add(self, lease: L) -> None:
        """At the end, unless it is held already (then it keeps its place)."""
        if lease.task_id in self._by_task:
            return
        self._by_task[lease.task_id] = lease
        if lease.client is not None:
            self._per_client[lease.client] += 1

    def pop(self, task_id: str) -> L | None:
        lease = self._by_task.pop(task_id, None)
        if lease is not None and lease.client is not None:
            left = self._per_client[lease.client] - 1
            if left:
                self._per_client[lease.client] = left
            else:
                del self._per_client[lease.client]
        return lease

    def oldest(self) -> L | None:
        return next(iter(self._by_task.values()), None)

    def clear(self) -> None:
        self._by_task.clear()
        self._per_client.clear()

    def leases(self) -> Iterable[L]:
        return self._by_task.values()

    def held_by(self, client: str) -> int:
        return self._per_client.get(client, 0)
