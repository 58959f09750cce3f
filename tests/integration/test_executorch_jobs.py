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
from edge_gateway.models import evaluate, initial_weights, load_dataset

from tests.executorch_warnings import EXECUTORCH_WARNINGS
from .clients import IosDevice
from .helpers import submit_job, wait_for

pytest.importorskip("executorch")
pytestmark = [pytest.mark.filterwarnings(spec) for spec in EXECUTORCH_WARNINGS]


class TrainingIosDevice(IosDevice):
    """The iOS app with a real trainer: loads the served program and runs it on its own data."""

    def __init__(self, *args: Any, data: tuple[np.ndarray, np.ndarray], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data = data
        self.programs: list[bytes] = []

    def result_payload(self, task_data: dict[str, Any]) -> dict[str, Any]:
        from edge_gateway.models.executorch_runtime import train_program

        assert task_data["kind"] == "APP_DEFINED" and isinstance(task_data["data"], str)
        meta = task_data["meta"]
        assert (meta["model_buffer_type"], meta["model_buffer_native_format"], meta["model_buffer_encoding"]) == \
            ("executorch", "binary", "base64")
        program = base64.b64decode(task_data["data"])
        assert program[4:8] == b"ET12"
        self.programs.append(program)
        diff, _, _ = train_program(program, *self.data, epochs=meta["total_epochs"], lr=meta["learning_rate"],
                                   batch_size=meta["batch_size"])
        data = {name: {"sizes": list(arr.shape), "strides": [s // arr.itemsize for s in arr.strides],
                       "data": arr.ravel().tolist()} for name, arr in diff.items()}
        return {"kind": "et_tensor_diff", "data": data,
                "meta": {"epochs": meta["total_epochs"], "learning_rate": meta["learning_rate"],
                         "batch_size": meta["batch_size"]}}


@pytest.mark.timeout(240)
async def test_xor_et_trained_on_served_programs(stack: Stack, http: aiohttp.ClientSession) -> None:
    rounds, per_round = 3, 3
    job_id = await submit_job(stack.api_url, name="xor_et", model="xor", runtime="executorch", rounds=rounds,
                              devices_per_round=per_round, over_selection=0.0, retry_wait=1, epochs=5, lr=0.5,
                              batch_size=1, seed=1)
    x, y = load_dataset("xor", "train")
    devices = [TrainingIosDevice(http, stack.proxy_url, f"iphone-{i}", "xor_et", data=(x[i::4], y[i::4]))
               for i in range(4)]
    deadline = asyncio.get_running_loop().time() + 180
    transcripts = await asyncio.gather(*(d.run(max_tasks=rounds, deadline=deadline) for d in devices))

    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == "done" and "accuracy" in s["history"][-1],
                            timeout=30)
    assert status["refused"] == 0 and [h["results"] for h in status["history"]] == [per_round] * rounds
    assert all(t.count("task", "ERROR") == 0 for t in transcripts)
    assert any(t.count("task", "RETRY") for t in transcripts)  # "Model not ready" while the export ran
    # Every version was served as its own program, with that version's weights in it.
    programs = {p for d in devices for p in d.programs}
    assert len(programs) >= rounds
    # The global model moved the way the devices' diffs pointed: the loss went down.
    async with http.get(f"{stack.api_url}/api/jobs/{job_id}/model") as reply:
        with np.load(io.BytesIO(await reply.read()), allow_pickle=False) as npz:
            final = {k: npz[k] for k in npz.files}
    x_test, y_test = load_dataset("xor", "test")
    _, loss_before = evaluate("xor", initial_weights("xor", 1), x_test, y_test)
    _, loss_after = evaluate("xor", final, x_test, y_test)
    assert loss_after < loss_before
