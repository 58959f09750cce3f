"""Gradients of one batch from an ExecuTorch program and from eager PyTorch, for comparison."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_gateway.models.executorch_program import PARAM_PREFIX, SAMPLE_SHAPES


def program_gradients(program: bytes, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """(loss, gradient per `net.` name) of one `forward_backward` of `program` on (x, y)."""
    import torch
    from executorch.extension.training import _load_for_executorch_for_training_from_buffer

    module = _load_for_executorch_for_training_from_buffer(program)  # `program` outlives it
    loss = module.forward_backward("forward", (torch.tensor(x.reshape(len(x), -1)), torch.tensor(y)))[0]
    return float(loss), {key: g.numpy().copy() for key, g in module.named_gradients().items()}


def eager_gradients(
    name: str, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """The same, computed by the eager torch net with mean cross-entropy."""
    import torch
    from torch.nn import functional as F

    from edge_gateway.models import build_net
    from edge_gateway.models.nets import load_weights

    net = build_net(name)
    load_weights(net, name, weights)
    loss = F.cross_entropy(net(torch.tensor(x).reshape(-1, *SAMPLE_SHAPES[name])), torch.tensor(y))
    loss.backward()
    return float(loss.detach()), {PARAM_PREFIX + key: p.grad.numpy().copy() for key, p in net.named_parameters()}


def assert_gradients_match(
    program: bytes, name: str, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, rel: float
) -> None:
    """Loss and every gradient tensor agree within `rel` of the eager tensor's largest magnitude."""
    et_loss, et_grads = program_gradients(program, x, y)
    loss, grads = eager_gradients(name, weights, x, y)
    assert et_grads.keys() == grads.keys()
    assert abs(et_loss - loss) <= rel * abs(loss)
    for key, grad in grads.items():
        error = float(np.abs(et_grads[key] - grad).max()) / float(np.abs(grad).max())
        assert error <= rel, f"{key}: relative gradient error {error:.2e} > {rel:.0e}"


def random_batch(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random float32 samples of model `name`'s sample shape with labels 0/1 (valid for all nets)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *SAMPLE_SHAPES[name])).astype(np.float32), rng.integers(0, 2, n)
