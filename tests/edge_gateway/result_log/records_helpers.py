"""Comparing records in tests: a result's arrays compare by dtype, shape and bytes."""

from __future__ import annotations

from collections.abc import Sequence

from edge_gateway.result_log.records import Checkpointed, Record, ResultRecord


def same_records(got: Sequence[Record], want: Sequence[Record]) -> None:
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want, strict=True):
        if isinstance(w, Checkpointed):
            assert g == w
            continue
        assert isinstance(g, ResultRecord)
        assert (g.job_id, g.version, g.task_id, g.weight) == (w.job_id, w.version, w.task_id, w.weight)
        assert sorted(g.update) == sorted(w.update)
        for name, arr in w.update.items():
            assert g.update[name].dtype == arr.dtype
            assert g.update[name].shape == arr.shape
            assert g.update[name].tobytes() == arr.tobytes()
