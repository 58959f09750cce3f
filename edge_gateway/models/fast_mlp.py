"""The two-layer MLPs (xor, digits) in plain numpy: same maths as their nn.Modules, no torch.

Why: a demo device holds ~15 samples, so a local step is a handful of tiny matrix products and
per-op overhead is the whole cost. Measured per SGD step (digits, batch 8, one thread):
nn.Module + autograd ~170-220 µs (the autograd engine alone costs ~30 µs per backward call),
the same hand-written backward in torch ops ~100 µs, in numpy ~37 µs. It also means digits and
xor train and evaluate without importing torch at all. The torch modules in `_torch_nets.py`
stay the reference definition: the tests check this module against autograd on them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# name → (first layer, second layer, hidden activation) of each MLP in `_torch_nets.py`.
MLP_LAYOUT: dict[str, tuple[str, str, str]] = {
    "xor": ("linear1", "linear2", "sigmoid"),
    "digits": ("fc1", "fc2", "relu"),
}


def _keys(name: str) -> tuple[str, str, str, str]:
    first, second, _ = MLP_LAYOUT[name]
    return f"{first}.weight", f"{first}.bias", f"{second}.weight", f"{second}.bias"


def _sigmoid(h: np.ndarray) -> np.ndarray:
    # tanh form: never overflows (1 / (1 + exp(-h)) warns for h << 0, and warnings are errors in CI).
    return 0.5 + 0.5 * np.tanh(0.5 * h)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mlp_logits(name: str, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Forward pass: (N, in) float32 → (N, classes) float32 logits."""
    w1, b1, w2, b2 = (np.asarray(weights[k], dtype=np.float32) for k in _keys(name))
    h = x @ w1.T + b1
    a = np.maximum(h, 0.0) if MLP_LAYOUT[name][2] == "relu" else _sigmoid(h)
    return a @ w2.T + b2


def train_mlp(
    name: str,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], float]:
    """Mini-batch SGD on mean cross-entropy; returns (new − old per parameter, summed sample loss).

    `x` float32 (N, in), `y` int64 (N,). Batching and shuffling match `training._train_autograd`.
    """
    keys = _keys(name)
    relu = MLP_LAYOUT[name][2] == "relu"
    # Private float32 copies, updated in place (the caller's arrays may be read-only).
    w1, b1, w2, b2 = (np.array(weights[k], dtype=np.float32, order="C") for k in keys)
    n = len(y)
    loss_sum = 0.0
    for _ in range(epochs):
        order = rng.permutation(n) if batch_size < n else None
        for start in range(0, n, batch_size):
            if order is None:
                xb, yb = x, y  # one batch: the order within it does not change the mean gradient
            else:
                sel = order[start : start + batch_size]
                xb, yb = x[sel], y[sel]
            m = len(yb)
            rows = np.arange(m)
            h = xb @ w1.T
            h += b1
            a = np.maximum(h, 0.0) if relu else _sigmoid(h)
            z = a @ w2.T
            z += b2
            z -= z.max(axis=1, keepdims=True)
            e = np.exp(z)
            s = e.sum(axis=1)
            loss_sum += float(np.log(s).sum() - z[rows, yb].sum())
            # d(mean CE)/dz = (softmax − onehot) / m
            dz = e / s[:, None]
            dz[rows, yb] -= 1.0
            dz *= np.float32(1.0 / m)
            da = dz @ w2  # before w2 moves
            if relu:
                da *= h > 0
            else:
                da *= a * (1.0 - a)
            w2 -= np.float32(lr) * (dz.T @ a)
            b2 -= np.float32(lr) * dz.sum(axis=0)
            w1 -= np.float32(lr) * (da.T @ xb)
            b1 -= np.float32(lr) * da.sum(axis=0)
    delta = {k: np.subtract(new, weights[k], dtype=np.float32) for k, new in zip(keys, (w1, b1, w2, b2), strict=True)}
    return delta, loss_sum


def mlp_evaluate(name: str, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of an MLP on (x, y)."""
    logits = mlp_logits(name, weights, x)
    logp = _log_softmax(logits.astype(np.float64))
    loss = -float(logp[np.arange(len(y)), y].mean())
    acc = float((logits.argmax(axis=1) == y).mean())
    return acc, loss
