"""The server's status page in headless Chromium: it loads without console errors, shows the job
and the topology, its plot gains a point when a model version is made, and a leaf going down
shows, all without a reload. Saves a screenshot to docs/status-page.png."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edge_gateway.launcher import Stack
from edge_gateway.models.demo import training_defaults
from edge_gateway.processes import spawn
from internal_link.messages import JobStatus
from tests.integration.helpers import submit_job, wait_for, wait_leaves_synced
from tests.integration.stack_control import child, kill

if TYPE_CHECKING:  # imported when a test runs: test.sh's runs collect this file without the browser extra
    from playwright.async_api import Browser, Page

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; playwright's own browser builds cannot be downloaded here
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
POINTS = "#plot circle.point.accuracy"
ROUNDS = 6


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def points_shown(page: Page) -> list[int]:
    return [int(v) for v in await page.eval_on_selector_all(POINTS, "dots => dots.map(d => d.dataset.version)")]


async def wait_points(page: Page, at_least: int, timeout_s: float) -> list[int]:
    # Locators, not wait_for_function: the page's CSP forbids the eval that a JS predicate needs.
    await page.locator(POINTS).nth(at_least - 1).wait_for(state="attached", timeout=timeout_s * 1000)
    return await points_shown(page)


@pytest.mark.timeout(300)
async def test_the_status_page_shows_the_job_and_plots_each_new_version_live(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    # Digits with the demo's settings: the plot shows a model that learns (the screenshot is in the docs).
    job = {"model": "digits", "rounds": ROUNDS, "devices_per_round": 8, "retry_wait": 1, **training_defaults("digits")}
    job_id = await submit_job(stack.api_url, name="browser-demo", **job)
    await wait_leaves_synced(stack.api_url, job_id, 2)
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    page.on("request", lambda r: requests.append(r.url))

    await page.goto(f"{stack.api_url}/status")
    row = page.locator(f'#jobs tbody tr[data-job-id="{job_id}"]')
    await row.wait_for(timeout=15_000)
    assert "browser-demo" in await row.inner_text()
    healthy_to_proxy = page.locator("#leaves tbody td.ok", has_text=re.compile("^healthy$"))
    await healthy_to_proxy.nth(1).wait_for(timeout=15_000)
    assert await healthy_to_proxy.count() == 2
    assert await points_shown(page) == []  # no round has closed: nothing to plot yet

    # Devices the way users start them (PyTorch SGD on Dirichlet shards), stopped by PID with the stack.
    simulate = ["edge_gateway", "simulate", "--url", stack.proxy_url, "--job", "browser-demo", "--devices", "16"]
    devices = await spawn("devices", [*simulate, "--trainer", "pytorch", "--duration", "240"], tmp_path, stack.env)
    stack.children.append(devices)
    first = await wait_points(page, 1, timeout_s=90)
    # The next version appears on the page that is already open: it polls, nobody reloads it.
    later = await wait_points(page, len(first) + 1, timeout_s=90)
    assert later[: len(first)] == first and later[-1] > first[-1]
    status = await wait_for(
        stack.api_url,
        job_id,
        lambda s: s["status"] == JobStatus.DONE and all("accuracy" in h for h in s["history"]),
        timeout=120,
    )
    versions = [h["version"] for h in status["history"]]
    assert await wait_points(page, ROUNDS, timeout_s=15) == versions == list(range(1, ROUNDS + 1))
    await page.locator("#round dd", has_text=re.compile("^done$")).wait_for(timeout=10_000)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)

    # A leaf going down turns red on the open page, in both the server's and the proxy's column.
    await kill(child(stack, "leaf-1"))
    leaf_row = page.locator('#leaves tbody tr[data-leaf="leaf-1"]')
    await leaf_row.locator("td.bad", has_text=re.compile("^unhealthy$")).wait_for(timeout=20_000)
    await leaf_row.locator("td.bad", has_text=re.compile(r"s ago$")).wait_for(timeout=20_000)
    assert await page.locator('#leaves tbody tr[data-leaf="leaf-0"] td.bad').count() == 0

    assert problems == []
    assert requests and all(url.startswith(f"{stack.api_url}/") for url in requests), set(requests)
