"""Max-min fair split of slots among leaves, shared by sync selections and async concurrency. No I/O."""

from __future__ import annotations


def fair_level(total: int, others: list[int]) -> int:
    """The most slots one more leaf can get in a max-min fair split of `total` among `others`' demands.

    Demands below the level are met in full and the rest split evenly; the level is rounded up so
    that no slot stays idle for rounding (grants are also bounded by the free slots).
    """
    left = total
    for i, demand in enumerate(sorted(others)):
        count = len(others) - i + 1  # this demand, the larger ones, and the asking leaf
        if demand * count >= left:
            return -(-left // count)
        left -= demand
    return left
