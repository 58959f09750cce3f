"""A version that comes due waits for the leaves' word on what they acknowledged (closing.py):
the coordinator, pure, time passed in."""

import numpy as np

from device_protocol.tensors import tensors_to_binary
from edge_gateway.coordinator import LEAF_STALE_AFTER, RESEND_WAIT_LIMIT, Coordinator, NewVersion, VersionDue
from edge_gateway.jobs import JobSpec
from internal_link.messages import LeafJobReport, SubmitBatch, SyncRequest

W = {"w": np.zeros((2, 2), np.float32)}
UNSCREENED = {"weight_cap": "fixed", "clip": "off", "max_update_value_ratio": None}


def make(**spec):
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor", **{**UNSCREENED, **spec}), W, now=0.0)
    return c


def sync(c, leaf, now, closing=None, undelivered=False, serving=True):
    """A leaf's sync; `closing`: the version it names as due (its answer)."""
    request = SyncRequest(
        leaf=leaf,
        boot=f"boot-{leaf}",
        server_boot="b",
        jobs={"j": LeafJobReport(selection_id=c.jobs["j"].selection_id)} if serving else {},
        closing={} if closing is None else {"j": closing},
        undelivered=undelivered,
    )
    view = c.sync(request, now).jobs[0]
    return view, c.settle_closings(now)


def submit(c, ids, now, leaf="a", version=None):
    upd = {"w": np.full((2, 2), float(len(ids)), np.float64)}
    b = SubmitBatch(
        leaf=leaf,
        job_id="j",
        version=c.jobs["j"].version if version is None else version,
        task_ids=ids,
        sum_weight=float(len(ids)),
        sum_update=tensors_to_binary(upd),
    )
    return c.submit(b, upd, now=now)


def test_a_quorum_is_announced_and_the_round_closes_once_every_serving_leaf_has_answered():
    c = make(devices_per_round=2, over_selection=1.0)
    for leaf in "ab":
        sync(c, leaf, 0.0)
    reply, events = submit(c, ["t1", "t2"], 1.0)
    assert reply.accepted and events == [VersionDue("j")]
    view, _ = sync(c, "a", 1.01)
    assert view.closing and view.model_version == 0
    # A sync that does not name the version was built before the leaf heard: no answer.
    _, events = sync(c, "b", 1.02)
    assert events == [] and c.jobs["j"].closing.waiting == {"a", "b"}
    assert sync(c, "a", 1.03, closing=0)[1] == []
    # Results still reach the round while it waits, and count in it.
    reply, events = submit(c, ["t3"], 1.04, leaf="b")
    assert reply.accepted and events == []
    view, events = sync(c, "b", 1.05, closing=0)
    assert events == [NewVersion("j", 1)] and not c.jobs["j"].closing
    history = c.jobs["j"].history[-1]
    assert history["results"] == 3 and history["closed_by"] == "quorum"
    assert not c.sync(SyncRequest(leaf="a", boot="boot-a", jobs={}), 1.06).jobs[0].closing


def test_a_leaf_holding_undelivered_results_keeps_the_round_open_until_they_are_in():
    c = make(devices_per_round=2, over_selection=2.0)
    sync(c, "a", 0.0)
    submit(c, ["t1", "t2"], 1.0)
    # It told two devices their results count while the server was not answering.
    assert sync(c, "a", 1.1, closing=0, undelivered=True)[1] == []
    assert c.tick(2.0) == []
    reply, events = submit(c, ["t3", "t4"], 2.5)
    assert reply.accepted and events == []
    _, events = sync(c, "a", 2.6, closing=0)
    assert events == [NewVersion("j", 1)] and c.jobs["j"].history[-1]["results"] == 4


def test_a_paused_server_waits_for_leaves_its_clock_says_are_stale():
    c = make(devices_per_round=2)
    sync(c, "a", 0.0)
    # Resumed 10 s later: the leaf's last sync is past LEAF_STALE_AFTER, yet it may have acknowledged
    # results meanwhile.
    _, events = submit(c, ["t1", "t2"], 10.0)
    assert events == [VersionDue("j")]
    assert c.tick(10.0 + LEAF_STALE_AFTER / 2) == []
    assert sync(c, "a", 10.0 + LEAF_STALE_AFTER / 2, closing=0)[1] == [NewVersion("j", 1)]


def test_a_leaf_silent_since_the_version_came_due_is_given_up_and_not_waited_for_until_it_syncs():
    c = make(devices_per_round=1, rounds=4)
    for leaf in "ab":
        sync(c, leaf, 0.0)
    submit(c, ["t1"], 1.0)
    sync(c, "a", 1.1, closing=0)
    assert c.tick(1.0 + LEAF_STALE_AFTER) == []  # b: silent, but not for long yet
    assert c.tick(1.1 + LEAF_STALE_AFTER) == [NewVersion("j", 1)]
    # The next version does not wait for b again ...
    sync(c, "a", 5.0)
    _, events = submit(c, ["t2"], 5.1)
    assert events == [VersionDue("j")]
    assert sync(c, "a", 5.2, closing=1)[1] == [NewVersion("j", 2)]
    # ... until it syncs again.
    sync(c, "b", 6.0)
    _, events = submit(c, ["t3"], 6.1)
    assert events == [VersionDue("j")]
    assert sync(c, "a", 6.2, closing=2)[1] == []
    assert sync(c, "b", 6.3, closing=2)[1] == [NewVersion("j", 3)]


def test_a_leaf_without_the_job_or_unseen_for_long_is_not_waited_for():
    c = make(devices_per_round=1)
    sync(c, "gone", 0.0)
    sync(c, "other", 0.0, serving=False)
    sync(c, "a", RESEND_WAIT_LIMIT + 1.0)
    _, events = submit(c, ["t1"], RESEND_WAIT_LIMIT + 1.0)
    assert events == [VersionDue("j")]  # a only
    assert sync(c, "a", RESEND_WAIT_LIMIT + 1.1, closing=0)[1] == [NewVersion("j", 1)]


def test_a_leaf_that_drops_the_job_while_it_closes_is_not_waited_for():
    c = make(devices_per_round=1)
    for leaf in "ab":
        sync(c, leaf, 0.0)
    submit(c, ["t1"], 1.0)
    sync(c, "a", 1.1, closing=0)
    assert sync(c, "b", 1.2, serving=False)[1] == [NewVersion("j", 1)]


def test_a_closing_that_never_settles_ends_after_the_limit():
    c = make(devices_per_round=1)
    sync(c, "a", 0.0)
    submit(c, ["t1"], 1.0)
    now = 1.0
    while now < 1.0 + RESEND_WAIT_LIMIT:  # a leaf that syncs, never naming the version
        assert sync(c, "a", now)[1] == []
        now += 1.0
    assert sync(c, "a", now + 0.5)[1] == [NewVersion("j", 1)]


def test_a_deadline_close_waits_for_the_leaves_too():
    c = make(devices_per_round=4, min_results_fraction=0.5, round_timeout=10.0, task_timeout=5.0)
    sync(c, "a", 0.0)
    submit(c, ["t1", "t2"], 1.0)
    sync(c, "a", 9.0)
    assert c.tick(10.5) == [VersionDue("j")]
    assert sync(c, "a", 10.6, closing=0)[1] == [NewVersion("j", 1)]
    assert c.jobs["j"].history[-1]["closed_by"] == "deadline"


def test_an_async_step_waits_for_the_leaves_and_takes_what_came_meanwhile():
    c = make(mode="async", concurrency=4, buffer_size=2, max_staleness=1, rounds=3)
    sync(c, "a", 0.0)
    _, events = submit(c, ["t1", "t2"], 1.0)
    assert events == [VersionDue("j")]
    view, _ = sync(c, "a", 1.1)
    assert view.closing
    reply, events = submit(c, ["t3"], 1.2)
    assert reply.accepted and events == []
    assert sync(c, "a", 1.3, closing=0)[1] == [NewVersion("j", 1)]
    assert c.jobs["j"].history[-1]["results"] == 3 and c.jobs["j"].history[-1]["closed_by"] == "buffer"


def test_a_closing_round_grants_no_new_slots_an_async_job_goes_on_granting():
    c = make(devices_per_round=2, over_selection=2.0)  # 6 slots
    sync(c, "a", 0.0)
    submit(c, ["t1", "t2"], 1.0)
    request = SyncRequest(
        leaf="b", boot="boot-b", jobs={"j": LeafJobReport(selection_id=c.jobs["j"].selection_id, waiting=4)}
    )
    view = c.sync(request, 1.1).jobs[0]
    assert view.closing and (view.quota, view.free_slots) == (0, 0)

    c = make(mode="async", concurrency=4, buffer_size=2, max_staleness=1, rounds=3)
    sync(c, "a", 0.0)
    submit(c, ["t1", "t2"], 1.0)
    request = SyncRequest(leaf="b", boot="boot-b", jobs={"j": LeafJobReport(selection_id=0, waiting=4)})
    view = c.sync(request, 1.1).jobs[0]
    assert view.closing and view.quota > 0
