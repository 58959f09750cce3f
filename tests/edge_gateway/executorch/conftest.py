"""Shared exported programs, and the warnings executorch/torch raise that these tests must allow.

Exports cost seconds, so the two programs most tests need are exported once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

BATCH = 4

# pyproject turns warnings into errors. These come from executorch 1.5.1 / torch 2.13 internals,
# on the first import of the executorch runtime and exporter, and on every training-module load;
# we cannot avoid them, and they say nothing about our code:
# - executorch marks its training API experimental (ExperimentalWarning, a DeprecationWarning);
# - executorch.exir reads its bundled schema with deprecated importlib.resources helpers;
# - a package executorch imports decorates methods with the deprecated torch.jit.script_method.
# They apply to this folder only (see pytest_collection_modifyitems).
_ALLOWED_WARNINGS = (
    "ignore:This API is experimental and subject to change without notice:DeprecationWarning",
    "ignore:read_text is deprecated:DeprecationWarning",
    "ignore:open_text is deprecated:DeprecationWarning",
    r"ignore:`torch\.jit\.script_method` is deprecated:DeprecationWarning",
)
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            for spec in _ALLOWED_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))


@pytest.fixture(scope="session")
def xor_program() -> bytes:
    from edge_gateway.models.executorch_program import export_training_program

    return export_training_program("xor", None, BATCH)


@pytest.fixture(scope="session")
def cnn_program() -> bytes:
    from edge_gateway.models.executorch_program import export_training_program

    return export_training_program("cifar10", None, BATCH)
