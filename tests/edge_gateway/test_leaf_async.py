"""A leaf's books of an async (FedBuff) job: slots while training, leases over versions, staleness."""

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
        quota=1,
        retry_wait=30,
        task_timeout=10.0,
        param_shapes={"w": [2]},
        config={},
        task_meta={},
        mode="async",
        max_staleness=2,
    )
    return JobView(**{**base, **kw})


def judge(job: LeafJob, task_id: str, version: int) -> ResultVerdict | None:
    """What /result does with an authentic, decoded result: None when taken for the server."""
    verdict = judge_result(replace(job.result_facts(task_id, version), decoded=True))
    if verdict is None:
        job.take(task_id, version)
    else:
        job.settle(task_id, verdict)
    return verdict


def new_version(job: LeafJob, version: int) -> None:
    job.apply_view(job.view.model_copy(update={"model_version": version}))


def test_a_taken_result_frees_the_slot_and_its_device_may_train_again_at_once():
    job = LeafJob(view=view(quota=1), waiting_window=60)
    _, lease = job.decide_task("a", 0.0, True)
    assert job.decide_task("b", 0.0, True)[0] is TaskDecision.NOT_SELECTED
    assert job.report(0.0).assigned == 1
    assert judge(job, lease.task_id, 0) is None
    assert job.report(0.0).assigned == 0
    decision, again = job.decide_task("a", 1.0, True)  # no ALREADY_TRAINED in async mode
    assert decision is TaskDecision.TASK and again.task_id != lease.task_id
    assert judge(job, lease.task_id, 0) is ResultVerdict.DUPLICATE


def test_a_new_version_keeps_leases_and_their_results_count_while_not_too_stale():
    job = LeafJob(view=view(quota=2), waiting_window=60)
    _, a = job.decide_task("a", 0.0, True)
    _, b = job.decide_task("b", 0.0, True)
    new_version(job, 2)
    assert job.report(0.5).assigned == 2
    assert job.decide_task("c", 0.5, True)[0] is TaskDecision.NOT_SELECTED  # both slots still training
    assert judge(job, a.task_id, 0) is None  # τ = 2 = max_staleness: counts
    new_version(job, 3)  # b's result could no longer count: its slot is free
    assert job.report(0.6).assigned == 0
    assert job.decide_task("c", 0.6, True)[0] is TaskDecision.TASK
    assert judge(job, b.task_id, 0) is ResultVerdict.LATE  # τ = 3
    assert job.late == 1


def test_taken_and_expired_tasks_are_remembered_while_a_resend_could_count():
    job = LeafJob(view=view(quota=2, task_timeout=1.0), waiting_window=60)
    _, a = job.decide_task("a", 0.0, True)
    _, b = job.decide_task("b", 0.0, True)
    assert judge(job, a.task_id, 0) is None
    job.report(2.0)  # b's lease runs out
    new_version(job, 1)
    new_version(job, 2)
    assert judge(job, a.task_id, 0) is ResultVerdict.DUPLICATE  # not "late": it counted
    assert judge(job, b.task_id, 0) is ResultVerdict.LATE
    new_version(job, 3)  # version 0 is past max_staleness: its books go
    assert job.task_versions == {} and job.reported_tasks == set() and job.expired_tasks == set()


def test_a_device_asking_again_after_a_new_version_gets_a_task_of_it():
    job = LeafJob(view=view(quota=1), waiting_window=60)
    _, lease = job.decide_task("a", 0.0, True)
    assert job.decide_task("a", 0.1, True)[1].task_id == lease.task_id  # its answer may have been lost
    new_version(job, 1)
    decision, fresh = job.decide_task("a", 0.2, True)
    assert decision is TaskDecision.TASK and fresh.version == 1 and fresh.task_id != lease.task_id
    assert judge(job, lease.task_id, 0) is ResultVerdict.LATE  # the old lease ended
    assert job.report(0.3).assigned == 1


def test_a_result_the_server_could_not_take_counts_when_sent_again():
    job = LeafJob(view=view(quota=1), waiting_window=60)
    _, lease = job.decide_task("a", 0.0, True)
    assert judge(job, lease.task_id, 0) is None
    job.settle(lease.task_id, ResultVerdict.UNAVAILABLE)
    assert judge(job, lease.task_id, 0) is None


def test_sync_mode_keeps_its_rules():
    job = LeafJob(view=view(mode="sync", quota=1), waiting_window=60)
    _, lease = job.decide_task("a", 0.0, True)
    assert judge(job, lease.task_id, 0) is None
    assert job.decide_task("a", 0.1, True)[0] is TaskDecision.ALREADY_TRAINED
    new_version(job, 1)
    assert job.leases == {}


def test_while_a_step_is_due_only_results_it_would_make_late_wait_for_the_server():
    job = LeafJob(view=view(model_version=5, closing=True), waiting_window=60.0)  # max_staleness 2
    assert job.may_promise(5) and job.may_promise(4)  # still within the window after the step
    assert not job.may_promise(3)
    job.apply_view(view(model_version=6))
    assert job.may_promise(4)
