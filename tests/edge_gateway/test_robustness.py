"""Robust aggregation: screening per device keeps hierarchical FedAvg exact and a hostile minority out."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from device_protocol.errors import UpdateRejected
from device_protocol.tensors import decode_update, tensors_to_binary
from edge_gateway.fedavg import PartialSum
from edge_gateway.jobs import JobSpec
from edge_gateway.models import dirichlet_partition, evaluate, initial_weights, load_dataset, train_local
from edge_gateway.robustness import (
    ModelLimits,
    ScreenBounds,
    UpdatePolicy,
    check_global_model,
    check_partial,
    initial_bounds,
    model_limits,
    next_bound,
    next_bounds,
    screen_update,
    value_limit,
)

SHAPES = {"w": (3, 4), "b": (4,)}
NO_LIMITS = ScreenBounds(weight_cap=math.inf, norm_bound=None, value_limit=None)


def norm(update):
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update.values()))


def random_update(rng, scale=1.0):
    return {k: (rng.normal(size=s) * scale).astype(np.float32) for k, s in SHAPES.items()}


# -- screen_update --------------------------------------------------------------------------------
def test_weight_is_clamped_to_the_cap_not_refused():
    update = random_update(np.random.default_rng(0))
    capped = screen_update(update, 1_000_000.0, ScreenBounds(weight_cap=20.0, norm_bound=None, value_limit=None))
    assert capped.weight == 20.0 and capped.capped
    kept = screen_update(update, 7.0, ScreenBounds(weight_cap=20.0, norm_bound=None, value_limit=None))
    assert kept.weight == 7.0 and not kept.capped


def test_clipping_scales_the_whole_update_to_the_bound_keeping_its_direction():
    update = random_update(np.random.default_rng(1), scale=10.0)
    before = norm(update)
    screened = screen_update(update, 3.0, ScreenBounds(weight_cap=100.0, norm_bound=2.0, value_limit=None))
    assert screened.clipped and screened.norm == pytest.approx(before)
    assert norm(screened.update) == pytest.approx(2.0, rel=1e-6)
    for k in SHAPES:
        assert screened.update[k].dtype == np.float32
        np.testing.assert_allclose(screened.update[k], update[k] * (2.0 / before), rtol=1e-6)


def test_an_update_within_every_bound_passes_unchanged_and_is_not_modified():
    update = random_update(np.random.default_rng(2), scale=0.01)
    for arr in update.values():
        arr.flags.writeable = False  # as from_binary hands them over
    screened = screen_update(update, 5.0, ScreenBounds(weight_cap=10.0, norm_bound=100.0, value_limit=1.0))
    assert not (screened.clipped or screened.capped or screened.clamped)
    for k in SHAPES:
        np.testing.assert_array_equal(screened.update[k], update[k])


def test_values_beyond_the_limit_are_clamped_before_the_norm_is_taken():
    update = {"w": np.zeros((3, 4), np.float32), "b": np.array([5.0, -5.0, 0.1, 0.0], np.float32)}
    screened = screen_update(update, 1.0, ScreenBounds(weight_cap=1.0, norm_bound=None, value_limit=0.5))
    assert screened.clamped and not screened.clipped
    assert screened.update["b"].dtype == np.float32
    np.testing.assert_array_equal(screened.update["b"], np.array([0.5, -0.5, 0.1, 0.0], np.float32))
    assert screened.norm == pytest.approx(math.sqrt(0.5**2 * 2 + 0.1**2), rel=1e-6)


@pytest.mark.parametrize("dtype, value", [(np.float32, 3e38), (np.float64, 1e300)])
def test_huge_finite_values_are_clipped_to_a_finite_bounded_update(dtype, value):
    update = {k: np.full(s, value, dtype) for k, s in SHAPES.items()}
    update["b"][0] = -value
    screened = screen_update(update, 1.0, ScreenBounds(weight_cap=1.0, norm_bound=1.5, value_limit=None))
    assert screened.clipped and math.isfinite(screened.norm)
    assert norm(screened.update) == pytest.approx(1.5, rel=1e-6)
    assert screened.update["b"][0] < 0 < screened.update["b"][1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    update = random_update(np.random.default_rng(3))
    update["b"][2] = bad
    with pytest.raises(UpdateRejected, match="'b' holds NaN or Inf"):
        screen_update(update, 1.0, NO_LIMITS)


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_a_weight_that_is_not_positive_and_finite_is_refused(weight):
    with pytest.raises(UpdateRejected, match="weight"):
        screen_update(random_update(np.random.default_rng(4)), weight, NO_LIMITS)


def test_a_float64_upload_above_float32_range_is_refused():
    # 1e300 is finite as float64 and Inf as the float32 the sum takes: decode_update refuses it
    # (it checks after its cast), and screen_update would too were it handed the Inf.
    data = {k: np.full(s, 1e300, np.float64) for k, s in SHAPES.items()}
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        decode_update({"kind": "WEIGHT_DIFF", "data": tensors_to_binary(data)}, SHAPES)
    with np.errstate(over="ignore"):
        cast = {k: v.astype(np.float32) for k, v in data.items()}
    with pytest.raises(UpdateRejected, match="NaN or Inf"):
        screen_update(cast, 1.0, NO_LIMITS)


# -- exactness over leaves ------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 30),
    leaves=st.integers(1, 6),
    norm_bound=st.floats(0.1, 10.0),
    weight_cap=st.floats(1.0, 500.0),
    data=st.data(),
)
def test_any_split_of_screened_updates_over_leaves_equals_flat_screened_fedavg(
    seed, n, leaves, norm_bound, weight_cap, data
):
    rng = np.random.default_rng(seed)
    # Honest-sized and hostile updates, honest and inflated weights.
    updates = [random_update(rng, scale=float(rng.choice([0.1, 1.0, 1e6, 1e30]))) for _ in range(n)]
    weights = [float(w) for w in rng.choice([1, 10, 100, 1_000_000], size=n)]
    bounds = ScreenBounds(weight_cap=weight_cap, norm_bound=norm_bound, value_limit=None)
    screened = [screen_update(u, w, bounds) for u, w in zip(updates, weights)]

    assignment = data.draw(st.lists(st.integers(0, leaves - 1), min_size=n, max_size=n))
    partials = [PartialSum(SHAPES) for _ in range(leaves)]
    for s, leaf in zip(screened, assignment):
        partials[leaf].add_update(s.update, s.weight, clipped=s.clipped, capped=s.capped)
    server = PartialSum(SHAPES)
    for p in partials:
        if p.count:
            server.add_partial(p.sums, p.weight, p.count, clipped=p.clipped, capped=p.capped)

    total = sum(s.weight for s in screened)
    assert server.count == n and server.weight == pytest.approx(total, rel=1e-12)
    assert server.clipped == sum(s.clipped for s in screened) and server.capped == sum(s.capped for s in screened)
    for k in SHAPES:
        flat = sum(s.weight * s.update[k].astype(np.float64) for s in screened) / total
        np.testing.assert_allclose(server.sums[k] / server.weight, flat, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 30),
    norm_bound=st.floats(1e-3, 1e3),
    limit=st.floats(1e-3, 1e3),
    server_lr=st.floats(0.1, 2.0),
)
def test_a_model_made_of_screened_updates_always_passes_the_check(seed, n, norm_bound, limit, server_lr):
    rng = np.random.default_rng(seed)
    base = random_update(rng)
    bounds = ScreenBounds(weight_cap=50.0, norm_bound=norm_bound, value_limit=limit)
    policy = UpdatePolicy()
    acc = PartialSum(SHAPES)
    for _ in range(n):
        hostile = random_update(rng, scale=float(rng.choice([1e-3, 1.0, 1e30])))
        s = screen_update(hostile, float(rng.integers(1, 1_000_000)), bounds)
        acc.add_update(s.update, s.weight)
    new = acc.apply_to(base, server_lr)
    assert check_global_model(new, base, model_limits(policy, bounds, server_lr)) is None


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30), norm_bound=st.floats(1e-3, 1e3), cap=st.floats(1, 1e4))
def test_a_batch_of_screened_updates_always_passes_the_batch_check(seed, n, norm_bound, cap):
    rng = np.random.default_rng(seed)
    bounds = ScreenBounds(weight_cap=cap, norm_bound=norm_bound, value_limit=float(rng.uniform(1e-3, 10)))
    acc = PartialSum(SHAPES)
    for _ in range(n):
        s = screen_update(random_update(rng, scale=float(rng.choice([1e-3, 1.0, 1e30]))), 1e6, bounds)
        acc.add_update(s.update, s.weight, clipped=s.clipped, capped=s.capped)
    assert check_partial(acc.sums, acc.weight, acc.count, bounds, clipped=acc.clipped, capped=acc.capped) is None


def test_an_unscreened_batch_is_turned_away_with_the_reason():
    bounds = ScreenBounds(weight_cap=10.0, norm_bound=1.0, value_limit=0.5)
    honest = {"w": np.full((3, 4), 0.1), "b": np.zeros(4)}  # Σ w·Δ of one result of weight 1, norm ≈ 0.35
    assert check_partial(honest, 1.0, 1, bounds) is None
    assert "weight cap" in check_partial(honest, 1e6, 1, bounds)
    assert "counts" in check_partial(honest, 1.0, 1, bounds, clipped=2)
    assert "NaN or Inf" in check_partial({**honest, "b": np.array([np.inf, 0, 0, 0])}, 1.0, 1, bounds)
    assert "summed value" in check_partial({**honest, "b": np.array([0.9, 0, 0, 0])}, 1.0, 1, bounds)
    assert "norm" in check_partial({"w": np.full((3, 4), 0.45), "b": np.zeros(4)}, 1.0, 1, bounds)


# -- next_bound -----------------------------------------------------------------------------------
def test_next_bound_moves_toward_the_target_quantile_and_holds_at_it():
    assert next_bound(1.0, clipped=10, total=10, target_quantile=0.5, lr=1.0) == pytest.approx(math.exp(0.5))
    assert next_bound(1.0, clipped=0, total=10, target_quantile=0.5, lr=1.0) == pytest.approx(math.exp(-0.5))
    assert next_bound(2.0, clipped=2, total=10, target_quantile=0.8, lr=0.7) == pytest.approx(2.0)
    assert next_bound(2.0, clipped=0, total=0, target_quantile=0.5, lr=1.0) == 2.0
    assert next_bound(5.0, clipped=10, total=10, target_quantile=0.5, lr=1.0, ceiling=6.0) == 6.0
    assert next_bound(1.5, clipped=0, total=10, target_quantile=0.5, lr=1.0, floor=1.0) == 1.0
    with pytest.raises(ValueError):
        next_bound(1.0, clipped=11, total=10, target_quantile=0.5, lr=1.0)


def track(values_per_round, bound, quantile, lr):
    for values in values_per_round:
        bound = next_bound(bound, int(np.sum(values > bound)), len(values), quantile, lr)
    return bound


@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_the_adaptive_bound_settles_at_the_quantile_of_the_norms(quantile):
    rng = np.random.default_rng(5)
    rounds = [rng.lognormal(mean=1.0, sigma=0.5, size=200) for _ in range(300)]
    settled = np.mean([track(rounds[: 200 + i], 0.01, quantile, 0.3) for i in range(0, 100, 10)])
    true = float(np.quantile(np.concatenate(rounds), quantile))
    assert settled == pytest.approx(true, rel=0.1)


def test_a_minority_always_above_only_moves_the_bound_to_a_nearby_honest_quantile():
    rng = np.random.default_rng(6)
    honest = [rng.lognormal(mean=0.0, sigma=0.5, size=90) for _ in range(400)]
    attacked = [np.concatenate([h, np.full(10, 1e30)]) for h in honest]
    settled = track(attacked, 1.0, 0.5, 0.2)
    pooled = np.concatenate(honest)
    assert np.quantile(pooled, 0.5) < settled < np.quantile(pooled, 0.65)  # theory: the 0.5/0.9 = 0.556 quantile


# -- bounds per version ---------------------------------------------------------------------------
def test_initial_and_next_bounds_follow_the_policy_modes():
    weights = {"w": np.full((3, 4), 0.2, np.float32), "b": np.array([3.0, 0, 0, 0], np.float32)}
    adaptive = UpdatePolicy()
    first = initial_bounds(adaptive, weights)
    assert first == ScreenBounds(weight_cap=1.0, norm_bound=1.0, value_limit=30.0)
    second = next_bounds(adaptive, first, clipped=10, capped=10, total=10, weights=weights)
    assert second.weight_cap == pytest.approx(math.exp(0.5)) and second.norm_bound == pytest.approx(math.exp(0.5))

    fixed = UpdatePolicy(weight_cap="fixed", max_num_samples=64.0, clip="fixed", clip_norm=3.0)
    assert initial_bounds(fixed, weights) == ScreenBounds(weight_cap=64.0, norm_bound=3.0, value_limit=30.0)
    kept = next_bounds(fixed, initial_bounds(fixed, weights), clipped=10, capped=10, total=10, weights=weights)
    assert kept.weight_cap == 64.0 and kept.norm_bound == 3.0

    off = UpdatePolicy(clip="off", max_update_value_ratio=None)
    assert initial_bounds(off, weights).norm_bound is None and initial_bounds(off, weights).value_limit is None
    # The cap never passes max_num_samples, however many weights are capped.
    ceiling = UpdatePolicy(max_num_samples=2.0)
    assert next_bounds(ceiling, first, 0, capped=10, total=10, weights=weights).weight_cap == pytest.approx(
        1.6487, rel=1e-4
    )
    assert next_bounds(ceiling, second, 0, capped=10, total=10, weights=weights).weight_cap == 2.0


def test_the_value_limit_is_relative_to_the_model_with_a_floor():
    assert value_limit({"w": np.array([0.1, -4.0], np.float32)}, 10.0) == pytest.approx(40.0)
    assert value_limit({"w": np.zeros(3, np.float32)}, 10.0) == 10.0
    assert value_limit({"w": np.ones(3, np.float32)}, None) is None


def test_jobspec_fields_validate_and_make_the_policy():
    spec = JobSpec(name="j", clip="fixed", clip_norm=2.5, max_num_samples=50, weight_cap="fixed")
    policy = UpdatePolicy.from_spec(spec)
    assert policy == UpdatePolicy(weight_cap="fixed", max_num_samples=50.0, clip="fixed", clip_norm=2.5)
    assert UpdatePolicy.from_spec(JobSpec(name="j")) == UpdatePolicy()
    for bad in ({"clip": "median"}, {"clip_quantile": 1.0}, {"max_num_samples": 0}, {"clip_norm": 0.0}):
        with pytest.raises(ValidationError):
            JobSpec(name="j", **bad)


# -- check_global_model ---------------------------------------------------------------------------
def test_the_check_says_why_a_model_is_refused():
    prev = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    limits = ModelLimits(max_abs_value=100.0, max_step_norm=1.0, max_step_value=0.6)
    ok = {"w": np.full((3, 4), 0.1, np.float32), "b": np.zeros(4, np.float32)}
    assert check_global_model(ok, prev, limits) is None
    nan = {**ok, "b": np.array([0, np.nan, 0, 0], np.float32)}
    assert "'b' holds NaN or Inf" in check_global_model(nan, prev, ModelLimits(max_abs_value=1e4))
    big = {**ok, "b": np.array([0, 3e38, 0, 0], np.float32)}
    assert "above the job's limit" in check_global_model(big, prev, ModelLimits(max_abs_value=1e4))
    far = {"w": np.full((3, 4), 0.5, np.float32), "b": np.zeros(4, np.float32)}
    assert "moved by" in check_global_model(far, prev, limits)
    spike = {"w": np.zeros((3, 4), np.float32), "b": np.array([0.7, 0, 0, 0], np.float32)}
    assert "a value moved by" in check_global_model(spike, prev, limits)
    assert "differ" in check_global_model({"w": ok["w"]}, prev, limits)
    assert "shape" in check_global_model({**ok, "b": np.zeros(5, np.float32)}, prev, limits)


# -- the attack from issue 11, with real training -------------------------------------------------
def federated_digits(rounds, attacker, policy):
    """Test accuracy after `rounds` of sync FedAvg over 100 digits devices; device 0 may attack."""
    x, y = load_dataset("digits", "train", 0)
    x_test, y_test = load_dataset("digits", "test", 0)
    shards = dirichlet_partition(y, 100, 0.5, 0)
    weights = initial_weights("digits", 0)
    shapes = {k: v.shape for k, v in weights.items()}
    bounds = None if policy is None else initial_bounds(policy, weights)
    for rnd in range(rounds):
        leaves = [PartialSum(shapes), PartialSum(shapes)]
        for dev, idx in enumerate(shards):
            diff, n, _ = train_local("digits", weights, x[idx], y[idx], epochs=10, lr=0.5, batch_size=8, seed=rnd)
            if attacker and dev == 0:
                diff, n = {k: np.full(v.shape, 1e30, np.float32) for k, v in diff.items()}, 1_000_000
            result = {"kind": "WEIGHT_DIFF", "data": tensors_to_binary(diff), "meta": {"num_samples": n}}
            update, weight = decode_update(result, shapes)
            if bounds is None:
                leaves[dev % 2].add_update(update, weight)
            else:
                s = screen_update(update, weight, bounds)
                leaves[dev % 2].add_update(s.update, s.weight, clipped=s.clipped, capped=s.capped)
        server = PartialSum(shapes)
        for p in leaves:
            server.add_partial(p.sums, p.weight, p.count, clipped=p.clipped, capped=p.capped)
        new = server.apply_to(weights)
        if bounds is not None:
            assert check_global_model(new, weights, model_limits(policy, bounds, 1.0)) is None
            bounds = next_bounds(policy, bounds, server.clipped, server.capped, server.count, new)
        elif attacker:
            # Undefended, the attacker owns 99.9 % of the weight; the check would have refused it.
            assert check_global_model(new, weights, ModelLimits(max_abs_value=1e4)) is not None
            with np.errstate(over="ignore", invalid="ignore"):  # logits of a 1e30 model overflow
                return evaluate("digits", new, x_test, y_test)[0]
        weights = new
    return evaluate("digits", weights, x_test, y_test)[0]


def test_one_attacker_destroys_plain_fedavg_and_not_the_screened_one():
    clean = federated_digits(6, attacker=False, policy=None)
    destroyed = federated_digits(1, attacker=True, policy=None)
    defended = federated_digits(6, attacker=True, policy=UpdatePolicy())
    assert clean > 0.85  # the run learns: the comparison means something
    assert destroyed < 0.2
    assert defended > clean - 0.05  # measured: clean .905, destroyed .100, defended .875
