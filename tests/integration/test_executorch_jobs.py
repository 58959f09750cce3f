"""Phone jobs: the server exports an ExecuTorch training program once, off the request path;
devices shaped like the iOS app train the served .pte for real and upload `et_tensor_diff`."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import aiohttp
import numpy as np
import pytest

from edge_gateway.launcher import Stack
from edge_gateway.models import initial_weights, load_dataset
from internal_link.messages import JobStatus
from tests.executorch_warnings import EXECUTORCH_WARNINGS

from .clients import AndroidDevice, IosDevice
from .helpers import UNSCREENED, submit_job, wait_for

pytest.importorskip("executorch")
pytestmark = [pytest.mark.filterwarnings(spec) for spec in EXECUTORCH_WARNINGS]


class TrainingIosDevice(IosDevice):
    """The iOS app with a real trainer: loads the served program and runs it on its own data."""

    def __init__(self, *args: Any, data: tuple[np.ndarray, np.ndarray], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data = data
        self.programs: list[bytes] = []
        self.diffs: list[dict[str, np.ndarray]] = []  # in the order of transcript.results

    def result_payload(self, task_data: dict[str, Any]) -> dict[str, Any]:
        from edge_gateway.models.executorch_runtime import train_program

        assert task_data["kind"] == "APP_DEFINED" and isinstance(task_data["data"], str)
        meta = task_data["meta"]
        assert (meta["model_buffer_type"], meta["model_buffer_native_format"], meta["model_buffer_encoding"]) == (
            "executorch",
            "binary",
            "base64",
        )
        program = base64.b64decode(task_data["data"])
        assert program[4:8] == b"ET12"
        self.programs.append(program)
        diff, _, _ = train_program(
            program, *self.data, epochs=meta["total_epochs"], lr=meta["learning_rate"], batch_size=meta["batch_size"]
        )
        self.diffs.append(diff)
        data = {
            name: {
                "sizes": list(arr.shape),
                "strides": [s // arr.itemsize for s in arr.strides],
                "data": arr.ravel().tolist(),
            }
            for name, arr in diff.items()
        }
        if self.platform == "android":  # kind "number", no strides (PROTOCOL.md §5)
            data = {name: {k: v for k, v in entry.items() if k != "strides"} for name, entry in data.items()}
        return {
            "kind": "et_tensor_diff" if self.platform == "ios" else "number",
            "data": data,
            "meta": {
                "epochs": meta["total_epochs"],
                "learning_rate": meta["learning_rate"],
                "batch_size": meta["batch_size"],
            },
        }


class TrainingAndroidDevice(TrainingIosDevice, AndroidDevice):
    """The Android app's headers, waits and cookie handling, training the same program."""


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "job,model,batch,client",
    [
        ("xor_et", "xor", 1, TrainingIosDevice),
        ("cifar10_et", "cifar10", 4, TrainingIosDevice),
        ("xor_et", "xor", 1, TrainingAndroidDevice),
    ],
)
async def test_phone_job_trained_on_served_programs(
    stack: Stack, http: aiohttp.ClientSession, job: str, model: str, batch: int, client: type[TrainingIosDevice]
) -> None:
    rounds, per_round = 3, 3
    job_id = await submit_job(
        stack.api_url,
        **UNSCREENED,
        name=job,
        model=model,
        runtime="executorch",
        rounds=rounds,
        devices_per_round=per_round,
        over_selection=0.0,
        retry_wait=1,
        epochs=2,
        lr=0.1,
        batch_size=batch,
        seed=1,
    )
    x, y = load_dataset(model, "train")
    devices = [client(http, stack.proxy_url, f"phone-{i}", job, data=(x[i:48:4], y[i:48:4])) for i in range(4)]
    deadline = asyncio.get_running_loop().time() + 180
    transcripts = await asyncio.gather(*(d.run(max_tasks=rounds, deadline=deadline) for d in devices))

    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=30)
    assert status["refused"] == 0 and [h["results"] for h in status["history"]] == [per_round] * rounds
    assert all(t.count("task", "ERROR") == 0 for t in transcripts)
    assert any(t.count("task", "RETRY") for t in transcripts)  # "Model not ready" while the export ran
    assert len({p for d in devices for p in d.programs}) >= rounds  # each version served as its own program
    # The global model moved exactly by the mean of the diffs the server counted (iOS reports no
    # sample count, so each weighs 1), version after version.
    counted = [
        diff
        for d in devices
        for diff, answer in zip(d.diffs, d.transcript.results)
        if answer["status"] == "OK" and "message" not in answer
    ]
    assert len(counted) == rounds * per_round
    expected = {k: v.astype(np.float64) for k, v in initial_weights(model, 1).items()}
    for diff in counted:
        for name in expected:
            expected[name] += diff["net." + name].astype(np.float64) / per_round
    async with http.get(f"{stack.api_url}/api/jobs/{job_id}/model") as reply:
        with np.load(io.BytesIO(await reply.read()), allow_pickle=False) as npz:
            for name, value in expected.items():
                np.testing.assert_allclose(npz[name], value, atol=1e-5)
