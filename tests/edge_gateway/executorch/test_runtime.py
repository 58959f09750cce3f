"""train_program: the device-side loop, against eager PyTorch SGD on the same batches."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

pytest.importorskip("executorch")

from edge_gateway.models import evaluate, initial_weights, load_dataset
from edge_gateway.models.executorch_program import SAMPLE_SHAPES, export_training_program, write_weights
from edge_gateway.models.executorch_runtime import minibatches, train_program

from .conftest import BATCH


def eager_sgd(
    name: str,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    seed: int,
    drop_last: bool = False,
) -> dict[str, np.ndarray]:
    """new − old after plain SGD in eager torch over the same mini-batches, keyed `net.<name>`."""
    import torch
    from torch.nn import functional as F

    from edge_gateway.models import build_net
    from edge_gateway.models.nets import load_weights

    net = build_net(name)
    load_weights(net, name, weights)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    xt, yt = torch.tensor(x).reshape(-1, *SAMPLE_SHAPES[name]), torch.tensor(y)
    for batch in minibatches(len(x), BATCH, epochs, seed, drop_last=drop_last):
        optimizer.zero_grad()
        F.cross_entropy(net(xt[batch]), yt[batch]).backward()
        optimizer.step()
    return {f"net.{key}": p.detach().numpy() - weights[key] for key, p in net.named_parameters()}


def test_xor_training_lowers_the_loss_and_matches_eager_sgd(xor_program: bytes) -> None:
    x, y = load_dataset("xor", "train")
    x, y = x[:102], y[:102]  # 102 = 25 batches of 4 and a partial batch of 2
    weights = initial_weights("xor", 2)
    program = write_weights(xor_program, weights)
    diff, n, loss = train_program(program, x, y, epochs=5, lr=0.5, batch_size=BATCH, seed=3)

    assert n == 102 and np.isfinite(loss)
    assert all(key.startswith("net.") and d.dtype == np.float32 for key, d in diff.items())
    expected = eager_sgd("xor", weights, x, y, epochs=5, lr=0.5, seed=3)
    assert diff.keys() == expected.keys()
    for key, d in expected.items():
        np.testing.assert_allclose(diff[key], d, atol=1e-5, rtol=0)

    trained = {key: value + diff[f"net.{key}"] for key, value in weights.items()}
    assert evaluate("xor", trained, x, y)[1] < evaluate("xor", weights, x, y)[1]


def test_cnn_training_matches_eager_sgd(cnn_program: bytes) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 3, 32, 32)).astype(np.float32)  # a batch of 4, then one of 2
    y = rng.integers(0, 10, 6)
    weights = initial_weights("cifar10", 0)
    diff, _, _ = train_program(cnn_program, x, y, epochs=1, lr=0.05, batch_size=BATCH, seed=5)
    expected = eager_sgd("cifar10", weights, x, y, epochs=1, lr=0.05, seed=5)
    for key, d in expected.items():
        scale = float(np.abs(d).max())
        assert float(np.abs(diff[key] - d).max()) <= 1e-4 * scale, key


def test_a_batch_beyond_the_programs_limit_is_refused(xor_program: bytes) -> None:
    x, y = load_dataset("xor", "train")
    with pytest.raises(ValueError, match="batch limit"):
        train_program(xor_program, x, y, epochs=1, lr=0.1, batch_size=BATCH + 1)


def test_a_static_program_drops_the_last_partial_batch() -> None:
    program = export_training_program("xor", None, BATCH, dynamic_batch=False)
    x, y = load_dataset("xor", "train")
    x, y = x[:102], y[:102]
    diff, n, _ = train_program(program, x, y, epochs=2, lr=0.5, batch_size=BATCH, seed=3)
    assert n == 100
    expected = eager_sgd("xor", initial_weights("xor", 0), x, y, epochs=2, lr=0.5, seed=3, drop_last=True)
    for key, d in expected.items():
        np.testing.assert_allclose(diff[key], d, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="exactly"):
        train_program(program, x, y, epochs=1, lr=0.5, batch_size=BATCH - 1)


def test_training_from_many_threads_at_once_completes(xor_program: bytes) -> None:
    """Simulated devices train in a thread pool; without the runtime lock two threads hung for good."""
    from concurrent.futures import ThreadPoolExecutor

    x, y = load_dataset("xor", "train")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(train_program, xor_program, x[i::4], y[i::4], epochs=3, lr=0.1, batch_size=BATCH)
            for i in range(8)
        ]
        results = [f.result(timeout=60) for f in futures]
    assert all(np.isfinite(loss) and n > 0 for _, n, loss in results)
