"""write_weights(export(W0), W) is the program export(W) would give, found via the metadata."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("executorch")

from edge_gateway.models import initial_weights
from edge_gateway.models.executorch_program import (
    export_training_program,
    read_weights,
    write_weights,
)
from edge_gateway.models.pte_layout import program_layout

from .conftest import BATCH
from .reference import random_batch

NEW_SEED = 7


@pytest.fixture(scope="module")
def cnn_exported_with_new_weights() -> bytes:
    return export_training_program("cifar10", initial_weights("cifar10", NEW_SEED), BATCH)


def test_written_program_is_byte_identical_to_a_fresh_export(
    cnn_program: bytes, cnn_exported_with_new_weights: bytes
) -> None:
    written = write_weights(cnn_program, initial_weights("cifar10", NEW_SEED))
    assert written == cnn_exported_with_new_weights
    assert written != cnn_program


def test_written_program_trains_like_a_fresh_export(cnn_program: bytes, cnn_exported_with_new_weights: bytes) -> None:
    import torch
    from executorch.extension.training import _load_for_executorch_for_training_from_buffer

    written = write_weights(cnn_program, initial_weights("cifar10", NEW_SEED))
    x, y = random_batch("cifar10", BATCH, seed=3)
    inputs = (torch.tensor(x.reshape(BATCH, -1)), torch.tensor(y))
    results = []
    for program in (written, cnn_exported_with_new_weights):  # both stay referenced: the loader does not copy
        module = _load_for_executorch_for_training_from_buffer(program)
        loss = float(module.forward_backward("forward", inputs)[0])
        params = {key: p.numpy().copy() for key, p in module.named_parameters().items()}
        grads = {key: g.numpy().copy() for key, g in module.named_gradients().items()}
        results.append((loss, params, grads))
    (loss_w, params_w, grads_w), (loss_e, params_e, grads_e) = results
    assert loss_w == loss_e
    assert params_w.keys() == params_e.keys() == grads_w.keys()
    for key in params_e:
        assert np.abs(params_w[key] - params_e[key]).max() == 0.0
        assert np.array_equal(grads_w[key], grads_e[key])
    new = initial_weights("cifar10", NEW_SEED)
    assert all(np.array_equal(params_w[f"net.{key}"], value) for key, value in new.items())


def test_read_weights_round_trips_and_the_input_is_untouched(xor_program: bytes) -> None:
    before = bytes(xor_program)
    new = initial_weights("xor", NEW_SEED)
    assert all(np.array_equal(read_weights(write_weights(xor_program, new))[k], v) for k, v in new.items())
    assert xor_program == before
    assert all(np.array_equal(read_weights(xor_program)[k], v) for k, v in initial_weights("xor", 0).items())


def test_layout_agrees_with_deserialize_pte_binary(cnn_program: bytes) -> None:
    """Each located tensor is, byte for byte, the mutable-data buffer executorch's reader returns."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    buffers = deserialize_pte_binary(cnn_program).mutable_data
    slots = list(program_layout(cnn_program).parameters.values())
    assert len(buffers) == len(slots) + 1  # buffer 0 is executorch's empty placeholder
    for slot, buffer in zip(slots, buffers[1:], strict=True):
        assert cnn_program[slot.offset : slot.offset + slot.nbytes] == buffer.storage[: slot.nbytes]


def test_mismatched_weights_are_refused(xor_program: bytes) -> None:
    good = initial_weights("xor", 1)
    with pytest.raises(ValueError, match="missing"):
        write_weights(xor_program, {k: v for k, v in good.items() if k != "linear2.bias"})
    with pytest.raises(ValueError, match="unexpected"):
        write_weights(xor_program, {**good, "linear3.bias": good["linear2.bias"]})
    with pytest.raises(ValueError, match="shape"):
        write_weights(xor_program, {**good, "linear1.weight": good["linear1.weight"].T})


def test_writing_cnn_weights_takes_well_under_10_ms(cnn_program: bytes) -> None:
    weights = initial_weights("cifar10", NEW_SEED)
    write_weights(cnn_program, weights)  # parses and caches the layout
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        write_weights(cnn_program, weights)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.010
