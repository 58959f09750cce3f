"""Admission control: refuse a device that polls too fast, and any new request while overloaded.

Pure (no I/O, time passed in as `now`, monotonic seconds). One `AdmissionControl` per proxy worker;
every check is O(1) and the memory is fixed at construction, however many device ids churn through.
The workers of one proxy count devices in one shared buffer (`device_counter_cells`), so a device
that reconnects to another worker is still counted once.

The refusal is `RETRY` with a jittered `retry_wait` (PROTOCOL.md §4), so a healthy client keeps
working and a crowd refused together does not come back together.

**The unit of `retry_wait`** is integer seconds, the contract's unit (PROTOCOL.md §4), for every
client. Android reads the number as milliseconds, so no value is a sane wait under both readings;
writing milliseconds for Android would break the contract and keep any client that reads it as
seconds away for hours. So the wait is sane for iOS, NVFlare's simulator and ours (between
`retry_wait` and twice that, 5–10 s by default, like both apps' own pause on errors), and an
Android device that comes back after milliseconds meets the per-device limit again: refusing it
costs the proxy a few microseconds and never reaches a leaf.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

import orjson

# Counters per row of the device sketch: 2 rows × 2**16 slots of 4 bytes, 512 kB whatever the churn
# (`--device-slots` sizes it for larger populations, up to 2 rows × 2**26: 512 MiB).
DEFAULT_SLOTS = 1 << 16
MAX_SLOTS = 1 << 26

DEVICE_RATE_REASON = "too many requests from this device"
OVERLOAD_REASON = "gateway busy"


def device_counter_cells(slots: int = DEFAULT_SLOTS) -> int:
    """How many uint32 cells a shared device-count buffer needs: the window's number, two rows."""
    return 1 + 2 * slots


class Refusal(NamedTuple):
    """A refused request: answer `RETRY` with this wait (seconds) and reason."""

    retry_wait: int
    reason: str

    def body(self) -> bytes:
        """The JSON answer to write with HTTP 200 (PROTOCOL.md §4: RETRY is never an HTTP error)."""
        return orjson.dumps({"status": "RETRY", "retry_wait": self.retry_wait, "message": self.reason})


class AdmissionControl:
    """Per-device rate limit, plus a bound on requests in flight and on the request rate.

    Args:
        device_rate: requests one device may make per `device_window` seconds; 0 → no limit.
        device_window: length of a device-rate window in seconds.
        max_inflight: requests admitted but not yet released; 0 → no bound.
        max_rate: requests per second admitted in total (bursts up to one second's worth, at
            least one request); 0 → no bound.
        retry_wait: shortest wait (s) sent with a refusal; waits are spread over
            `[retry_wait, 2 * retry_wait]`.
        slots: counters per row of the device sketch (a power of two).
        rng: uniform [0, 1) source of the jitter (tests pass a fixed one).
        device_counts: a zeroed buffer of `device_counter_cells(slots)` uint32 cells that other
            workers' controls share (they must hash strings alike: one PYTHONHASHSEED); None →
            a buffer of this control's own.

    Per-device counts live in a count-min sketch: two rows of `slots` counters, each device
    hashed to one counter per row, its count the smaller of the two. A device is never counted
    low; it is counted high only when both its counters are shared with busy devices (rare with
    slots ≫ devices active in a window), so a well-behaved device is almost never refused for
    another's sake. Windows are fixed (a device can squeeze up to 2 × `device_rate` into a
    `device_window` straddling a boundary), and a window's counts are dropped wholesale when the
    next begins, so memory never grows and a call's cost is O(1) (amortized over the window for
    the one call that starts it). `hash()` of a
    str is salted per process (per proxy, for workers), so which ids collide cannot be worked out
    from outside. Workers sharing the buffer update it without locks: two increments of one cell
    at the same instant may count as one, a few requests more admitted, never fewer. The counts
    stay accurate while the requests of one window are few next to `slots × device_rate` (at
    10,000 requests/s, a 60 s window and `device_rate` 30: 600,000 ≪ 2,000,000); size `slots`
    up for more traffic or a tighter limit.
    """

    def __init__(
        self,
        *,
        device_rate: int = 0,
        device_window: float = 60.0,
        max_inflight: int = 0,
        max_rate: float = 0.0,
        retry_wait: int = 5,
        slots: int = DEFAULT_SLOTS,
        rng: Callable[[], float] = random.random,
        device_counts: bytearray | memoryview | None = None,
    ) -> None:
        if device_rate < 0 or max_inflight < 0 or max_rate < 0:
            raise ValueError("limits must be ≥ 0 (0 turns a limit off)")
        if device_window <= 0 or retry_wait < 1:
            raise ValueError("device_window must be > 0 and retry_wait ≥ 1")
        if slots < 2 or slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self._device_rate = device_rate
        self._window = device_window
        self._window_end = float("-inf")
        self._mask = slots - 1
        self._row_b_start = 1 + slots
        # Cell 0: the number of the window the rows count; then row a, then row b. Allocated only
        # when a device limit is set: a proxy without one pays nothing.
        cells = device_counter_cells(slots) if device_rate else 0
        if device_counts is None:
            device_counts = bytearray(4 * cells)
        self._counts = memoryview(device_counts).cast("B").cast("I")
        if len(self._counts) != cells:
            raise ValueError(f"device_counts must hold {cells} uint32 cells")
        self._zeros = memoryview(bytes(4 * (cells - 1))).cast("I") if cells else self._counts
        self._max_inflight = max_inflight
        self.inflight = 0
        self._interval = 1.0 / max_rate if max_rate else 0.0
        self._tolerance = (max(max_rate, 1.0) - 1.0) * self._interval
        self._tat = float("-inf")
        self._retry_wait = retry_wait
        self._rng = rng

    def admit(self, device_id: str, now: float) -> Refusal | None:
        """Admit a request (`None`; call `release()` once it is answered) or refuse it.

        For /job, /task and /selection. A refused request is not in flight: no `release()`.
        Refused requests count towards the device's rate, so a device that ignores the wait
        stays refused until it slows down.
        """
        if self._device_rate:
            if now >= self._window_end:
                self._roll(now)
            h = hash(device_id)
            mask = self._mask
            counts = self._counts
            i = 1 + (h & mask)
            a = counts[i] + 1
            counts[i] = a
            i = self._row_b_start + ((h >> 32) & mask)
            b = counts[i] + 1
            counts[i] = b
            if a > self._device_rate and b > self._device_rate:  # the smaller count is over
                return self._refuse(DEVICE_RATE_REASON)
        if self._max_inflight and self.inflight >= self._max_inflight:
            return self._refuse(OVERLOAD_REASON)
        if self._interval:
            # GCRA, a token bucket held as one number: the time the schedule of admitted
            # requests has reached; it may run ahead of now by at most one second's worth.
            tat = self._tat
            if tat <= now:
                self._tat = now + self._interval
            elif tat - now > self._tolerance:
                return self._refuse(OVERLOAD_REASON)
            else:
                self._tat = tat + self._interval
        self.inflight += 1
        return None

    def enter(self) -> None:
        """Count a request that must not be refused (a /result) as in flight; `release()` it.

        Android ends its session on any /result answer but OK (PROTOCOL.md §4), so uploads are
        never refused here; they still count, so polls are refused while uploads fill the proxy.
        """
        self.inflight += 1

    def release(self) -> None:
        """One admitted or entered request has been answered."""
        self.inflight -= 1

    def _roll(self, now: float) -> None:
        # The old window is dropped wholesale: one fill of 2 × slots counters (a memset) per
        # window, instead of any per-device bookkeeping on every call. The first worker into a
        # window clears the rows for all (monotonic time is one clock for every process).
        window = int(now // self._window)
        counts = self._counts
        if counts[0] != window & 0xFFFFFFFF:
            counts[1:] = self._zeros
            counts[0] = window & 0xFFFFFFFF
        self._window_end = (window + 1) * self._window

    def _refuse(self, reason: str) -> Refusal:
        wait = self._retry_wait
        return Refusal(wait + int(self._rng() * (wait + 1)), reason)
