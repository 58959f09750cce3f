"""A job's named parameters <-> one flat float32 vector, the form XAIN's participants train on.

The order is the iteration order of the job's shapes mapping (`JobView.param_shapes`), which is the
model's state_dict order (`edge_gateway.models.specs.PARAM_SPECS`); each tensor is laid out in C
(row-major) order. That is what `numpy.concatenate(list(state_dict.values()), axis=None)` produces
on a participant, and what a participant splitting at the cumulative sizes and reshaping expects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import UpdateRejected

Shapes = Mapping[str, Sequence[int]]


def flat_length(shapes: Shapes) -> int:
    """How many floats the flat vector of a model with `shapes` holds."""
    return sum(math.prod(shape) for shape in shapes.values())


def flatten(weights: Mapping[str, np.ndarray], shapes: Shapes) -> np.ndarray:
    """The float32 vector of `weights`, concatenated in the order of `shapes` (checked name by name)."""
    if set(weights) != set(shapes):
        raise ValueError(f"weights name {sorted(weights)}, the model has {sorted(shapes)}")
    parts = []
    for name, shape in shapes.items():
        arr = np.asarray(weights[name])
        if arr.shape != tuple(shape):
            raise ValueError(f"parameter {name!r} has shape {list(arr.shape)}, the model has {list(shape)}")
        parts.append(arr.astype(np.float32, copy=False).ravel())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def unflatten(vector: np.ndarray, shapes: Shapes) -> dict[str, np.ndarray]:
    """Named arrays (views into `vector`) in the order of `shapes`; the length must match exactly."""
    expected = flat_length(shapes)
    if vector.ndim != 1 or vector.size != expected:
        raise UpdateRejected(f"flat vector has shape {list(vector.shape)}, the model needs ({expected},)")
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = vector[start : start + size].reshape(tuple(shape))
        start += size
    return out


def checked_vector(array: np.ndarray, expected_length: int, source: str) -> np.ndarray:
    """`array` as a finite 1-D float32 vector of `expected_length` values, or UpdateRejected.

    Accepts any floating dtype and byte order (float64 that overflows float32 becomes Inf and is
    refused with the rest of the non-finite values).
    """
    if array.dtype.kind != "f":
        raise UpdateRejected(f"{source}: dtype {array.dtype.str} is not a floating-point type")
    if array.ndim != 1 or array.size != expected_length:
        raise UpdateRejected(f"{source}: shape {list(array.shape)}, the model needs ({expected_length},)")
    with np.errstate(over="ignore"):
        vector = array.astype("<f4", copy=False)
    if not np.isfinite(vector).all():
        raise UpdateRejected(f"{source}: holds NaN or Inf")
    return vector
