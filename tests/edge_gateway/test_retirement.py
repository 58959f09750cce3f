"""Which finished jobs leave the server's memory, and a retired job's status from its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from edge_gateway.coordinator import Coordinator
from edge_gateway.jobs import JobSpec
from edge_gateway.retirement import Retirement, retired_status
from internal_link.messages import JobStatus, SyncRequest


def test_a_job_is_due_retain_seconds_after_it_first_finished() -> None:
    retirement = Retirement(retain=60.0)
    assert retirement.finished("a", 100.0) == 100.0
    assert retirement.finished("a", 130.0) == 100.0  # a later checkpoint does not restart the period
    retirement.finished("b", 120.0)
    assert retirement.due(159.9) == []
    assert retirement.due(160.0) == ["a"]
    retirement.forget("a")
    assert retirement.due(200.0) == ["b"]


def test_a_checkpoint_is_retired_only_when_finished_long_enough_ago() -> None:
    retirement = Retirement(retain=60.0)
    assert retirement.retired({"status": "done", "finished_at": 100.0}, 160.0)
    assert not retirement.retired({"status": "done", "finished_at": 100.0}, 159.0)
    assert not retirement.retired({"status": "done"}, 1e12)  # written before retirement existed
    assert not retirement.retired({"status": "running", "finished_at": 0.0}, 1e12)


def test_retired_status_sums_the_history() -> None:
    record = {
        "spec": JobSpec(name="n", model="xor").model_dump(),
        "version": 2,
        "round": 2,
        "status": "done",
        "finished_at": 5.0,
        "history": [{"results": 3, "clipped": 1}, {"results": 4, "capped": 2, "rejected": "not finite"}],
    }
    status = retired_status("j", record)
    assert (status["name"], status["status"], status["retired"], status["model_version"]) == ("n", "done", True, 2)
    assert (status["results_counted"], status["clipped"], status["capped"], status["rejected_models"]) == (7, 1, 2, 1)


def test_coordinator_retires_only_finished_jobs_and_stops_syncing_them() -> None:
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="n", model="xor"), {"w": np.zeros(2, np.float32)}, now=0.0)
    with pytest.raises(ValueError, match="running"):
        c.retire("j")
    c.end_job("j")
    assert c.jobs["j"].status is JobStatus.DONE
    c.retire("j")
    assert c.jobs == {} and c.sync(SyncRequest(leaf="a", boot="x"), 1.0).jobs == []
