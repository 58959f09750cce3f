"""What a simulated device does with a task: real SGD on its own shard, or random diffs.

`PytorchTrainer` trains the task's weights with torch; `ExecutorchTrainer` trains the task's
ExecuTorch program as the iOS app does. Only they touch torch/executorch, inside worker threads,
so a synthetic run never imports either.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Literal, Protocol

import numpy as np

from .wire import EtTensorDiff, TaskDataError, decode_program, program_task, task_meta, task_shapes, task_weights

TrainerKind = Literal["pytorch", "synthetic", "executorch"]
TRAINERS: tuple[str, ...] = ("pytorch", "synthetic", "executorch")

Diff = dict[str, np.ndarray]


class Trainer(Protocol):
    @property
    def compute_s(self) -> float:
        """Seconds the last `train` spent computing. A slow device's extra time is a multiple of
        this, so the one-time data load and the wait for a free worker thread must not be in it."""
        ...

    async def train(self, task_data: Mapping[str, Any]) -> tuple[Diff, int]:
        """(float32 diff per parameter, number of samples) for one task; raises on bad task data."""
        ...


def training_wait(compute_s: float, train_seconds: float, slowdown: float) -> float:
    """Seconds a device waits after computing: its training takes max(compute, `train_seconds`)
    times `slowdown`. A phone trains for seconds where the simulated digits task computes in ~2 ms,
    so without a floor a 10× device would still be done long before a round's own latency."""
    return max(0.0, slowdown * max(compute_s, train_seconds) - compute_s)


class SyntheticTrainer:
    """Random small diffs of the task's shapes, for load: no torch, almost no CPU."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.compute_s = 0.0

    async def train(self, task_data: Mapping[str, Any]) -> tuple[Diff, int]:
        started = time.perf_counter()
        diff: Diff = {}
        for name, shape in task_shapes(task_data).items():
            # Magnitudes bounded away from zero: the gateway refuses all-zero diffs.
            magnitude = self._rng.uniform(1e-4, 1e-3, shape).astype(np.float32)
            diff[name] = np.where(self._rng.random(shape) < 0.5, -magnitude, magnitude)
        self.compute_s = time.perf_counter() - started
        return diff, int(self._rng.integers(1, 101))


class ShardedData:
    """The training split of each model, loaded once and split over all devices (Dirichlet)."""

    def __init__(self, num_devices: int, alpha: float, seed: int, pool: Executor) -> None:
        self._num_devices = num_devices
        self._alpha = alpha
        self._seed = seed
        self._pool = pool
        self._loaded: dict[str, tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = {}
        self._lock = asyncio.Lock()  # the first task of many devices must load the data only once

    async def shard(self, model: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of device `index`'s share of `model`'s training split."""
        if model not in self._loaded:
            async with self._lock:
                if model not in self._loaded:
                    loop = asyncio.get_running_loop()
                    self._loaded[model] = await loop.run_in_executor(self._pool, self._load, model)
        x, y, parts = self._loaded[model]
        return x[parts[index]], y[parts[index]]

    def _load(self, model: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        from edge_gateway.models import dirichlet_partition, load_dataset

        x, y = load_dataset(model, "train", seed=self._seed)
        return x, y, dirichlet_partition(y, self._num_devices, self._alpha, seed=self._seed)


class PytorchTrainer:
    """Real local SGD (`edge_gateway.models.train_local`) on device `index`'s shard, off the loop."""

    def __init__(self, data: ShardedData, index: int, seed: int, pool: Executor) -> None:
        self._data = data
        self._index = index
        self._seed = seed
        self._pool = pool
        self.compute_s = 0.0

    async def train(self, task_data: Mapping[str, Any]) -> tuple[Diff, int]:
        meta = task_meta(task_data)
        model = meta.get("model")
        if not isinstance(model, str):
            raise TaskDataError("task meta names no model")
        x, y = await self._data.shard(model, self._index)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._train, model, meta, task_data, x, y)

    def _train(
        self, model: str, meta: dict[str, Any], task_data: Mapping[str, Any], x: np.ndarray, y: np.ndarray
    ) -> tuple[Diff, int]:
        from edge_gateway.models import train_local

        started = time.perf_counter()  # in the worker: the import above and the queue left out
        weights = task_weights(task_data)  # decoded here: a large model's lists are slow to parse
        diff, num_samples, _ = train_local(
            model,
            weights,
            x,
            y,
            epochs=int(meta.get("epochs", meta.get("total_epochs", 1))),
            lr=float(meta.get("lr", meta.get("learning_rate", 0.01))),
            batch_size=int(meta.get("batch_size", 4)),
            seed=_shuffle_seed(self._seed, self._index, meta),
        )
        self.compute_s = time.perf_counter() - started
        return diff, num_samples


class ExecutorchTrainer:
    """A phone: trains the APP_DEFINED task's .pte in ExecuTorch on device `index`'s shard, off the loop.

    Same shards as `PytorchTrainer`; the diff keeps the program's `net.` names and the task's
    hyper-parameters, so `wire.result_body` posts exactly the iOS app's `et_tensor_diff` JSON.
    """

    def __init__(self, data: ShardedData, index: int, seed: int, pool: Executor) -> None:
        self._data = data
        self._index = index
        self._seed = seed
        self._pool = pool
        self.compute_s = 0.0

    async def train(self, task_data: Mapping[str, Any]) -> tuple[Diff, int]:
        text, meta = program_task(task_data)
        model = meta.get("model")
        if not isinstance(model, str):
            raise TaskDataError("task meta names no model")
        epochs, lr, batch_size = _program_hyper_parameters(meta)
        x, y = await self._data.shard(model, self._index)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._train, text, meta, epochs, lr, batch_size, x, y)

    def _train(
        self, text: str, meta: dict[str, Any], epochs: int, lr: float, batch_size: int, x: np.ndarray, y: np.ndarray
    ) -> tuple[Diff, int]:
        from edge_gateway.models.executorch_runtime import train_program

        started = time.perf_counter()  # in the worker: the import above and the queue left out
        # `program` stays referenced until train_program returns: the runtime reads it in place.
        program = decode_program(text)
        diff, num_samples, _ = train_program(
            program,
            x,
            y,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=_shuffle_seed(self._seed, self._index, meta),
        )
        self.compute_s = time.perf_counter() - started
        return EtTensorDiff(diff, {"epochs": epochs, "learning_rate": lr, "batch_size": batch_size}), num_samples


def make_pool(kind: TrainerKind) -> ThreadPoolExecutor:
    """The run's worker threads (one per core) for training and for encoding large bodies."""
    initializer = _one_torch_thread if kind in ("pytorch", "executorch") else None
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="sim-worker", initializer=initializer)


def make_trainers(kind: TrainerKind, num_devices: int, *, alpha: float, seed: int, pool: Executor) -> list[Trainer]:
    """One trainer per device; PyTorch and ExecuTorch trainers share one `ShardedData`."""
    if kind == "synthetic":
        return [SyntheticTrainer(np.random.default_rng([seed, i])) for i in range(num_devices)]
    data = ShardedData(num_devices, alpha, seed, pool)
    trainer = ExecutorchTrainer if kind == "executorch" else PytorchTrainer
    return [trainer(data, i, seed, pool) for i in range(num_devices)]


def _shuffle_seed(seed: int, index: int, meta: Mapping[str, Any]) -> int:
    """A fresh but reproducible shuffle per device and model version."""
    return int(np.random.SeedSequence([seed, index, int(meta.get("model_version", 0))]).generate_state(1)[0])


def _program_hyper_parameters(meta: Mapping[str, Any]) -> tuple[int, float, int]:
    """(epochs, learning rate, batch size) as the iOS app reads them from the task meta."""
    epochs = meta.get("total_epochs", meta.get("epochs", 1))
    lr = meta.get("learning_rate", meta.get("lr", 0.01))
    batch_size = meta.get("batch_size", 4)
    if type(epochs) is not int or type(batch_size) is not int or type(lr) not in (int, float):
        raise TaskDataError(
            f"bad hyper-parameters in task meta: epochs={epochs!r}, lr={lr!r}, batch_size={batch_size!r}"
        )
    return epochs, float(lr), batch_size


def _one_torch_thread() -> None:
    # The pool already runs one training per core; torch's own intra-op threads would oversubscribe.
    import torch

    torch.set_num_threads(1)
