"""Shared exported programs, and the warnings executorch/torch raise that these tests must allow.

Exports cost seconds, so the two programs most tests need are exported once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.executorch_warnings import EXECUTORCH_WARNINGS

BATCH = 4

# pyproject turns warnings into errors; executorch's own ones are allowed in this folder only.
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            for spec in EXECUTORCH_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))


@pytest.fixture(scope="session")
def xor_program() -> bytes:
    from edge_gateway.models.executorch_program import export_training_program

    return export_training_program("xor", None, BATCH)


@pytest.fixture(scope="session")
def cnn_program() -> bytes:
    from edge_gateway.models.executorch_program import export_training_program

    return export_training_program("cifar10", None, BATCH)
