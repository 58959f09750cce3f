"""Hierarchical FedAvg, pure numpy: partial sums (Σ w·Δ, Σ w, n) combine exactly."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class PartialSum:
    """A running weighted sum of updates in float64; memory ∝ model size, not device count.

    Once an update has been added the sum also keeps one float64 scratch array per tensor.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.sums = {name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()}
        self.weight = 0.0
        self.count = 0
        # Screening counts (robustness.py): they add across leaves like the sums.
        self.clipped = 0
        self.capped = 0
        self._scratch: dict[str, np.ndarray] | None = None  # made on the first add_update, not for add_partial

    def add_update(
        self, update: Mapping[str, np.ndarray], weight: float, *, clipped: bool = False, capped: bool = False
    ) -> None:
        if self._scratch is None:
            self._scratch = {name: np.empty_like(acc) for name, acc in self.sums.items()}
        for name, acc in self.sums.items():
            # Cast into the scratch, then multiply and add in float64 (w·Δ exact as before):
            # numpy's mixed float32/float64 loops run ~3× slower than a cast plus same-dtype
            # loops, and a fresh float64 product per tensor cost an 8 MB allocation per update.
            scratch = self._scratch[name]
            np.copyto(scratch, update[name])
            if weight != 1.0:
                np.multiply(scratch, weight, out=scratch)
            np.add(acc, scratch, out=acc)
        self.weight += weight
        self.count += 1
        self.clipped += clipped
        self.capped += capped

    def add_partial(
        self, sums: Mapping[str, np.ndarray], weight: float, count: int, *, clipped: int = 0, capped: int = 0
    ) -> None:
        for name, acc in self.sums.items():
            np.add(acc, sums[name], out=acc)
        self.weight += weight
        self.count += count
        self.clipped += clipped
        self.capped += capped

    def apply_to(self, weights: Mapping[str, np.ndarray], server_lr: float = 1.0) -> dict[str, np.ndarray]:
        """W ← W + η · Σ(w·Δ) / Σw, computed in float64, returned in each tensor's dtype."""
        if self.weight <= 0.0:
            raise ValueError("no updates to apply")
        return {
            name: (weights[name].astype(np.float64) + server_lr * self.sums[name] / self.weight).astype(
                weights[name].dtype
            )
            for name in weights
        }
