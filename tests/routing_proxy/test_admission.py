"""Admission control: per-device rate, in-flight and rate bounds, jittered waits; time passed in."""

from __future__ import annotations

import random

import orjson
import pytest

from routing_proxy.admission import (
    DEVICE_RATE_REASON,
    OVERLOAD_REASON,
    AdmissionControl,
    Refusal,
    device_counter_cells,
)
from routing_proxy.cli import load_config
from routing_proxy.config import ProxyConfig

LOW, HIGH = (lambda: 0.0), (lambda: 0.999999)


def admitted(control: AdmissionControl, device_id: str, now: float, times: int) -> int:
    """How many of `times` requests at `now` get in (each admitted one released at once)."""
    count = 0
    for _ in range(times):
        if control.admit(device_id, now) is None:
            control.release()
            count += 1
    return count


def test_no_limits_admits_everything_and_counts_in_flight() -> None:
    control = AdmissionControl()
    for i in range(1000):
        assert control.admit(f"d{i % 3}", 0.0) is None
    assert control.inflight == 1000
    for _ in range(1000):
        control.release()
    assert control.inflight == 0


def test_device_rate_per_window() -> None:
    control = AdmissionControl(device_rate=5, device_window=10.0, rng=LOW)
    assert admitted(control, "phone", 100.0, 5) == 5
    assert control.admit("phone", 105.0) == Refusal(5, DEVICE_RATE_REASON)
    assert admitted(control, "other", 105.0, 5) == 5  # another device has its own budget
    # A device that ignores the wait keeps being refused until the window ends...
    assert admitted(control, "phone", 109.9, 50) == 0
    # ...and the next window starts from zero.
    assert admitted(control, "phone", 110.0, 6) == 5


def test_refused_request_is_not_in_flight() -> None:
    control = AdmissionControl(device_rate=1, rng=LOW)
    assert control.admit("phone", 0.0) is None
    assert control.admit("phone", 0.0) is not None
    assert control.inflight == 1


def test_memory_stays_fixed_under_churn_and_quiet_devices_are_not_refused() -> None:
    control = AdmissionControl(device_rate=50, device_window=60.0, slots=1 << 16)
    size = len(control._counts)
    now = 0.0
    for i in range(200_000):  # 200,000 distinct ids in one window, each asking once
        now += 0.0001
        assert control.admit(f"churn-{i}", now) is None
        control.release()
    assert len(control._counts) == size == 1 + 2 * (1 << 16)
    # ~3 requests share each counter now: a device may be counted a little high, never low.
    assert admitted(control, "quiet", now, 3) == 3
    assert 40 <= admitted(control, "noisy", now, 100) <= 50


def test_workers_sharing_the_counts_count_a_device_once() -> None:
    shared = bytearray(4 * device_counter_cells(1 << 8))
    first, second = (
        AdmissionControl(device_rate=6, device_window=10.0, slots=1 << 8, device_counts=shared) for _ in range(2)
    )
    assert admitted(first, "phone", 1.0, 4) == 4
    assert admitted(second, "phone", 2.0, 4) == 2  # its first call in this window clears nothing
    assert admitted(first, "phone", 3.0, 1) == 0
    # The next window: whichever worker comes first clears the counts for both.
    assert admitted(second, "phone", 10.5, 6) == 6
    assert admitted(first, "phone", 11.0, 1) == 0
    with pytest.raises(ValueError, match="uint32 cells"):
        AdmissionControl(device_rate=1, slots=1 << 8, device_counts=bytearray(16))


def test_workers_split_the_in_flight_and_rate_bounds() -> None:
    control = ProxyConfig(workers=2, max_inflight=5, max_request_rate=100.0).admission()
    assert control is not None
    assert control._max_inflight == 3  # rounded up
    assert control._interval == pytest.approx(1 / 50)


def test_max_inflight_refuses_polls_and_never_results() -> None:
    control = AdmissionControl(max_inflight=2, rng=LOW)
    assert control.admit("a", 0.0) is None
    control.enter()  # an upload
    assert control.admit("b", 0.0) == Refusal(5, OVERLOAD_REASON)
    control.enter()  # uploads are counted even above the bound
    assert control.inflight == 3
    control.release()
    control.release()
    assert control.admit("b", 0.0) is None


def test_max_rate_allows_one_seconds_burst_then_the_rate() -> None:
    control = AdmissionControl(max_rate=100.0, rng=LOW)
    assert admitted(control, "d", 50.0, 150) == 100
    assert control.admit("d", 50.0) == Refusal(5, OVERLOAD_REASON)
    assert admitted(control, "d", 50.1, 20) == 10  # 0.1 s at 100/s
    assert admitted(control, "d", 60.0, 150) == 100  # idle for long: a full burst again, no more


def test_max_rate_below_one_per_second() -> None:
    control = AdmissionControl(max_rate=0.5, rng=LOW)
    assert admitted(control, "d", 0.0, 3) == 1
    assert admitted(control, "d", 1.0, 3) == 0
    assert admitted(control, "d", 2.0, 3) == 1


def test_retry_wait_is_jittered_between_the_wait_and_twice_it() -> None:
    assert AdmissionControl(max_inflight=1, retry_wait=7, rng=LOW)._refuse("x").retry_wait == 7
    assert AdmissionControl(max_inflight=1, retry_wait=7, rng=HIGH)._refuse("x").retry_wait == 14
    rng = random.Random(1)
    control = AdmissionControl(max_inflight=1, retry_wait=5, rng=rng.random)
    assert control.admit("hog", 0.0) is None
    waits = set()
    for i in range(600):
        refusal = control.admit(f"d{i}", 0.0)
        assert refusal is not None
        waits.add(refusal.retry_wait)
    assert waits == set(range(5, 11))  # spread over the whole range, integers only


def test_body_is_retry_with_the_wait_in_seconds() -> None:
    # Seconds for every client, the contract's unit (PROTOCOL.md §4): never milliseconds.
    body = orjson.loads(Refusal(6, OVERLOAD_REASON).body())
    assert body == {"status": "RETRY", "retry_wait": 6, "message": OVERLOAD_REASON}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"device_rate": -1},
        {"max_inflight": -1},
        {"max_rate": -1.0},
        {"device_window": 0.0},
        {"retry_wait": 0},
        {"slots": 1000},
        {"slots": 1},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdmissionControl(**kwargs)  # type: ignore[arg-type]


def test_config_off_by_default() -> None:
    assert ProxyConfig().admission() is None


def test_cli_flags_map_onto_the_config() -> None:
    config = load_config(
        [
            "4321",
            "lcp.json",
            "--device-rate",
            "20",
            "--device-window",
            "30",
            "--max-inflight",
            "500",
            "--max-request-rate",
            "8000",
            "--refusal-retry-wait",
            "10",
        ]
    )
    assert (
        config.device_rate,
        config.device_window,
        config.max_inflight,
        config.max_request_rate,
        config.refusal_retry_wait,
    ) == (20, 30.0, 500, 8000.0, 10)
    control = config.admission()
    assert control is not None
    assert admitted(control, "d", 0.0, 25) == 20
    refusal = control.admit("d", 0.0)
    assert refusal is not None and 10 <= refusal.retry_wait <= 20


def test_device_slots_must_be_a_power_of_two_within_bounds() -> None:
    assert load_config(["4321", "lcp.json", "--device-slots", "1024"]).device_slots == 1024
    for bad in (1000, 1, 1 << 27):
        with pytest.raises(ValueError):
            ProxyConfig(device_slots=bad)
