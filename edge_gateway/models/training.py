"""Local training and evaluation on numpy data, returning numpy results.

Torch-free at import time (torch loads on the first call). Safe to call from several threads at
once: each thread trains its own cached net (`nets.thread_net`) and randomness comes only from a
per-call numpy generator, never from torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

import numpy as np

from ._seeding import rng_for
from .fast_mlp import MLP_LAYOUT, mlp_evaluate, train_mlp
from .nets import check_weights, load_weights, thread_net

_EVAL_CHUNK = 1024  # bounds activation memory when evaluating big test sets
_threads_set = False


def _torch() -> ModuleType:
    """Import torch; on first use pin its intra-op pool to one thread for the whole process.

    Only the cifar10 CNN gets here (the MLPs train in numpy). Measured on the shared 2-core box
    (noisy): one trainer alone runs at about the same speed with 1 or 2 threads (~20-40 ms per
    200 samples), but with two busy trainers (threads or processes) the default 2-thread pools
    oversubscribe the cores and calls slowed 2-9x (CNN 70-370 ms; a digits device through torch
    22 ms instead of 2.5 ms), while with 1 thread each they stayed at 30-40 ms. Our callers
    parallelise across devices, not inside one small op, so one thread per caller is the right
    split. Note that this is process-wide: a process that wants a multi-threaded torch elsewhere
    should call torch.set_num_threads again after its first cifar10 train/evaluate.
    """
    global _threads_set
    import torch

    if not _threads_set:
        torch.set_num_threads(1)
        _threads_set = True
    return torch


def train_local(
    name: str,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], int, float]:
    """Train model `name` from `weights` on (x, y) with plain mini-batch SGD; return the update.

    Plain SGD: no momentum, no weight decay, mean cross-entropy per mini-batch. Each epoch visits
    the samples in a fresh seeded permutation in batches of `batch_size` (the last one may be
    smaller; a batch_size >= len(x) is full-batch gradient descent). Same inputs and seed →
    identical result. cifar10 trains its nn.Module with autograd; the two MLPs (xor, digits) run
    the same maths in numpy (`fast_mlp.py`: ~5x faster on tiny batches, and no torch import).

    Returns (new − old for each parameter as float32 in state_dict order, len(x), mean training
    loss), the loss averaged over every sample seen during training, at the time it was seen.
    """
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"need a non-empty x with one label each, got {len(x)} samples, {len(y)} labels")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"bad hyper-parameters: epochs={epochs}, batch_size={batch_size}, lr={lr}")
    check_weights(name, weights)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    rng = rng_for(seed, 0x7A1)
    if name in MLP_LAYOUT:
        delta, loss_sum = train_mlp(name, weights, x, y, epochs=epochs, lr=lr, batch_size=batch_size, rng=rng)
    else:
        delta, loss_sum = _train_autograd(name, weights, x, y, epochs=epochs, lr=lr, batch_size=batch_size, rng=rng)
    return delta, n, loss_sum / (n * epochs)


def _train_autograd(
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
    """Generic SGD through the nn.Module and autograd; returns (new − old, summed sample loss)."""
    torch = _torch()
    from torch.nn import functional as F

    net = thread_net(name)
    load_weights(net, name, weights)
    params = list(net.parameters())
    # torch.tensor copies: the caller's arrays may be read-only, which torch.from_numpy warns about.
    xt = torch.tensor(x)
    yt = torch.tensor(y)
    n = len(yt)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n)) if batch_size < n else None
        for start in range(0, n, batch_size):
            if order is None:
                xb, yb = xt, yt  # one batch: the order within it does not change the mean gradient
            else:
                sel = order[start : start + batch_size]
                xb, yb = xt[sel], yt[sel]
            loss = F.cross_entropy(net(xb), yb)
            # autograd.grad instead of backward(): no .grad state left on the reused net.
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.sub_(g, alpha=lr)
                loss_sum += loss.detach() * len(yb)

    delta = {key: np.subtract(p.detach().numpy(), weights[key], dtype=np.float32) for key, p in net.named_parameters()}
    return delta, float(loss_sum)


def evaluate(name: str, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of model `name` with `weights` on (x, y).

    cifar10 runs its nn.Module (in chunks of 1,024); the MLPs run in numpy like `train_local`.
    """
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"need a non-empty x with one label each, got {len(x)} samples, {len(y)} labels")
    check_weights(name, weights)
    if name in MLP_LAYOUT:
        return mlp_evaluate(name, weights, np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64))
    torch = _torch()
    from torch.nn import functional as F

    net = thread_net(name)
    load_weights(net, name, weights)
    correct = 0
    loss_sum = 0.0
    with torch.inference_mode():
        for start in range(0, n, _EVAL_CHUNK):
            xb = torch.tensor(np.asarray(x[start : start + _EVAL_CHUNK], dtype=np.float32))
            yb = torch.tensor(np.asarray(y[start : start + _EVAL_CHUNK], dtype=np.int64))
            logits = net(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    return correct / n, loss_sum / n
