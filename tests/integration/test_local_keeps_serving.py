"""`local --simulated 0` waits for devices from outside and keeps serving after the job ends, so
they hear it is over (NVFlare's simulator ends only on NO_JOB) instead of "connection refused";
SIGTERM to the launcher's PID then stops the whole stack."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from .clients import IosDevice
from .test_local_cli import child_pids, gone
from .test_nvflare_simulator import FAILURE_MARKS, render_config

pytest.importorskip("nvflare")

JOB = "outside_devices"


async def read_until(stream: asyncio.StreamReader, pattern: str, seen: list[str], timeout: float) -> re.Match[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        line = (await asyncio.wait_for(stream.readline(), max(0.1, deadline - loop.time()))).decode()
        if not line:
            raise AssertionError(f"launcher ended before {pattern!r}:\n{''.join(seen)}")
        seen.append(line)
        if found := re.search(pattern, line):
            return found


@pytest.mark.timeout(240)
async def test_outside_devices_hear_the_job_is_over_until_sigterm(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    launcher = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "edge_gateway", "local", "--port", "0", "--job", JOB, "--model", "xor"],
        *["--rounds", "2", "--devices-per-round", "4", "--simulated", "0", "--retry-wait", "1"],
        *["--data-dir", str(run_dir)],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    seen: list[str] = []
    sim = None
    try:
        assert launcher.stdout is not None
        proxy_url = (await read_until(launcher.stdout, r"^proxy (http://\S+)", seen, 60)).group(1)
        job_id = (await read_until(launcher.stdout, r"^job '\w+' \(([0-9a-f-]+)\)", seen, 30)).group(1)

        config = tmp_path / "sim.json"
        render_config(config, proxy_url.rsplit(":", 1)[1], JOB, 6)
        sim_log = tmp_path / "simulator.log"
        with open(sim_log, "wb") as out:
            sim = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "nvflare.edge.simulation.run_device_simulator", str(config)],
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        assert await asyncio.wait_for(sim.wait(), 120) == 0, sim_log.read_text(errors="replace")[-3000:]
        sim_output = sim_log.read_text(errors="replace")
        assert "DeviceSimulator run ended" in sim_output, sim_output[-3000:]
        for mark in FAILURE_MARKS:
            assert mark not in sim_output, (mark, sim_output[-3000:])

        await read_until(launcher.stdout, r"^job done", seen, 30)
        await read_until(launcher.stdout, r"^still serving", seen, 5)
        await asyncio.sleep(1.0)  # the launcher is past the job's end: nothing may stop now
        assert launcher.returncode is None

        async with aiohttp.ClientSession() as session:
            late = IosDevice(session, proxy_url, "ios-after-the-job", JOB)
            asked = await late.post("job", "", {"job_name": JOB, "capabilities": {"methods": ["cnn"]}})
            polled = await late.post("task", f"?job_id={job_id}", {})
        assert asked["status"] in ("NO_JOB", "DONE"), asked
        assert polled["status"] in ("NO_JOB", "DONE"), polled

        pids = child_pids(run_dir)
        launcher.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(launcher.communicate(), 60)
        assert launcher.returncode == 0, "".join(seen) + out.decode(errors="replace")
        assert len(pids) == 3 and all(gone(pid) for pid in pids)
        assert orjson.loads((run_dir / "lcp_map.json").read_bytes()).keys() == {"leaf-0", "leaf-1"}
    finally:
        for proc in (sim, launcher):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
