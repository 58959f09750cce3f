"""Messages of the internal links (docs/ARCHITECTURE.md): leaf <-> server. No I/O.

They travel as msgpack maps: `model_dump()` on one side, `model_validate()` on the other.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    """A job's status, as leaves see it in a `JobView` and people in the job API."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ScreenLimits(_Message):
    """What a leaf screens each device's update with before summing (edge_gateway/robustness.py
    `ScreenBounds`, mirrored as plain data: this package imports none of edge_gateway)."""

    weight_cap: float = Field(description="a device's num_samples counts for at most this")
    norm_bound: float | None = Field(description="updates are scaled down to this L2 norm; None: no clipping")
    value_limit: float | None = Field(description="each value is clamped to ±this; None: no clamp")


class JobView(_Message):
    """Everything a leaf needs to answer devices for one job without asking the server again."""

    job_id: str
    job_name: str
    status: JobStatus
    model_version: int = Field(description="version devices train on now; -1 before the first")
    round: int
    # The next version is due: the server makes it once this leaf has answered (a sync naming this
    # version in `SyncRequest.closing`); until then the leaf tells no device that a result counts
    # which the next version would make late, before the server has answered for it.
    closing: bool = False
    selection_id: int
    quota: int = Field(
        description="sync: tasks this leaf may have out (leased or done) in this selection; async: leases out at once"
    )
    free_slots: int = Field(default=0, description="slots this leaf could still be granted by asking again")
    retry_wait: int
    task_timeout: float
    param_shapes: dict[str, list[int]]
    config: dict[str, Any]
    task_meta: dict[str, Any]
    task_kind: Literal["WEIGHTS", "APP_DEFINED"] = "WEIGHTS"
    # Moves when the job's simulator groups change; a leaf then asks for them (`GroupsReply`):
    # they are not copied into every sync.
    groups_version: int = 0
    # Who may train (None: anyone), e.g. keeping simulated devices off a real phone's task.
    platforms: list[str] | None = None
    device_ids: list[str] | None = None
    xain: bool = False  # xain-sdk participants may join (docs/XAIN.md)
    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = Field(default=0, description="async: versions a result may lag the current one and count")
    # Live sessions: the device state ("charging", "unmetered", "idle") a session must report to train.
    requires: list[str] = []
    # For the current model version; None: results are summed unscreened (the server checks them).
    screen: ScreenLimits | None = None


class LeafJobReport(_Message):
    """A leaf's view of one job: slots in use, devices asking, and cumulative refusal counters."""

    selection_id: int = -1
    waiting: int = 0
    assigned: int = 0
    tasks_issued: int = 0
    refused: int = 0
    late: int = 0
    duplicates: int = 0
    over_cap: int = 0  # task requests refused: their client (credential or address) held its cap
    groups_refused: int = 0  # simulator group announcements refused (docs/THREAT_MODEL.md)


class SyncRequest(_Message):
    leaf: str
    boot: str
    jobs: dict[str, LeafJobReport] = {}
    # The server boot this leaf has re-sent everything to that earlier boots took (None: none yet).
    server_boot: str | None = None
    # Results wait at this leaf that it could not deliver when they came (the server was out of
    # reach or restarted, or the leaf restarted): the server closes no round until they are in.
    undelivered: bool = False
    # Jobs whose next version this leaf knows is due (`JobView.closing`), by the model version it
    # follows: the leaf's answer, `undelivered` saying whether it holds results still to deliver.
    closing: dict[str, int] = {}
    payload_bytes: int = Field(default=0, ge=0, description="bytes of task payloads the leaf holds")


class SyncReply(_Message):
    boot: str
    jobs: list[JobView]


class ModelRequest(_Message):
    job_id: str
    version: int


class RegisterGroup(_Message):
    """NVFlare's Python simulator announces N devices with the device id `<prefix>?N`."""

    job_id: str
    prefix: str
    count: int


class GroupsRequest(_Message):
    job_id: str


class GroupsReply(_Message):
    """A job's simulator groups (devices "<prefix>#0" .. "<prefix>#<n-1>") as of `version`."""

    version: int
    groups: dict[str, int]


class SubmitBatch(_Message):
    """Validated results of one job and model version, summed: (Σ w·Δ, Σ w, n) plus task ids."""

    leaf: str
    job_id: str
    version: int
    task_ids: list[str]
    sum_weight: float
    sum_update: dict[str, dict[str, Any]]  # {name: {dtype, shape, data}} float64
    # How many of the results screening clipped, and how many had their weight capped.
    clipped: int = 0
    capped: int = 0


class SubmitReply(_Message):
    accepted: bool
    late: bool = False
    duplicates: list[str] = []
    message: str = ""
    # The server boot that took an accepted batch (or had counted a duplicate's ids): leaves
    # re-send only what earlier boots took.
    boot: str = ""
