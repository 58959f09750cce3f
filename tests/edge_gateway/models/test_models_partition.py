"""dirichlet_partition: a disjoint, complete, non-empty split whose label skew grows as alpha shrinks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gateway.models import dirichlet_partition, load_dataset


@st.composite
def partition_cases(draw: st.DrawFn) -> tuple[np.ndarray, int, float, int]:
    num_devices = draw(st.integers(1, 40))
    n = draw(st.integers(num_devices, 400))
    num_classes = draw(st.integers(1, 12))
    labels = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)), dtype=np.int64)
    alpha = draw(st.floats(0.001, 1000.0))
    seed = draw(st.integers(0, 2**31))
    return labels, num_devices, alpha, seed


@settings(max_examples=150, deadline=None)
@given(partition_cases())
def test_disjoint_complete_nonempty_deterministic(case: tuple[np.ndarray, int, float, int]) -> None:
    labels, num_devices, alpha, seed = case
    parts = dirichlet_partition(labels, num_devices, alpha, seed)
    assert len(parts) == num_devices
    for part in parts:
        assert part.dtype == np.int64 and len(part) >= 1
        assert np.all(np.diff(part) > 0)  # sorted, no repeats within a device
    everything = np.concatenate(parts)
    assert len(everything) == len(labels)  # disjoint (with the check below) ...
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(labels)))  # ... and complete
    again = dirichlet_partition(labels, num_devices, alpha, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Sample-weighted mean total-variation distance of each device's label mix from the global one."""
    classes = np.unique(labels)
    global_mix = np.array([(labels == c).mean() for c in classes])
    total = 0.0
    for part in parts:
        mix = np.array([(labels[part] == c).mean() for c in classes])
        total += len(part) * 0.5 * np.abs(mix - global_mix).sum()
    return total / len(labels)


def test_skew_grows_as_alpha_shrinks() -> None:
    _, labels = load_dataset("digits", "train")
    skew = {
        alpha: np.mean([label_skew(labels, dirichlet_partition(labels, 100, alpha, seed)) for seed in range(3)])
        for alpha in (0.05, 0.5, 5.0, 1000.0)
    }
    assert skew[0.05] > skew[0.5] > skew[5.0] > skew[1000.0]
    assert skew[0.05] > 0.7  # nearly one class per device
    assert skew[1000.0] < 0.35  # close to IID (14 samples/device leave sampling noise)


def test_demo_split_shape() -> None:
    _, labels = load_dataset("digits", "train")
    parts = dirichlet_partition(labels, 100, 0.5, 0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == len(labels) and sizes.min() >= 1
    # Non-IID: most devices miss several of the 10 classes.
    missing = [10 - len(np.unique(labels[p])) for p in parts]
    assert np.median(missing) >= 3


def test_seed_changes_the_split() -> None:
    labels = np.arange(500) % 10
    a = dirichlet_partition(labels, 10, 0.5, 0)
    b = dirichlet_partition(labels, 10, 0.5, 1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("labels", "devices", "alpha"),
    [(np.zeros(3, dtype=np.int64), 4, 0.5), (np.zeros(10, dtype=np.int64), 2, 0.0), (np.zeros((2, 2)), 1, 1.0)],
)
def test_bad_arguments(labels: np.ndarray, devices: int, alpha: float) -> None:
    with pytest.raises(ValueError):
        dirichlet_partition(labels, devices, alpha)
