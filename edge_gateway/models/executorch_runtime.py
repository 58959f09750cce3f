"""Training an ExecuTorch training program the way a phone does, for simulated devices.

Runs the .pte in executorch's portable runtime (the kernels the iOS app runs): `forward_backward`
per batch, then executorch's own SGD step on the program's parameters, and reports the
`net.`-prefixed diff a device uploads (PROTOCOL.md §5).

Importing this module does not import torch or executorch; `train_program` does (the training
runtime pulls in `executorch.exir`: 6-9 s on first use).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from .pte_layout import program_layout

_RUNTIME_LOCK = threading.Lock()


def minibatches(n: int, batch_size: int, epochs: int, seed: int, *, drop_last: bool = False) -> Iterator[np.ndarray]:
    """The sample indices of each mini-batch `train_program` runs, epoch after epoch.

    Each epoch is a fresh seeded permutation (in order when `batch_size >= n`) cut into batches of
    `batch_size`; the last batch keeps the remainder, as the iOS sample datasets do, unless
    `drop_last`.
    """
    rng = np.random.default_rng([int(seed), 0xE7])
    end = n - n % batch_size if drop_last else n
    for _ in range(epochs):
        order = rng.permutation(n) if batch_size < n else np.arange(n)
        for start in range(0, end, batch_size):
            yield order[start : start + batch_size]


def train_program(
    program: bytes,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], int, float]:
    """Train `program` on (x, y) with plain mini-batch SGD; return what a device would upload.

    Batches come from `minibatches(len(x), batch_size, epochs, seed)`. A program with a dynamic
    batch (the default of `export_training_program`) also trains each epoch's last, smaller
    batch. A static program takes batches of exactly its size, so `batch_size` must equal it and
    the last partial batch is dropped: padding it would bias the mean loss and its gradient.
    `x` may have any sample shape: it is fed flat, `(batch, -1)`.

    Returns:
        (new − old per parameter as float32, keyed as the program names them, e.g.
        `net.fc1.weight`; the number of samples trained on per epoch; mean training loss over
        every sample seen, when it was seen).
    """
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"need a non-empty x with one label each, got {len(x)} samples, {len(y)} labels")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"bad hyper-parameters: epochs={epochs}, batch_size={batch_size}, lr={lr}")
    program = bytes(program)  # immutable: the runtime reads this memory for the module's whole life
    layout = program_layout(program)
    if layout.dynamic_batch:
        if min(batch_size, n) > layout.max_batch:
            raise ValueError(f"batch_size {batch_size} exceeds the program's batch limit {layout.max_batch}")
    elif batch_size != layout.max_batch or n < batch_size:
        raise ValueError(f"the program takes batches of exactly {layout.max_batch}; got {batch_size}, {n} samples")
    used = n if layout.dynamic_batch else n - n % batch_size

    # One program at a time per process: two threads in forward_backward at once were seen to
    # hang for good (xor, executorch 1.5.1), so the runtime is not treated as thread-safe.
    with _RUNTIME_LOCK:
        import torch
        from executorch.extension.training import _load_for_executorch_for_training_from_buffer, get_sgd_optimizer

        # The loader does not copy `program`: this frame keeps it referenced while `module` lives.
        module = _load_for_executorch_for_training_from_buffer(program)
        # torch.tensor copies: the caller's arrays may be read-only, which torch.from_numpy warns about.
        xt = torch.tensor(np.asarray(x, dtype=np.float32).reshape(n, -1))
        yt = torch.tensor(np.asarray(y, dtype=np.int64))
        old: dict[str, np.ndarray] | None = None
        optimizer = None
        loss_sum = 0.0
        for batch in minibatches(n, batch_size, epochs, seed, drop_last=not layout.dynamic_batch):
            index = torch.from_numpy(batch)
            loss = module.forward_backward("forward", (xt[index], yt[index]))[0]
            if optimizer is None:
                # named_parameters() exists only after the first forward_backward; its tensors alias
                # the program's memory, which the optimizer updates in place.
                params = module.named_parameters()
                old = {key: p.numpy().copy() for key, p in params.items()}
                optimizer = get_sgd_optimizer(params, lr, 0.0, 0.0, 0.0, False)
            optimizer.step(module.named_gradients())
            loss_sum += float(loss) * len(batch)

        assert old is not None  # at least one batch ran
        new = module.named_parameters()
        diff = {key: np.subtract(new[key].numpy(), value, dtype=np.float32) for key, value in old.items()}
        del module  # before `program` can go
        return diff, used, loss_sum / (used * epochs)
