"""Tensor codecs: `et_tensor_diff` JSON <-> numpy and `{dtype, shape, data}` binary <-> numpy.

Never pickle: binary tensors are raw little-endian buffers described by dtype and shape.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from typing import Any, TypeGuard

import numpy as np

from .errors import UpdateRejected

# Kinds a device may upload (PROTOCOL.md §5): iOS `et_tensor_diff`, Android usually `number`,
# PyTorch/simulated clients `WEIGHT_DIFF`.
DIFF_KINDS = frozenset({"et_tensor_diff", "number", "WEIGHT_DIFF"})
ERROR_KIND = "error"
NAME_PREFIX = "net."
_BINARY_DTYPES = {"float32": "<f4", "float64": "<f8", "float16": "<f2"}
MAX_NUM_SAMPLES = 1_000_000
# numpy's own limit. Checked before multiplying sizes out: a product over a million dimensions
# costs time quadratic in their number (a CPU-bound denial of service from one upload).
MAX_DIMS = 64
# The most bytes a result body can take per model parameter: each float written as JSON text
# (≤ ~25 characters with its separator and nesting), or 4–8 bytes in msgpack; plus room for names,
# shapes, meta and the cookie.
RESULT_BYTES_PER_PARAM = 32
RESULT_BYTES_SLACK = 1024 * 1024

Shapes = Mapping[str, tuple[int, ...]]


def max_result_body_bytes(param_count: int) -> int:
    """The largest result body a model of `param_count` parameters can need."""
    return RESULT_BYTES_PER_PARAM * param_count + RESULT_BYTES_SLACK


def to_binary(array: np.ndarray) -> dict[str, Any]:
    """One array as `{dtype, shape, data}` (little-endian bytes)."""
    arr = np.asarray(array)  # not ascontiguousarray: it turns a 0-d array into 1-d
    name = arr.dtype.name
    if name not in _BINARY_DTYPES:
        raise ValueError(f"unsupported dtype {name}")
    return {"dtype": name, "shape": list(arr.shape), "data": arr.astype(_BINARY_DTYPES[name], copy=False).tobytes()}


def from_binary(entry: Any) -> np.ndarray:
    """`{dtype, shape, data}` -> a read-only array; refuses anything malformed with ValueError."""
    if not isinstance(entry, Mapping):
        raise ValueError("tensor must be an object with dtype, shape and data")
    name = entry.get("dtype")
    dtype = _BINARY_DTYPES.get(name) if isinstance(name, str) else None  # a list is unhashable
    shape = entry.get("shape")
    data = entry.get("data")
    if dtype is None:
        raise ValueError(f"unsupported dtype {reprlib.repr(name)}")
    if not _is_shape(shape):
        raise ValueError(f"shape must be a list of at most {MAX_DIMS} non-negative integers")
    if not isinstance(data, bytes):
        raise ValueError("data must be bytes")
    count = math.prod(shape)
    if count * np.dtype(dtype).itemsize != len(data):
        raise ValueError(
            f"data holds {len(data)} bytes, shape {shape} of {entry['dtype']} needs {count * np.dtype(dtype).itemsize}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def tensors_to_binary(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {name: to_binary(arr) for name, arr in arrays.items()}


def tensors_from_binary(entries: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: from_binary(entry) for name, entry in entries.items()}


def to_et_entry(array: np.ndarray) -> dict[str, Any]:
    """One array as iOS sends it: flat row-major data with sizes and strides (PROTOCOL.md §5)."""
    arr = np.ascontiguousarray(array, dtype=np.float32)
    strides = [s // arr.itemsize for s in arr.strides]
    return {"sizes": list(arr.shape), "strides": strides, "data": arr.ravel().tolist()}


def to_et_tensor_diff(
    arrays: Mapping[str, np.ndarray],
    meta: dict[str, Any] | None = None,
    kind: str = "et_tensor_diff",
    prefix: str = NAME_PREFIX,
) -> dict[str, Any]:
    """A result payload shaped like the iOS app's upload."""
    data = {prefix + name: to_et_entry(arr) for name, arr in arrays.items()}
    return {"kind": kind, "data": data, "meta": meta or {}}


def from_json_entry(entry: Any) -> np.ndarray:
    """A JSON tensor: `{sizes, strides?, data}` with flat or nested data, or a bare nested list."""
    if isinstance(entry, list):
        return _float_array(entry)
    if not isinstance(entry, Mapping) or "data" not in entry:
        raise ValueError("tensor must be a nested list or an object with sizes and data")
    flat = _float_array(entry["data"]).ravel()
    sizes = entry.get("sizes")
    if sizes is None:
        raise ValueError("tensor object has no sizes")
    if not _is_shape(sizes):
        raise ValueError(f"sizes must be a list of at most {MAX_DIMS} non-negative integers")
    count = math.prod(sizes)
    if flat.size != count:
        raise ValueError(f"data has {flat.size} values, sizes {sizes} need {count}")
    strides = entry.get("strides")
    # An empty tensor has no offsets to check; gathering one would still allocate per size.
    if strides is None or count == 0 or strides == _row_major(sizes):
        return flat.reshape(sizes)
    return _gather_strided(flat, sizes, strides)


def _is_shape(dims: Any) -> TypeGuard[list[int]]:
    return isinstance(dims, list) and len(dims) <= MAX_DIMS and all(type(d) is int and 0 <= d < 2**31 for d in dims)


def _float_array(values: Any) -> np.ndarray:
    if not isinstance(values, list):
        raise ValueError("tensor data must be a list of numbers")
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise ValueError("tensor data must be a (regular, nested) list of numbers") from None
    # Only real numbers: numpy would otherwise turn "1.0" or True into a float silently.
    if arr.dtype.kind not in "fiu":
        raise ValueError("tensor data must be a (regular, nested) list of numbers")
    with np.errstate(over="ignore"):  # out of float32 range becomes inf, refused as non-finite
        return arr.astype(np.float32, copy=False)


def _row_major(sizes: list[int]) -> list[int]:
    strides, step = [], 1
    for d in reversed(sizes):
        strides.append(step)
        step *= max(d, 1)
    return strides[::-1]


def _gather_strided(flat: np.ndarray, sizes: list[int], strides: Any) -> np.ndarray:
    # Non-row-major strides: read each element at its offset, checking every offset is in range.
    if (
        not isinstance(strides, list)
        or len(strides) != len(sizes)
        or not all(type(s) is int and s >= 0 for s in strides)
    ):
        raise ValueError("strides must be a list of non-negative integers, one per dimension")
    offsets = np.zeros(sizes, dtype=np.int64)
    for axis, (size, stride) in enumerate(zip(sizes, strides, strict=True)):
        shape = [1] * len(sizes)
        shape[axis] = size
        offsets = offsets + (np.arange(size, dtype=np.int64) * stride).reshape(shape)
    if offsets.size and int(offsets.max()) >= flat.size:
        raise ValueError("strides point outside the data")
    return flat[offsets]


def decode_update(result: Mapping[str, Any], shapes: Shapes) -> tuple[dict[str, np.ndarray], float]:
    """Turn a device's result into (float32 diffs keyed like `shapes`, weight).

    Refuses, with the reason, anything that must not touch the aggregate (DESIGN.md): the iOS error
    DXO, unknown kinds, empty or all-zero diffs, missing/extra/misnamed parameters, wrong shapes,
    NaN/Inf, bad sample counts. Values arrive as JSON lists or `{dtype, shape, data}` binaries.
    """
    kind = result.get("kind")
    if kind == ERROR_KIND:
        detail = result.get("data")
        reason = detail.get("error") if isinstance(detail, Mapping) else detail
        # Quoted with reprlib: bounded in length and nesting (repr of a 1,000-deep list raises).
        text = reason if isinstance(reason, str) else reprlib.repr(reason)
        raise UpdateRejected(f"device reported a training error: {text[:200]}")
    if not isinstance(kind, str) or kind not in DIFF_KINDS:  # a list or object kind is unhashable
        raise UpdateRejected(f"unsupported result kind {reprlib.repr(kind)}; expected one of {sorted(DIFF_KINDS)}")
    data = result.get("data")
    if not isinstance(data, Mapping) or not data:
        raise UpdateRejected("empty result: no tensors in data")
    arrays: dict[str, np.ndarray] = {}
    for raw_name, entry in data.items():
        name = _model_name(raw_name, shapes)
        if name in arrays:
            raise UpdateRejected(f"parameter {name!r} given twice")
        try:
            arr = from_binary(entry) if isinstance(entry, Mapping) and "dtype" in entry else from_json_entry(entry)
        except ValueError as exc:
            raise UpdateRejected(f"parameter {raw_name!r}: {exc}") from None
        arrays[name] = arr
    _check_names(arrays, shapes)
    any_nonzero = False
    for name, arr in arrays.items():
        expected = tuple(shapes[name])
        if arr.shape != expected:
            if arr.size == math.prod(expected):
                arr = arr.reshape(expected)  # flat data for a shaped tensor (Android sends flat lists)
            else:
                raise UpdateRejected(f"parameter {name!r} has shape {list(arr.shape)}, model has {list(expected)}")
        # Checked after the cast: a float64 value beyond float32's range becomes Inf in it.
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise UpdateRejected(f"parameter {name!r} holds NaN or Inf")
        any_nonzero = any_nonzero or bool(arr.any())
        arrays[name] = arr
    if not any_nonzero:
        raise UpdateRejected("all-zero diff: nothing was learned")
    return arrays, _weight(result.get("meta"))


def _model_name(raw: Any, shapes: Shapes) -> str:
    name = str(raw)
    if name not in shapes and name.startswith(NAME_PREFIX) and name[len(NAME_PREFIX) :] in shapes:
        return name[len(NAME_PREFIX) :]
    return name


def _check_names(arrays: Mapping[str, np.ndarray], shapes: Shapes) -> None:
    missing = [n for n in shapes if n not in arrays]
    extra = [n for n in arrays if n not in shapes]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing parameters {missing}")
        if extra:
            parts.append(f"unknown parameters {extra}")
        raise UpdateRejected("diff does not match the model: " + "; ".join(parts))


def _weight(meta: Any) -> float:
    # DESIGN.md: a device's weight is its reported sample count, else 1.
    if not isinstance(meta, Mapping) or meta.get("num_samples") is None:
        return 1.0
    n = meta["num_samples"]
    if type(n) is not int or not 0 < n <= MAX_NUM_SAMPLES:
        raise UpdateRejected(f"meta.num_samples must be an integer from 1 to {MAX_NUM_SAMPLES}")
    return float(n)
