"""The status page's data (status_view.py): topology from leaf syncs and the proxy's /health, jobs, evaluations."""

from __future__ import annotations

import numpy as np

from edge_gateway.coordinator import LEAF_STALE_AFTER, Coordinator
from edge_gateway.jobs import JobSpec
from edge_gateway.status_view import FUNNEL, status_view
from internal_link.messages import LeafJobReport, SyncRequest

W = {"w": np.zeros((2, 2), np.float32)}


def coordinator_with_job() -> Coordinator:
    c = Coordinator(boot="b")
    c.add_job("j", JobSpec(name="digits run", model="xor", devices_per_round=7), W, now=0.0)
    return c


def test_a_leaf_is_healthy_to_the_server_while_it_syncs_and_listed_even_without_jobs() -> None:
    c = Coordinator(boot="b")
    c.sync(SyncRequest(leaf="leaf-0", boot="x"), 10.0)
    (row,) = status_view(c, 10.5, None)["leaves"]
    assert row["name"] == "leaf-0" and row["server_healthy"] and row["synced_ago"] == 0.5
    assert row["proxy_healthy"] is None and row["jobs"] == []
    (row,) = status_view(c, 10.0 + LEAF_STALE_AFTER + 0.5, None)["leaves"]
    assert not row["server_healthy"]


def test_the_proxys_view_of_each_leaf_is_merged_and_a_leaf_only_the_proxy_knows_is_listed() -> None:
    c = Coordinator(boot="b")
    c.sync(SyncRequest(leaf="leaf-0", boot="x"), 1.0)
    proxy = {
        "url": "http://p",
        "reachable": True,
        "leaves": {"leaf-0": {"healthy": True}, "leaf-1": {"healthy": False}},
    }
    view = status_view(c, 1.0, proxy)
    assert view["proxy"] is proxy
    rows = {row["name"]: row for row in view["leaves"]}
    assert rows["leaf-0"]["proxy_healthy"] is True and rows["leaf-0"]["server_healthy"]
    assert rows["leaf-1"]["proxy_healthy"] is False and not rows["leaf-1"]["server_healthy"]
    assert rows["leaf-1"]["synced_ago"] is None


def test_a_leaf_lists_the_jobs_its_reports_name() -> None:
    c = coordinator_with_job()
    c.sync(SyncRequest(leaf="leaf-0", boot="x", jobs={"j": LeafJobReport(selection_id=0)}), 1.0)
    c.sync(SyncRequest(leaf="leaf-1", boot="x"), 1.0)  # has not taken the job up yet
    rows = {row["name"]: row for row in status_view(c, 1.0, None)["leaves"]}
    assert rows["leaf-0"]["jobs"] == ["digits run"] and rows["leaf-1"]["jobs"] == []


def test_a_job_shows_its_round_funnel_and_the_evaluated_versions_only() -> None:
    c = coordinator_with_job()
    job = c.jobs["j"]
    job.history = [
        {"version": 1, "round": 1, "results": 7},
        {"version": 2, "round": 2, "results": 6},
    ]
    job.round, job.version = 2, 2
    c.record_evaluation("j", 2, 0.875, 0.25)
    (view,) = status_view(c, 1.0, None)["jobs"]
    assert view["name"] == "digits run" and view["status"] == "running" and view["wanted"] == 7
    assert (view["round"], view["model_version"], view["rounds"], view["mode"]) == (2, 2, 5, "sync")
    assert view["evaluations"] == [{"version": 2, "accuracy": 0.875, "loss": 0.25, "results": 6}]
    assert tuple(view["funnel"]) == FUNNEL and view["funnel"]["results_counted"] == 13


def test_an_async_job_wants_its_concurrency_not_a_round_size() -> None:
    c = Coordinator(boot="b")
    c.add_job("a", JobSpec(name="fedbuff", model="xor", mode="async", concurrency=12, buffer_size=4), W, now=0.0)
    (view,) = status_view(c, 1.0, None)["jobs"]
    assert (view["mode"], view["wanted"]) == ("async", 12)


def test_the_current_selection_is_shown_per_live_leaf() -> None:
    c = coordinator_with_job()
    c.sync(SyncRequest(leaf="leaf-0", boot="x", jobs={"j": LeafJobReport(selection_id=0, assigned=3)}), 1.0)
    c.sync(SyncRequest(leaf="leaf-1", boot="x", jobs={"j": LeafJobReport(selection_id=0, assigned=2)}), 1.0)
    c.sync(SyncRequest(leaf="gone", boot="x", jobs={"j": LeafJobReport(selection_id=0, assigned=9)}), -5.0)
    (view,) = status_view(c, 1.0, None)["jobs"]
    assert view["selected_by_leaf"] == {"leaf-0": 3, "leaf-1": 2} and view["selected"] == 5
