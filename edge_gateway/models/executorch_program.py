"""ExecuTorch training programs (.pte) for phones, and new weights for them without re-export.

A program's `forward(x, y)` returns `(mean cross-entropy loss, argmax predictions)`; the training
emitter appends the gradients and the parameters to its outputs, which is what a device's
`forward_backward` / `named_parameters()` read. Parameters are named `net.<state-dict name>`:
the names a device echoes in its `et_tensor_diff` upload (PROTOCOL.md §5).

`x` is flat, `(batch, features)`: NVFlare's iOS SDK hands every dataset to ExecuTorch as 2-D
`{batch, numel / batch}` tensors, so the CNN reshapes its input inside the program.

Exporting costs seconds (the CIFAR-10 CNN ~3 s, plus 6-9 s to import `executorch.exir` once), so
export once per (model, batch size) and put each model version in with `write_weights` (< 1 ms).
Importing this module does not import torch or executorch; the functions do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

from .pte_layout import ParameterSlot, program_layout

PARAM_PREFIX = "net."  # the wrapper's attribute name: devices report `net.<state-dict name>`

# One sample's shape as the nets take it; programs take it flattened (see the module docstring).
SAMPLE_SHAPES: dict[str, tuple[int, ...]] = {
    "xor": (2,),
    "digits": (64,),
    "cifar10": (3, 32, 32),
    "cifar10_wide": (3, 32, 32),
}

# Warnings torch/executorch 1.5.1 emit on every export that callers can do nothing about:
# torch's pytree deprecation raised from inside torch.export, executorch reading its own schema
# files with a deprecated importlib API, and the planner noting that the first convolution needs
# no gradient for its input (`out0` of convolution_backward is None, as it should be).
_EXPORT_NOISE: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    (DeprecationWarning, r"read_binary is deprecated"),
    (UserWarning, r"Function aten\.convolution_backward\.out's out0 kwarg value is None"),
)


def export_training_program(
    name: str,
    weights: Mapping[str, np.ndarray] | None,
    batch_size: int,
    *,
    dynamic_batch: bool = True,
    fix_maxpool_backward: bool = True,
) -> bytes:
    """Export model `name` as an ExecuTorch training program for batches of up to `batch_size`.

    Args:
        name: one of `MODEL_NAMES`.
        weights: initial parameter values by state-dict name, or None for `initial_weights(name, 0)`.
        batch_size: the job's batch size.
        dynamic_batch: make the batch dimension dynamic from 1 to `batch_size` (static anyway
            when `batch_size` is 1). Memory is still planned for `batch_size`, as for a static
            program, and a device's last, smaller batch runs too: the iOS sample datasets return
            `min(batch_size, remaining)` samples, which a static program rejects. False gives a
            program that takes batches of exactly `batch_size`.
        fix_maxpool_backward: decompose max-pooling's backward (see `_export`); False only to
            reproduce pytorch/executorch#21686.

    Returns:
        The .pte bytes (bytes 4..8 are `ET12`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # catch_warnings changes process-wide state; fine for an export, which runs once per job.
    with warnings.catch_warnings():
        for category, message in _EXPORT_NOISE:
            warnings.filterwarnings("ignore", message, category)
        program = _export(name, weights, batch_size, dynamic_batch, fix_maxpool_backward)
    if program[4:8] != b"ET12":
        raise RuntimeError(f"executorch produced a program with magic {program[4:8]!r}, expected b'ET12'")
    return program


def _export(
    name: str,
    weights: Mapping[str, np.ndarray] | None,
    batch_size: int,
    dynamic_batch: bool,
    fix_maxpool_backward: bool,
) -> bytes:
    import torch
    from executorch.exir import to_edge
    from torch.export import Dim
    from torch.export.experimental import _export_forward_backward

    from ._training_wrapper import TrainingWrapper
    from .nets import build_net, load_weights

    net = build_net(name)
    if weights is not None:
        load_weights(net, name, weights)
    sample_shape = SAMPLE_SHAPES[name]
    example = (
        torch.zeros(batch_size, math.prod(sample_shape)),
        torch.zeros(batch_size, dtype=torch.int64),
    )
    dynamic = None
    if dynamic_batch and batch_size > 1:
        batch = Dim("batch", min=1, max=batch_size)
        dynamic = {"x": {0: batch}, "y": {0: batch}}
    exported = torch.export.export(TrainingWrapper(net, sample_shape), example, dynamic_shapes=dynamic, strict=True)
    joint = _export_forward_backward(exported)
    # executorch 1.5.1's portable max_pool2d_with_indices_backward kernel does not zero its output
    # (pytorch/executorch#21686): conv gradients come out 1e3-1e4 too large. Torch's own
    # decomposition (scatter-add into zeros) replaces the kernel on the joint graph.
    if fix_maxpool_backward:
        op = torch.ops.aten.max_pool2d_with_indices_backward.default
        joint = joint.run_decompositions({op: torch._decomp.decomposition_table[op]})
    return to_edge(joint).to_executorch().buffer


def write_weights(program: bytes, weights: Mapping[str, np.ndarray]) -> bytes:
    """A copy of training `program` whose parameters start from `weights` (by state-dict name).

    Overwrites each parameter's initial value where the program's own metadata places it
    (`pte_layout.program_layout`, parsed once per program and cached); nothing is re-exported.
    The result loads and trains exactly like a program exported with `weights`.

    Raises ValueError if the names or shapes of `weights` differ from the program's parameters.
    """
    slots = _unprefixed(program)
    _check_names(slots, weights)
    out = bytearray(program)
    for key, slot in slots.items():
        value = np.ascontiguousarray(weights[key], dtype=slot.dtype)
        if value.shape != slot.shape:
            raise ValueError(f"{key}: shape {value.shape} != {slot.shape} in the program")
        out[slot.offset : slot.offset + slot.nbytes] = value.tobytes()
    return bytes(out)


def read_weights(program: bytes) -> dict[str, np.ndarray]:
    """The initial parameter values stored in training `program`, by state-dict name (copies)."""
    return {
        key: np.frombuffer(program, slot.dtype, math.prod(slot.shape), slot.offset).reshape(slot.shape).copy()
        for key, slot in _unprefixed(program).items()
    }


def _unprefixed(program: bytes) -> dict[str, ParameterSlot]:
    layout = program_layout(bytes(program))
    return {fqn.removeprefix(PARAM_PREFIX): slot for fqn, slot in layout.parameters.items()}


def _check_names(slots: Mapping[str, object], weights: Mapping[str, np.ndarray]) -> None:
    if set(slots) != set(weights):
        missing = sorted(set(slots) - set(weights))
        extra = sorted(set(weights) - set(slots))
        raise ValueError(f"weights do not match the program: missing {missing}, unexpected {extra}")
