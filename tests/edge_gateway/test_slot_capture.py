"""A leaf's defences against slot capture (issue 11 item 2), without sockets: a client's cap of
unreported leases, and no-show devices giving way to reliable ones when slots are scarce."""

from edge_gateway.leaf.job_state import LeafJob, TaskDecision
from edge_gateway.leaf.no_shows import NoShowScores
from internal_link.calls import ClientLimit

from .test_leaf_state import judge, view

SYBIL = ClientLimit("token:sybil", 2)
HONEST = ClientLimit("token:honest", 2)


def test_one_client_holds_at_most_its_cap_of_unreported_leases():
    job = LeafJob(view=view(quota=10), waiting_window=60)
    decisions = [job.decide_task(f"sybil-{i}", 0.0, True, client=SYBIL)[0] for i in range(20)]
    assert decisions.count(TaskDecision.TASK) == 2
    assert decisions.count(TaskDecision.CLIENT_AT_CAP) == 18
    # Other clients are not held back by it, and the refused ids do not queue for slots.
    assert job.decide_task("honest-0", 0.0, True, client=HONEST)[0] is TaskDecision.TASK
    report = job.report(0.0)
    assert (report.assigned, report.waiting, report.over_cap) == (3, 0, 18)


def test_a_capped_device_asking_again_gets_its_own_task_back():
    job = LeafJob(view=view(quota=10), waiting_window=60)
    _, first = job.decide_task("sybil-0", 0.0, True, client=SYBIL)
    job.decide_task("sybil-1", 0.0, True, client=SYBIL)
    decision, again = job.decide_task("sybil-0", 1.0, True, client=SYBIL)
    assert decision is TaskDecision.TASK and again is first


def test_a_report_or_an_expiry_frees_a_place_under_the_cap():
    job = LeafJob(view=view(quota=10, task_timeout=10.0), waiting_window=60)
    _, lease = job.decide_task("c-0", 0.0, True, client=SYBIL)
    job.decide_task("c-1", 0.0, True, client=SYBIL)
    assert job.decide_task("c-2", 0.0, True, client=SYBIL)[0] is TaskDecision.CLIENT_AT_CAP
    assert judge(job, lease.task_id, 0) is None  # c-0 reports
    assert job.decide_task("c-2", 1.0, True, client=SYBIL)[0] is TaskDecision.TASK
    assert job.decide_task("c-3", 1.0, True, client=SYBIL)[0] is TaskDecision.CLIENT_AT_CAP
    # c-1's lease runs out at 10 s: its place is free again.
    assert job.decide_task("c-3", 10.5, True, client=SYBIL)[0] is TaskDecision.TASK


def test_a_new_selection_frees_the_places_of_the_leases_it_drops():
    job = LeafJob(view=view(quota=10), waiting_window=60)
    job.decide_task("c-0", 0.0, True, client=SYBIL)
    job.decide_task("c-1", 0.0, True, client=SYBIL)
    job.apply_view(view(quota=10, selection_id=1))
    assert job.decide_task("c-2", 0.0, True, client=SYBIL)[0] is TaskDecision.TASK


def test_without_a_limit_there_is_no_cap():
    job = LeafJob(view=view(quota=10), waiting_window=60)
    assert all(job.decide_task(f"d-{i}", 0.0, True)[0] is TaskDecision.TASK for i in range(10))


def test_a_no_show_loses_a_scarce_slot_to_a_reliable_device_waiting():
    job = LeafJob(view=view(quota=1, task_timeout=10.0), waiting_window=60, no_shows=NoShowScores())
    assert job.decide_task("flaky", 0.0, True)[0] is TaskDecision.TASK
    assert job.decide_task("steady", 1.0, True)[0] is TaskDecision.NOT_SELECTED  # waits for the slot
    # flaky's lease runs out; it asks first for the freed slot, but steady is waiting for it.
    assert job.decide_task("flaky", 11.0, True)[0] is TaskDecision.NOT_SELECTED
    assert job.decide_task("steady", 12.0, True)[0] is TaskDecision.TASK
    report = job.report(12.0)
    assert (report.assigned, report.waiting) == (1, 1)


def test_a_no_show_still_trains_when_no_reliable_device_wants_the_slot():
    job = LeafJob(view=view(quota=1, task_timeout=10.0), waiting_window=60)
    job.decide_task("flaky", 0.0, True)
    assert job.decide_task("flaky", 11.0, True)[0] is TaskDecision.TASK


def test_a_reliable_device_that_stopped_asking_no_longer_holds_the_no_show_back():
    job = LeafJob(view=view(quota=1, task_timeout=10.0), waiting_window=5)
    job.decide_task("flaky", 0.0, True)
    job.decide_task("steady", 1.0, True)  # waits, then goes away
    job.report(11.0)  # the sync prunes devices silent for waiting_window
    assert job.decide_task("flaky", 11.0, True)[0] is TaskDecision.TASK


def test_the_no_show_score_is_shared_by_a_leafs_jobs():
    scores = NoShowScores()
    first = LeafJob(view=view(job_id="j1", quota=1, task_timeout=10.0), waiting_window=60, no_shows=scores)
    second = LeafJob(view=view(job_id="j2", quota=1, task_timeout=10.0), waiting_window=60, no_shows=scores)
    first.decide_task("flaky", 0.0, True)  # never reports in job j1
    second.decide_task("other", 0.0, True)
    second.decide_task("steady", 1.0, True)  # waits in job j2
    # Both leases run out (j1's is seen at the leaf's next sync); in j2, flaky counts as a no-show
    # though it never had a task there.
    first.report(11.0)
    assert second.decide_task("flaky", 11.0, True)[0] is TaskDecision.NOT_SELECTED
    assert second.decide_task("steady", 11.0, True)[0] is TaskDecision.TASK
