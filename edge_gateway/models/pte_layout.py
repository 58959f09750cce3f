"""Where an ExecuTorch training program (.pte) keeps its parameters, read from its own metadata.

A training program exported by `executorch_program.export_training_program` stores each
parameter's initial value as raw little-endian bytes in the file's mutable-data segment (the
parameters are memory-planned tensors "with an initial state", see executorch's
`schema/program.fbs`, `Tensor.data_buffer_idx`). Which tensors are the parameters, and their
names, come from the metadata methods the training emitter adds next to `forward`:
`__et_training_fqn_forward` (the names) and `__et_training_parameters_index_forward` (where the
parameters start among `forward`'s outputs).

`deserialize_pte_binary` is not used here on purpose: it inlines the segments into the program and
clears their offsets, so it cannot say where a tensor lies in the file. Its first two steps (the
extended header, then the flatbuffer) keep them, and we stop there.

Imports executorch lazily (the first parse of a program pulls in `executorch.exir`, ~6-9 s).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

_METHOD = "forward"


@dataclass(frozen=True)
class ParameterSlot:
    """One parameter's initial value inside the .pte: `nbytes` bytes at byte `offset`."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class ProgramLayout:
    """The parameters of a training program, in the program's order, and its batch dimension.

    `parameters` is keyed by the names the program (and a device) uses, e.g. `net.fc1.weight`.
    `max_batch` is the first dimension of the first input: the only batch size a static program
    takes, or the upper bound of a dynamic one (`dynamic_batch`).
    """

    parameters: dict[str, ParameterSlot]
    max_batch: int
    dynamic_batch: bool


@functools.lru_cache(maxsize=16)
def program_layout(program: bytes) -> ProgramLayout:
    """Parse `program`'s metadata once (~20 ms for the CIFAR-10 CNN) and cache the result.

    Raises ValueError if `program` is not a training program whose parameters all lie in its
    mutable-data segment.
    """
    from executorch.exir._serialize._program import _flatbuffer_to_program, _get_extended_header
    from executorch.exir.scalar_type import ScalarType
    from executorch.exir.schema import TensorDataLocation, TensorShapeDynamism

    dtypes = {ScalarType.FLOAT: np.dtype("<f4")}  # the only parameter dtype our nets use

    header = _get_extended_header(program)
    if program[4:8] != b"ET12" or header is None:
        raise ValueError("not an ExecuTorch program with segments (magic ET12 and an extended header)")
    flat = _flatbuffer_to_program(program[: header.program_size])
    plans = {plan.name: plan for plan in flat.execution_plan}
    try:
        forward = plans[_METHOD]
        fqn_plan = plans[f"__et_training_fqn_{_METHOD}"]
        index_plan = plans[f"__et_training_parameters_index_{_METHOD}"]
    except KeyError as missing:
        raise ValueError(f"not a training program: no method {missing}") from None

    names = [fqn_plan.values[i].val.string_val for i in fqn_plan.outputs]
    first = index_plan.values[index_plan.outputs[0]].val.int_val
    slots: dict[str, ParameterSlot] = {}
    for name, value_index in zip(names, forward.outputs[first:], strict=True):
        tensor = forward.values[value_index].val
        info = tensor.extra_tensor_info
        external = info is not None and info.location != TensorDataLocation.SEGMENT
        if tensor.allocation_info is None or tensor.data_buffer_idx == 0 or external:
            raise ValueError(f"parameter {name!r} has no initial value in the mutable-data segment")
        dtype = dtypes.get(tensor.scalar_type)
        if dtype is None:
            raise ValueError(f"parameter {name!r} has unsupported scalar type {tensor.scalar_type!r}")
        table = flat.mutable_data_segments[info.mutable_data_segments_idx if info else 0]
        segment = flat.segments[table.segment_index]
        slot = ParameterSlot(
            offset=header.segment_base_offset + segment.offset + table.offsets[tensor.data_buffer_idx],
            shape=tuple(tensor.sizes),
            dtype=dtype,
        )
        if slot.offset + slot.nbytes > len(program):
            raise ValueError(f"parameter {name!r} lies beyond the end of the program")
        slots[name] = slot

    batch_input = forward.values[forward.inputs[0]].val
    return ProgramLayout(
        parameters=slots,
        max_batch=int(batch_input.sizes[0]),
        dynamic_batch=batch_input.shape_dynamism != TensorShapeDynamism.STATIC,
    )
