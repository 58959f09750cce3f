"""A phone on poor Wi-Fi: devices on a 20 Mbps link with 80 ms added round trip to the proxy still
take part in a job to its end (issue 10), training for real and uploading JSON as phones do."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ..integration.helpers import submit_job, wait_for
from .lan import Lan
from .stack import ShapedStack, start_shaped_stack


@pytest.fixture
async def poor_wifi(tmp_path: Path) -> AsyncIterator[ShapedStack]:
    with Lan("eflw", rate_mbit=1000) as lan:
        stack = await start_shaped_stack(lan, tmp_path, link_delay=0.001, device_delay=0.040, device_rate_mbit=20)
        try:
            yield stack
        finally:
            await stack.stop()


async def test_a_job_ends_with_every_device_on_a_20_mbps_80_ms_link(poor_wifi: ShapedStack) -> None:
    job = await submit_job(poor_wifi.api_url, name="wifi", model="digits", rounds=3, devices_per_round=6, retry_wait=1)
    simulate = [sys.executable, "-m", "edge_gateway", "simulate", "--url", poor_wifi.device_url, "--job", "wifi"]
    simulate += ["--devices", "8", "--codec", "json", "--trainer", "pytorch", "--duration", "240"]
    devices = await poor_wifi.start("devices", "devices", simulate)
    status = await wait_for(poor_wifi.api_url, job, lambda s: s["status"] == "done", timeout=240)
    print(
        f"rounds {status['round']}, history {[h.get('accuracy') for h in status['history']]}, "
        f"peak RSS MiB: {poor_wifi.peak_rss_mib()}"
    )
    assert len(status["history"]) == 3 and all(h["results"] >= 6 for h in status["history"])
    # Trained for real, the model learns: ten classes, chance is 0.1 (random diffs stayed at 0.100;
    # three rounds of real SGD reached 0.26).
    assert status["history"][-1]["accuracy"] > 0.15, [h.get("accuracy") for h in status["history"]]
    assert devices.process.returncode in (None, 0)
