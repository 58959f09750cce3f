"""Named parameters <-> the flat vector XAIN participants train on."""

from __future__ import annotations

import numpy as np
import pytest

from device_protocol.errors import UpdateRejected
from device_protocol.xain.flat_weights import checked_vector, flat_length, flatten, unflatten
from edge_gateway.models import initial_weights, param_shapes


def test_order_is_the_shapes_order_each_tensor_row_major() -> None:
    weights = initial_weights("xor", seed=3)
    shapes = param_shapes("xor")
    vector = flatten(weights, shapes)
    # What a participant computes from its state_dict.
    assert np.array_equal(vector, np.concatenate(list(weights.values()), axis=None))
    assert vector.dtype == np.float32 and vector.size == flat_length(shapes) == 2 * 10 + 10 + 10 * 2 + 2
    back = unflatten(vector, shapes)
    assert list(back) == list(shapes)
    for name, arr in weights.items():
        assert np.array_equal(back[name], arr)


def test_flatten_follows_shapes_order_not_weights_order() -> None:
    shapes = {"b": (2,), "a": (1, 2)}
    weights = {"a": np.array([[1.0, 2.0]]), "b": np.array([3.0, 4.0])}
    assert flatten(weights, shapes).tolist() == [3.0, 4.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("weights", "message"),
    [({"a": np.zeros(2)}, "weights name"), ({"a": np.zeros(3), "b": np.zeros(1)}, r"has shape \[3\]")],
)
def test_flatten_refuses_weights_that_do_not_fit(weights: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        flatten(weights, {"a": (2,), "b": (1,)})


@pytest.mark.parametrize("vector", [np.zeros(5, np.float32), np.zeros(7, np.float32), np.zeros((2, 3), np.float32)])
def test_unflatten_refuses_a_vector_of_another_length(vector: np.ndarray) -> None:
    with pytest.raises(UpdateRejected, match="the model needs \\(6,\\)"):
        unflatten(vector, {"a": (2, 3)})


def test_checked_vector_casts_floats_and_refuses_the_rest() -> None:
    assert checked_vector(np.arange(3, dtype=">f8"), 3, "x").dtype == np.dtype("<f4")
    with pytest.raises(UpdateRejected, match="not a floating-point type"):
        checked_vector(np.arange(3), 3, "x")
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        checked_vector(np.array([1.0, 1e300, 2.0]), 3, "x")  # float32 overflow
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        checked_vector(np.array([1.0, np.nan, 2.0], np.float32), 3, "x")
    with pytest.raises(UpdateRejected, match="shape \\[4\\]"):
        checked_vector(np.zeros(4, np.float32), 3, "x")
