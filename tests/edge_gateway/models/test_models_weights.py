"""Initial weights and nets: names, shapes, dtypes, order, determinism (real torch modules)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_gateway.models import MODEL_NAMES, build_net, initial_weights, param_shapes

INPUT_SHAPES = {"xor": (2,), "digits": (64,), "cifar10": (3, 32, 32), "cifar10_wide": (3, 32, 32)}
NUM_CLASSES = {"xor": 2, "digits": 10, "cifar10": 10, "cifar10_wide": 10}


def test_model_names() -> None:
    assert MODEL_NAMES == ("xor", "digits", "cifar10", "cifar10_wide")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_initial_weights_match_the_torch_state_dict(name: str) -> None:
    weights = initial_weights(name)
    state = build_net(name).state_dict()
    assert list(weights) == list(state)  # same names, same order, no prefix
    for key, value in weights.items():
        assert isinstance(value, np.ndarray)
        assert value.dtype == np.float32
        assert value.flags.c_contiguous
        assert value.shape == tuple(state[key].shape)
        assert np.all(np.isfinite(value))
        assert value.std() > 0  # actually initialised
    assert param_shapes(name) == {k: v.shape for k, v in weights.items()}


def test_expected_layouts() -> None:
    assert param_shapes("xor") == {
        "linear1.weight": (10, 2),
        "linear1.bias": (10,),
        "linear2.weight": (2, 10),
        "linear2.bias": (2,),
    }
    assert param_shapes("cifar10") == {
        "conv1.weight": (6, 3, 5, 5),
        "conv1.bias": (6,),
        "conv2.weight": (16, 6, 5, 5),
        "conv2.bias": (16,),
        "fc1.weight": (120, 400),
        "fc1.bias": (120,),
        "fc2.weight": (84, 120),
        "fc2.bias": (84,),
        "fc3.weight": (10, 84),
        "fc3.bias": (10,),
    }
    digits = param_shapes("digits")
    assert list(digits) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert digits["fc1.weight"][1] == 64 and digits["fc2.weight"][0] == 10


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_initial_weights_are_deterministic_by_seed(name: str) -> None:
    a, b, c = initial_weights(name, 7), initial_weights(name, 7), initial_weights(name, 8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a[key], c[key])
    a[next(iter(a))][...] = 0  # callers get their own arrays
    assert initial_weights(name, 7)[next(iter(a))].any()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_net_gives_logits(name: str) -> None:
    net = build_net(name)
    assert isinstance(net, torch.nn.Module)
    x = torch.zeros((3, *INPUT_SHAPES[name]))
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (3, NUM_CLASSES[name])
    # A fresh net carries initial_weights(name, 0), so it is deterministic too.
    for key, value in build_net(name).state_dict().items():
        np.testing.assert_array_equal(value.numpy(), initial_weights(name, 0)[key])


def test_unknown_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        initial_weights("resnet")
    with pytest.raises(ValueError, match="unknown model"):
        build_net("resnet")


def test_any_int_seed_works() -> None:
    from edge_gateway.models import dirichlet_partition, load_dataset

    big, negative = 2**63 + 5, -3
    for seed in (big, negative):
        initial_weights("xor", seed)
        load_dataset("xor", "test", seed)
        dirichlet_partition(np.arange(20) % 2, 4, 0.5, seed)
    assert not np.array_equal(initial_weights("xor", -3)["linear1.weight"], initial_weights("xor", 3)["linear1.weight"])
