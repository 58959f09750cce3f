"""What `local` submits and prints, without starting anything."""

from __future__ import annotations

import argparse
import logging

import orjson
import pytest

from edge_gateway.cli import build_parser, submitted_spec
from edge_gateway.jobs import JobSpec
from edge_gateway.launcher import job_spec, round_line
from edge_gateway.local_checks import phone_url
from edge_gateway.models.demo import DigitsDemo, simulate_fedavg, training_defaults
from internal_link.log_format import JsonFormatter


def local_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["local", *flags])


def test_digits_job_without_flags_trains_with_the_demo_settings() -> None:
    spec = JobSpec.model_validate(job_spec(local_args("--job", "digits")))
    demo = DigitsDemo()
    assert (spec.epochs, spec.lr, spec.batch_size) == (demo.epochs, demo.lr, demo.batch_size)


def test_flags_override_the_model_defaults() -> None:
    spec = job_spec(local_args("--job", "digits", "--epochs", "2", "--lr", "0.1", "--batch-size", "4"))
    assert (spec["epochs"], spec["lr"], spec["batch_size"]) == (2, 0.1, 4)


@pytest.mark.parametrize(("job", "batch"), [("xor_et", 1), ("cifar10_et", 4), ("digits_et", DigitsDemo().batch_size)])
def test_phone_jobs_keep_the_example_apps_batches(job: str, batch: int) -> None:
    spec = job_spec(local_args("--job", job))
    assert spec["runtime"] == "executorch" and spec["batch_size"] == batch


def test_models_without_tuned_settings_keep_the_job_spec_defaults() -> None:
    spec = job_spec(local_args("--job", "xor"))
    assert "epochs" not in spec and "lr" not in spec


def test_job_submit_fills_in_the_model_defaults_the_spec_leaves_out(tmp_path) -> None:
    path = tmp_path / "spec.json"
    path.write_bytes(orjson.dumps({"name": "d", "model": "digits", "lr": 0.2}))
    spec = submitted_spec(build_parser().parse_args(["job", "submit", "--spec", str(path), "--rounds", "3"]))
    assert spec == {"name": "d", "model": "digits", "lr": 0.2, "rounds": 3, "epochs": 10, "batch_size": 8}


def test_api_is_accepted_before_and_after_the_job_subcommand() -> None:
    after = build_parser().parse_args(["job", "status", "J", "--api", "http://h:1"])
    before = build_parser().parse_args(["job", "--api", "http://h:2", "status", "J"])
    default = build_parser().parse_args(["job", "list"])
    assert (after.api, before.api, default.api) == ("http://h:1", "http://h:2", "http://127.0.0.1:8443")


def test_a_destroyed_model_prints_without_numbers() -> None:
    # NaN accuracy and loss arrive as JSON null.
    line = round_line({"round": 3, "version": 3, "results": 7, "accuracy": None, "loss": None})
    assert line.endswith("test accuracy n/a  loss n/a")
    assert "test accuracy 0.5000  loss 1.2500" in round_line(
        {"round": 1, "version": 1, "results": 2, "accuracy": 0.5, "loss": 1.25}
    )


def test_phone_url_only_beyond_loopback() -> None:
    assert phone_url("127.0.0.1", 4321) is None and phone_url("localhost", 4321) is None
    assert phone_url("10.1.2.3", 4321) == "http://10.1.2.3:4321"
    lan = phone_url("0.0.0.0", 4321)
    assert lan is None or (lan.startswith("http://") and lan.endswith(":4321") and "0.0.0.0" not in lan)


def test_json_log_lines() -> None:
    record = logging.LogRecord("edge_gateway.server", logging.INFO, __file__, 1, "round %d closed", (3,), None)
    entry = orjson.loads(JsonFormatter().format(record))
    assert (
        entry["message"] == "round 3 closed" and entry["level"] == "INFO" and entry["logger"] == "edge_gateway.server"
    )


@pytest.mark.slow
def test_digits_defaults_learn_where_the_generic_ones_do_not() -> None:
    # The case: `local --job digits` devices, 15 rounds; in-process reference FedAvg.
    defaults = training_defaults("digits")
    tuned = simulate_fedavg("digits", 50, 0.5, 15, 20, defaults["epochs"], defaults["lr"], defaults["batch_size"], 0)
    generic = JobSpec(name="g")
    untuned = simulate_fedavg("digits", 50, 0.5, 15, 20, generic.epochs, generic.lr, generic.batch_size, 0)
    assert tuned[-1] >= 0.9 and untuned[-1] < 0.5
