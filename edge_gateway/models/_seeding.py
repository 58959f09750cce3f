"""Independent, reproducible numpy generators derived from a user seed and a purpose tag."""

from __future__ import annotations

import numpy as np


def rng_for(seed: int, *tags: int) -> np.random.Generator:
    """A PCG64 generator for (seed, tags...): same inputs → same stream; any int seed, even negative.

    Tags keep the streams of different purposes (init, split, shuffling...) independent for one seed.
    """
    return np.random.default_rng([int(seed) & 0xFFFF_FFFF_FFFF_FFFF, *tags])
