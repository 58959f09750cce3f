"""When a sync round ends: quorum, deadline, or a fresh selection. Pure, time passed in."""

from __future__ import annotations

from enum import StrEnum

from .jobs import JobSpec


class RoundEnd(StrEnum):
    """How a round ends (the value is its history's `closed_by`)."""

    QUORUM = "quorum"  # devices_per_round results: closed
    DEADLINE = "deadline"  # past round_timeout with at least min_results: closed
    RESELECT = "reselect"  # past round_timeout with fewer: a fresh selection, keeping what was counted


def round_due(spec: JobSpec, results: int, opened_at: float, now: float, *, held: bool) -> RoundEnd | None:
    """Whether a running job's round (selection opened at `opened_at`, `results` counted) ends now.

    None: it stays open. While rounds are held (`Coordinator.rounds_held`) none ends at all.
    """
    if held:
        return None
    if results >= spec.devices_per_round:
        return RoundEnd.QUORUM
    if now - opened_at < spec.round_timeout:
        return None
    return RoundEnd.DEADLINE if results >= spec.min_results else RoundEnd.RESELECT
