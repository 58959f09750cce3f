"""Run N simulated devices in one process over one pooled HTTP session."""

from __future__ import annotations

import asyncio
import random
import secrets
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from yarl import URL

from .device import Device, DeviceSettings, Sleep
from .progress import show_progress
from .session_device import SessionDevice
from .stats import SimulationReport, Stats
from .trainers import TrainerKind, make_pool, make_trainers
from .wire import Codec


class SimulationConfig(BaseModel):
    """One run; the CLI flags map onto these fields one to one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="the routing proxy, e.g. http://127.0.0.1:4321 (any path is ignored)")
    job: str = Field(min_length=1, description="job name to ask /job for")
    devices: int = Field(ge=1, le=1_000_000)
    trainer: TrainerKind = Field(
        default="synthetic",
        description=(
            "synthetic: random diffs, no torch; pytorch: SGD on a Dirichlet shard; executorch: trains the "
            "task's .pte on the same shards and uploads the iOS app's et_tensor_diff"
        ),
    )
    codec: Codec = Field(
        default="json",
        description=("task and result encoding; executorch devices ignore it and speak JSON only, as the iOS app does"),
    )
    alpha: float = Field(default=0.5, gt=0.0, description="Dirichlet label skew of the pytorch and executorch shards")
    seed: int = 0
    duration: float | None = Field(
        default=None, gt=0.0, description="deadline in seconds; None: until every device is done"
    )
    connections: int = Field(default=256, ge=1, description="keep-alive connection pool size")
    device_prefix: str | None = Field(default=None, min_length=1, description="ids are <prefix>-<i>; default sim-<run>")
    keep_polling: bool = Field(default=False, description="after a job ends, go back to /job instead of stopping")
    stagger: float = Field(default=1.0, ge=0.0, description="devices start at random within this many seconds")
    backoff_min: float = Field(default=1.0, ge=0.0)
    backoff_max: float = Field(default=5.0, ge=0.0)
    result_attempts: int = Field(default=3, ge=1, description="sends of one result before it is given up")
    request_timeout: float = Field(default=60.0, gt=0.0, description="seconds per request (iOS: 60 s resource timeout)")
    slow_fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="this fraction of the devices is slow")
    slow_factor: float = Field(default=1.0, ge=1.0, description="a slow device takes this many times its training time")
    train_seconds: float = Field(
        default=0.0, ge=0.0, description="the least a training takes (a phone's seconds), before the slow factor"
    )
    transport: Literal["http", "ws"] = Field(
        default="http", description="http: FEG polling (PROTOCOL.md §1-§6); ws: live sessions (§9)"
    )
    abort_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of tasks a device gives up (ws: abort; http: never reported)"
    )

    @field_validator("url")
    @classmethod
    def _absolute_http_url(cls, url: str) -> str:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"url must be http(s)://HOST:PORT, got {url!r}")
        return url

    @model_validator(mode="after")
    def _backoff_range(self) -> SimulationConfig:
        if self.backoff_max < self.backoff_min:
            raise ValueError("backoff_max must not be below backoff_min")
        return self


async def run_simulation(
    config: SimulationConfig | None = None, /, *, progress: bool = False, sleep: Sleep = asyncio.sleep, **settings: Any
) -> SimulationReport:
    """Run every device until its job is over or `config.duration` passes; return the figures.

    Pass a `SimulationConfig`, or its fields as keywords (`run_simulation(url=..., job=...,
    devices=...)`). `progress` shows a live bar (terminal) or periodic log lines. `sleep` is every
    wait a device makes (stagger, retry_wait, backoff); tests pass a recording one.
    """
    if config is None:
        config = SimulationConfig(**settings)
    elif settings:
        raise TypeError("pass either a SimulationConfig or its fields as keywords, not both")
    prefix = config.device_prefix or f"sim-{secrets.token_hex(3)}"
    stats = Stats(config.seed)
    device_settings = DeviceSettings(
        base_url=URL(config.url).with_path("/"),
        job_name=config.job,
        # Phones speak JSON: the APP_DEFINED program is base64 text whatever the codec, and the iOS
        # app posts its et_tensor_diff (and its errors) as JSON.
        codec="json" if config.trainer == "executorch" else config.codec,
        keep_polling=config.keep_polling,
        result_attempts=config.result_attempts,
        backoff=(config.backoff_min, config.backoff_max),
    )
    rng = random.Random(config.seed)
    loop = asyncio.get_running_loop()
    pool = make_pool(config.trainer)
    trainers = make_trainers(config.trainer, config.devices, alpha=config.alpha, seed=config.seed, pool=pool)
    connector = aiohttp.TCPConnector(limit=config.connections, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=config.request_timeout)
    deadline = asyncio.timeout(config.duration)
    started = loop.time()
    reporter = loop.create_task(show_progress(stats, config.devices), name="sim-progress") if progress else None
    slow = round(config.slow_fraction * config.devices)  # the first ones: no draw from `rng`, runs stay as they were
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            devices: list[Device | SessionDevice] = [
                Device(
                    f"{prefix}-{i}",
                    trainer,
                    device_settings,
                    session=session,
                    stats=stats,
                    pool=pool,
                    rng=random.Random(rng.getrandbits(64)),
                    sleep=sleep,
                    slowdown=config.slow_factor if i < slow else 1.0,
                    train_seconds=config.train_seconds,
                    abort_rate=config.abort_rate,
                )
                if config.transport == "http"
                else SessionDevice(
                    f"{prefix}-{i}",
                    trainer,
                    device_settings,
                    stats=stats,
                    rng=random.Random(rng.getrandbits(64)),
                    sleep=sleep,
                    slowdown=config.slow_factor if i < slow else 1.0,
                    train_seconds=config.train_seconds,
                    abort_rate=config.abort_rate,
                )
                for i, trainer in enumerate(trainers)
            ]
            try:
                async with deadline, asyncio.TaskGroup() as group:
                    for device in devices:
                        delay = rng.uniform(0.0, config.stagger)
                        group.create_task(_start(device, delay, sleep), name=device.device_id)
            except TimeoutError:
                if not deadline.expired():
                    raise
    finally:
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        # Waits for trainings already running (they cannot be interrupted), drops queued ones.
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
    return SimulationReport.from_stats(
        stats,
        device_prefix=prefix,
        devices=config.devices,
        wall_time_s=loop.time() - started,
        timed_out=deadline.expired(),
    )


async def _start(device: Device | SessionDevice, delay: float, sleep: Sleep) -> None:
    if delay > 0:
        await sleep(delay)
    await device.run()
