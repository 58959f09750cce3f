"""The coordinator running async (FedBuff) jobs: pure, time passed in."""

import math

import numpy as np
import orjson
import pytest

from device_protocol.tensors import tensors_to_binary
from edge_gateway.coordinator import RESEND_WAIT_LIMIT, Coordinator
from edge_gateway.jobs import JobSpec
from internal_link.messages import JobStatus, LeafJobReport, SubmitBatch, SyncRequest

W = {"w": np.zeros((2, 2), np.float32)}
ASYNC = dict(mode="async", concurrency=6, buffer_size=3, max_staleness=2, rounds=4)
# These tests are about buffers and steps: batches are not made of screened updates (robustness.py).
UNSCREENED = {"weight_cap": "fixed", "clip": "off", "max_update_value_ratio": None}


def make(**spec):
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor", **{**UNSCREENED, **ASYNC, **spec}), W, now=0.0)
    return c


def submit(c, ids, version, value=1.0, weight=None, now=1.0):
    """A leaf's batch of `ids` trained on `version`, each result's Δ all `value`, weight 1 each."""
    w = float(len(ids)) if weight is None else weight
    upd = {"w": np.full((2, 2), value * w, np.float64)}
    b = SubmitBatch(
        leaf="a", job_id="j", version=version, task_ids=ids, sum_weight=w, sum_update=tensors_to_binary(upd)
    )
    return c.submit(b, upd, now=now)


def sync(c, leaf, now, waiting=0, assigned=0):
    request = SyncRequest(
        leaf=leaf, boot="x", jobs={"j": LeafJobReport(selection_id=0, waiting=waiting, assigned=assigned)}
    )
    return c.sync(request, now).jobs[0]


def test_a_version_every_buffer_size_results_and_the_job_ends_after_rounds_versions():
    c = make()
    job = c.jobs["j"]
    reply, events = submit(c, ["t0", "t1"], 0)
    assert reply.accepted and reply.boot == "b" and events == []
    reply, events = submit(c, ["t2"], 0)
    assert reply.accepted and [e.version for e in events] == [1]
    assert (job.version, job.round, job.selection_id) == (1, 1, 0)  # selections never move in async mode
    step = job.history[-1]
    assert step["closed_by"] == "buffer" and step["results"] == 3 and step["staleness"] == {"0": 3}
    orjson.dumps(job.history)  # str keys: the checkpoint and the job API can write it
    for v in range(1, 4):
        _, events = submit(c, [f"v{v}-{i}" for i in range(3)], v)
        assert [e.version for e in events] == [v + 1]
    assert job.status is JobStatus.DONE and job.version == 4
    reply, _ = submit(c, ["after"], 4)
    assert not reply.accepted and reply.late


def test_the_step_weighs_each_trained_version_by_its_staleness_over_the_raw_weight():
    c = make(buffer_size=4)
    submit(c, ["a", "b", "c", "d"], 0, value=1.0)  # v1 = 0 + 1·1
    submit(c, ["e"], 1, value=2.0, weight=3.0)  # fresh: τ 0
    _, events = submit(c, ["f"], 0, value=-1.0, weight=1.0)  # τ 1
    assert events == []  # 2 results buffered of 4
    _, events = submit(c, ["g", "h"], 1, value=0.5, weight=2.0)
    assert [e.version for e in events] == [2]
    expected = 1.0 + (2.0 * 3.0 + 0.5 * 2.0 + (1 / math.sqrt(2)) * -1.0 * 1.0) / (3.0 + 2.0 + 1.0)
    np.testing.assert_allclose(c.jobs["j"].weights["w"], np.full((2, 2), expected, np.float32), rtol=1e-6)
    assert c.jobs["j"].history[-1]["staleness"] == {"0": 3, "1": 1}


def test_stale_results_count_within_max_staleness_and_older_ones_are_late():
    c = make(max_staleness=1, concurrency=3)
    submit(c, ["a", "b", "c"], 0)
    submit(c, ["d", "e", "f"], 1)  # version 2 now
    reply, _ = submit(c, ["g"], 1)
    assert reply.accepted
    reply, events = submit(c, ["h"], 0)
    assert not reply.accepted and reply.late and "2 versions old" in reply.message and events == []
    assert c.status("j", 2.0)["results_counted"] == 7  # 6 applied + 1 buffered, the late one in none


def test_duplicates_are_refused_by_id_even_after_their_step():
    c = make()
    submit(c, ["a", "b", "c"], 0)
    reply, _ = submit(c, ["x", "a"], 0)
    assert not reply.accepted and reply.duplicates == ["a"]
    reply, _ = submit(c, ["x", "x"], 1)
    assert reply.duplicates == ["x"]


def test_no_step_while_rounds_are_held_after_a_restart_and_the_tick_makes_it_later():
    c = make()
    c.expect_resends({"leaf-a"}, now=0.0)
    _, events = submit(c, ["a", "b", "c", "d"], 0, now=1.0)
    assert events == [] and c.jobs["j"].version == 0
    assert c.tick(2.0) == []
    c.sync(SyncRequest(leaf="leaf-a", boot="x", server_boot="b"), 3.0)  # it has re-sent
    assert [e.version for e in c.tick(3.0)] == [1]
    assert c.jobs["j"].history[-1]["results"] == 4  # a batch is never split


def test_async_jobs_have_no_deadlines():
    c = make()
    submit(c, ["a"], 0)
    assert c.tick(RESEND_WAIT_LIMIT * 100) == []
    assert (c.jobs["j"].version, c.jobs["j"].selection_id) == (0, 0)


def test_concurrency_is_split_among_leaves_and_leases_are_never_taken_back():
    c = make(concurrency=6)
    a = sync(c, "a", 0.1, waiting=5)
    assert (a.mode, a.max_staleness, a.quota, a.free_slots) == ("async", 2, 5, 1)
    b = sync(c, "b", 0.2, waiting=5)
    assert b.quota == 1  # a holds its grant of 5
    a = sync(c, "a", 0.3, assigned=2)  # a trains 2 and nobody waits there: its unused grant is released
    b = sync(c, "b", 0.4, waiting=5, assigned=1)
    assert (a.quota, b.quota) == (2, 4)
    a = sync(c, "a", 0.5, assigned=2, waiting=5)
    assert a.quota == 2  # every slot is held by b or by a's own training devices
    c.jobs["j"].version = 3  # a new version does not move the selection leaves key their leases on
    assert sync(c, "a", 0.6, assigned=2).selection_id == 0


def test_sync_jobs_say_so_in_their_view():
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor"), W, now=0.0)
    view = sync(c, "a", 0.1, waiting=1)
    assert view.mode == "sync" and c.jobs["j"].fedbuff is None


def test_a_restored_job_keeps_its_applied_ids_and_version_but_not_its_buffer():
    c = make()
    submit(c, ["a", "b", "c"], 0)
    submit(c, ["d"], 1)  # buffered, not checkpointed
    job = c.jobs["j"]
    state = orjson.loads(orjson.dumps(job.fedbuff.state()))
    again = Coordinator(boot="b2")
    again.add_job(
        "j", job.spec, job.weights, 5.0, version=job.version, round_=job.round, history=job.history, fedbuff_state=state
    )
    restored = again.jobs["j"]
    assert (restored.version, restored.round, restored.selection_id, restored.fedbuff.buffered) == (1, 1, 0, 0)
    b = SubmitBatch(leaf="a", job_id="j", version=0, task_ids=["a"], sum_weight=1.0, sum_update={})
    reply, _ = again.submit(b, {"w": np.ones((2, 2))}, 6.0)
    assert reply.duplicates == ["a"]
    reply, _ = submit(again, ["d"], 1)  # the leaf's re-send of what the lost process buffered
    assert reply.accepted and reply.boot == "b2"
    with pytest.raises(ValueError):
        Coordinator(boot="b3").add_job("j", job.spec, job.weights, 5.0, version=0, fedbuff_state=state)


def screened_batch(c, ids, version, value, clipped=0, capped=0):
    upd = {"w": np.full((2, 2), value, np.float64)}
    b = SubmitBatch(
        leaf="a",
        job_id="j",
        version=version,
        task_ids=ids,
        sum_weight=float(len(ids)),
        sum_update=tensors_to_binary(upd),
        clipped=clipped,
        capped=capped,
    )
    return c.submit(b, upd, now=1.0)


def test_an_async_batch_screened_updates_cannot_make_is_refused_with_the_reason():
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor", **ASYNC), W, now=0.0)
    # Screened with cap 1 and norm bound 1: two results sum to weight ≤ 2 and norm ≤ 2.
    reply, _ = screened_batch(c, ["t1", "t2"], 0, value=3.0)
    assert not reply.accepted and not reply.late and "norm" in reply.message
    assert c.jobs["j"].fedbuff.buffered == 0
    reply, _ = screened_batch(c, ["t1", "t2"], 0, value=0.2)
    assert reply.accepted


def test_an_async_step_records_its_screening_and_the_bounds_adapt_from_the_counts():
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor", **ASYNC), W, now=0.0)
    reply, events = screened_batch(c, ["t1", "t2", "t3"], 0, value=0.5, clipped=3, capped=2)
    assert reply.accepted and [e.version for e in events] == [1]
    entry = c.jobs["j"].history[0]
    assert "rejected" not in entry
    assert (entry["clipped"], entry["capped"], entry["clip_bound"]) == (3, 2, 1.0)
    # All clipped: the clip bound rises for the next version (×e^0.5); a result of norm 1.6 fits it.
    assert sync(c, "a", 1.0).screen.norm_bound == pytest.approx(np.exp(0.5))
    reply, _ = screened_batch(c, ["t4"], 1, value=0.8)
    assert reply.accepted


def test_an_async_model_that_fails_the_check_is_not_published_and_the_version_moves_on():
    c = make(max_model_value=10.0)
    submit(c, ["t1", "t2", "t3"], 0, value=1.0)
    np.testing.assert_allclose(c.jobs["j"].weights["w"], 1.0)
    _, events = submit(c, ["t4", "t5", "t6"], 1, value=1e6)
    job = c.jobs["j"]
    assert [e.version for e in events] == [2] and job.version == 2
    np.testing.assert_allclose(job.weights["w"], 1.0)
    assert "above the job's limit" in job.history[-1]["rejected"]
