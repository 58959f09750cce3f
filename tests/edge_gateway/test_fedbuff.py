"""Async FedBuff: the step rule, late/duplicate results, checkpoint state, exactness over leaves."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gateway.fedbuff import (
    Accepted,
    Duplicate,
    FedBuffBuffer,
    Late,
    Refused,
    staleness_weight,
)

SHAPES = {"w": (3, 4), "b": (4,)}
ONE = {"x": (1,)}


def zeros(shapes=ONE):
    return {k: np.zeros(s, np.float32) for k, s in shapes.items()}


def batch(delta, weight):
    """Σ w·Δ of one device (or of several with the same Δ) for the one-number model."""
    return {"x": np.array([delta * weight], np.float64)}


def buffer(version=0, buffer_size=1, max_staleness=3):
    return FedBuffBuffer(ONE, buffer_size=buffer_size, max_staleness=max_staleness, version=version)


def test_staleness_weight():
    assert staleness_weight(0) == 1.0
    assert staleness_weight(1) == 1 / math.sqrt(2)
    assert staleness_weight(3) == 0.5
    with pytest.raises(ValueError):
        staleness_weight(-1)


# -- the incumbent's four flaws, one test each ---------------------------------------------------
def test_fresh_result_weighs_one_staleness_is_taken_before_the_step():
    # Bumping the version before measuring staleness would give τ = 1 here: a step of 1/√2.
    buf = buffer(version=4)
    assert buf.offer(4, batch(1.0, 1.0), 1.0, ["t"]) == Accepted(staleness=0, buffered=1, applies_in=5)
    new, report = buf.step(zeros())
    assert new["x"][0] == 1.0 and report.by_staleness == {0: 1} and report.version == 5 == buf.version
    # One version old: weight 1/√2 exactly.
    buf.offer(4, batch(1.0, 1.0), 1.0, ["u"])
    new, report = buf.step(zeros())
    assert new["x"][0] == np.float32(1 / math.sqrt(2)) and report.by_staleness == {1: 1}


def test_denominator_is_the_sum_of_weights_not_the_count():
    # One device with 5 samples: the mean update is its Δ; dividing by the count would give 5·Δ.
    buf = buffer()
    buf.offer(0, batch(2.0, 5.0), 5.0, ["t"])
    new, report = buf.step(zeros())
    assert new["x"][0] == 2.0 and report.weight == 5.0 and report.results == 1


def test_sample_counts_weigh_each_result():
    # Δ = 0 with 1 sample and Δ = 4 with 3 samples: the weighted mean is 3, the plain mean 2.
    buf = buffer(buffer_size=2)
    buf.offer(0, batch(0.0, 1.0), 1.0, ["a"])
    buf.offer(0, batch(4.0, 3.0), 3.0, ["b"])
    new, _ = buf.step(zeros())
    assert new["x"][0] == 3.0


def test_a_counted_result_is_applied_even_at_the_staleness_bound():
    # A result as old as may still count, buffered while fresher ones fill the buffer: its bucket
    # is kept until the step (pruning old buckets after counting would drop it and step by 1.0).
    buf = buffer(version=5, buffer_size=3, max_staleness=3)
    assert buf.offer(2, batch(8.0, 1.0), 1.0, ["old"]) == Accepted(staleness=3, buffered=1, applies_in=6)
    assert buf.offer(1, batch(8.0, 1.0), 1.0, ["too-old"]) == Late(staleness=4, current=5)
    assert not buf.due()
    buf.offer(5, batch(1.0, 2.0), 2.0, ["fresh1", "fresh2"])
    assert buf.due()
    new, report = buf.step(zeros())
    assert report.results == 3 and report.by_staleness == {0: 2, 3: 1}
    assert new["x"][0] == np.float32((0.5 * 8.0 + 2.0) / 3.0)


# -- buffer rules ---------------------------------------------------------------------------------
def test_stale_buckets_weigh_by_version_and_the_denominator_is_raw():
    buf = buffer(version=3, buffer_size=3, max_staleness=5)
    buf.offer(3, batch(1.0, 1.0), 1.0, ["a"])
    buf.offer(2, batch(1.0, 1.0), 1.0, ["b"])
    buf.offer(0, batch(1.0, 2.0), 2.0, ["c"])
    new, report = buf.step(zeros(), server_lr=0.5)
    expected = 0.5 * (1.0 + 1 / math.sqrt(2) + 0.5 * 2.0) / 4.0
    assert new["x"][0] == pytest.approx(expected, rel=1e-6)
    assert new["x"].dtype == np.float32 and report.weight == 4.0


def test_a_batch_is_never_split_and_a_step_takes_the_whole_buffer():
    buf = buffer(buffer_size=3)
    buf.offer(0, batch(1.0, 2.0), 2.0, ["a", "b"])
    assert not buf.due()
    buf.offer(0, batch(1.0, 2.0), 2.0, ["c", "d"])  # crosses 3: all four count in this step
    assert buf.due() and buf.buffered == 4
    _, report = buf.step(zeros())
    assert report.results == 4 and buf.buffered == 0 and not buf.due()
    with pytest.raises(ValueError):
        buf.step(zeros())


def test_results_of_a_version_not_made_yet_are_refused():
    assert isinstance(buffer(version=2).offer(3, batch(1.0, 1.0), 1.0, ["t"]), Refused)


def test_malformed_batches_are_refused_and_not_counted():
    buf = buffer()
    assert isinstance(buf.offer(0, {"x": np.zeros(2)}, 1.0, ["t"]), Refused)
    assert isinstance(buf.offer(0, {"y": np.zeros(1)}, 1.0, ["t"]), Refused)
    assert isinstance(buf.offer(0, batch(1.0, 1.0), 0.0, ["t"]), Refused)
    assert isinstance(buf.offer(0, batch(1.0, 1.0), math.nan, ["t"]), Refused)
    assert isinstance(buf.offer(0, batch(1.0, 1.0), 1.0, []), Refused)
    assert buf.buffered == 0
    assert isinstance(buf.offer(0, batch(1.0, 1.0), 1.0, ["t"]), Accepted)  # "t" was not remembered


def test_duplicates_are_refused_whole_within_the_buffer_and_the_batch():
    buf = buffer(buffer_size=10)
    buf.offer(0, batch(1.0, 1.0), 1.0, ["a"])
    assert buf.offer(0, batch(1.0, 2.0), 2.0, ["b", "a"]) == Duplicate(("a",))
    assert buf.offer(0, batch(1.0, 2.0), 2.0, ["c", "c"]) == Duplicate(("c",))
    assert buf.buffered == 1
    assert isinstance(buf.offer(0, batch(1.0, 1.0), 1.0, ["b"]), Accepted)


def test_applied_ids_are_remembered_while_a_resend_could_count():
    buf = buffer(max_staleness=2)
    buf.offer(0, batch(1.0, 1.0), 1.0, ["a"])
    buf.step(zeros())  # now at 1
    assert buf.offer(0, batch(1.0, 1.0), 1.0, ["a"]) == Duplicate(("a",))
    buf.offer(1, batch(1.0, 1.0), 1.0, ["b"])
    buf.step(zeros())  # now at 2: version 0 results may still count
    assert buf.offer(0, batch(1.0, 1.0), 1.0, ["a"]) == Duplicate(("a",))
    buf.offer(2, batch(1.0, 1.0), 1.0, ["c"])
    buf.step(zeros())  # now at 3: version 0 is late, "a" is forgotten and late, "b" still known
    assert buf.offer(0, batch(1.0, 1.0), 1.0, ["a"]) == Late(staleness=3, current=3)
    assert buf.offer(1, batch(1.0, 1.0), 1.0, ["b"]) == Duplicate(("b",))
    assert buf.state()["applied_ids"] == [[1, ["b"]], [2, ["c"]]]


def test_state_survives_a_restart_without_the_buffered_results():
    buf = buffer(buffer_size=2, max_staleness=2)
    buf.offer(0, batch(1.0, 2.0), 2.0, ["a", "b"])
    weights, _ = buf.step(zeros())
    buf.offer(1, batch(3.0, 1.0), 1.0, ["c"])  # buffered, not applied: lost with the process
    saved = buf.state()
    assert saved == {"version": 1, "applied_ids": [[0, ["a", "b"]]]}
    restored = FedBuffBuffer.from_state(saved, ONE, buffer_size=2, max_staleness=2)
    assert restored.version == 1 and restored.buffered == 0
    # The leaf re-sends both: the applied one is a duplicate, the buffered one counts again.
    assert restored.offer(0, batch(1.0, 2.0), 2.0, ["a", "b"]) == Duplicate(("a", "b"))
    assert restored.offer(1, batch(3.0, 1.0), 1.0, ["c"]) == Accepted(staleness=0, buffered=1, applies_in=2)
    restored.offer(1, batch(1.0, 1.0), 1.0, ["d"])
    new, _ = restored.step(weights)
    assert new["x"][0] == 1.0 + 2.0


def test_state_is_plain_json_data():
    import json

    buf = buffer()
    buf.offer(0, batch(1.0, 1.0), 1.0, ["a"])
    buf.step(zeros())
    saved = json.loads(json.dumps(buf.state()))
    assert FedBuffBuffer.from_state(saved, ONE, 1, 3).state() == buf.state()


# -- exactness over leaves ------------------------------------------------------------------------
CURRENT, MAX_STALENESS = 6, 4


def flat_fedbuff_step(base, results, server_lr):
    """The issue's formula straight from individual results: W + η Σ s(c−vᵢ) wᵢΔᵢ / Σ wᵢ."""
    total = sum(w for _, _, w in results)
    return {
        k: base[k].astype(np.float64)
        + server_lr * sum((CURRENT - v + 1.0) ** -0.5 * w * d[k].astype(np.float64) for v, d, w in results) / total
        for k in base
    }


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), leaves=st.integers(1, 6), data=st.data())
def test_any_split_over_leaves_and_batches_in_any_order_equals_the_flat_step(seed, n, leaves, data):
    rng = np.random.default_rng(seed)
    results = [
        (
            int(rng.integers(CURRENT - MAX_STALENESS, CURRENT + 1)),  # trained-on version
            {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()},
            float(rng.integers(1, 500)),  # sample count
        )
        for _ in range(n)
    ]
    where = data.draw(st.lists(st.tuples(st.integers(0, leaves - 1), st.integers(0, 3)), min_size=n, max_size=n))
    # Each leaf sums per (flush, trained-on version), as its batcher does.
    batches: dict[tuple[int, int, int], tuple[dict[str, np.ndarray], float, list[str]]] = {}
    for i, ((v, delta, w), (leaf, flush)) in enumerate(zip(results, where)):
        sums, weight, ids = batches.setdefault((leaf, flush, v), ({k: np.zeros(s) for k, s in SHAPES.items()}, 0.0, []))
        for k in SHAPES:
            sums[k] += np.multiply(delta[k], w, dtype=np.float64)
        batches[(leaf, flush, v)] = (sums, weight + w, [*ids, f"t{i}"])
    order = data.draw(st.permutations(sorted(batches)))
    buf = FedBuffBuffer(SHAPES, buffer_size=n, max_staleness=MAX_STALENESS, version=CURRENT)
    for key in order:
        assert not buf.due()
        sums, weight, ids = batches[key]
        assert isinstance(buf.offer(key[2], sums, weight, ids), Accepted)
    assert buf.due() and buf.buffered == n
    # float64 weights: the step is compared before any cast to a narrower dtype.
    base = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    new, report = buf.step(base, server_lr=0.7)
    assert report.results == n and report.weight == sum(w for _, _, w in results)
    expected = flat_fedbuff_step(base, results, 0.7)
    for k in SHAPES:
        # Equal up to float64 summation order (batches, buckets and the flat sum add in different orders).
        np.testing.assert_allclose(new[k], expected[k], rtol=1e-9, atol=1e-12)


# -- restart --------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), buffer_size=st.integers(1, 5), n=st.integers(1, 30), data=st.data())
def test_a_restart_with_leaves_resending_loses_nothing_and_counts_nothing_twice(seed, buffer_size, n, data):
    """Leaves keep each accepted batch until the server serves its `applies_in` and re-send it to a
    restarted server, which restores from its last checkpoint (taken at a step, or mid-buffer as an
    evaluation does): the run ends where one without the restart ends."""
    rng = np.random.default_rng(seed)
    max_staleness = 2
    batches = []
    for i in range(n):
        count = int(rng.integers(1, 4))
        weights = rng.integers(1, 50, size=count).astype(float)
        sums = {k: sum(np.multiply(rng.normal(size=s), w) for w in weights) for k, s in SHAPES.items()}
        batches.append(
            (int(rng.integers(0, max_staleness + 1)), sums, float(weights.sum()), [f"{i}.{j}" for j in range(count)])
        )
    midway_checkpoints = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    crash_at = data.draw(st.integers(0, n - 1))
    base = {k: rng.normal(size=s) for k, s in SHAPES.items()}

    def run(crash_at):
        buf = FedBuffBuffer(SHAPES, buffer_size, max_staleness)
        weights = base
        checkpoint = (weights, buf.state())
        retained = {}  # (trained on, applies in) -> (Σ w·Δ, Σ w, ids), as a leaf merges them
        for i, (tau, sums, weight, ids) in enumerate(batches):
            if i == crash_at:
                weights, saved = checkpoint
                buf = FedBuffBuffer.from_state(saved, SHAPES, buffer_size, max_staleness)
                for (trained_on, applies_in), (s, w, t) in retained.items():
                    outcome = buf.offer(trained_on, s, w, t)
                    if applies_in > saved["version"]:
                        assert isinstance(outcome, Accepted)
                    else:  # applied before the checkpoint: the leaf had not heard yet
                        assert isinstance(outcome, Duplicate | Late)
                assert not buf.due()
            trained_on = max(0, buf.version - tau)
            outcome = buf.offer(trained_on, sums, weight, ids)
            assert isinstance(outcome, Accepted)
            s, w, t = retained.get(
                (trained_on, outcome.applies_in), ({k: np.zeros(v) for k, v in SHAPES.items()}, 0.0, [])
            )
            retained[(trained_on, outcome.applies_in)] = ({k: s[k] + sums[k] for k in s}, w + weight, t + ids)
            if buf.due():
                weights, _ = buf.step(weights)
                checkpoint = (weights, buf.state())
                # The leaf hears of the new version a step late: it still holds the batches just applied.
                retained = {key: kept for key, kept in retained.items() if key[1] >= buf.version}
            elif midway_checkpoints[i]:
                checkpoint = (weights, buf.state())
        return weights, buf.version, buf.buffered

    weights, version, buffered = run(crash_at)
    weights_plain, version_plain, buffered_plain = run(None)
    assert (version, buffered) == (version_plain, buffered_plain)
    for k in SHAPES:
        np.testing.assert_allclose(weights[k], weights_plain[k], rtol=1e-9, atol=1e-12)
