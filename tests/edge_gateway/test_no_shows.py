"""The no-show score (edge_gateway/leaf/no_shows.py): bounded, decaying, bounded in memory."""

import pytest

from edge_gateway.leaf.no_shows import FLAGGED_AT, MAX_SCORE, NoShowScores


def test_a_device_never_missing_is_not_flagged():
    scores = NoShowScores()
    assert scores.score("a", 0.0) == 0.0 and not scores.flagged("a", 0.0)


def test_one_no_show_flags_a_device_for_one_half_life():
    scores = NoShowScores(half_life=100.0)
    scores.missed("a", 0.0)
    assert scores.score("a", 0.0) == 1.0
    assert scores.flagged("a", 99.0)
    assert scores.score("a", 100.0) == pytest.approx(FLAGGED_AT)
    assert not scores.flagged("a", 101.0)
    assert not scores.flagged("b", 0.0)  # only the device that missed


def test_the_score_is_bounded_so_any_record_is_forgiven_within_three_half_lives():
    scores = NoShowScores(half_life=100.0)
    for _ in range(50):
        scores.missed("a", 0.0)
    assert scores.score("a", 0.0) == MAX_SCORE
    assert scores.flagged("a", 299.0)
    assert not scores.flagged("a", 301.0)


def test_misses_add_up_on_the_decayed_score():
    scores = NoShowScores(half_life=100.0)
    scores.missed("a", 0.0)
    scores.missed("a", 100.0)  # 0.5 left, plus 1
    assert scores.score("a", 100.0) == pytest.approx(1.5)


def test_the_table_keeps_the_most_recently_scored_devices_only():
    scores = NoShowScores(max_devices=3)
    for i, device in enumerate("abcd"):
        scores.missed(device, float(i))
    assert len(scores) == 3
    assert not scores.flagged("a", 4.0)  # dropped first: the oldest change
    assert all(scores.flagged(d, 4.0) for d in "bcd")
