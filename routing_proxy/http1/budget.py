"""The memory budget for request bodies, all connections together. Pure: counting only.

A body is held from its head (its whole `Content-Length`) or, when chunked, as it streams, until
its answer has been handed to the transport or its connection is gone: bodies being received,
parsed and queued behind a pipelined request, and waiting on a leaf all count. What does not fit
is refused at once, never paused: a paused body cannot finish, so it could never free what it
holds, and every connection sending one would wait on the others for ever.

Bodies larger than a poll's (`small_body`) may not take the last eighth of the budget: slow large
uploads filling it still leave room for polls and small results.
"""

from __future__ import annotations

# The share of the budget only bodies up to `small_body` may use.
_SMALL_ONLY = 8


class BodyBudget:
    """Bytes of request bodies held, against a total and a per-connection cap.

    Args:
        total: bytes all connections together may hold.
        per_connection: bytes one connection may hold (its pipelined bodies together).
        small_body: bodies up to this size may use the whole `total`; larger ones all but an eighth.
    """

    def __init__(self, total: int, per_connection: int, small_body: int) -> None:
        self.total = total
        self.per_connection = per_connection
        self.small_body = small_body
        self._large_total = total - total // _SMALL_ONLY
        # The largest body that could ever be taken (by an idle connection, into an empty budget):
        # a larger one is refused for good (413), not told to come back.
        self.largest = min(per_connection, max(min(small_body, total), self._large_total))
        self.held = 0
        self.refused = 0  # takes refused so far: bodies told to come back later

    def take(self, size: int, body_size: int, connection_holds: int) -> bool:
        """Hold `size` more bytes of a body that is `body_size` long so far (or announced), on a
        connection holding `connection_holds` already; False (and counted) when it does not fit."""
        limit = self.total if body_size <= self.small_body else self._large_total
        if self.held + size > limit or connection_holds + size > self.per_connection:
            self.refused += 1
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size
