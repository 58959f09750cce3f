"""train_local and evaluate on real data: loss goes down, results are exact, deterministic, thread-safe."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edge_gateway.models import MODEL_NAMES, dirichlet_partition, evaluate, initial_weights, load_dataset, train_local


def apply(weights: dict[str, np.ndarray], delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: weights[k] + delta[k] for k in weights}


@pytest.fixture(scope="module")
def digits_shard() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_dataset("digits", "train")
    idx = dirichlet_partition(y, 100, 0.5, 0)[7]
    return x[idx], y[idx]


def test_update_format_and_loss_drop_on_a_digits_shard(digits_shard: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits_shard
    w0 = initial_weights("digits")
    delta, n, mean_loss = train_local("digits", w0, x, y, epochs=10, lr=0.5, batch_size=8)
    assert n == len(x)
    assert list(delta) == list(w0)
    for key, d in delta.items():
        assert d.dtype == np.float32 and d.shape == w0[key].shape and np.all(np.isfinite(d))
        assert np.abs(d).max() > 0
    before = evaluate("digits", w0, x, y)[1]
    after_acc, after = evaluate("digits", apply(w0, delta), x, y)
    assert np.log(10) - 0.3 < before < np.log(10) + 0.3  # untrained: about chance
    assert after < 0.3 * before and after_acc == 1.0  # fits its own ~15 samples
    assert after < mean_loss < before  # the running mean lies in between


@pytest.mark.parametrize(
    ("name", "epochs", "lr", "batch_size"),
    [("xor", 30, 1.0, 16), ("digits", 5, 0.5, 16), ("cifar10", 6, 0.05, 8)],  # the CNN starts on a plateau
)
def test_training_reduces_loss_for_every_model(name: str, epochs: int, lr: float, batch_size: int) -> None:
    x, y = load_dataset(name, "train")
    x, y = x[:400], y[:400]
    w0 = initial_weights(name)
    delta, n, _ = train_local(name, w0, x, y, epochs=epochs, lr=lr, batch_size=batch_size)
    assert n == 400
    before_acc, before = evaluate(name, w0, x, y)
    after_acc, after = evaluate(name, apply(w0, delta), x, y)
    assert after < before - 0.3
    assert after_acc > before_acc + 0.2


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deterministic_by_seed(name: str) -> None:
    x, y = load_dataset(name, "train")
    x, y = x[:40], y[:40]
    w0 = initial_weights(name, 1)
    a = train_local(name, w0, x, y, epochs=2, lr=0.05, batch_size=8, seed=5)
    b = train_local(name, w0, x, y, epochs=2, lr=0.05, batch_size=8, seed=5)
    c = train_local(name, w0, x, y, epochs=2, lr=0.05, batch_size=8, seed=6)
    assert a[1:] == b[1:]
    for key in a[0]:
        np.testing.assert_array_equal(a[0][key], b[0][key])
    assert any(not np.array_equal(a[0][k], c[0][k]) for k in a[0])  # another batch order


@pytest.mark.parametrize("name", ["xor", "digits"])
@pytest.mark.parametrize("batch_size", [3, 8, 1000])
def test_numpy_mlp_path_matches_torch_autograd(name: str, batch_size: int) -> None:
    """The MLPs train in numpy; the same SGD through the nn.Module and autograd must agree."""
    from edge_gateway.models.training import _train_autograd

    x, y = load_dataset(name, "train")
    x, y = x[:30], y[:30]
    w0 = initial_weights(name, 2)
    fast, n, fast_loss = train_local(name, w0, x, y, epochs=4, lr=0.5, batch_size=batch_size, seed=9)
    ref, ref_loss_sum = _train_autograd(
        name, w0, x, y, epochs=4, lr=0.5, batch_size=batch_size, rng=np.random.default_rng([9, 0x7A1])
    )
    assert list(fast) == list(ref)
    for key in fast:
        np.testing.assert_allclose(fast[key], ref[key], rtol=0, atol=2e-5)
    assert fast_loss == pytest.approx(ref_loss_sum / (n * 4), rel=1e-5)


@pytest.mark.parametrize("name", ["xor", "digits"])
def test_numpy_mlp_evaluate_matches_the_torch_module(name: str) -> None:
    import torch
    from torch.nn import functional as F

    from edge_gateway.models import build_net

    x, y = load_dataset(name, "test")
    w = initial_weights(name, 4)
    net = build_net(name)
    net.load_state_dict({k: torch.tensor(v) for k, v in w.items()})
    with torch.no_grad():
        logits = net(torch.tensor(x))
    acc, loss = evaluate(name, w, x, y)
    assert acc == pytest.approx(float((logits.argmax(1) == torch.tensor(y)).double().mean()), abs=1e-9)
    assert loss == pytest.approx(float(F.cross_entropy(logits, torch.tensor(y))), rel=1e-5)


def test_trained_digits_model_beats_chance_by_far() -> None:
    x, y = load_dataset("digits", "train")
    xt, yt = load_dataset("digits", "test")
    w = initial_weights("digits")
    delta, _, _ = train_local("digits", w, x, y, epochs=20, lr=0.1, batch_size=16)
    acc, loss = evaluate("digits", apply(w, delta), xt, yt)
    assert acc > 0.93  # chance is 0.1
    assert loss < 0.3


def test_read_only_and_float64_inputs_are_fine() -> None:
    x, y = load_dataset("digits", "train")
    x, y = x[:20], y[:20]
    w = {k: v.astype(np.float64) for k, v in initial_weights("digits").items()}
    for arr in (x, y, *w.values()):
        arr.flags.writeable = False
    delta, _, _ = train_local("digits", w, x, y, epochs=1, lr=0.1, batch_size=8)
    assert all(d.dtype == np.float32 for d in delta.values())
    evaluate("digits", w, x, y)
    xc, yc = load_dataset("cifar10", "test")
    xc, yc = xc[:8], yc[:8]
    wc = initial_weights("cifar10")
    for arr in (xc, yc, *wc.values()):
        arr.flags.writeable = False
    train_local("cifar10", wc, xc, yc, epochs=1, lr=0.01, batch_size=4)  # no torch warning (warnings are errors)
    evaluate("cifar10", wc, xc, yc)


def test_bad_inputs_are_rejected() -> None:
    x, y = load_dataset("digits", "train")
    w = initial_weights("digits")
    with pytest.raises(ValueError, match="missing"):
        train_local(
            "digits", {k: v for k, v in w.items() if k != "fc2.bias"}, x[:5], y[:5], epochs=1, lr=0.1, batch_size=2
        )
    with pytest.raises(ValueError, match="unexpected"):
        train_local("digits", {**w, "net.fc1.weight": w["fc1.weight"]}, x[:5], y[:5], epochs=1, lr=0.1, batch_size=2)
    with pytest.raises(ValueError, match="shape"):
        evaluate("digits", {**w, "fc1.bias": w["fc1.bias"][:-1]}, x[:5], y[:5])
    with pytest.raises(ValueError, match="non-empty"):
        train_local("digits", w, x[:0], y[:0], epochs=1, lr=0.1, batch_size=2)
    with pytest.raises(ValueError, match="hyper"):
        train_local("digits", w, x[:5], y[:5], epochs=0, lr=0.1, batch_size=2)
    with pytest.raises(ValueError, match="unknown model"):
        train_local("mlp", w, x[:5], y[:5], epochs=1, lr=0.1, batch_size=2)


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_concurrent_calls_from_threads_match_sequential_ones(name: str) -> None:
    x, y = load_dataset(name, "train")
    size = 15 if name == "digits" else 24
    shards = [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(8)]
    w = initial_weights(name)
    lr = 0.5 if name == "digits" else 0.05

    def job(i: int) -> dict[str, np.ndarray]:
        return train_local(name, w, *shards[i], epochs=3, lr=lr, batch_size=4, seed=i)[0]

    expected = [job(i) for i in range(8)]
    barrier = threading.Barrier(4)

    def racing(i: int) -> dict[str, np.ndarray]:
        if i < 4:
            barrier.wait(timeout=30)
        return job(i)

    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(racing, range(8)))
    for exp, res in zip(expected, got, strict=True):
        for key in exp:
            np.testing.assert_array_equal(exp[key], res[key])
