"""Whole device sessions against a real aiohttp FEG server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import numpy as np

from edge_gateway import models
from edge_gateway.simulator.runner import SimulationConfig, run_simulation

from .conftest import StartFeg
from .fake_feg import JOB_NAME, recording_sleep


def config(url: str, **overrides: Any) -> SimulationConfig:
    options: dict[str, Any] = {
        "url": url,
        "job": JOB_NAME,
        "devices": 3,
        "stagger": 0.0,
        "device_prefix": "dev",
        "backoff_min": 0.01,
        "backoff_max": 0.02,
    }
    return SimulationConfig(**{**options, **overrides})


async def test_full_session_counts_order_and_cookie_echo(start_feg: StartFeg, codec: str) -> None:
    feg, url = await start_feg(tasks_per_device=2)
    report = await run_simulation(config(url, codec=codec), sleep=recording_sleep(feg))

    assert feg.problems == []
    assert (report.devices, report.devices_finished, report.jobs_joined, report.jobs_finished) == (3, 3, 3, 3)
    assert (report.tasks_received, report.results_accepted, report.results_not_counted) == (6, 6, 0)
    assert (report.results_refused, report.results_abandoned, report.training_errors) == (0, 0, 0)
    assert (report.retries, report.transport_errors, report.invalid_replies, report.sessions_refused) == (3, 0, 0, 0)
    assert report.requests == 3 * (1 + 4 + 2)  # per device: /job, 4 × /task, 2 × /result
    assert not report.timed_out
    assert {name: lat.count for name, lat in report.latency_ms.items()} == {"job": 3, "task": 12, "result": 6}
    # retry_wait (1 s) is slept right after the RETRY, before the next /task, and nowhere else.
    for i in range(3):
        assert feg.events[f"dev-{i}"] == [
            "job:OK",
            "task:RETRY",
            "sleep:1",
            "task:OK",
            "result:OK",
            "task:OK",
            "result:OK",
            "task:NO_JOB",
        ]
    # Each result echoes its task's cookie (checked by the server) and each /task carries the
    # previous task's cookie, except after a RETRY, as iOS does.
    assert len(feg.results) == 6 and {r.task_id for r in feg.results} == set(feg.issued)
    cookies = feg.issued
    for i in range(3):
        t0, t1 = sorted((tid for tid in cookies if tid.startswith(f"dev-{i}/")), key=lambda t: t.split("/")[1])
        assert feg.task_cookies[f"dev-{i}"] == [None, None, cookies[t0], cookies[t1]]


async def test_codec_on_the_wire(start_feg: StartFeg, codec: str) -> None:
    feg, url = await start_feg(tasks_per_device=1, retry_first_task=False)
    report = await run_simulation(config(url, codec=codec, devices=2))

    assert feg.problems == []
    assert report.results_accepted == 2
    wanted = "application/msgpack" if codec == "msgpack" else "application/json"
    assert {r.content_type for r in feg.results} == {wanted}
    assert all(("application/msgpack" in accept) == (codec == "msgpack") for accept in feg.accepts)
    for result in feg.results:
        assert set(result.diff) == {"w", "b"} and result.diff["w"].shape == (3, 2)
        assert 1 <= result.weight <= 100 and all(np.abs(d).max() > 0 for d in result.diff.values())


async def test_headers_follow_the_ios_format(start_feg: StartFeg) -> None:
    feg, url = await start_feg(tasks_per_device=1, retry_first_task=False)
    await run_simulation(config(url, devices=1, device_prefix="hdr"))

    assert feg.problems == []
    assert feg.headers[0] == {
        "X-Flare-Device-ID": "hdr-0",
        "X-Flare-Device-Info": "device_id=hdr-0&app_name=edgefl-sim&app_version=1.0&platform=sim",
        "X-Flare-User-Info": "",
        "Content-Type": "application/json",
    }
    assert len(feg.headers) == 4 and all(h["X-Flare-Device-ID"] == "hdr-0" for h in feg.headers)


async def test_result_retry_resends_the_same_body_then_not_counted_then_refused(
    start_feg: StartFeg, codec: str
) -> None:
    def result_script(device: str, n: int) -> dict[str, Any] | None:
        ids = {"task_name": "train"}
        return [
            {"status": "RETRY", "retry_wait": 1, "message": "server unavailable: send the result again", **ids},
            None,
            {"status": "OK", "message": "late result (round closed): not counted", "counted": False, **ids},
            {"status": "ERROR", "message": "all-zero diff", **ids},
        ][n]

    feg, url = await start_feg(tasks_per_device=3, retry_first_task=False, scripts={"result": result_script})
    report = await run_simulation(config(url, codec=codec, devices=2), sleep=recording_sleep(feg))

    assert feg.problems == []
    assert (report.tasks_received, report.results_accepted, report.results_not_counted, report.results_refused) == (
        6,
        2,
        2,
        2,
    )
    assert (report.retries, report.results_abandoned, report.devices_finished) == (2, 0, 2)
    for i in range(2):
        assert feg.events[f"dev-{i}"] == [
            "job:OK",
            "task:OK",
            "result:RETRY",
            "sleep:1",
            "result:OK",
            "task:OK",
            "result:OK",
            "task:OK",
            "result:ERROR",
            "task:NO_JOB",
        ]
        first, resent = [r for r in feg.results if r.device_id == f"dev-{i}"][:2]
        assert first.task_id == resent.task_id and first.body == resent.body


async def test_result_given_up_after_the_bounded_resends(start_feg: StartFeg) -> None:
    feg, url = await start_feg(
        tasks_per_device=1,
        retry_first_task=False,
        scripts={"result": lambda device, n: {"status": "RETRY", "retry_wait": 2}},
    )
    report = await run_simulation(config(url, devices=1, result_attempts=3), sleep=recording_sleep(feg, real=False))

    assert (report.results_abandoned, report.retries, report.results_accepted) == (1, 3, 0)
    assert feg.events["dev-0"] == [
        "job:OK",
        "task:OK",
        "result:RETRY",
        "sleep:2",
        "result:RETRY",
        "sleep:2",
        "result:RETRY",
        "task:NO_JOB",
    ]


async def test_job_wait_and_http_errors_back_off_without_crashing(start_feg: StartFeg) -> None:
    job_answers: list[dict[str, Any] | int | None] = [
        {"status": "NO_JOB"},
        {"status": "RETRY", "retry_wait": 3},
        503,
        None,
    ]
    feg, url = await start_feg(
        tasks_per_device=1,
        retry_first_task=False,
        scripts={
            "job": lambda device, n: job_answers[n],
            "task": lambda device, n: 500 if n == 0 else None,
        },
    )
    report = await run_simulation(
        config(url, devices=1, backoff_min=0.5, backoff_max=0.75), sleep=recording_sleep(feg, real=False)
    )

    assert (report.no_job, report.retries, report.transport_errors, report.jobs_joined, report.results_accepted) == (
        1,
        1,
        2,
        1,
        1,
    )
    events = feg.events["dev-0"]
    # NO_JOB without retry_wait waits the iOS default of 5 s; 5xx answers are backed off with jitter.
    assert events[:5] == ["job:NO_JOB", "sleep:5", "job:RETRY", "sleep:3", "job:HTTP503"]
    assert events[6:8] == ["job:OK", "task:HTTP500"]
    assert events[9:] == ["task:OK", "result:OK", "task:NO_JOB"]
    backoffs = [events[5], events[8]]
    assert all(e.startswith("sleep:") and 0.5 <= float(e.removeprefix("sleep:")) <= 0.75 for e in backoffs)


async def test_unreachable_gateway_counts_transport_errors_until_the_deadline() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0 if len(waits) < 3 else 3600)  # the third backoff outlasts the deadline

    report = await run_simulation(config(f"http://127.0.0.1:{port}", devices=1, duration=0.5), sleep=sleep)

    assert (report.transport_errors, report.requests, report.jobs_joined) == (3, 3, 0)
    assert report.timed_out and report.devices_finished == 0
    assert "job" not in report.latency_ms


async def test_error_on_task_ends_the_session(start_feg: StartFeg) -> None:
    feg, url = await start_feg(
        retry_first_task=False, scripts={"task": lambda d, n: {"status": "ERROR", "message": "no"}}
    )
    report = await run_simulation(config(url, devices=2))

    assert (report.sessions_refused, report.tasks_received, report.devices_finished) == (2, 0, 2)
    assert feg.events["dev-0"] == ["job:OK", "task:ERROR"]


async def test_keep_polling_returns_to_job_after_the_job_ends(start_feg: StartFeg) -> None:
    job_answers = [None, None, {"status": "DONE"}]
    feg, url = await start_feg(
        tasks_per_device=1, retry_first_task=False, scripts={"job": lambda device, n: job_answers[n]}
    )
    report = await run_simulation(config(url, devices=1, keep_polling=True), sleep=recording_sleep(feg, real=False))

    assert (report.jobs_joined, report.jobs_finished, report.results_accepted, report.devices_finished) == (2, 3, 1, 1)
    assert feg.events["dev-0"] == [
        "job:OK",
        "task:OK",
        "result:OK",
        "task:NO_JOB",
        "sleep:5",
        "job:OK",
        "task:NO_JOB",
        "sleep:5",
        "job:DONE",
    ]


async def test_invalid_task_data_is_reported_as_an_error_result(start_feg: StartFeg, codec: str) -> None:
    def task_script(device: str, n: int) -> dict[str, Any] | None:
        if n:
            return None
        return {
            "status": "OK",
            "task_id": "phone-task",
            "task_name": "train",
            "cookie": {"c": 1},
            "task_data": {"kind": "APP_DEFINED", "data": "UEsDBA==", "meta": {}},
        }

    feg, url = await start_feg(
        tasks_per_device=0,
        retry_first_task=False,
        scripts={
            "task": task_script,
            "result": lambda d, n: {"status": "ERROR", "message": "device reported a training error"},
        },
    )
    report = await run_simulation(config(url, devices=1, codec=codec))

    assert (report.training_errors, report.results_refused, report.devices_finished) == (1, 1, 1)
    assert any("device reported a training error" in problem for problem in feg.problems)
    assert feg.events["dev-0"] == ["job:OK", "task:OK", "result:ERROR", "task:NO_JOB"]


async def test_pytorch_devices_train_on_their_own_shards(start_feg: StartFeg) -> None:
    weights = models.initial_weights("digits", seed=0)
    meta = {"model": "digits", "epochs": 1, "lr": 0.05, "batch_size": 32}
    feg, url = await start_feg(tasks_per_device=1, retry_first_task=False, weights=weights, meta=meta)
    report = await run_simulation(config(url, devices=2, trainer="pytorch", codec="msgpack", alpha=0.5, seed=5))

    assert feg.problems == []  # the server checked each diff against the digits shapes
    assert (report.results_accepted, report.training_errors) == (2, 0)
    _, y = models.load_dataset("digits", "train", seed=5)
    sizes = [len(part) for part in models.dirichlet_partition(y, 2, 0.5, seed=5)]
    assert sorted((r.device_id, r.weight) for r in feg.results) == [("dev-0", sizes[0]), ("dev-1", sizes[1])]


async def test_settings_as_keywords(start_feg: StartFeg) -> None:
    feg, url = await start_feg(tasks_per_device=1, retry_first_task=False)
    report = await run_simulation(url=url, job=JOB_NAME, devices=2, stagger=0.0, codec="msgpack")
    assert report.results_accepted == 2 and report.device_prefix.startswith("sim-")
    assert sorted(feg.events) == [f"{report.device_prefix}-0", f"{report.device_prefix}-1"]


async def test_slow_devices_take_slow_factor_times_their_training_time(start_feg: StartFeg) -> None:
    feg, url = await start_feg(tasks_per_device=1)
    settings = config(url, devices=4, slow_fraction=0.5, slow_factor=3.0)
    report = await run_simulation(settings, sleep=recording_sleep(feg, real=False))
    assert report.results_accepted == 4

    def waits_while_training(device: str) -> list[str]:
        events = feg.events[device]
        return events[events.index("task:OK") + 1 : events.index("result:OK")]

    # The first half are slow: one extra wait between their task and their result, none for the rest.
    assert [len(waits_while_training(f"dev-{i}")) for i in range(4)] == [1, 1, 0, 0]
    assert all(w.startswith("sleep:") for i in (0, 1) for w in waits_while_training(f"dev-{i}"))


async def test_a_training_takes_at_least_train_seconds_before_the_slow_factor(start_feg: StartFeg) -> None:
    feg, url = await start_feg(tasks_per_device=1)
    settings = config(url, devices=4, slow_fraction=0.5, slow_factor=3.0, train_seconds=0.5)
    report = await run_simulation(settings, sleep=recording_sleep(feg, real=False))
    assert report.results_accepted == 4

    def training_wait(device: str) -> float:
        events = feg.events[device]
        (wait,) = events[events.index("task:OK") + 1 : events.index("result:OK")]
        return float(wait.removeprefix("sleep:"))

    # Synthetic diffs compute in well under 0.1 s: the floor, then 3× it for the slow half.
    assert all(1.4 < training_wait(f"dev-{i}") <= 1.5 for i in (0, 1))
    assert all(0.4 < training_wait(f"dev-{i}") <= 0.5 for i in (2, 3))
