"""Trainers: synthetic diffs without torch; PyTorch SGD that learns on the device's own shard."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from device_protocol.tensors import tensors_to_binary
from edge_gateway import models
from edge_gateway.simulator.trainers import PytorchTrainer, ShardedData, SyntheticTrainer


async def test_synthetic_diffs_have_the_task_shapes_and_are_never_zero() -> None:
    trainer = SyntheticTrainer(np.random.default_rng(0))
    task = {"kind": "WEIGHTS", "data": {"w": [[0.0] * 5] * 4, "b": [0.0] * 5}, "meta": {}}
    for _ in range(20):
        diff, n = await trainer.train(task)
        assert {k: v.shape for k, v in diff.items()} == {"w": (4, 5), "b": (5,)}
        assert all(
            v.dtype == np.float32 and np.all(np.abs(v) >= 1e-4) and np.all(np.abs(v) <= 1e-3) for v in diff.values()
        )
        assert 1 <= n <= 100


def test_a_synthetic_run_never_imports_torch() -> None:
    code = (
        "import asyncio, sys\n"
        "from edge_gateway.simulator.runner import SimulationConfig, run_simulation\n"
        "config = SimulationConfig(url='http://127.0.0.1:9', job='j', devices=2, duration=0.3, stagger=0,\n"
        "                          backoff_min=0.05, backoff_max=0.1)\n"
        "report = asyncio.run(run_simulation(config))\n"
        "assert report.transport_errors >= 2, report\n"
        "# Nor does making executorch trainers, or refusing a task they cannot train on.\n"
        "from edge_gateway.simulator.trainers import make_trainers\n"
        "from edge_gateway.simulator.wire import TaskDataError\n"
        "trainer = make_trainers('executorch', 2, alpha=0.5, seed=0, pool=None)[1]\n"
        "try:\n"
        "    asyncio.run(trainer.train({'kind': 'WEIGHTS', 'data': {'w': [1.0]}, 'meta': {'model': 'xor'}}))\n"
        "except TaskDataError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('a WEIGHTS task was not refused')\n"
        "assert 'torch' not in sys.modules and 'executorch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_pytorch_diff_lowers_the_loss_on_the_device_shard(codec: str) -> None:
    weights = models.initial_weights("digits", seed=1)
    data = tensors_to_binary(weights) if codec == "msgpack" else {k: v.tolist() for k, v in weights.items()}
    task = {
        "kind": "WEIGHTS",
        "data": data,
        "meta": {"model": "digits", "epochs": 2, "lr": 0.1, "batch_size": 16, "model_version": 1},
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        shards = ShardedData(num_devices=4, alpha=0.5, seed=3, pool=pool)
        diff, n = await PytorchTrainer(shards, index=2, seed=3, pool=pool).train(task)

    x, y = models.load_dataset("digits", "train", seed=3)
    part = models.dirichlet_partition(y, 4, 0.5, seed=3)[2]
    assert n == len(part)
    assert {k: v.shape for k, v in diff.items()} == {k: v.shape for k, v in weights.items()}
    trained = {k: weights[k] + diff[k] for k in weights}
    _, before = models.evaluate("digits", weights, x[part], y[part])
    _, after = models.evaluate("digits", trained, x[part], y[part])
    assert after < before


async def test_compute_time_leaves_out_the_wait_for_a_worker_and_the_data_load() -> None:
    # A slow device's extra time is a multiple of `compute_s`: the queue for the 2-core pool and the
    # first task's data load must not be multiplied with it (they made 10× devices wait ~40 s).
    weights = models.initial_weights("digits", seed=1)
    task = {"kind": "WEIGHTS", "data": tensors_to_binary(weights), "meta": {"model": "digits", "epochs": 1}}
    with ThreadPoolExecutor(max_workers=1) as pool:
        shards = ShardedData(num_devices=4, alpha=0.5, seed=3, pool=pool)
        trainer = PytorchTrainer(shards, index=2, seed=3, pool=pool)
        pool.submit(time.sleep, 2.0)  # the only worker is busy: this task queues behind it
        started = time.perf_counter()
        await trainer.train(task)
        took = time.perf_counter() - started
    assert took >= 2.0
    assert 0.0 < trainer.compute_s < 1.0
