"""Who takes tasks and never reports: a bounded, decaying no-show score per device. No I/O.

The rule: a lease that reaches its deadline unreported adds 1 to its device's score, which never
exceeds MAX_SCORE and halves every HALF_LIFE seconds. A device scoring at least FLAGGED_AT is
*flagged*: it gets a free slot only when no unflagged device is waiting for one
(`LeafJob.decide_task`). So one no-show costs a device its priority for one half-life (10 min),
and any number of them for at most three; where slots are plenty, a flagged device still trains.
Only time clears a score: a device that no-shows half its tasks stays flagged.

The table holds at most `max_devices` entries, least recently changed dropped first: minting ids
cannot grow it, and a dropped entry only forgets a device's past (a fresh id starts at 0 anyway).
"""

from __future__ import annotations

import math
from collections import OrderedDict

HALF_LIFE = 600.0  # seconds; several rounds at the default task_timeout (120 s)
MAX_SCORE = 4.0
FLAGGED_AT = 0.5
MAX_DEVICES = 100_000


class NoShowScores:
    """No-show scores of the devices one leaf has seen, time passed in (`now`, seconds)."""

    def __init__(self, half_life: float = HALF_LIFE, max_devices: int = MAX_DEVICES) -> None:
        self._half_life = half_life
        self._max_devices = max_devices
        self._scores: OrderedDict[str, tuple[float, float]] = OrderedDict()  # device -> (score, as of)

    def __len__(self) -> int:
        return len(self._scores)

    def score(self, device_id: str, now: float) -> float:
        entry = self._scores.get(device_id)
        if entry is None:
            return 0.0
        value, since = entry
        return value * math.exp2(-max(0.0, now - since) / self._half_life)

    def flagged(self, device_id: str, now: float) -> bool:
        return self.score(device_id, now) >= FLAGGED_AT

    def missed(self, device_id: str, now: float) -> None:
        """A lease of `device_id` ran out without a result."""
        self._scores[device_id] = (min(MAX_SCORE, self.score(device_id, now) + 1.0), now)
        self._scores.move_to_end(device_id)
        while len(self._scores) > self._max_devices:
            self._scores.popitem(last=False)
