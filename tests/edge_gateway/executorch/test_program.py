from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("executorch")

from edge_gateway.models import param_shapes
from edge_gateway.models.executorch_program import export_training_program
from edge_gateway.models.pte_layout import program_layout

from .conftest import BATCH
from .reference import assert_gradients_match, program_gradients, random_batch


def test_programs_carry_the_executorch_magic(xor_program: bytes, cnn_program: bytes) -> None:
    assert xor_program[4:8] == b"ET12"
    assert cnn_program[4:8] == b"ET12"


@pytest.mark.parametrize("model", ["xor", "cifar10"])
def test_parameter_names_carry_the_net_prefix(model: str, xor_program: bytes, cnn_program: bytes) -> None:
    program = xor_program if model == "xor" else cnn_program
    expected = {f"net.{key}": shape for key, shape in param_shapes(model).items()}
    layout = program_layout(program)
    assert {key: slot.shape for key, slot in layout.parameters.items()} == expected
    assert list(layout.parameters) == list(expected)  # state-dict order
    x, y = random_batch(model, BATCH, seed=0)
    _, grads = program_gradients(program, x, y)
    assert {key: g.shape for key, g in grads.items()} == expected


def test_batch_dimension_runs_from_one_to_the_export_batch(cnn_program: bytes) -> None:
    from edge_gateway.models import initial_weights

    assert program_layout(cnn_program).max_batch == BATCH
    assert program_layout(cnn_program).dynamic_batch
    for n in (1, 3):  # a last, partial batch from a device
        x, y = random_batch("cifar10", n, seed=n)
        assert_gradients_match(cnn_program, "cifar10", initial_weights("cifar10", 0), x, y, rel=1e-4)
    x, y = random_batch("cifar10", BATCH + 1, seed=9)
    with pytest.raises(RuntimeError):
        program_gradients(cnn_program, x, y)


def test_batch_size_one_exports_a_static_program() -> None:
    program = export_training_program("xor", None, 1)
    assert program_layout(program).max_batch == 1
    assert not program_layout(program).dynamic_batch
    x, y = random_batch("xor", 1, seed=1)
    loss, _ = program_gradients(program, x, y)
    assert np.isfinite(loss)


def test_importing_the_modules_loads_neither_torch_nor_executorch() -> None:
    code = (
        "import sys, edge_gateway.models.executorch_program, edge_gateway.models.executorch_runtime;"
        "print(sorted(m for m in ('torch', 'executorch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
