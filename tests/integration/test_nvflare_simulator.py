"""NVFlare's own Python device simulator (nvflare 2.9.0), pointed at our proxy, completes a job.

It announces its devices as `<uuid>?N`, polls /selection, asks /task only for devices listed there,
and stops only on NO_JOB (docs/NVFLARE_SIMULATOR.md). The processor in nvflare_processor.py answers
our WEIGHTS task with a fixed step, so the test checks the protocol, not learning.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from edge_gateway.launcher import Stack
from internal_link.messages import JobStatus

from .helpers import submit_job, wait_for

pytest.importorskip("nvflare")  # CI installs it (scripts/test.sh); say so rather than fail obscurely

HERE = Path(__file__).parent
FAILURE_MARKS = (
    "cannot get a job for",
    "stop running due to bad",
    "exception processing task",
    "bad result from device",
    "exception sending request",
)


def render_config(path: Path, port: str, job: str, devices: int) -> None:
    text = (HERE / "nvflare_sim_config.json").read_text()
    text = text.replace("{port}", port).replace("{job}", job).replace("{python_path}", str(HERE))
    text = text.replace('"{num_devices}"', str(devices)).replace('"{num_workers}"', "4")
    path.write_text(text)


async def test_nvflare_device_simulator_completes_a_job(stack: Stack, tmp_path: Path) -> None:
    devices, rounds, per_round = 6, 2, 4
    job_id = await submit_job(
        stack.api_url,
        name="nvflare_sim",
        model="xor",
        rounds=rounds,
        devices_per_round=per_round,
        over_selection=0.0,
        retry_wait=1,
        evaluate=False,
    )
    config = tmp_path / "sim.json"
    render_config(config, stack.proxy_url.rsplit(":", 1)[1], "nvflare_sim", devices)
    log_path = tmp_path / "simulator.log"
    with open(log_path, "wb") as log:
        sim = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nvflare.edge.simulation.run_device_simulator",
            str(config),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
    try:
        code = await asyncio.wait_for(sim.wait(), 90)
    finally:
        if sim.returncode is None:
            sim.send_signal(signal.SIGKILL)
            await sim.wait()
    output = log_path.read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "DeviceSimulator run ended" in output and "is gone" in output, output[-3000:]
    for mark in FAILURE_MARKS:
        assert mark not in output, (mark, output[-3000:])
    status = await wait_for(stack.api_url, job_id, lambda s: s["status"] == JobStatus.DONE, timeout=5)
    assert status["results_counted"] == rounds * per_round
    assert [h["results"] for h in status["history"]] == [per_round] * rounds
    trained = output.count("finished training")
    # Results after a round closed are answered OK but not counted; every counted one was trained once.
    assert trained >= status["results_counted"]
    assert trained == status["results_counted"] + status["late"] + status["duplicates"]
