"""Container tests build nothing themselves: scripts/test_containers.sh builds the images, starts a
Docker engine if needed and sets EDGEFL_CONTAINER_TESTS=1. Elsewhere (the unit and integration
runs of scripts/test.sh) tests marked `containers` are skipped."""

from __future__ import annotations

import os

import pytest

ENABLED = os.environ.get("EDGEFL_CONTAINER_TESTS") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="needs Docker and built images: run scripts/test_containers.sh")
    for item in items:
        if item.get_closest_marker("containers") is not None:
            item.add_marker(skip)
