"""Async FedBuff, pure: per-trained-version buffers, staleness weights, the step. No I/O.

The rule (DESIGN.md, issue 12): with current version c, once `buffer_size` results are buffered
the server makes version c+1:

    W ← W + η · Σᵢ s(τᵢ)·wᵢ·Δᵢ / Σᵢ wᵢ,    τᵢ = c − vᵢ,    s(τ) = 1/√(1+τ)

vᵢ is the version result i was trained on and c is taken *before* the step, so a fresh result
(vᵢ = c) has τ = 0 and weight 1. wᵢ is the device's sample count, in numerator and denominator.

Why it stays exact over leaves. A leaf cannot know c at the moment of the step, so it sums per
trained-on version v: a batch is (v, Σ wᵢΔᵢ, Σ wᵢ, task ids). The server adds batches into one
bucket per v: S_v = Σ wᵢΔᵢ, W_v = Σ wᵢ. c changes only at a step and a step consumes every
buffered result, so all results of bucket v share τ = c − v at their step, and

    Σᵢ s(τᵢ)·wᵢΔᵢ = Σ_v s(c−v)·S_v        Σᵢ wᵢ = Σ_v W_v

Both are sums of per-bucket sums, which are sums of per-batch sums: any split of the same results
over leaves and batches, in any order, gives the same step up to float64 summation order (buckets
fill in arrival order; the step combines them in version order).

The denominator is the raw Σ wᵢ, as the issue writes, not Σ s(τᵢ)·wᵢ: a buffer of stale results
moves the model less than a fresh one. (With the weighted denominator, a buffer whose results all
share one τ would move it exactly as far as a fresh buffer.)

Rules, each tested in tests/edge_gateway/test_fedbuff.py:
- Late: c − v > max_staleness when offered → not counted, reported back. c stays put until the
  step that consumes the buffer, so an accepted result is never late at its step and its bucket
  is never dropped before it (the incumbent could prune a bucket it had counted results into).
- A batch is never split: a step is due once the buffered count reaches `buffer_size`, so a step
  may apply up to one batch's worth (minus one) more than `buffer_size` results.
- Duplicates by task id: the batch is refused whole, naming them (as in sync mode: the leaf sends
  again without them). Ids stay remembered after their step while a re-send could still count,
  i.e. while their trained version is within `max_staleness` of c; older ones would be late
  anyway. So memory holds at most the last max_staleness+1 steps' ids plus the buffer's.
- Restart: like a sync round's partial sum the buffer is not checkpointed. Each leaf keeps what the
  server took until the server serves `Accepted.applies_in` (written to disk before any leaf
  hears of it), and re-sends it to a restarted server. `state()` holds c and the ids already
  applied, never buffered ones: a buffered result lost with the process must count when re-sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fedavg import PartialSum


def staleness_weight(tau: int) -> float:
    """s(τ) = 1/√(1+τ): 1 for a result trained on the current version."""
    if tau < 0:
        raise ValueError(f"staleness {tau} < 0: a result from a version not made yet")
    return 1.0 / math.sqrt(1.0 + tau)


def is_late(trained_on: int, current: int, max_staleness: int) -> bool:
    """Whether a result trained on `trained_on` may no longer count at version `current`."""
    return current - trained_on > max_staleness


@dataclass(frozen=True)
class Accepted:
    staleness: int
    buffered: int  # results in the buffer, this batch's included
    applies_in: int  # the version the batch becomes part of: leaves keep it until that one is served


@dataclass(frozen=True)
class Late:
    staleness: int
    current: int


@dataclass(frozen=True)
class Duplicate:
    task_ids: tuple[str, ...]  # counted before, or repeated within the batch


@dataclass(frozen=True)
class Refused:
    reason: str


OfferOutcome = Accepted | Late | Duplicate | Refused


@dataclass(frozen=True)
class StepReport:
    version: int  # the version this step made
    results: int
    weight: float  # Σ wᵢ, the denominator
    by_staleness: dict[int, int]  # τ -> results applied with it


@dataclass
class _Bucket:
    partial: PartialSum
    task_ids: list[str]


class FedBuffBuffer:
    """One async job's results since its last step, one bucket per trained-on version."""

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        buffer_size: int,
        max_staleness: int,
        version: int = 0,
        applied_ids: Mapping[int, Sequence[str]] | None = None,
    ) -> None:
        if buffer_size < 1 or max_staleness < 0:
            raise ValueError("buffer_size must be ≥ 1 and max_staleness ≥ 0")
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.buffer_size = buffer_size
        self.max_staleness = max_staleness
        self.version = version
        self._buckets: dict[int, _Bucket] = {}
        self.buffered = 0
        # Ids of applied results by trained-on version, forgotten once that version is late.
        self._applied: dict[int, list[str]] = {}
        self._seen: set[str] = set()  # applied and buffered ids: the duplicate check
        for trained_on, ids in (applied_ids or {}).items():
            self._remember(trained_on, ids)
        self._forget_late()

    # -- results ------------------------------------------------------------------------------
    def offer(
        self, trained_on: int, sums: Mapping[str, np.ndarray], weight: float, task_ids: Sequence[str]
    ) -> OfferOutcome:
        """Buffer one batch (Σ wᵢΔᵢ, Σ wᵢ of `task_ids`, all trained on `trained_on`) or say why not."""
        tau = self.version - trained_on
        if tau < 0:
            return Refused(f"results for model version {trained_on}; the newest is {self.version}")
        if is_late(trained_on, self.version, self.max_staleness):
            return Late(staleness=tau, current=self.version)
        repeated = repeated_ids(task_ids)
        if repeated or any(t in self._seen for t in task_ids):
            return Duplicate(tuple(repeated or [t for t in task_ids if t in self._seen]))
        if not task_ids or not (math.isfinite(weight) and weight > 0.0):
            return Refused("a batch needs task ids and a positive, finite weight")
        if set(sums) != set(self.shapes) or any(sums[k].shape != self.shapes[k] for k in self.shapes):
            return Refused("batch does not match the model's parameters")
        bucket = self._buckets.get(trained_on)
        if bucket is None:
            bucket = self._buckets[trained_on] = _Bucket(PartialSum(self.shapes), [])
        bucket.partial.add_partial(sums, weight, len(task_ids))
        bucket.task_ids.extend(task_ids)
        self._seen.update(task_ids)
        self.buffered += len(task_ids)
        return Accepted(staleness=tau, buffered=self.buffered, applies_in=self.version + 1)

    def due(self) -> bool:
        return self.buffered >= self.buffer_size

    def step(
        self, weights: Mapping[str, np.ndarray], server_lr: float = 1.0
    ) -> tuple[dict[str, np.ndarray], StepReport]:
        """Apply every buffered result: W + η · Σ_v s(c−v)·S_v / Σ_v W_v in float64; c becomes c+1."""
        if not self._buckets:
            raise ValueError("no results to apply")
        versions = sorted(self._buckets)  # a fixed order: the result does not depend on arrival
        total = sum(self._buckets[v].partial.weight for v in versions)
        new = {}
        for name, current in weights.items():
            acc = np.zeros(self.shapes[name], dtype=np.float64)
            for v in versions:
                acc += staleness_weight(self.version - v) * self._buckets[v].partial.sums[name]
            new[name] = (current.astype(np.float64) + server_lr * acc / total).astype(current.dtype)
        report = StepReport(
            version=self.version + 1,
            results=self.buffered,
            weight=total,
            by_staleness={self.version - v: self._buckets[v].partial.count for v in reversed(versions)},
        )
        for v in versions:
            self._applied.setdefault(v, []).extend(self._buckets[v].task_ids)
        self._buckets = {}
        self.buffered = 0
        self.version += 1
        self._forget_late()
        return new, report

    # -- checkpoint ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Plain data (JSON-able) to checkpoint with the weights of `version`: buffered ids left out."""
        return {"version": self.version, "applied_ids": [[v, list(ids)] for v, ids in sorted(self._applied.items())]}

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], buffer_size: int, max_staleness: int
    ) -> FedBuffBuffer:
        return cls(
            shapes,
            buffer_size,
            max_staleness,
            version=int(state["version"]),
            applied_ids={int(v): [str(t) for t in ids] for v, ids in state["applied_ids"]},
        )

    def _remember(self, trained_on: int, ids: Sequence[str]) -> None:
        self._applied.setdefault(trained_on, []).extend(ids)
        self._seen.update(ids)

    def _forget_late(self) -> None:
        for v in [v for v in self._applied if is_late(v, self.version, self.max_staleness)]:
            self._seen.difference_update(self._applied.pop(v))


def repeated_ids(ids: Sequence[str]) -> list[str]:
    """The ids that stand more than once in `ids` (a batch holding one is refused whole)."""
    seen: set[str] = set()
    repeated = []
    for task_id in ids:
        if task_id in seen:
            repeated.append(task_id)
        seen.add(task_id)
    return repeated
