import numpy as np
import pytest

from device_protocol.tensors import tensors_to_binary
from edge_gateway.coordinator import RESEND_WAIT_LIMIT, Coordinator
from edge_gateway.fair_share import fair_level
from edge_gateway.jobs import JobSpec
from edge_gateway.rounds import RoundEnd, round_due
from internal_link.messages import JobStatus, LeafJobReport, SubmitBatch, SyncRequest

W = {"w": np.zeros((2, 2), np.float32)}
# These tests are about rounds and FedAvg: batches are not made of screened updates (robustness.py).
UNSCREENED = {"weight_cap": "fixed", "clip": "off", "max_update_value_ratio": None}


def make(**spec):
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor", **{**UNSCREENED, **spec}), W, now=0.0)
    return c


def sync(c, leaf, now, waiting=0, assigned=0, selection=None):
    sel = c.jobs["j"].selection_id if selection is None else selection
    reply = c.sync(
        SyncRequest(
            leaf=leaf, boot="x", jobs={"j": LeafJobReport(selection_id=sel, waiting=waiting, assigned=assigned)}
        ),
        now,
    )
    return reply.jobs[0]


def batch(c, ids, version=None, value=1.0, weight=None, leaf="a"):
    w = float(len(ids)) if weight is None else weight
    upd = {"w": np.full((2, 2), value * w, np.float64)}
    b = SubmitBatch(
        leaf=leaf,
        job_id="j",
        version=c.jobs["j"].version if version is None else version,
        task_ids=ids,
        sum_weight=w,
        sum_update=tensors_to_binary(upd),
    )
    return c.submit(b, upd, now=1.0)


def test_grants_never_exceed_tasks_per_selection_across_leaves():
    c = make(devices_per_round=10, over_selection=0.2)  # 12 tasks per selection
    a = sync(c, "a", 0.1, waiting=8)
    b = sync(c, "b", 0.1, waiting=8)
    assert (a.quota, a.free_slots) == (8, 4) and (b.quota, b.free_slots) == (4, 0)
    # a used 5 and has nobody waiting: its unused grant is released to b.
    a = sync(c, "a", 0.3, waiting=0, assigned=5)
    b = sync(c, "b", 0.3, waiting=8, assigned=4)
    assert a.quota == 5 and b.quota == 7


def test_leaves_with_equal_demand_get_equal_grants():
    c = make(devices_per_round=1000, over_selection=0.2)  # 1,200 tasks per selection
    for leaf in "abcd":  # each reports on the selection before the one that is open now
        sync(c, leaf, 0.0, waiting=2500, selection=-1)
    grants = [sync(c, leaf, 0.1, waiting=2500).quota for leaf in "abcd"]
    assert grants == [300, 300, 300, 300]
    assert [sync(c, leaf, 0.3, waiting=2200, assigned=300).quota for leaf in "abcd"] == grants


def test_remainder_goes_to_the_leaves_that_sync_first():
    c = make(devices_per_round=10, over_selection=0.0)
    for leaf in "abcd":
        sync(c, leaf, 0.0, waiting=50, selection=-1)
    assert [sync(c, leaf, 0.1, waiting=50).quota for leaf in "abcd"] == [3, 3, 3, 1]


def test_the_only_leaf_with_devices_gets_every_slot():
    c = make(devices_per_round=100, over_selection=0.2)
    for leaf in "bcd":  # alive, nobody waiting: their shares go to the leaf that asks
        sync(c, leaf, 0.0)
    view = sync(c, "a", 0.1, waiting=500)
    assert (view.quota, view.free_slots) == (120, 0)
    # Devices arriving at b later find every slot held: leases are never taken back.
    assert sync(c, "b", 0.2, waiting=10).quota == 0


def test_a_dead_leafs_unused_share_goes_back():
    c = make(devices_per_round=100, over_selection=0.2)
    for leaf in "abcd":
        sync(c, leaf, 0.0, waiting=100)
    views = {leaf: sync(c, leaf, 0.1, waiting=100) for leaf in "abcd"}
    assert [v.quota for v in views.values()] == [30, 30, 30, 30]
    assert views["a"].free_slots == 0  # at its share: asking again would not help
    # d never syncs again; once it is stale, the others split its 30 slots.
    assert [sync(c, leaf, 2.0, waiting=70, assigned=30).quota for leaf in "abc"] == [30, 30, 30]
    assert [sync(c, leaf, 3.5, waiting=70, assigned=30).quota for leaf in "abc"] == [40, 40, 40]


def test_expired_leases_are_refilled_within_the_share():
    c = make(devices_per_round=10, over_selection=0.0)
    sync(c, "a", 0.0, waiting=50)
    sync(c, "b", 0.0, waiting=50)
    assert sync(c, "a", 0.1, waiting=50).quota == 5 and sync(c, "b", 0.1, waiting=50).quota == 5
    # Two of a's leases expired (assigned 5 -> 3): a gets them back, b gets nothing more.
    assert sync(c, "a", 0.2, waiting=45, assigned=3).quota == 5
    assert sync(c, "b", 0.2, waiting=45, assigned=5).quota == 5


def test_fair_level():
    assert fair_level(12, []) == 12
    assert fair_level(12, [2, 2]) == 8  # small demands met in full, the rest to the asking leaf
    assert fair_level(1200, [2500, 2500, 2500]) == 300
    assert fair_level(10, [50, 50, 50]) == 3  # rounded up: the free slots bound the last grant


def test_stale_leaf_releases_its_slots():
    c = make(devices_per_round=4, over_selection=0.0)
    assert sync(c, "a", 0.0, waiting=4).quota == 4
    assert sync(c, "b", 1.0, waiting=4).quota == 0
    assert sync(c, "b", 10.0, waiting=4).quota == 4  # a has not synced for 10 s


def test_report_for_an_old_selection_counts_nothing():
    c = make(devices_per_round=4, over_selection=0.0)
    view = sync(c, "a", 0.0, waiting=3, assigned=2, selection=99)
    assert view.quota == 0


def test_round_closes_at_quorum_and_applies_fedavg():
    c = make(devices_per_round=3, rounds=2)
    reply, events = batch(c, ["t1", "t2"], value=1.0)
    assert reply.accepted and not events
    reply, events = batch(c, ["t3"], value=4.0, weight=2.0)
    assert reply.accepted and [e.version for e in events] == [1]
    job = c.jobs["j"]
    np.testing.assert_allclose(job.weights["w"], (2 * 1.0 + 2 * 4.0) / 4)
    assert job.version == 1 and job.round == 1 and job.history[0]["results"] == 3
    assert c.status("j", 1.0)["reported"] == 0 and c.status("j", 1.0)["results_counted"] == 3


def test_duplicates_refused_whole_and_late_batches_marked():
    c = make(devices_per_round=5)
    assert batch(c, ["t1"])[0].accepted
    reply, _ = batch(c, ["t2", "t1"])
    assert not reply.accepted and reply.duplicates == ["t1"]
    reply, _ = batch(c, ["t3", "t3"])
    assert not reply.accepted and reply.duplicates == ["t3"]
    reply, _ = batch(c, ["t4"], version=7)
    assert reply.late and not reply.accepted
    assert c.jobs["j"].partial.count == 1


def test_last_round_ends_job_and_late_after():
    c = make(devices_per_round=1, rounds=1)
    _, events = batch(c, ["t1"])
    assert events and c.jobs["j"].status == JobStatus.DONE
    assert batch(c, ["t2"])[0].late


def test_deadline_closes_with_min_results_or_reopens_selection():
    c = make(devices_per_round=4, min_results_fraction=0.5, round_timeout=10.0, task_timeout=5.0)
    batch(c, ["t1"])
    assert c.tick(11.0) == [] and c.jobs["j"].selection_id == 1 and c.jobs["j"].partial.count == 1
    batch(c, ["t2"])
    assert c.tick(15.0) == []
    events = c.tick(21.5)
    assert [e.version for e in events] == [1] and c.jobs["j"].history[0]["closed_by"] == "deadline"


ROUND = JobSpec(name="n", devices_per_round=4, min_results_fraction=0.5, round_timeout=10.0, task_timeout=5.0)


@pytest.mark.parametrize(
    ("results", "now", "held", "end"),
    [
        (0, 1.0, False, None),  # open, nothing counted
        (3, 9.99, False, None),  # short of the quorum, before the deadline
        (4, 1.0, False, RoundEnd.QUORUM),
        (5, 11.0, False, RoundEnd.QUORUM),  # a quorum wins over the deadline
        (2, 10.0, False, RoundEnd.DEADLINE),  # deadline reached with min_results (2)
        (1, 10.0, False, RoundEnd.RESELECT),  # deadline reached with too few
        (0, 50.0, False, RoundEnd.RESELECT),
        (4, 1.0, True, None),  # held after a restart: not even a quorum ends it
        (2, 11.0, True, None),
    ],
)
def test_round_due(results, now, held, end):
    assert round_due(ROUND, results, opened_at=0.0, now=now, held=held) is end


def test_round_due_counts_the_deadline_from_the_selection_opening():
    assert round_due(ROUND, 2, opened_at=5.0, now=14.9, held=False) is None
    assert round_due(ROUND, 2, opened_at=5.0, now=15.0, held=False) is RoundEnd.DEADLINE


def test_a_submit_closes_by_quorum_only_the_tick_by_deadline():
    c = make(devices_per_round=4, min_results_fraction=0.5, round_timeout=10.0, task_timeout=5.0)
    batch(c, ["t1"])
    reply, events = c.submit(
        SubmitBatch(
            leaf="a",
            job_id="j",
            version=0,
            task_ids=["t2"],
            sum_weight=1.0,
            sum_update=tensors_to_binary({"w": np.ones((2, 2))}),
        ),
        {"w": np.ones((2, 2))},
        now=20.0,  # past the deadline with min_results: still open until the tick
    )
    assert reply.accepted and events == []
    assert [e.version for e in c.tick(20.1)] == [1] and c.jobs["j"].history[0]["closed_by"] == RoundEnd.DEADLINE


def test_a_restarted_leafs_counters_add_to_those_of_its_ended_process():
    c = make(devices_per_round=10)

    def report(leaf_boot, now, **counters):
        c.sync(SyncRequest(leaf="a", boot=leaf_boot, jobs={"j": LeafJobReport(**counters)}), now)
        return c.status("j", now)

    report("first", 0.1, tasks_issued=5, late=2, refused=1, duplicates=1)
    status = report("first", 0.2, tasks_issued=7, late=3, refused=1, duplicates=1)  # cumulative, not added
    assert (status["tasks_issued"], status["late"], status["refused"], status["duplicates"]) == (7, 3, 1, 1)
    status = report("second", 0.3)  # kill -9, restarted under the same name: it counts from 0
    assert (status["tasks_issued"], status["late"], status["refused"], status["duplicates"]) == (7, 3, 1, 1)
    status = report("second", 0.4, tasks_issued=2, late=1)
    assert (status["tasks_issued"], status["late"], status["refused"], status["duplicates"]) == (9, 4, 1, 1)


def resent(c, leaf, now, server_boot):
    """A leaf's sync saying which server boot it has re-sent everything to."""
    c.sync(SyncRequest(leaf=leaf, boot="leaf-boot", server_boot=server_boot), now)


def test_after_a_restart_no_round_closes_until_every_expected_leaf_has_re_sent():
    c = make(devices_per_round=2)
    c.expect_resends({"a", "b"}, now=0.0)
    reply, events = batch(c, ["t1", "t2"])
    assert reply.accepted and events == []  # a quorum, held: a and b may still re-send into it
    assert c.tick(1.0) == []
    resent(c, "a", 1.1, server_boot="b")  # this coordinator's boot
    resent(c, "b", 1.2, server_boot="an earlier boot")  # b synced, but has not re-sent yet
    assert c.tick(1.3) == [] and c.awaiting_resends == {"b"}
    assert batch(c, ["t3"])[0].accepted  # b's re-send
    resent(c, "b", 1.4, server_boot="b")
    events = c.tick(1.5)
    assert [e.version for e in events] == [1] and c.jobs["j"].history[0]["results"] == 3


def test_a_leaf_that_never_comes_back_holds_rounds_for_at_most_the_limit():
    c = make(devices_per_round=4, min_results_fraction=0.25, round_timeout=10.0, task_timeout=5.0)
    c.expect_resends({"gone"}, now=0.0)
    batch(c, ["t1"])
    assert c.tick(11.0) == []  # past the round's deadline, still held
    assert c.tick(RESEND_WAIT_LIMIT - 0.1) == []
    events = c.tick(RESEND_WAIT_LIMIT)
    assert [e.version for e in events] == [1] and c.jobs["j"].history[0]["closed_by"] == "deadline"


def test_nothing_is_held_without_expected_leaves():
    c = make(devices_per_round=1)
    c.expect_resends(set(), now=0.0)
    assert batch(c, ["t1"])[1]


def test_batch_with_wrong_shapes_refused():
    c = make()
    upd = {"w": np.ones((3, 3))}
    b = SubmitBatch(leaf="a", job_id="j", version=0, task_ids=["t"], sum_weight=1.0, sum_update=tensors_to_binary(upd))
    reply, _ = c.submit(b, upd, 0.0)
    assert not reply.accepted and "parameters" in reply.message


def test_job_spec_rules():
    with pytest.raises(ValueError):
        JobSpec(name="x", task_timeout=100, round_timeout=10)
    spec = JobSpec(name="x", devices_per_round=10, over_selection=0.25)
    assert spec.tasks_per_selection == 13 and spec.min_results == 5
    assert spec.app_config()["components"][0]["type"] == "Trainer.DLTrainer"


def test_xnnpack_refused_with_the_reason_and_platforms_normalised():
    with pytest.raises(ValueError, match="conv biases are absorbed"):
        JobSpec(name="x", runtime="executorch", backend="xnnpack")
    assert JobSpec(name="x", platforms=["iOS", "Android"]).platforms == ["ios", "android"]


# -- robust aggregation (robustness.py) wired into the rounds ------------------------------------
def test_the_view_carries_the_screen_bounds_of_the_current_version():
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor", clip_norm=2.5), W, now=0.0)
    screen = sync(c, "a", 0.0).screen
    assert screen is not None
    assert (screen.weight_cap, screen.norm_bound, screen.value_limit) == (1.0, 2.5, 10.0)


def test_a_batch_that_screened_updates_cannot_make_is_refused_with_the_reason():
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor", devices_per_round=2), W, now=0.0)
    # Screened with cap 1 and norm bound 1: two results sum to weight ≤ 2 and norm ≤ 2.
    reply, _ = batch(c, ["t1", "t2"], value=3.0)
    assert not reply.accepted and not reply.late and "norm" in reply.message
    reply, _ = batch(c, ["t1"], value=0.1, weight=5.0)
    assert not reply.accepted and "weight cap" in reply.message
    assert c.jobs["j"].partial.count == 0 and c.jobs["j"].counted == set()
    reply, _ = batch(c, ["t1", "t2"], value=0.2)
    assert reply.accepted


def test_a_new_model_that_fails_the_check_keeps_the_previous_weights_and_says_why():
    # Screening off (job flags), so only the model check stands between this batch and the model.
    c = make(devices_per_round=1, rounds=3, max_model_value=10.0)
    _, events = batch(c, ["t1"], value=1.0)
    job = c.jobs["j"]
    np.testing.assert_allclose(job.weights["w"], 1.0)
    _, events = batch(c, ["t2"], value=1e6)
    assert [e.version for e in events] == [2]  # the version and round still move on
    np.testing.assert_allclose(job.weights["w"], 1.0)  # version 2 serves version 1's weights
    assert job.round == 2 and "above the job's limit" in job.history[-1]["rejected"]
    assert "rejected" not in job.history[0]
    reply, _ = batch(c, ["t3"], version=1, value=1.0)
    assert reply.late  # results for the refused round's version are late now
    assert c.status("j", 1.0)["rejected_models"] == 1


def test_a_round_records_its_screening_and_the_bounds_adapt_from_the_counts():
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor", devices_per_round=4, rounds=2), W, now=0.0)
    b = SubmitBatch(
        leaf="a",
        job_id="j",
        version=0,
        task_ids=["t1", "t2", "t3", "t4"],
        sum_weight=4.0,
        sum_update=tensors_to_binary({"w": np.full((2, 2), 0.5)}),
        clipped=4,
        capped=3,
    )
    reply, events = c.submit(b, {"w": np.full((2, 2), 0.5)}, now=1.0)
    assert reply.accepted and events
    entry = c.jobs["j"].history[0]
    assert "rejected" not in entry
    assert (entry["clipped"], entry["capped"], entry["clip_bound"], entry["weight_cap"]) == (4, 3, 1.0, 1.0)
    status = c.status("j", 1.0)
    assert (status["clipped"], status["capped"]) == (4, 3)
    # All clipped, most capped: both bounds rise for the next version (at most ×e^0.5 per step).
    assert status["screen"]["norm_bound"] == pytest.approx(np.exp(0.5))
    assert status["screen"]["weight_cap"] == pytest.approx(np.exp(0.25))
    assert sync(c, "a", 1.0).screen.norm_bound == pytest.approx(np.exp(0.5))


def test_a_checkpointed_job_resumes_with_its_bounds():
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor"), W, now=0.0)
    bounds = c.jobs["j"].bounds
    moved = type(bounds)(weight_cap=7.0, norm_bound=0.3, value_limit=4.0)
    c.add_job("k", JobSpec(name="n", model="xor"), W, now=0.0, bounds=moved)
    assert c.jobs["k"].bounds == moved and c.jobs["j"].bounds != moved


def undelivered(c, leaf, now, server_boot="b", holds=True):
    """A leaf's sync saying whether it holds results it could not deliver yet."""
    c.sync(SyncRequest(leaf=leaf, boot="leaf-boot", server_boot=server_boot, undelivered=holds), now)


def test_no_round_closes_while_a_live_leaf_says_it_has_undelivered_results():
    c = make(devices_per_round=2, min_results_fraction=0.5, round_timeout=10.0, task_timeout=5.0)
    undelivered(c, "a", 0.5)  # e.g. it could not reach this server for a while
    reply, events = batch(c, ["t1", "t2"], leaf="b")
    assert reply.accepted and events == []  # a quorum, held
    assert c.tick(11.0) == []
    undelivered(c, "a", 11.1, holds=False)  # delivered
    assert [e.version for e in c.tick(11.2)] == [1]


def test_a_hold_for_undelivered_results_ends_at_the_limit_and_is_not_extended_by_other_leaves():
    c = make(devices_per_round=4, min_results_fraction=0.25, round_timeout=10.0, task_timeout=5.0)
    undelivered(c, "a", 0.0)
    batch(c, ["t1"])
    undelivered(c, "b", RESEND_WAIT_LIMIT - 1.0)  # joins the hold, does not restart its clock
    assert c.tick(RESEND_WAIT_LIMIT - 0.1) == []
    assert [e.version for e in c.tick(RESEND_WAIT_LIMIT)] == [1]


def test_duplicates_name_the_boot_that_counted_them():
    c = make(devices_per_round=3)
    assert batch(c, ["t1"])[0].accepted
    reply, _ = batch(c, ["t1", "t2"])
    assert (reply.accepted, reply.duplicates, reply.boot) == (False, ["t1"], "b")


def test_a_leaf_is_listed_on_a_job_only_once_it_reports_serving_it():
    # The reply that tells a leaf of a new job may be slow or lost: until the leaf's next sync
    # names the job, devices sent to that leaf would hear "unknown job", so status must not list it.
    c = make()
    c.sync(SyncRequest(leaf="a", boot="x", jobs={}), now=0.1)
    assert c.status("j", now=0.2)["leaves"] == []
    sync(c, "a", 0.3)
    assert c.status("j", now=0.4)["leaves"] == ["a"]
