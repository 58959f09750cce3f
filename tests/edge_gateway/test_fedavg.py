"""Hierarchical FedAvg is exact: any split of the same updates over leaves equals flat FedAvg."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gateway.fedavg import PartialSum

SHAPES = {"w": (3, 4), "b": (4,)}


def make_updates(seed: int, n: int):
    rng = np.random.default_rng(seed)
    updates = [{k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)]
    weights = [float(w) for w in rng.integers(1, 500, size=n)]
    return updates, weights


def flat_fedavg(base, updates, weights):
    total = sum(weights)
    return {
        k: base[k].astype(np.float64) + sum(w * u[k].astype(np.float64) for u, w in zip(updates, weights)) / total
        for k in base
    }


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), leaves=st.integers(1, 8), data=st.data())
def test_any_split_over_leaves_equals_flat_fedavg(seed, n, leaves, data):
    updates, weights = make_updates(seed, n)
    base = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    assignment = data.draw(st.lists(st.integers(0, leaves - 1), min_size=n, max_size=n))
    partials = [PartialSum(SHAPES) for _ in range(leaves)]
    for u, w, leaf in zip(updates, weights, assignment):
        partials[leaf].add_update(u, w)
    server = PartialSum(SHAPES)
    for p in partials:
        if p.count:
            server.add_partial(p.sums, p.weight, p.count)
    assert server.count == n and server.weight == sum(weights)
    expected = flat_fedavg(base, updates, weights)
    for k in SHAPES:
        got = base[k].astype(np.float64) + server.sums[k] / server.weight
        np.testing.assert_allclose(got, expected[k], rtol=1e-9, atol=1e-12)


def test_apply_keeps_dtype_and_uses_server_lr():
    acc = PartialSum({"w": (2,)})
    acc.add_update({"w": np.array([1.0, 3.0], np.float32)}, 1.0)
    acc.add_update({"w": np.array([3.0, 3.0], np.float32)}, 3.0)
    new = acc.apply_to({"w": np.array([10.0, 10.0], np.float32)}, server_lr=0.5)
    assert new["w"].dtype == np.float32
    np.testing.assert_allclose(new["w"], [10 + 0.5 * 10 / 4, 10 + 0.5 * 12 / 4])


def test_memory_independent_of_device_count():
    acc = PartialSum(SHAPES)
    before = sum(a.nbytes for a in acc.sums.values())
    updates, weights = make_updates(1, 200)
    for u, w in zip(updates, weights):
        acc.add_update(u, w)
    assert sum(a.nbytes for a in acc.sums.values()) == before and acc.count == 200


def test_weighted_add_is_float64_multiply_add_bit_for_bit():
    updates, weights = make_updates(7, 30)
    acc = PartialSum(SHAPES)
    expected = {k: np.zeros(s) for k, s in SHAPES.items()}
    for u, w in zip(updates, weights):
        acc.add_update(u, w)
        for k in SHAPES:
            expected[k] += np.multiply(u[k], w, dtype=np.float64)
    for k in SHAPES:
        np.testing.assert_array_equal(acc.sums[k], expected[k])
