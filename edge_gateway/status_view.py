"""What the status page shows, as one JSON-ready dict: jobs, topology, rounds, funnel, evaluations. No I/O.

The server's own view of a leaf is its last sync (a leaf that has not synced for `LEAF_STALE_AFTER`
seconds holds no slots); the proxy's view, when the server is told where the proxy is, is the
proxy's `/health` as fetched by `proxy_probe.py` and passed in.
"""

from __future__ import annotations

from typing import Any

from internal_link.versions import versions

from .coordinator import LEAF_STALE_AFTER, Coordinator

# The funnel's stages in the order a device goes through them; the refusals after.
FUNNEL = ("tasks_issued", "results_counted", "late", "duplicates", "refused", "clipped", "capped")


def status_view(coordinator: Coordinator, now: float, proxy: dict[str, Any] | None) -> dict[str, Any]:
    """Everything the page draws. `proxy` is `ProxyProbe.health()`'s answer, None when no proxy is configured."""
    return {
        "boot": coordinator.boot,
        **versions(),
        "jobs": [job_view(coordinator, job_id, now) for job_id in coordinator.jobs],
        "leaves": leaf_rows(coordinator, now, proxy),
        "proxy": proxy,
    }


def job_view(coordinator: Coordinator, job_id: str, now: float) -> dict[str, Any]:
    status = coordinator.status(job_id, now)
    spec = status["spec"]
    return {
        "job_id": job_id,
        "name": status["name"],
        "status": status["status"],
        "mode": spec["mode"],
        "model": spec["model"],
        "runtime": spec["runtime"],
        "rounds": spec["rounds"],
        "round": status["round"],
        "model_version": status["model_version"],
        "selection_id": status["selection_id"],
        # Sync: results that close a round; async: devices training at once.
        "wanted": spec["devices_per_round"] if spec["mode"] == "sync" else spec["concurrency"],
        "selected": status["selected"],
        "selected_by_leaf": selected_by_leaf(coordinator, job_id, now),
        "reported": status["reported"],
        "leaves": status["leaves"],
        "funnel": {stage: status[stage] for stage in FUNNEL},
        # Version 0 is evaluated too, but only versions made by rounds have a history entry.
        "evaluations": [
            {"version": h["version"], "accuracy": h["accuracy"], "loss": h["loss"], "results": h["results"]}
            for h in status["history"]
            if "accuracy" in h
        ],
    }


def selected_by_leaf(coordinator: Coordinator, job_id: str, now: float) -> dict[str, int]:
    """Devices training for the current selection, per live leaf (what `selected` sums)."""
    job = coordinator.job(job_id)
    return {
        name: slots.report.assigned
        for name, slots in sorted(job.leaves.items())
        if now - slots.seen_at <= LEAF_STALE_AFTER and slots.report.selection_id == job.selection_id
    }


def leaf_rows(coordinator: Coordinator, now: float, proxy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per leaf the server or the proxy knows, with each one's view of its health."""
    proxy_leaves: dict[str, Any] = (proxy or {}).get("leaves") or {}
    rows = []
    for name in sorted(coordinator.leaves_seen.keys() | proxy_leaves.keys()):
        seen_at = coordinator.leaves_seen.get(name)
        in_proxy = proxy_leaves.get(name)
        rows.append(
            {
                "name": name,
                "synced_ago": None if seen_at is None else round(now - seen_at, 1),
                "server_healthy": seen_at is not None and now - seen_at <= LEAF_STALE_AFTER,
                "proxy_healthy": None if in_proxy is None else bool(in_proxy.get("healthy")),
                "awaiting_resend": name in coordinator.awaiting_resends,
                "jobs": sorted(
                    job.spec.name
                    for job in coordinator.jobs.values()
                    if (slots := job.leaves.get(name)) is not None
                    and slots.serving
                    and now - slots.seen_at <= LEAF_STALE_AFTER
                ),
            }
        )
    return rows
