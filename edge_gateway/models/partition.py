"""Non-IID splits of a labelled data set over simulated devices."""

from __future__ import annotations

import numpy as np

from ._seeding import rng_for


def dirichlet_partition(labels: np.ndarray, num_devices: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Split sample indices over `num_devices` devices with Dirichlet(alpha) label skew.

    For each class, its (shuffled) samples are divided among the devices in proportions drawn from
    Dirichlet(alpha, ..., alpha): small alpha → each class lives on a few devices (strongly
    non-IID, unequal sizes); large alpha → close to a uniform IID split.

    Returns one sorted int64 index array per device. The arrays are disjoint, cover every index
    of `labels`, and none is empty: a device left empty receives one random sample taken from
    the currently largest device (so alpha can be arbitrarily small). Deterministic in `seed`.
    Raises ValueError when there are fewer samples than devices, or alpha <= 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if len(labels) < num_devices:
        raise ValueError(f"{len(labels)} samples cannot give each of {num_devices} devices one")

    rng = rng_for(seed, 0xD1E1)
    owner = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        share = rng.dirichlet(np.full(num_devices, float(alpha)))
        # Cut points from the cumulative shares; rounding keeps the counts summing to len(idx).
        cuts = np.round(np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
        owner[idx] = np.repeat(np.arange(num_devices), np.diff(np.concatenate(([0], cuts, [len(idx)]))))

    counts = np.bincount(owner, minlength=num_devices)
    for dev in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))  # has >= 2 samples since len(labels) >= num_devices
        moved = rng.choice(np.flatnonzero(owner == donor))
        owner[moved] = dev
        counts[donor] -= 1
        counts[dev] += 1

    order = np.argsort(owner, kind="stable")  # indices grouped by device, ascending within each
    return [part.astype(np.int64) for part in np.split(order, np.cumsum(counts)[:-1])]
