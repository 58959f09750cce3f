"""JobSpec's mode fields: defaults keep sync rounds; async settings are checked for consistency."""

import pytest
from pydantic import ValidationError

from edge_gateway.jobs import JobSpec


def test_defaults_are_sync_mode():
    spec = JobSpec(name="n")
    assert spec.mode == "sync"
    # A checkpoint written before these fields existed still loads.
    old = spec.model_dump()
    for key in ("mode", "concurrency", "buffer_size", "max_staleness"):
        del old[key]
    assert JobSpec.model_validate(old) == spec


def test_async_spec_round_trips_through_its_dump():
    spec = JobSpec(name="n", mode="async", concurrency=100, buffer_size=10, max_staleness=9)
    assert JobSpec.model_validate(spec.model_dump()) == spec


def test_async_refuses_more_concurrency_than_the_staleness_window_takes():
    # 100 devices starting together on one version: the last ones are 9 versions old, so 9 is the least bound.
    with pytest.raises(ValidationError, match="concurrency"):
        JobSpec(name="n", mode="async", concurrency=101, buffer_size=10, max_staleness=9)
    # Sync mode ignores the async settings.
    JobSpec(name="n", concurrency=101, buffer_size=10, max_staleness=9)


def test_only_sync_mode_bounds_the_lease_by_the_round():
    with pytest.raises(ValidationError, match="round_timeout"):
        JobSpec(name="n", task_timeout=600.0)
    assert JobSpec(name="n", mode="async", task_timeout=600.0).task_timeout == 600.0


def test_buffer_larger_than_concurrency_is_allowed():
    assert JobSpec(name="n", mode="async", concurrency=5, buffer_size=50, max_staleness=0).buffer_size == 50


@pytest.mark.parametrize("field", [{"concurrency": 0}, {"buffer_size": 0}, {"max_staleness": -1}, {"mode": "x"}])
def test_out_of_range_settings_are_refused(field):
    with pytest.raises(ValidationError):
        JobSpec(name="n", **field)
