"""Robust aggregation that keeps hierarchical FedAvg exact. Pure numpy, no I/O.

Three defences against a hostile minority of devices, and one check of every new model:

- **Weight cap.** A device's weight (`meta.num_samples`) is clamped to a cap: a device that
  claims a million samples counts like one at the cap. Clamped, not refused: an honest device with
  more data than the cap still contributes (refusing would waste its work and end an Android
  session, PROTOCOL.md §4), and a liar gains nothing over a device at the cap. The cap is fixed
  per job, or adaptive: it starts at 1 (uniform weighting, the safe choice before anything is
  known) and follows a quantile of the weights devices report (`next_bound`).
- **Norm clipping.** The whole update is scaled down to an L2 norm of at most a bound, fixed or
  adaptive (the bound follows a quantile of recent update norms, `next_bound`).
- **Value clamp.** Each value of an update is clamped to ±ratio × max(max|W|, 1) of the model
  the device trained on: no single weight can be pushed far even when clipping is off.
- **Model check.** `check_global_model` refuses a new global model that is not finite, holds a
  value above the job's limit, or moved further than the screened updates can move it; the server
  then keeps the previous weights.

What composes with partial sums (leaves send (Σ w·Δ, Σ w, n), DESIGN.md) and what does not:

- Composes: every per-device transform whose parameters are fixed per model version
  (`ScreenBounds`, decided by the server and the same at every leaf): clipping, value clamps,
  weight caps (a cap of 1 is uniform weighting). Screening happens before the sum, so any split
  over leaves sums the same screened updates. The adaptive bounds need only counts (how many
  updates were clipped, how many weights capped), and counts add across leaves.
- Does not compose: coordinate-wise median, trimmed mean, Krum / Multi-Krum, Bulyan, geometric
  median. They rank or compare individual updates, so every update of a round must be at one
  place: the server would receive each device's update instead of sums (memory and traffic ∝
  devices). A per-leaf trimmed mean is a different estimator, not an approximation: each leaf
  trims a fraction of its own batch, so the result depends on which devices land on which leaf
  and batch (a batch of one trims nothing), attackers concentrated on one leaf exceed its trim
  fraction while their share of the round is small, and averaging per-leaf means weights leaves
  by their batch sizes rather than ranking the round's updates together. It is neither exact
  nor independent of timing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from device_protocol.errors import UpdateRejected

if TYPE_CHECKING:
    from .jobs import JobSpec

ClipMode = Literal["off", "fixed", "adaptive"]
WeightCapMode = Literal["fixed", "adaptive"]

# Model values are compared against at least this scale: a model initialised at zero still lets
# updates move by `max_update_value_ratio`.
VALUE_FLOOR = 1.0
# The step check's allowance over the proven bound: float32 rounding of the new weights, and the
# float32 scaling of clipped updates (relative errors ~1e-7).
STEP_SLACK = 1.001
ROUNDING_TOLERANCE = 1e-6
# An adaptive norm bound never leaves this range: counts can push it geometrically for ever.
MIN_NORM_BOUND = 1e-12
MAX_NORM_BOUND = 1e30


@dataclass(frozen=True)
class UpdatePolicy:
    """A job's robustness settings (from `JobSpec`); see the JobSpec field descriptions."""

    weight_cap: WeightCapMode = "adaptive"
    max_num_samples: float = 1_000_000.0
    weight_cap_quantile: float = 0.5
    clip: ClipMode = "adaptive"
    clip_norm: float = 1.0
    clip_quantile: float = 0.5
    adaptive_lr: float = 1.0
    max_update_value_ratio: float | None = 10.0
    max_model_value: float = 1e4

    @classmethod
    def from_spec(cls, spec: JobSpec) -> UpdatePolicy:
        return cls(
            weight_cap=spec.weight_cap,
            max_num_samples=float(spec.max_num_samples),
            weight_cap_quantile=spec.weight_cap_quantile,
            clip=spec.clip,
            clip_norm=spec.clip_norm,
            clip_quantile=spec.clip_quantile,
            adaptive_lr=spec.adaptive_lr,
            max_update_value_ratio=spec.max_update_value_ratio,
            max_model_value=spec.max_model_value,
        )


@dataclass(frozen=True)
class ScreenBounds:
    """What one model version's results are screened with; the server decides, every leaf uses."""

    weight_cap: float
    norm_bound: float | None  # None: no clipping
    value_limit: float | None  # None: values are not clamped


@dataclass(frozen=True)
class Screened:
    """A device's update after screening, ready for `PartialSum.add_update`."""

    update: dict[str, np.ndarray]
    weight: float
    clipped: bool  # its norm was above the bound (the adaptive bound counts these)
    capped: bool  # its weight was above the cap (the adaptive cap counts these)
    clamped: bool  # some value was beyond the value limit
    norm: float  # L2 norm after the value clamp, before clipping


@dataclass(frozen=True)
class ModelLimits:
    """What a new global model must satisfy (`check_global_model`)."""

    max_abs_value: float
    max_step_norm: float | None = None  # ‖new − previous‖₂ over the whole model
    max_step_value: float | None = None  # max |new − previous| over every value


# -- leaf: one device's result -------------------------------------------------------------------
def screen_update(update: Mapping[str, np.ndarray], weight: float, bounds: ScreenBounds) -> Screened:
    """Cap the weight, clamp values and clip the L2 norm of one decoded update.

    Raises `UpdateRejected` for NaN/Inf (a float64 upload above float32's range turns into Inf
    when decoded) or a weight that is not a positive finite number. Shapes and names are checked
    by `decode_update`. Never modifies `update`; the returned arrays keep each input's dtype.
    """
    if not (math.isfinite(weight) and weight > 0.0):
        raise UpdateRejected(f"weight must be a positive finite number, got {weight!r}")
    arrays: dict[str, np.ndarray] = {}
    peak = 0.0
    clamped = False
    for name, arr in update.items():
        values = np.asarray(arr)
        if not np.isfinite(values).all():
            raise UpdateRejected(f"parameter {name!r} holds NaN or Inf")
        top = float(np.abs(values).max()) if values.size else 0.0
        if bounds.value_limit is not None and top > bounds.value_limit:
            values = np.clip(values, -bounds.value_limit, bounds.value_limit)
            top, clamped = bounds.value_limit, True
        arrays[name] = values
        peak = max(peak, top)
    norm = _l2_norm(arrays, peak)
    clipped = bounds.norm_bound is not None and norm > bounds.norm_bound
    if clipped:
        assert bounds.norm_bound is not None  # for mypy: `clipped` says so
        # The factor in float64: for a norm of 1e40 it is below float32's normal range.
        factor = bounds.norm_bound / norm
        arrays = {name: (a.astype(np.float64) * factor).astype(a.dtype) for name, a in arrays.items()}
    capped = weight > bounds.weight_cap
    return Screened(
        update=arrays,
        weight=min(weight, bounds.weight_cap),
        clipped=clipped,
        capped=capped,
        clamped=clamped,
        norm=norm,
    )


def _l2_norm(arrays: Mapping[str, np.ndarray], peak: float) -> float:
    # Scaled by the largest magnitude: squares of float64 values above ~1e154 would overflow.
    if peak == 0.0:
        return 0.0
    total = 0.0
    for arr in arrays.values():
        scaled = arr.astype(np.float64).ravel() / peak
        total += float(scaled @ scaled)
    return peak * math.sqrt(total)


# -- server: bounds per version ------------------------------------------------------------------
def next_bound(
    bound: float,
    clipped: int,
    total: int,
    target_quantile: float,
    lr: float,
    *,
    floor: float = MIN_NORM_BOUND,
    ceiling: float = MAX_NORM_BOUND,
) -> float:
    """The bound for the next version, from how many of `total` values were above `bound`.

    log b ← log b + lr · (clipped/total − (1 − q)), q = `target_quantile`.

    This is one gradient step on the quantile ("pinball") loss of θ = log b, whose gradient is
    (fraction above b) − (1 − q): the bound rises while more than 1 − q of the values exceed it
    and falls while fewer do, so it settles where a fraction q of them lie at or below it. In log
    space the step is relative (the same lr serves norms of 1e-3 and 1e3) and b stays positive;
    one step changes b at most by a factor exp(lr · max(q, 1 − q)) (lr 1, q 0.5: ×1.65 or ×0.61).
    Same rule as Andrew et al. 2021 (adaptive clipping), who write it with the unclipped fraction.

    Against a minority f of attackers: if they are always above the bound, it settles at the
    honest q/(1 − f) quantile; if always below, at the honest (q − f)/(1 − f) quantile. Only
    counts enter, and counts add across leaves. No values seen (total 0): the bound stays.
    """
    if total <= 0:
        return bound
    if not 0 <= clipped <= total:
        raise ValueError(f"clipped must be within 0..{total}, got {clipped}")
    moved = bound * math.exp(lr * (clipped / total - (1.0 - target_quantile)))
    return min(max(moved, floor), ceiling)


def value_limit(weights: Mapping[str, np.ndarray], ratio: float | None) -> float | None:
    """The largest value an update may hold: ratio × the model's largest magnitude (at least 1)."""
    if ratio is None:
        return None
    peak = max((float(np.abs(w).max()) for w in weights.values() if w.size), default=0.0)
    return ratio * max(peak, VALUE_FLOOR)


def initial_bounds(policy: UpdatePolicy, weights: Mapping[str, np.ndarray]) -> ScreenBounds:
    """Bounds for a job's first version (`weights` are its initial weights)."""
    cap = policy.max_num_samples if policy.weight_cap == "fixed" else 1.0
    return ScreenBounds(
        weight_cap=cap,
        norm_bound=None if policy.clip == "off" else policy.clip_norm,
        value_limit=value_limit(weights, policy.max_update_value_ratio),
    )


def next_bounds(
    policy: UpdatePolicy,
    bounds: ScreenBounds,
    clipped: int,
    capped: int,
    total: int,
    weights: Mapping[str, np.ndarray],
) -> ScreenBounds:
    """Bounds for the version after a round of `total` results (`clipped`, `capped` of them).

    `weights` are the weights of that next version (the previous ones if the check refused the
    new model): the value limit is relative to the model devices will train.
    """
    cap = bounds.weight_cap
    if policy.weight_cap == "adaptive":
        cap = next_bound(
            cap,
            capped,
            total,
            policy.weight_cap_quantile,
            policy.adaptive_lr,
            floor=1.0,
            ceiling=policy.max_num_samples,
        )
    norm_bound = bounds.norm_bound
    if policy.clip == "adaptive" and norm_bound is not None:
        norm_bound = next_bound(norm_bound, clipped, total, policy.clip_quantile, policy.adaptive_lr)
    return ScreenBounds(
        weight_cap=cap, norm_bound=norm_bound, value_limit=value_limit(weights, policy.max_update_value_ratio)
    )


# -- server: a leaf's batch and the new global model ---------------------------------------------
def check_partial(
    sums: Mapping[str, np.ndarray],
    weight: float,
    count: int,
    bounds: ScreenBounds,
    *,
    clipped: int = 0,
    capped: int = 0,
) -> str | None:
    """None if a leaf's partial sum (Σ w·Δ, Σ w, n) can be made of `count` results screened with
    `bounds`; else why not. Lets the server turn away one unscreened batch (a leaf without the
    screen, or a defect) instead of refusing the whole round's model.

    By the triangle inequality ‖Σ w·Δ‖ ≤ Σw · C and |Σ w·Δ| ≤ Σw · L per value; Σ w ≤ n · cap.
    """
    if not (math.isfinite(weight) and 0.0 < weight <= STEP_SLACK * count * bounds.weight_cap):
        return f"sum of weights {weight!r} is not within (0, {count} × weight cap {bounds.weight_cap:.4g}]"
    if not (0 <= clipped <= count and 0 <= capped <= count):
        return f"clipped {clipped} and capped {capped} must be counts within 0..{count}"
    peak = 0.0
    for name, arr in sums.items():
        if not np.isfinite(arr).all():
            return f"sum of parameter {name!r} holds NaN or Inf"
        if arr.size:
            peak = max(peak, float(np.abs(arr).max()))
    if bounds.value_limit is not None and peak > STEP_SLACK * weight * bounds.value_limit:
        return f"a summed value of {peak:.4g} is more than {weight:.4g} results within ±{bounds.value_limit:.4g} can sum to"
    if bounds.norm_bound is not None:
        total = _l2_norm(sums, peak)
        if total > STEP_SLACK * weight * bounds.norm_bound:
            return f"the sum's norm {total:.4g} is more than {weight:.4g} results of norm ≤ {bounds.norm_bound:.4g} can sum to"
    return None


def model_limits(policy: UpdatePolicy, bounds: ScreenBounds, server_lr: float) -> ModelLimits:
    """Limits for the model a round screened with `bounds` produces.

    A weighted mean of updates each of norm ≤ C has norm ≤ C, and each of values ≤ L has values
    ≤ L, so W ← W + η·mean moves W by at most η·C (and η·L per value). A larger step means some
    result was not screened (a leaf without the screen, or a defect): the model is refused.
    """
    return ModelLimits(
        max_abs_value=policy.max_model_value,
        max_step_norm=None if bounds.norm_bound is None else STEP_SLACK * server_lr * bounds.norm_bound,
        max_step_value=None if bounds.value_limit is None else STEP_SLACK * server_lr * bounds.value_limit,
    )


def check_global_model(
    new: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray], limits: ModelLimits
) -> str | None:
    """None if `new` may be published after `previous`; else why not (the server keeps `previous`)."""
    if set(new) != set(previous):
        return f"parameters {sorted(new)} differ from the previous model's {sorted(previous)}"
    step_squares = 0.0
    size_squares = 0.0
    step_peak = 0.0
    for name, prev in previous.items():
        arr = np.asarray(new[name])
        if arr.shape != prev.shape:
            return f"parameter {name!r} has shape {list(arr.shape)}, previously {list(prev.shape)}"
        if not np.isfinite(arr).all():
            return f"parameter {name!r} holds NaN or Inf"
        top = float(np.abs(arr).max()) if arr.size else 0.0
        if top > limits.max_abs_value:
            return f"parameter {name!r} holds a value of magnitude {top:.4g}, above the job's limit {limits.max_abs_value:.4g}"
        # Finite and below max_abs_value (≤ ~1e300 in practice): the float64 squares cannot overflow.
        step = arr.astype(np.float64) - prev.astype(np.float64)
        step_squares += float(np.vdot(step, step))
        size_squares += float(np.vdot(arr, arr.astype(np.float64))) + float(np.vdot(prev, prev.astype(np.float64)))
        if step.size:
            step_peak = max(step_peak, float(np.abs(step).max()))
    tolerance = ROUNDING_TOLERANCE * math.sqrt(size_squares)
    step_norm = math.sqrt(step_squares)
    if limits.max_step_norm is not None and step_norm > limits.max_step_norm + tolerance:
        return f"the model moved by {step_norm:.4g} (L2), more than screened updates can move it ({limits.max_step_norm:.4g})"
    if limits.max_step_value is not None and step_peak > limits.max_step_value + tolerance:
        return f"a value moved by {step_peak:.4g}, more than screened updates can move it ({limits.max_step_value:.4g})"
    return None
