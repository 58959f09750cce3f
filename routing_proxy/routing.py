"""Which leaf serves a device: rendezvous (highest-random-weight) hashing. Pure, no I/O.

Every (leaf, device) pair gets a pseudo-random score; a device goes to the healthy leaf with the
highest score. So devices spread evenly, a device stays on its leaf while that leaf is healthy,
only a dead leaf's devices move (each to its own next choice, so they spread too), and they come
back when it recovers (PROTOCOL.md §7, ours).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Container, Sequence
from functools import lru_cache


def score(leaf: str, device_id: str) -> int:
    """The pair's rendezvous weight: 64 bits of BLAKE2b over the leaf name and the device id."""
    data = leaf.encode("utf-8", "surrogatepass") + b"\0" + device_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Router:
    """Ranks `leaves` for each device; rankings of recent devices are cached (devices poll)."""

    def __init__(self, leaves: Sequence[str], cache_size: int = 1 << 16) -> None:
        if len(set(leaves)) != len(leaves):
            raise ValueError("leaf names must be unique")
        self.leaves = tuple(leaves)
        self.ranking: Callable[[str], tuple[int, ...]] = lru_cache(maxsize=cache_size)(self._rank)

    def _rank(self, device_id: str) -> tuple[int, ...]:
        scores = [score(leaf, device_id) for leaf in self.leaves]
        return tuple(sorted(range(len(scores)), key=lambda i: (-scores[i], i)))

    def preference(self, device_id: str, healthy: Container[int]) -> list[int]:
        """Indices of the healthy leaves, best first, for failover in that order."""
        return [i for i in self.ranking(device_id) if i in healthy]
