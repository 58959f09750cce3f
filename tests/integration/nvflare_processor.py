"""A task processor for NVFlare's Python device simulator (nvflare 2.9.0) that speaks edgefl's
PyTorch task format.

This module exercises the *protocol*, not learning. For each ``WEIGHTS`` task it returns a
``WEIGHT_DIFF`` whose every element is ``-step`` where the weight is >= 0 and ``+step`` where the
weight is negative (``-step * sign(w)``, with ``sign(0)`` taken as ``+1`` so that no element is
zero). Values are float32, always finite, and keep the shape of each parameter. The reported
``num_samples`` is fixed (default 1). No model is built and no data is read, so it needs neither
torch nor our training code: only nvflare (which brings numpy) must be importable.

The simulator loads it from the ``processor`` block of its JSON config
(see ``nvflare_sim_config.json`` beside this file and ``docs/NVFLARE_SIMULATOR.md``)::

    "processor": {"path": "nvflare_processor.WeightDiffProcessor",
                  "python_path": "<this directory>",
                  "args": {"step": 0.01, "num_samples": 1, "delay": 0.0}}

How the simulator uses a processor (nvflare/edge/simulation/devices/tp.py, simulator.py):
- one instance per simulated device, plus a throw-away one for every ``/job`` and ``/selection``
  call, so ``__init__`` must stay cheap;
- ``setup(job)`` runs before *every* ``/task`` request of the device, so it must be idempotent;
- ``process_task(task)`` runs in a worker thread; its dict return value is posted as ``result``
  with ``status: "OK"``. If it raises, the simulator posts ``result: {}`` with ``status: "ERROR"``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from nvflare.edge.simulation.device_task_processor import DeviceTaskProcessor

TASK_KIND = "WEIGHTS"
RESULT_KIND = "WEIGHT_DIFF"


class TaskFormatError(ValueError):
    """The task is not an edgefl WEIGHTS task this processor can answer."""


def _as_float32_array(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as ex:  # ragged nesting, strings, dicts ...
        raise TaskFormatError(f"parameter {name!r} is not a rectangular nested list of numbers: {ex}") from ex
    if not np.all(np.isfinite(arr)):
        raise TaskFormatError(f"parameter {name!r} holds non-finite values")
    return arr


def make_weight_diff(weights: dict[str, Any], step: float = 0.01) -> dict[str, Any]:
    """Return ``{name: nested list}`` with ``-step`` where ``w >= 0`` and ``+step`` where ``w < 0``.

    Shapes follow the input (a bare number stays a bare number); every value is a float32
    rounded to the nearest representable number, finite and non-zero.
    """
    if not np.isfinite(step) or step == 0:
        raise ValueError("step must be finite and non-zero")
    magnitude = np.float32(abs(step))
    diff: dict[str, Any] = {}
    for name, value in weights.items():
        arr = _as_float32_array(name, value)
        out = np.where(arr < 0, magnitude, -magnitude).astype(np.float32)
        diff[name] = out.tolist()  # 0-d arrays become a plain float
    return diff


class WeightDiffProcessor(DeviceTaskProcessor):
    """Answers an edgefl ``WEIGHTS`` task with a deterministic ``WEIGHT_DIFF`` (protocol test only).

    Args (all JSON-serialisable, given under ``processor.args`` in the simulator config):
        step: magnitude of every diff element (default 0.01).
        num_samples: value reported as ``meta.num_samples`` (default 1).
        delay: seconds to sleep in ``process_task``, to imitate a slow device (default 0).
    """

    def __init__(self, step: float = 0.01, num_samples: int = 1, delay: float = 0.0):
        DeviceTaskProcessor.__init__(self)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.step = float(step)
        self.num_samples = num_samples
        self.delay = float(delay)
        self.tasks_done = 0

    def setup(self, job) -> None:
        # Called before every /task request of this device: nothing to (re)build.
        pass

    def shutdown(self) -> None:
        pass

    def process_task(self, task) -> dict:
        task_data = task.get("task_data")
        if not isinstance(task_data, dict):
            raise TaskFormatError(f"task_data must be an object, got {type(task_data).__name__}")
        kind = task_data.get("kind")
        if kind != TASK_KIND:
            raise TaskFormatError(f"expected task kind {TASK_KIND!r}, got {kind!r}")
        weights = task_data.get("data")
        if not isinstance(weights, dict) or not weights:
            raise TaskFormatError("task_data.data must be a non-empty object of parameters")

        diff = make_weight_diff(weights, self.step)
        if self.delay > 0:
            time.sleep(self.delay)
        self.tasks_done += 1
        device_id = self.device.device_id if self.device is not None else "?"
        meta = task_data.get("meta") or {}
        self.logger.info(
            f"device {device_id}: task {task.get('task_id')} model_version={meta.get('model_version')} "
            f"-> {RESULT_KIND} over {len(diff)} parameters"
        )
        return {"kind": RESULT_KIND, "data": diff, "meta": {"num_samples": self.num_samples}}
