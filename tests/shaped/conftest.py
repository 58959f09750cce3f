"""Shaped-network tests build network namespaces and shape their links, which needs root and
iproute2: scripts/test_network.sh installs what is missing and sets EDGEFL_SHAPED_TESTS=1, as CI's
own step. Elsewhere (the unit and integration runs of scripts/test.sh) they are skipped."""

from __future__ import annotations

import os

import pytest

ENABLED = os.environ.get("EDGEFL_SHAPED_TESTS") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs root, ip and tc: run scripts/test_network.sh")
    for item in items:
        if "tests/shaped/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.shaped)
            if not ENABLED:
                item.add_marker(skip)
