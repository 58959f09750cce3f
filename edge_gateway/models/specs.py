"""Parameter layouts of the bundled models and their seeded initial weights, in pure numpy.

The layouts here are the single source of truth for names, shapes and order; `_torch_nets.py`
builds modules with exactly these parameters (a test checks it). Keeping this file torch-free lets
a server or leaf produce initial weights and check shapes without importing torch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._seeding import rng_for

MODEL_NAMES: tuple[str, ...] = ("xor", "digits", "cifar10", "cifar10_wide")

# Widths of the digits MLP (64 → DIGITS_HIDDEN → 10); chosen by the FedAvg tuning in demo.py.
DIGITS_HIDDEN = 128


class ParamSpec(NamedTuple):
    name: str
    shape: tuple[int, ...]
    fan_in: int  # inputs feeding one output unit; sets the init range


def _linear(prefix: str, n_in: int, n_out: int) -> list[ParamSpec]:
    return [ParamSpec(f"{prefix}.weight", (n_out, n_in), n_in), ParamSpec(f"{prefix}.bias", (n_out,), n_in)]


def _conv(prefix: str, c_in: int, c_out: int, k: int) -> list[ParamSpec]:
    fan_in = c_in * k * k
    return [ParamSpec(f"{prefix}.weight", (c_out, c_in, k, k), fan_in), ParamSpec(f"{prefix}.bias", (c_out,), fan_in)]


# Names follow NVFlare's edge example nets (XorNet: linear1/linear2; Cifar10ConvNet:
# conv1, conv2, fc1..fc3) so that device-side exports of those nets line up with ours.
PARAM_SPECS: dict[str, tuple[ParamSpec, ...]] = {
    "xor": tuple(_linear("linear1", 2, 10) + _linear("linear2", 10, 2)),
    "digits": tuple(_linear("fc1", 64, DIGITS_HIDDEN) + _linear("fc2", DIGITS_HIDDEN, 10)),
    "cifar10": tuple(
        _conv("conv1", 3, 6, 5)
        + _conv("conv2", 6, 16, 5)
        + _linear("fc1", 16 * 5 * 5, 120)
        + _linear("fc2", 120, 84)
        + _linear("fc3", 84, 10)
    ),
    # The same task with 1,571,130 parameters (6.3 MB of float32): the size of the programs phones
    # download, for the transfer tests and benchmarks over shaped links (and a stronger CNN).
    "cifar10_wide": tuple(
        _conv("conv1", 3, 32, 5)
        + _conv("conv2", 32, 64, 5)
        + _linear("fc1", 64 * 5 * 5, 900)
        + _linear("fc2", 900, 84)
        + _linear("fc3", 84, 10)
    ),
}


def param_specs(name: str) -> tuple[ParamSpec, ...]:
    """The ordered parameter layout of model `name` (as in its torch state_dict)."""
    try:
        return PARAM_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}") from None


def param_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} in state_dict order."""
    return {spec.name: spec.shape for spec in param_specs(name)}


def initial_weights(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded initial weights of model `name`: float32, C-contiguous, state_dict order and names.

    Every tensor is drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the same distribution torch's
    default Linear/Conv2d initialisation uses, but from numpy's PCG64 so that it is deterministic,
    thread-safe (no global RNG) and needs no torch. Same (name, seed) → bit-identical arrays.
    """
    specs = param_specs(name)
    rng = rng_for(seed, 0x5EED)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        bound = 1.0 / math.sqrt(spec.fan_in)
        out[spec.name] = np.ascontiguousarray(rng.uniform(-bound, bound, size=spec.shape), dtype=np.float32)
    return out
