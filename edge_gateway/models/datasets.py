"""The bundled data sets, generated or loaded locally: nothing is downloaded.

- ``xor``: the four XOR corners with Gaussian noise (σ = 0.1), 400 train / 100 test, labels 0/1.
- ``digits``: scikit-learn's bundled 8×8 digits (1,797 images, shipped inside the package),
  pixels scaled to [0, 1], a stratified 80/20 train/test split fixed by the seed.
- ``cifar10``: **synthetic**, not the real CIFAR-10 (which cannot be downloaded here). Ten classes
  of 3×32×32 float images, each class an oriented colour grating with a class-specific
  orientation, frequency and colour mix, drawn with jittered orientation and frequency, random
  phase, contrast and brightness, plus pixel noise (σ 0.8; values roughly in [-4, 4]).
  2,000 train / 500 test, classes balanced. It has CIFAR-10's shapes and label range, so the
  CIFAR-10 CNN and the whole pipeline run on it, and it is learnable but not trivial: trained
  centrally (SGD lr 0.05, batch 16) the CNN's test accuracy goes ~0.14, 0.20, 0.30, 0.45, 0.86
  over the first five epochs.

Every array is freshly copied for the caller (generation is cached per (name, split, seed)).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._seeding import rng_for

_SPLITS = ("train", "test")


def load_dataset(name: str, split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of data set `name` ("xor" | "digits" | "cifar10") for `split` ("train" | "test").

    "cifar10_wide" names the wider CNN's data set: the same as "cifar10".

    x is float32 (xor: (N, 2); digits: (N, 64) in [0, 1]; cifar10: (N, 3, 32, 32), synthetic),
    y is int64 class labels. Deterministic in `seed`; train and test never share samples.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; expected one of {tuple(_LOADERS)}")
    x, y = _cached(name, split, int(seed))
    return x.copy(), y.copy()


@functools.lru_cache(maxsize=16)
def _cached(name: str, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _LOADERS[name](split, seed)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


def _xor(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = 400 if split == "train" else 100
    rng = rng_for(seed, 0x0A, _SPLITS.index(split))
    corners = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    labels = np.array([0, 1, 1, 0])
    which = np.arange(n) % 4  # balanced corners, then shuffled
    rng.shuffle(which)
    x = corners[which] + rng.normal(0.0, 0.1, size=(n, 2))
    return x, labels[which]


def _digits(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Lazy: sklearn is heavy and only digits needs it.
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data / 16.0  # pixel counts are 0..16
    y = data.target
    # Stratified 80/20: per class, a seeded permutation; the first 20% (rounded) go to test.
    rng = rng_for(seed, 0xD1)
    test_mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_mask[idx[: round(0.2 * len(idx))]] = True
    chosen = np.flatnonzero(test_mask if split == "test" else ~test_mask)
    chosen = rng.permutation(chosen) if split == "train" else chosen  # train order shuffled too
    return x[chosen], y[chosen]


def _cifar10_synthetic(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = 2000 if split == "train" else 500
    # The class definitions depend on the seed only, so train and test share them.
    proto = rng_for(seed, 0xC1FA)
    angles = np.arange(10) * (math.pi / 10) + proto.uniform(-0.05, 0.05, 10)
    freqs = proto.uniform(2.0, 5.0, 10) * (2 * math.pi / 32)  # 2-5 cycles across the image
    colours = proto.normal(0.0, 1.0, (10, 3))
    colours /= np.linalg.norm(colours, axis=1, keepdims=True)

    rng = rng_for(seed, 0xC1FA, 1 + _SPLITS.index(split))
    y = np.arange(n) % 10
    rng.shuffle(y)
    rows, cols = np.mgrid[0:32, 0:32].astype(np.float64)
    x = np.empty((n, 3, 32, 32), dtype=np.float32)
    for start in range(0, n, 250):  # chunks bound the float64 temporaries
        c = y[start : start + 250]
        m = len(c)
        phase = rng.uniform(0.0, 2 * math.pi, m)
        contrast = rng.uniform(0.6, 1.2, m)
        # Per-sample jitter of orientation (σ 0.2 rad vs 0.31 between classes) and frequency (±20%)
        # makes neighbouring classes overlap, so the task is learnable but not trivially separable.
        angle = angles[c] + rng.normal(0.0, 0.2, m)
        freq = freqs[c] * np.exp(rng.normal(0.0, 0.2, m))
        along = np.cos(angle)[:, None, None] * cols + np.sin(angle)[:, None, None] * rows
        wave = contrast[:, None, None] * np.sin(freq[:, None, None] * along + phase[:, None, None])
        img = colours[c][:, :, None, None] * wave[:, None, :, :]
        img += rng.uniform(-0.3, 0.3, (m, 3, 1, 1))  # per-channel brightness shift
        img += rng.normal(0.0, 0.8, img.shape)  # pixel noise
        x[start : start + m] = img
    return x, y


_LOADERS = {"xor": _xor, "digits": _digits, "cifar10": _cifar10_synthetic, "cifar10_wide": _cifar10_synthetic}
