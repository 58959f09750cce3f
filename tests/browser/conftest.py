"""Browser tests: a real stack on loopback, its status page driven in headless Chromium (Debian's
`chromium` package, through playwright; no browser is ever downloaded).

scripts/test_browser.sh installs what they need and sets EDGEFL_BROWSER_TESTS=1; elsewhere (the two
runs of scripts/test.sh exclude the `browser` marker anyway) they are skipped."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_gateway.launcher import Stack, start_stack

ENABLED = os.environ.get("EDGEFL_BROWSER_TESTS") == "1"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await start_stack(tmp_path, leaves=2, proxy_host="127.0.0.1", proxy_port=0)
    try:
        yield stack
    finally:
        await stack.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="needs chromium and playwright: run scripts/test_browser.sh")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)  # it starts processes
            if not ENABLED:
                item.add_marker(skip)
