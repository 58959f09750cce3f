"""Recommended demo settings and an in-process FedAvg reference run.

`simulate_fedavg` is what the distributed system should reproduce: each round a seeded sample of
devices trains locally from the global weights and uploads new − old; the server applies
W ← W + Σ wᵢΔᵢ / Σ wᵢ with wᵢ = num_samples (server learning rate 1), then evaluates on the
test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._seeding import rng_for
from .datasets import load_dataset
from .partition import dirichlet_partition
from .specs import initial_weights
from .training import evaluate, train_local


@dataclass(frozen=True)
class DigitsDemo:
    """Recommended digits demo: 100 devices, Dirichlet α = 0.5, 20 FedAvg rounds.

    Tuned with `simulate_fedavg` (64→128→10 ReLU MLP, ~14 samples per device). Test accuracy
    after round 20, seeds 0-11, all 100 devices per round (median .953):
    .953 .955 .916 .947 .955 .947 .953 .972 .958 .942 .933 .958; with 50 of 100 per round
    (median .950): .950 .950 .911 .950 .961 .944 .950 .969 .953 .947 .939 .953. 0.93 is first
    reached at round 6-13 (16 for seed 10). Seed 2 stays near 0.92 whatever the settings
    (width 64-1024, lr 0.2-1.0, batch 2-16, 2-20 epochs, other inits): its test split is the
    hard one (the same MLP trained centrally reaches only ~0.955 on it vs ~0.965). The
    settings sit mid-plateau: lr 0.3-0.7, 5-20 epochs, batch 4-8 all end within ~0.005 on
    average; lr 1.0 is unstable.
    Each device does 10 epochs × ⌈n/8⌉ steps, ~1 ms of numpy. The whole local stack
    (`python -m edge_gateway local --demo`, 2 leaves) ended at 0.944, >= 0.93 from round 11,
    before robust aggregation; with its defaults (median clipping, adaptive weight cap; this
    reference run has neither) it ended at 0.933, >= 0.93 from round 16 (2026-12-07).
    """

    devices: int = 100
    alpha: float = 0.5
    rounds: int = 20
    devices_per_round: int = 100
    epochs: int = 10
    lr: float = 0.5
    batch_size: int = 8
    seed: int = 0

    def simulate(self) -> list[float]:
        """Accuracy after each round of the in-process reference run with these settings."""
        return simulate_fedavg(
            "digits",
            self.devices,
            self.alpha,
            self.rounds,
            self.devices_per_round,
            self.epochs,
            self.lr,
            self.batch_size,
            self.seed,
        )


def training_defaults(model: str) -> dict[str, Any]:
    """Local training settings that learn on `model`, for jobs that set none of their own.

    Digits gets the demo's (JobSpec's generic epochs=1, lr=0.01 reach ~0.30 in 15 rounds where
    these reach ~0.95). The other models have no tuned settings yet: JobSpec's defaults stand.
    """
    if model == "digits":
        demo = DigitsDemo()
        return {"epochs": demo.epochs, "lr": demo.lr, "batch_size": demo.batch_size}
    return {}


def simulate_fedavg(
    name: str,
    num_devices: int,
    alpha: float,
    rounds: int,
    devices_per_round: int,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> list[float]:
    """Run FedAvg in-process over a Dirichlet(alpha) split; return test accuracy after each round.

    The data split, the initial weights, the devices sampled each round and every device's batch
    order all derive from `seed`, so the run is deterministic. Sequential on purpose: it is a
    reference, and small models train fastest on one thread. Digits: 20 rounds × 100 devices
    with `DigitsDemo` settings take ~2-3 s.
    """
    if not 1 <= devices_per_round <= num_devices:
        raise ValueError(f"devices_per_round must be in 1..{num_devices}, got {devices_per_round}")
    x_train, y_train = load_dataset(name, "train", seed)
    x_test, y_test = load_dataset(name, "test", seed)
    shards = dirichlet_partition(y_train, num_devices, alpha, seed)
    weights = initial_weights(name, seed)
    rng = rng_for(seed, 0xFEDA)

    history: list[float] = []
    for rnd in range(rounds):
        chosen = np.sort(rng.choice(num_devices, size=devices_per_round, replace=False))
        sums = {key: np.zeros(w.shape, dtype=np.float64) for key, w in weights.items()}
        total = 0.0
        for dev in chosen:
            idx = shards[dev]
            delta, n, _ = train_local(
                name,
                weights,
                x_train[idx],
                y_train[idx],
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=int(rng_for(seed, rnd, int(dev)).integers(2**63)),  # own shuffle per device and round
            )
            for key, d in delta.items():
                sums[key] += n * d.astype(np.float64)
            total += n
        weights = {key: (w + sums[key] / total).astype(np.float32) for key, w in weights.items()}
        history.append(evaluate(name, weights, x_test, y_test)[0])
    return history
