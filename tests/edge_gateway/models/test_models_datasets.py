"""The bundled data sets: shapes, dtypes, ranges, splits, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from edge_gateway.models import MODEL_NAMES, load_dataset

SIZES = {"xor": (400, 100), "digits": (1438, 359), "cifar10": (2000, 500), "cifar10_wide": (2000, 500)}
FEATURES = {"xor": (2,), "digits": (64,), "cifar10": (3, 32, 32), "cifar10_wide": (3, 32, 32)}
CLASSES = {"xor": 2, "digits": 10, "cifar10": 10, "cifar10_wide": 10}


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_shapes_and_dtypes(name: str, split: str) -> None:
    x, y = load_dataset(name, split)
    n = SIZES[name][0 if split == "train" else 1]
    assert x.shape == (n, *FEATURES[name]) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (n,) and y.dtype == np.int64
    assert np.all(np.isfinite(x))
    assert set(np.unique(y)) == set(range(CLASSES[name]))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deterministic_by_seed_and_private_copies(name: str) -> None:
    x1, y1 = load_dataset(name, "train", seed=3)
    x2, y2 = load_dataset(name, "train", seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x1[...] = 0  # mutating a result must not leak into the cache
    assert load_dataset(name, "train", seed=3)[0].any()
    x3, _ = load_dataset(name, "train", seed=4)
    assert not np.array_equal(x2, x3)


def test_digits_is_a_stratified_80_20_split_in_unit_range() -> None:
    from sklearn.datasets import load_digits

    full = load_digits()
    xtr, _ = load_dataset("digits", "train")
    xte, yte = load_dataset("digits", "test")
    assert len(xtr) + len(xte) == len(full.target)
    assert xtr.min() >= 0.0 and xtr.max() <= 1.0 and xtr.max() == 1.0
    # Stratified: each class's test share is 20% up to rounding.
    for c in range(10):
        total = int((full.target == c).sum())
        assert abs(int((yte == c).sum()) - 0.2 * total) <= 0.5
    # Together the two splits are exactly the data set (as a multiset of rows).
    together = np.concatenate([xtr, xte]) * 16

    def rows_sorted(a: np.ndarray) -> np.ndarray:
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_array_equal(rows_sorted(together), rows_sorted(full.data.astype(np.float32)))


def test_xor_points_and_labels() -> None:
    x, y = load_dataset("xor", "train")
    corner = np.rint(x).astype(int)
    np.testing.assert_array_equal(y, corner[:, 0] ^ corner[:, 1])
    assert np.abs(x - corner).max() < 0.6
    assert np.bincount(y).tolist() == [200, 200]


def test_cifar10_synthetic_is_balanced_and_split_differs() -> None:
    xtr, ytr = load_dataset("cifar10", "train")
    xte, yte = load_dataset("cifar10", "test")
    assert np.bincount(ytr).tolist() == [200] * 10
    assert np.bincount(yte).tolist() == [50] * 10
    assert not np.array_equal(xtr[:500], xte)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("mnist", "train")
