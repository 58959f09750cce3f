"""Building nets, and one reusable net per (thread, model) for training and evaluation.

Torch-free at import time: torch is loaded by the first call that needs a net.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .specs import initial_weights, param_specs

if TYPE_CHECKING:
    import torch


def build_net(name: str) -> torch.nn.Module:
    """A fresh torch module for model `name`; `forward(x)` returns logits.

    Parameters carry `initial_weights(name, 0)`, so a built net is deterministic too.
    """
    param_specs(name)  # raises ValueError for an unknown name before torch is loaded
    from ._torch_nets import NET_CLASSES

    net = NET_CLASSES[name]()
    load_weights(net, name, initial_weights(name, 0))
    return net


def check_weights(name: str, weights: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless `weights` has exactly model `name`'s parameter names and shapes."""
    specs = param_specs(name)
    expected = {s.name for s in specs}
    if len(weights) != len(specs) or not expected.issuperset(weights):
        extra = sorted(set(weights) - expected)
        missing = sorted(expected - set(weights))
        raise ValueError(f"weights for {name!r} do not match: missing {missing}, unexpected {extra}")
    for spec in specs:
        if tuple(np.shape(weights[spec.name])) != spec.shape:
            raise ValueError(f"{name}.{spec.name}: shape {np.shape(weights[spec.name])} != {spec.shape}")


def load_weights(net: torch.nn.Module, name: str, weights: Mapping[str, np.ndarray]) -> None:
    """Copy `weights` into `net`'s parameters in place, checking names and shapes strictly."""
    check_weights(name, weights)
    params = dict(net.named_parameters())
    for spec in param_specs(name):
        value = weights[spec.name]
        # Write through numpy views of the parameters: no torch.from_numpy on the caller's array,
        # which may be read-only (e.g. decoded from a msgpack buffer) and would make torch warn.
        np.copyto(params[spec.name].detach().numpy(), value, casting="same_kind")


_local = threading.local()


def thread_net(name: str) -> torch.nn.Module:
    """This thread's cached net for `name`: built once, then reused by loading weights into it.

    One instance per thread makes concurrent train/evaluate calls from worker threads safe
    without locks, and saves the ~100 µs-1 ms of module construction per call.
    """
    nets: dict[str, torch.nn.Module] | None = getattr(_local, "nets", None)
    if nets is None:
        nets = _local.nets = {}
    net = nets.get(name)
    if net is None:
        net = nets[name] = build_net(name)
    return net
