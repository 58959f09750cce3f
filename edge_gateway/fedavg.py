"""Hierarchical FedAvg, pure numpy: partial sums (Σ w·Δ, Σ w, n) combine exactly."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class PartialSum:
    """A running weighted sum of updates in float64; memory ∝ model size, not device count."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.sums = {name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()}
        self.weight = 0.0
        self.count = 0

    def add_update(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        for name, acc in self.sums.items():
            # In-place multiply-add without a temporary of the full product when weight is 1.
            if weight == 1.0:
                np.add(acc, update[name], out=acc)
            else:
                acc += np.multiply(update[name], weight, dtype=np.float64)
        self.weight += weight
        self.count += 1

    def add_partial(self, sums: Mapping[str, np.ndarray], weight: float, count: int) -> None:
        for name, acc in self.sums.items():
            np.add(acc, sums[name], out=acc)
        self.weight += weight
        self.count += count

    def apply_to(self, weights: Mapping[str, np.ndarray], server_lr: float = 1.0) -> dict[str, np.ndarray]:
        """W ← W + η · Σ(w·Δ) / Σw, computed in float64, returned in each tensor's dtype."""
        if self.weight <= 0.0:
            raise ValueError("no updates to apply")
        return {
            name: (weights[name].astype(np.float64) + server_lr * self.sums[name] / self.weight).astype(weights[name].dtype)
            for name in weights
        }
