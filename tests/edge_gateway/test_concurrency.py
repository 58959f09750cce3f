"""Async mode's slots: `concurrency` leases at once over all leaves, each freed on result/expiry/abort."""

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_gateway.concurrency import Grant, LeafDemand, grant_slots


def test_one_leaf_alone_gets_what_it_asks_up_to_concurrency():
    assert grant_slots(10, LeafDemand(training=0, waiting=4), []) == Grant(4, 6)
    assert grant_slots(10, LeafDemand(training=3, waiting=50), []) == Grant(10, 0)


def test_leaves_with_equal_demand_share_evenly():
    others = [LeafDemand(training=0, waiting=100)] * 3
    assert grant_slots(100, LeafDemand(training=0, waiting=100), others).quota == 25


def test_slots_held_or_granted_elsewhere_are_not_granted_twice():
    # b was granted 6 and uses 2 so far: those 6 stay b's until its next report.
    b = LeafDemand(training=2, waiting=0, granted=6)
    assert grant_slots(10, LeafDemand(training=0, waiting=10), [b]) == Grant(4, 0)


def test_leases_out_are_never_taken_back():
    # a holds 8 of 10 though its fair share is 5: it keeps them, and gets no more.
    others = [LeafDemand(training=0, waiting=10)]
    assert grant_slots(10, LeafDemand(training=8, waiting=5), others) == Grant(8, 0)


def test_a_freed_slot_goes_to_whoever_waits():
    # a finished 3 of its 5 leases and has nobody waiting: b, waiting, gets them at its next sync.
    a = LeafDemand(training=2, waiting=0, granted=2)
    assert grant_slots(10, LeafDemand(training=5, waiting=10, granted=5), [a]).quota == 8


@settings(max_examples=60, deadline=None)
@given(
    concurrency=st.integers(1, 50),
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 60), st.integers(0, 60)), max_size=40),
)
def test_leaves_together_never_hold_more_than_concurrency(concurrency, steps):
    """Random syncs: each leaf trains at most its quota and reports; the sum stays within concurrency."""
    state = {leaf: LeafDemand(0, 0, 0) for leaf in range(4)}
    for leaf, finished, waiting in steps:
        mine = state[leaf]
        # Between syncs the leaf freed `finished` slots and re-filled them up to its quota.
        training = min(mine.granted, max(0, mine.training - finished) + waiting)
        others = [d for name, d in state.items() if name != leaf]
        grant = grant_slots(concurrency, LeafDemand(training, waiting), others)
        assert grant.quota >= training
        state[leaf] = LeafDemand(training, waiting, grant.quota)
        assert sum(max(d.training, d.granted) for d in state.values()) <= concurrency
