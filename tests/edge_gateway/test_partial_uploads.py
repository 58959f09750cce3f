"""Results in parts, without sockets: in order, resumable, bounded."""

from __future__ import annotations

from edge_gateway.leaf.uploads import PartialUploads, PartOutcome


def test_parts_in_order_make_the_whole_and_a_repeat_is_harmless() -> None:
    uploads = PartialUploads(max_bytes=100, idle_limit=10.0)
    assert uploads.add("t", "d", 0, 3, b"ab", 0.0, 50).next_part == 1
    again = uploads.add("t", "d", 0, 3, b"ab", 0.0, 50)
    assert again.outcome is PartOutcome.STORED and again.next_part == 1
    gap = uploads.add("t", "d", 2, 3, b"ef", 0.0, 50)
    assert gap.outcome is PartOutcome.GAP and gap.next_part == 1
    uploads.add("t", "d", 1, 3, b"cd", 0.0, 50)
    whole = uploads.add("t", "d", 2, 3, b"ef", 0.0, 50)
    assert whole.outcome is PartOutcome.COMPLETE and whole.data == b"abcdef"
    assert uploads.held == 0 and not uploads.holds("t")


def test_another_device_or_part_count_is_refused() -> None:
    uploads = PartialUploads(max_bytes=100, idle_limit=10.0)
    uploads.add("t", "d", 0, 3, "ab", 0.0, 50)
    assert uploads.add("t", "e", 1, 3, "cd", 0.0, 50).outcome is PartOutcome.MISMATCH
    assert uploads.add("t", "d", 1, 4, "cd", 0.0, 50).outcome is PartOutcome.MISMATCH


def test_bounds_per_result_and_in_all() -> None:
    uploads = PartialUploads(max_bytes=5, idle_limit=10.0)
    assert uploads.add("t", "d", 0, 2, b"abcd", 0.0, 6).outcome is PartOutcome.STORED
    assert uploads.add("u", "d", 0, 2, b"xy", 0.0, 6).outcome is PartOutcome.FULL
    assert uploads.add("t", "d", 1, 2, b"efg", 0.0, 6).outcome is PartOutcome.TOO_LARGE
    assert uploads.held == 0 and not uploads.holds("t")


def test_idle_uploads_are_forgotten() -> None:
    uploads = PartialUploads(max_bytes=100, idle_limit=10.0)
    uploads.add("t", "d", 0, 2, b"ab", 0.0, 50)
    assert uploads.expire(5.0) == 0 and uploads.expire(10.5) == 1
    assert uploads.held == 0
