"""Evaluate a global model on the held-out split of its data set (runs in a worker thread)."""

from __future__ import annotations

import functools

import numpy as np

from . import models


@functools.lru_cache(maxsize=8)
def _test_split(model: str) -> tuple[np.ndarray, np.ndarray]:
    return models.load_dataset(model, "test")


def evaluate_on_test_split(model: str, weights: dict[str, np.ndarray]) -> tuple[float, float]:
    """(accuracy, loss) of `weights` on the model's test split."""
    x, y = _test_split(model)
    return models.evaluate(model, weights, x, y)
