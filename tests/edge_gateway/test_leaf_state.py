from dataclasses import replace

from edge_gateway.leaf.job_state import LeafJob, TaskDecision
from edge_gateway.leaf.result_verdicts import ResultVerdict, judge_result
from internal_link.messages import JobStatus, JobView


def view(**kw):
    base = dict(
        job_id="j",
        job_name="n",
        status=JobStatus.RUNNING,
        model_version=0,
        round=0,
        selection_id=0,
        quota=2,
        retry_wait=30,
        task_timeout=10.0,
        param_shapes={"w": [2]},
        config={},
        task_meta={},
    )
    return JobView(**{**base, **kw})


def judge(job: LeafJob, task_id: str, version: int) -> ResultVerdict | None:
    """What /result does with an authentic result once decoded: the verdict, booked, or None when
    the result is taken (and goes to the server)."""
    verdict = judge_result(replace(job.result_facts(task_id, version), decoded=True))
    if verdict is None:
        job.take(task_id)
    else:
        job.settle(task_id, verdict)
    return verdict


def test_first_come_within_quota_then_not_selected():
    job = LeafJob(view=view(), waiting_window=60)
    d1, l1 = job.decide_task("a", 0.0, True)
    d2, _ = job.decide_task("b", 0.0, True)
    d3, _ = job.decide_task("c", 0.0, True)
    assert (d1, d2, d3) == (TaskDecision.TASK, TaskDecision.TASK, TaskDecision.NOT_SELECTED)
    # Asking again returns the same task: the first answer may have been lost.
    again, l1b = job.decide_task("a", 1.0, True)
    assert again is TaskDecision.TASK and l1b.task_id == l1.task_id
    report = job.report(1.0)
    assert (report.assigned, report.waiting, report.tasks_issued) == (2, 1, 2)


def test_not_ready_and_done():
    assert LeafJob(view=view(model_version=-1), waiting_window=1).decide_task("a", 0, True)[0] is TaskDecision.NOT_READY
    assert LeafJob(view=view(), waiting_window=1).decide_task("a", 0, False)[0] is TaskDecision.NOT_READY
    assert (
        LeafJob(view=view(status=JobStatus.DONE), waiting_window=1).decide_task("a", 0, True)[0] is TaskDecision.NO_JOB
    )


def test_lease_expiry_frees_slot_and_late_result():
    job = LeafJob(view=view(quota=1), waiting_window=60)
    _, lease = job.decide_task("a", 0.0, True)
    assert job.decide_task("b", 5.0, True)[0] is TaskDecision.NOT_SELECTED
    decision, lease_b = job.decide_task("b", 10.5, True)
    assert decision is TaskDecision.TASK
    assert judge(job, lease.task_id, 0) is ResultVerdict.LATE
    assert judge(job, lease_b.task_id, 0) is None
    assert judge(job, lease_b.task_id, 0) is ResultVerdict.DUPLICATE
    assert (job.late, job.duplicates) == (1, 1)


def test_trained_device_waits_for_next_selection():
    job = LeafJob(view=view(), waiting_window=60)
    _, lease = job.decide_task("a", 0.0, True)
    assert judge(job, lease.task_id, 0) is None
    assert job.decide_task("a", 1.0, True)[0] is TaskDecision.ALREADY_TRAINED
    job.apply_view(view(selection_id=1, model_version=1))
    assert job.decide_task("a", 2.0, True)[0] is TaskDecision.TASK
    assert judge(job, lease.task_id, 0) is ResultVerdict.DUPLICATE  # counted in version 0


def test_a_counted_result_sent_again_after_the_round_closed_is_a_duplicate_not_late():
    # Its OK was lost and the device re-sends once the next version is out: the answer must say
    # it was counted, and the late counter must not move.
    job = LeafJob(view=view(), waiting_window=60)
    _, counted = job.decide_task("a", 0.0, True)
    _, not_sent = job.decide_task("b", 0.0, True)
    assert judge(job, counted.task_id, 0) is None
    job.apply_view(view(selection_id=1, model_version=1))
    assert job.reported_already(counted.task_id)
    assert judge(job, counted.task_id, 0) is ResultVerdict.DUPLICATE
    assert judge(job, not_sent.task_id, 0) is ResultVerdict.LATE
    assert (job.late, job.duplicates) == (1, 1)
    # One version back only: the set stays as small as one round's results.
    job.apply_view(view(selection_id=2, model_version=2))
    assert not job.reported_already(counted.task_id)
    assert judge(job, counted.task_id, 0) is ResultVerdict.LATE


def test_a_result_the_server_took_as_late_is_late_when_sent_again():
    job = LeafJob(view=view(), waiting_window=60)
    _, lease = job.decide_task("a", 0.0, True)
    assert judge(job, lease.task_id, 0) is None
    job.settle(lease.task_id, ResultVerdict.LATE_UPSTREAM)  # the server had closed the round before it arrived
    job.apply_view(view(selection_id=1, model_version=1))
    assert not job.reported_already(lease.task_id)
    assert judge(job, lease.task_id, 0) is ResultVerdict.LATE
    assert (job.late, job.duplicates) == (2, 0)


def test_forget_result_lets_retry_count():
    job = LeafJob(view=view(), waiting_window=60)
    _, lease = job.decide_task("a", 0.0, True)
    assert judge(job, lease.task_id, 0) is None
    job.settle(lease.task_id, ResultVerdict.UNAVAILABLE)
    assert judge(job, lease.task_id, 0) is None


def test_waiting_forgets_devices_that_went_quiet():
    job = LeafJob(view=view(quota=0), waiting_window=5)
    job.decide_task("a", 0.0, True)
    job.decide_task("b", 4.0, True)
    assert job.report(6.0).waiting == 1


def test_allow_lists_keep_other_devices_off_the_job():
    job = LeafJob(view=view(platforms=["ios", "android"], quota=5), waiting_window=60)
    assert job.decide_task("sim-1", 0.0, True, "sim")[0] is TaskDecision.NOT_ELIGIBLE
    assert job.decide_task("sim-2", 0.0, True, None)[0] is TaskDecision.NOT_ELIGIBLE
    assert job.decide_task("phone", 0.0, True, "ios")[0] is TaskDecision.TASK
    job = LeafJob(view=view(device_ids=["my-iphone"], quota=5), waiting_window=60)
    assert job.decide_task("other", 0.0, True, "ios")[0] is TaskDecision.NOT_ELIGIBLE
    assert job.decide_task("my-iphone", 0.0, True, "ios")[0] is TaskDecision.TASK
    assert job.report(0.0).waiting == 0  # left-out devices do not ask the server for slots


def test_a_forgotten_result_still_expires_and_never_takes_a_newer_lease_with_it():
    job = LeafJob(view=view(quota=3), waiting_window=60)
    _, first = job.decide_task("a", 0.0, True)
    _, _second = job.decide_task("b", 5.0, True)
    judge(job, first.task_id, 0)
    job.settle(first.task_id, ResultVerdict.UNAVAILABLE)  # now queued behind b's lease
    decision, again = job.decide_task("a", 10.5, True)  # a's lease ran out at 10.0
    assert decision is TaskDecision.TASK and again.task_id != first.task_id
    assert judge(job, first.task_id, 0) is ResultVerdict.LATE
    job.expire(15.5)  # b's runs out; a's new lease (until 20.5) stays
    assert set(job.leases) == {"a"} and job.leases["a"] is again


def test_many_leases_expire_in_order():
    job = LeafJob(view=view(quota=10_000, task_timeout=10.0), waiting_window=60)
    for i in range(5000):
        job.decide_task(f"d{i}", i * 0.001, True)
    job.expire(10.0 + 2.4995)  # leases created before t=2.4995 are gone
    assert len(job.leases) == 2500 and "d2500" in job.leases and "d2499" not in job.leases


def test_tasks_a_restarted_leaf_replayed_are_duplicates_when_sent_again():
    job = LeafJob(view=view(model_version=3), waiting_window=60)
    job.taken_before({3: {"now"}, 2: {"before"}, 1: {"older"}})
    assert job.reported_already("now") and job.reported_already("before")
    assert not job.reported_already("older")  # late for its version anyway


def test_no_promise_for_the_current_version_while_the_next_is_due():
    job = LeafJob(view=view(model_version=3), waiting_window=60.0)
    assert job.may_promise(3)
    job.apply_view(view(model_version=3, closing=True))
    assert not job.may_promise(3)
    job.apply_view(view(model_version=4, round=1, selection_id=1))
    assert job.may_promise(4)


def test_a_result_the_server_did_not_count_is_late_if_sent_again():
    job = LeafJob(view=view(), waiting_window=60.0)
    assert judge(job, "t1", 0) is None and judge(job, "t2", 0) is None
    job.not_counted(["t1"], acknowledged=1)  # its device had been told OK
    job.apply_view(view(model_version=1, round=1, selection_id=1))
    assert job.late == 1
    assert judge(job, "t1", 0) is ResultVerdict.LATE  # not "counted once"
    assert judge(job, "t2", 0) is ResultVerdict.DUPLICATE
