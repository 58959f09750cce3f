"""Bundled models for the edge gateway: torch nets, data sets, non-IID splits, local training.

Importing this package does not import torch (nor scikit-learn): processes such as the routing
proxy may import it. Torch loads on the first call that needs it: `build_net`, and
`train_local` / `evaluate` / `simulate_fedavg` for cifar10. The MLPs (xor, digits) train and
evaluate in numpy (`fast_mlp.py`, checked against their torch modules), and `initial_weights`,
`load_dataset` and `dirichlet_partition` are numpy only (digits loads scikit-learn's bundled
data set on first use).

Modules: `specs` (parameter layouts, initial weights), `_torch_nets` (the nn.Modules), `nets`
(building nets, loading weights, one net per thread), `datasets`, `partition` (Dirichlet
split), `training` (train_local, evaluate), `fast_mlp` (numpy MLP path), `demo` (DigitsDemo,
simulate_fedavg).
"""

from __future__ import annotations

from .datasets import load_dataset
from .demo import DigitsDemo, simulate_fedavg
from .nets import build_net
from .partition import dirichlet_partition
from .specs import MODEL_NAMES, initial_weights, param_shapes
from .training import evaluate, train_local

__all__ = [
    "MODEL_NAMES",
    "DigitsDemo",
    "build_net",
    "dirichlet_partition",
    "evaluate",
    "initial_weights",
    "load_dataset",
    "param_shapes",
    "simulate_fedavg",
    "train_local",
]
