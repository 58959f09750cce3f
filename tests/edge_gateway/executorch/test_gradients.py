"""The program's gradients equal eager PyTorch's; without the max-pool fix the CNN's do not."""

from __future__ import annotations

import pytest

pytest.importorskip("executorch")

from edge_gateway.models import initial_weights
from edge_gateway.models.executorch_program import export_training_program

from .conftest import BATCH
from .reference import assert_gradients_match, random_batch

REL = 1e-4


def test_xor_gradients_match_eager(xor_program: bytes) -> None:
    x, y = random_batch("xor", BATCH, seed=1)
    assert_gradients_match(xor_program, "xor", initial_weights("xor", 0), x, y, rel=REL)


def test_cnn_gradients_match_eager(cnn_program: bytes) -> None:
    for seed in (1, 2):  # twice: the buggy kernel's leftovers would show on a reused buffer
        x, y = random_batch("cifar10", BATCH, seed=seed)
        assert_gradients_match(cnn_program, "cifar10", initial_weights("cifar10", 0), x, y, rel=REL)


def test_cnn_gradients_are_wrong_without_the_maxpool_fix() -> None:
    """pytorch/executorch#21686: if this starts passing, executorch fixed its kernel."""
    program = export_training_program("cifar10", None, BATCH, fix_maxpool_backward=False)
    x, y = random_batch("cifar10", BATCH, seed=1)
    with pytest.raises(AssertionError, match="relative gradient error"):
        assert_gradients_match(program, "cifar10", initial_weights("cifar10", 0), x, y, rel=REL)
