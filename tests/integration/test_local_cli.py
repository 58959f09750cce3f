"""`python -m edge_gateway local` as users run it: a whole stack, a job to completion, a clean stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from .helpers import stop_launcher


async def run_cli(args: list[str], timeout: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        await stop_launcher(proc)
    return int(proc.returncode or 0), out.decode(errors="replace")


def child_pids(run_dir: Path) -> list[int]:
    return [orjson.loads(p.read_bytes())["pid"] for p in run_dir.glob("*.ready")]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_local_stack_runs_a_job_to_completion(tmp_path: Path) -> None:
    code, out = await run_cli(
        [
            "local",
            "--port",
            "0",
            "--leaves",
            "2",
            "--job",
            "xor",
            "--rounds",
            "2",
            "--devices-per-round",
            "4",
            "--simulated",
            "8",
            "--retry-wait",
            "1",
            "--exit-when-done",
            "--data-dir",
            str(tmp_path),
        ],
        timeout=120,
    )
    assert code == 0, out
    assert len(re.findall(r"^round +\d+ +model v\d+ +results +\d+ +test accuracy", out, re.M)) == 2, out
    assert "job done" in out and "refused 0" in out
    assert re.search(r"^status page http://127\.0\.0\.1:\d+/status$", out, re.M), out
    assert orjson.loads((tmp_path / "lcp_map.json").read_bytes()).keys() == {"leaf-0", "leaf-1"}
    assert all(gone(pid) for pid in child_pids(tmp_path))


async def test_sigterm_stops_every_process(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_gateway",
        "local",
        "--port",
        "0",
        "--leaves",
        "2",
        "--job",
        "xor",
        "--simulated",
        "0",
        "--data-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        banner = await asyncio.wait_for(proc.stdout.readline(), 60)  # printed once the stack serves
        assert banner.startswith(b"proxy http://"), banner
        # The lines after it say where the status page is and where to scrape every process.
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 10)).decode() for _ in range(2)]
        assert lines[0].startswith("status page http://"), lines
        scrape = lines[1]
        assert scrape.startswith("metrics (Prometheus): "), scrape
        urls = dict(re.findall(r"(\S+) (http://\S+/metrics)", scrape))
        assert sorted(urls) == ["leaf-0", "leaf-1", "proxy", "server"], scrape
        async with aiohttp.ClientSession() as http:
            for url in urls.values():
                async with http.get(url) as reply:
                    assert reply.status == 200 and "process_resident_memory_bytes" in await reply.text(), url
        pids = child_pids(tmp_path)
        assert len(pids) == 3  # server and two leaves; the proxy is checked through its health URL
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out
        assert b"stopped before the job finished" in out
        assert all(gone(pid) for pid in pids)
    finally:
        await stop_launcher(proc)


@pytest.mark.slow
@pytest.mark.timeout(330)
async def test_demo_reaches_the_accuracy_target(tmp_path: Path) -> None:
    """The README's demo: digits, 100 non-IID devices (α=0.5), 2 leaves, ≥ 0.93 within 20 rounds."""
    code, out = await run_cli(["local", "--demo", "--port", "0", "--data-dir", str(tmp_path)], timeout=300)
    assert code == 0, out
    accuracies = [float(a) for a in re.findall(r"^round .* test accuracy ([0-9.]+)", out, re.M)]
    assert len(accuracies) <= 20 and max(accuracies) >= 0.93, out


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_digits_on_executorch_devices_learns_like_pytorch_devices(tmp_path: Path) -> None:
    """The same digits job (rounds, devices, seeds), once trained by simulated phones running the
    served .pte with ExecuTorch, once by PyTorch devices: accuracies within 2 points."""
    pytest.importorskip("executorch")
    common = [
        "--port",
        "0",
        "--model",
        "digits",
        "--rounds",
        "20",
        "--devices-per-round",
        "100",
        "--simulated",
        "100",
        "--epochs",
        "10",
        "--lr",
        "0.5",
        "--batch-size",
        "8",
        "--retry-wait",
        "1",
        "--exit-when-done",
    ]
    (et_code, et_out), (pt_code, pt_out) = await asyncio.gather(
        run_cli(["local", "--job", "digits_et", "--data-dir", str(tmp_path / "et"), *common], timeout=380),
        run_cli(["local", "--job", "digits", "--data-dir", str(tmp_path / "pt"), *common], timeout=380),
    )
    assert et_code == 0 and pt_code == 0, (et_out[-2000:], pt_out[-2000:])

    def final_accuracy(out: str) -> float:
        return [float(a) for a in re.findall(r"^round .* test accuracy ([0-9.]+)", out, re.M)][-1]

    assert abs(final_accuracy(et_out) - final_accuracy(pt_out)) <= 0.02, (et_out[-1500:], pt_out[-1500:])
    assert final_accuracy(et_out) >= 0.93
