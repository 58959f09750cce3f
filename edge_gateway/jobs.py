"""Job specifications: what a user submits to the server."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ModelName = Literal["xor", "digits", "cifar10", "cifar10_wide"]
# pytorch: task data carries the weights; executorch: a training program (.pte) phones run.
Runtime = Literal["pytorch", "executorch"]
Backend = Literal["portable", "xnnpack"]

XNNPACK_REFUSED = (
    "backend 'xnnpack' is refused: with executorch 1.5.1, XNNPACK lowering of a training program is "
    "silently wrong (conv biases are absorbed into the delegate, named_parameters() no longer line up "
    "with the model and the loss goes NaN) and gives XOR no speed-up; use backend 'portable'"
)


class JobNameTaken(ValueError):
    """A running job already has the name a new one asks for: devices ask for jobs by name."""


class JobSpec(BaseModel):
    """A federated job: which model, how many rounds, how devices train.

    `mode` "sync" runs rounds (devices_per_round, over_selection, min_results_fraction,
    round_timeout apply); "async" runs FedBuff (concurrency, buffer_size, max_staleness apply) and
    `rounds` counts the model versions to make. The other mode's settings are ignored.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    model: ModelName = "digits"
    runtime: Runtime = "pytorch"
    backend: Backend = Field(default="portable", description="ExecuTorch kernels the program is built for")
    platforms: list[str] | None = Field(
        default=None,
        description="only devices whose X-Flare-Device-Info platform is listed get tasks (e.g. ios, android)",
    )
    device_ids: list[str] | None = Field(default=None, description="only these device ids get tasks")
    rounds: int = Field(default=5, ge=1, le=100_000)
    devices_per_round: int = Field(default=10, ge=1, le=1_000_000, description="results that close a round")
    over_selection: float = Field(default=0.2, ge=0.0, le=10.0, description="extra tasks handed out for drop-outs")
    min_results_fraction: float = Field(
        default=0.5, gt=0.0, le=1.0, description="share of devices_per_round that may close a round at its deadline"
    )
    round_timeout: float = Field(default=300.0, gt=0.0, description="seconds before a round closes with what it has")
    task_timeout: float = Field(default=120.0, gt=0.0, description="lease: seconds a selected device has to report")
    retry_wait: int = Field(
        default=30, ge=1, le=3600, description="seconds devices wait after Model not ready / Device not selected"
    )
    epochs: int = Field(default=1, ge=1, le=1000)
    lr: float = Field(default=0.01, gt=0.0)
    batch_size: int = Field(default=4, ge=1, le=4096, description="for executorch: the largest batch the program takes")
    server_lr: float = Field(default=1.0, gt=0.0)
    seed: int = 0
    evaluate: bool = True
    xain: bool = Field(
        default=False,
        description="xain-sdk 0.8 participants may join (they also join the only running job without it)",
    )
    mode: Literal["sync", "async"] = Field(default="sync", description="sync rounds, or async FedBuff")
    requires: list[Literal["charging", "unmetered", "idle"]] = Field(
        default=[],
        description="device state a live session must report to be selected, and keep while it trains (PROTOCOL.md §9)",
    )
    concurrency: int = Field(default=20, ge=1, le=1_000_000, description="async: devices training at once")
    buffer_size: int = Field(default=10, ge=1, le=1_000_000, description="async: results that make a new version")
    max_staleness: int = Field(
        default=10,
        ge=0,
        le=10_000,
        description="async: results trained on a version more than this many versions old are late",
    )
    # Robust aggregation (edge_gateway/robustness.py); the defaults hold a hostile minority off.
    weight_cap: Literal["fixed", "adaptive"] = Field(
        default="adaptive",
        description="cap on a device's weight (meta.num_samples), clamped not refused: 'fixed' at "
        "max_num_samples, or 'adaptive': starts at 1 (uniform weighting) and follows the "
        "weight_cap_quantile of reported sample counts, never above max_num_samples",
    )
    max_num_samples: int = Field(
        default=1_000_000,
        ge=1,
        le=1_000_000,
        description="the most a device's reported num_samples counts for (1: uniform weighting)",
    )
    weight_cap_quantile: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="adaptive weight cap: share of devices whose weight is not capped"
    )
    clip: Literal["off", "fixed", "adaptive"] = Field(
        default="adaptive",
        description="L2 clipping of each device's whole update: 'fixed' at clip_norm, or 'adaptive': "
        "starts at clip_norm and follows the clip_quantile of recent update norms",
    )
    clip_norm: float = Field(
        default=1.0, gt=0.0, le=1e30, description="the clipping bound ('fixed'), or its starting value ('adaptive')"
    )
    clip_quantile: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="adaptive clipping: share of updates whose norm is not clipped"
    )
    adaptive_lr: float = Field(
        default=1.0,
        gt=0.0,
        le=5.0,
        description="how fast adaptive bounds move: at most a factor exp(adaptive_lr * max(q, 1 - q)) per version",
    )
    max_update_value_ratio: float | None = Field(
        default=10.0,
        gt=0.0,
        description="clamp each value of an update to this many times the model's largest magnitude "
        "(at least 1); null: no clamp",
    )
    max_model_value: float = Field(
        default=1e4,
        gt=0.0,
        le=1e30,
        description="a new global model holding a larger magnitude is not published (the previous one is kept)",
    )

    @field_validator("platforms")
    @classmethod
    def _lower_case(cls, platforms: list[str] | None) -> list[str] | None:
        return None if platforms is None else [p.lower() for p in platforms]

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.mode == "sync" and self.task_timeout > self.round_timeout:  # async has no rounds to outlast
            raise ValueError("task_timeout must not exceed round_timeout")
        if self.backend == "xnnpack":
            raise ValueError(XNNPACK_REFUSED)
        if self.mode == "async" and self.concurrency > self.buffer_size * (self.max_staleness + 1):
            # `concurrency` devices that start on one version together make a new version every
            # buffer_size results: the last of them are ⌊(concurrency−1)/buffer_size⌋ versions
            # old. Past max_staleness they would train for nothing, even if all run equally fast.
            # (buffer_size > concurrency is fine: slots free as results arrive, the buffer fills.)
            raise ValueError(
                "async mode needs concurrency ≤ buffer_size × (max_staleness + 1): otherwise results of "
                "devices that train at the same pace arrive late"
            )
        return self

    @property
    def tasks_per_selection(self) -> int:
        return math.ceil(self.devices_per_round * (1.0 + self.over_selection))

    @property
    def min_results(self) -> int:
        return max(1, math.ceil(self.devices_per_round * self.min_results_fraction))

    def app_config(self) -> dict[str, Any]:
        """`job_data.config` that tells the phone app which trainer to build (PROTOCOL.md §4)."""
        return {
            "components": [
                {
                    "type": "Trainer.DLTrainer",
                    "name": "trainer",
                    "args": {"epoch": self.epochs, "lr": self.lr, "batch_size": self.batch_size},
                }
            ],
            "executors": {"train": "@trainer"},
        }

    def task_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "model": self.model,
            "epochs": self.epochs,
            "total_epochs": self.epochs,
            "lr": self.lr,
            "learning_rate": self.lr,
            "batch_size": self.batch_size,
        }
        if self.runtime == "executorch":
            # What the phone apps read to load the program (PROTOCOL.md §4).
            meta.update(
                model_buffer_type="executorch", model_buffer_native_format="binary", model_buffer_encoding="base64"
            )
        return meta
