"""Per-frame cost of the link's integrity tags (internal_link/sealing.py), for docs/TLS.md.

    PYTHONPATH=. python scripts/seal_timing.py

For frames of a few sizes: packing a frame without and with its tag, and checking a tag, i.e.
what each end pays per frame on a link without TLS. Best of 5 repeats; a micro benchmark, not a test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from internal_link.frames import encode_frame
from internal_link.sealing import Opener, Sealer

KEY = os.urandom(32)
SIZES = (100, 2_000, 100_000, 4_000_000)


def best_microseconds(run: Callable[[], None], count: int) -> float:
    """The fastest of 5 runs of `run`, which handles `count` frames, per frame."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def measure(size: int) -> tuple[float, float, float]:
    """Microseconds per frame of `size` body bytes: pack, pack and tag, check a tag."""
    message = [1, 7, None, os.urandom(size)]
    count = max(20, 2_000_000 // max(size, 1_000))
    sealer = Sealer(KEY)
    plain = best_microseconds(lambda: [encode_frame(message) for _ in range(count)] and None, count)
    sealed = best_microseconds(lambda: [encode_frame(message, sealer) for _ in range(count)] and None, count)
    fresh = Sealer(KEY)
    frames = [encode_frame(message, fresh) for _ in range(count)]

    def check_all() -> None:
        opener = Opener(KEY)  # counts from the first of `frames`, like `fresh`
        for _, body, tag in frames:
            if not opener.check(memoryview(body), memoryview(tag)):
                raise AssertionError("a frame did not check")

    return plain, sealed, best_microseconds(check_all, count)


def main() -> None:
    print(f"{'body bytes':>10} {'pack µs':>10} {'pack+tag µs':>12} {'check µs':>10}")
    for size in SIZES:
        plain, sealed, checked = measure(size)
        print(f"{size:>10} {plain:>10.2f} {sealed:>12.2f} {checked:>10.2f}")


if __name__ == "__main__":
    main()
