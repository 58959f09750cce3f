"""The executorch trainer: a simulated phone that trains the task's .pte and uploads what iOS uploads."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest

pytest.importorskip("executorch")

from edge_gateway import models
from edge_gateway.models.executorch_program import export_training_program
from edge_gateway.simulator import wire
from edge_gateway.simulator.runner import SimulationConfig, run_simulation
from edge_gateway.simulator.trainers import ExecutorchTrainer, ShardedData
from tests.executorch_warnings import EXECUTORCH_WARNINGS

from .conftest import StartFeg
from .fake_feg import JOB_NAME

pytestmark = [pytest.mark.filterwarnings(spec) for spec in EXECUTORCH_WARNINGS]

BATCH = 4
WEIGHTS = models.initial_weights("xor", 0)
META = {
    "model_buffer_type": "executorch",
    "model_buffer_native_format": "binary",
    "model_buffer_encoding": "base64",
    "batch_size": BATCH,
    "learning_rate": 0.1,
    "total_epochs": 2,
    "model": "xor",
}


@pytest.fixture(scope="module")
def xor_program() -> bytes:
    return export_training_program("xor", WEIGHTS, batch_size=BATCH)


def program_task(program: bytes, **meta: Any) -> dict[str, Any]:
    """APP_DEFINED task data as the gateway sends it to phones (PROTOCOL.md §4)."""
    return {
        "kind": "APP_DEFINED",
        "data": base64.b64encode(program).decode("ascii"),
        "meta": {**META, "model_version": 1, **meta},
    }


async def train(task_data: dict[str, Any], *, index: int = 1) -> tuple[dict[str, np.ndarray], int]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        shards = ShardedData(num_devices=4, alpha=0.5, seed=3, pool=pool)
        return await ExecutorchTrainer(shards, index=index, seed=3, pool=pool).train(task_data)


def shard(index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    x, y = models.load_dataset("xor", "train", seed=3)
    part = models.dirichlet_partition(y, 4, 0.5, seed=3)[index]
    return x[part], y[part]


async def test_the_diff_is_named_like_the_program_and_lowers_the_shard_loss(xor_program: bytes) -> None:
    diff, n = await train(program_task(xor_program))

    x, y = shard()
    assert n == len(x)
    assert {k: v.shape for k, v in diff.items()} == {f"net.{k}": v.shape for k, v in WEIGHTS.items()}
    for arr in diff.values():
        assert arr.dtype == np.float32 and np.isfinite(arr).all() and np.abs(arr).max() > 0
    trained = {k: WEIGHTS[k] + diff[f"net.{k}"] for k in WEIGHTS}
    _, before = models.evaluate("xor", WEIGHTS, x, y)
    _, after = models.evaluate("xor", trained, x, y)
    assert after < before


async def test_the_result_is_the_ios_upload_in_json_whatever_the_codec(xor_program: bytes, codec: str) -> None:
    diff, n = await train(program_task(xor_program, total_epochs=1, learning_rate=0.05))
    content_type, body = wire.result_body(codec, diff, n, {"model_version": 1})

    assert content_type == "application/json"
    payload = orjson.loads(body)
    assert payload["cookie"] == {"model_version": 1}
    result = payload["result"]
    assert set(result) == {"kind", "data", "meta"} and result["kind"] == "et_tensor_diff"
    assert result["meta"] == {"epochs": 1, "learning_rate": 0.05, "batch_size": BATCH, "num_samples": n}
    for name, entry in result["data"].items():
        arr = diff[name]
        assert entry == {"sizes": list(arr.shape), "strides": [s // 4 for s in arr.strides], "data": entry["data"]}
        assert all(type(v) is float for v in entry["data"])
        np.testing.assert_array_equal(np.array(entry["data"], dtype=np.float32), arr.ravel())


async def test_a_task_it_cannot_train_on_is_refused(xor_program: bytes) -> None:
    weights_task = {
        "kind": "WEIGHTS",
        "data": {k: v.tolist() for k, v in WEIGHTS.items()},
        "meta": {"model": "xor", "model_version": 1},
    }
    for bad in (
        weights_task,
        program_task(xor_program[:4] + b"XXXX" + xor_program[8:]),
        {**program_task(xor_program), "meta": {k: v for k, v in META.items() if k != "model"}},
    ):
        with pytest.raises(wire.TaskDataError):
            await train(bad)


async def test_phones_in_a_run_upload_json_et_tensor_diffs(start_feg: StartFeg, xor_program: bytes) -> None:
    feg, url = await start_feg(
        tasks_per_device=1, retry_first_task=False, program=xor_program, weights=WEIGHTS, meta=META
    )
    config = SimulationConfig(
        url=url,
        job=JOB_NAME,
        devices=2,
        trainer="executorch",
        codec="msgpack",
        alpha=0.5,
        seed=3,
        stagger=0.0,
        device_prefix="phone",
    )
    report = await run_simulation(config)

    assert feg.problems == []  # the server checked each diff against the xor shapes
    assert (report.results_accepted, report.training_errors) == (2, 0)
    assert all("msgpack" not in accept for accept in feg.accepts)  # phones speak JSON only
    _, y = models.load_dataset("xor", "train", seed=3)
    sizes = [len(part) for part in models.dirichlet_partition(y, 2, 0.5, seed=3)]
    assert sorted((r.device_id, r.weight) for r in feg.results) == [("phone-0", sizes[0]), ("phone-1", sizes[1])]
    for result in feg.results:
        assert result.content_type == "application/json"
        assert orjson.loads(result.body)["result"]["kind"] == "et_tensor_diff"


async def test_weights_tasks_are_reported_as_ios_error_results(start_feg: StartFeg) -> None:
    feg, url = await start_feg(
        tasks_per_device=1,
        retry_first_task=False,
        weights=WEIGHTS,
        meta=META,
        scripts={"result": lambda d, n: {"status": "ERROR", "message": "training error"}},
    )
    report = await run_simulation(
        url=url, job=JOB_NAME, devices=1, trainer="executorch", codec="msgpack", stagger=0.0, device_prefix="phone"
    )

    assert (report.training_errors, report.results_refused, report.results_accepted) == (1, 1, 0)
    assert len(feg.problems) == 1 and "device reported a training error" in feg.problems[0]
    assert "APP_DEFINED" in feg.problems[0]
