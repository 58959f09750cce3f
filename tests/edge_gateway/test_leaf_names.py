"""One live leaf per name (leaf_names.py): a second boot is refused while the first one syncs,
and takes the name over once the first has been silent past the bound (a restarted leaf)."""

from __future__ import annotations

from edge_gateway.leaf_names import LeafNames


def test_a_second_live_boot_is_refused_and_a_restart_takes_over() -> None:
    names = LeafNames(stale_after=3.0)
    assert names.claim("C11", "boot-a", now=0.0) is None
    assert names.claim("C11", "boot-a", now=2.0) is None  # the same process, syncing on
    refusal = names.claim("C11", "boot-b", now=4.9)
    assert refusal is not None and "another live leaf is named 'C11'" in refusal
    assert names.claim("C12", "boot-b", now=4.9) is None  # other names are free
    assert names.claim("C11", "boot-b", now=5.1) is None  # boot-a silent for 3.1 s: gone
    assert names.claim("C11", "boot-a", now=5.2) is not None  # and now boot-a is the second one
