"""The job API and the proxy's /health report their versions and hands out the final model: `.npz` for every job, the
training program `.pte` (with the same weights) for phone jobs."""

from __future__ import annotations

import io

import aiohttp
import numpy as np
import pytest

from device_protocol import PROTOCOL_VERSION
from edge_gateway.launcher import Stack
from internal_link.versions import package_version
from tests.executorch_warnings import EXECUTORCH_WARNINGS

from .helpers import submit_job

pytestmark = [pytest.mark.filterwarnings(spec) for spec in EXECUTORCH_WARNINGS]


async def test_versions_in_health_and_version(stack: Stack, http: aiohttp.ClientSession) -> None:
    for path in ("/api/version", "/api/health"):
        async with http.get(f"{stack.api_url}{path}") as reply:
            body = await reply.json()
        assert reply.status == 200 and body["edgefl"] == package_version() and body["protocol"] == PROTOCOL_VERSION
    assert package_version() != "unknown"  # the tests run an installed edgefl
    async with http.get(f"{stack.proxy_url}/health") as reply:  # what devices can see
        body = await reply.json()
    assert body["edgefl"] == package_version() and body["protocol"] == PROTOCOL_VERSION


async def test_a_pytorch_job_has_no_program(stack: Stack, http: aiohttp.ClientSession) -> None:
    job_id = await submit_job(stack.api_url, name="plain", model="xor")
    async with http.get(f"{stack.api_url}/api/jobs/{job_id}/model.pte") as reply:
        body = await reply.json()
    assert reply.status == 404 and "no .pte" in body["message"]
    async with http.get(f"{stack.api_url}/api/jobs/no-such-job/model.pte") as reply:
        assert reply.status == 404


@pytest.mark.timeout(180)
async def test_a_phone_job_program_downloads_with_the_models_weights(stack: Stack, http: aiohttp.ClientSession) -> None:
    pytest.importorskip("executorch")
    from edge_gateway.models.executorch_program import read_weights

    job_id = await submit_job(stack.api_url, name="xor_et", model="xor", runtime="executorch", batch_size=1)
    async with http.get(f"{stack.api_url}/api/jobs/{job_id}/model.pte", timeout=aiohttp.ClientTimeout(150)) as reply:
        program = await reply.read()
        assert reply.status == 200, program[:500]
        assert reply.headers["X-Model-Version"] == "0"
        assert reply.headers["Content-Disposition"].endswith(f'"{job_id}-v0.pte"')
    assert program[4:8] == b"ET12"
    async with http.get(f"{stack.api_url}/api/jobs/{job_id}/model") as reply:
        with np.load(io.BytesIO(await reply.read()), allow_pickle=False) as npz:
            npz_weights = {name: npz[name] for name in npz.files}
    in_program = read_weights(program)
    assert in_program.keys() == npz_weights.keys()
    for name, value in npz_weights.items():
        np.testing.assert_array_equal(in_program[name], value)
