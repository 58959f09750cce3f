"""The `simulate` flags and entry point."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edge_gateway.simulator.cli import add_arguments, main_async

from .conftest import StartFeg
from .fake_feg import JOB_NAME


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    args = parse("--url", "http://h:4321", "--job", "J", "--devices", "3")
    assert (args.trainer, args.codec, args.alpha, args.seed, args.duration, args.connections) == (
        "synthetic",
        "json",
        0.5,
        0,
        None,
        256,
    )
    assert (args.device_prefix, args.keep_polling, args.report_json) == (None, False, None)


def test_every_trainer_is_a_choice() -> None:
    for trainer in ("synthetic", "pytorch", "executorch"):
        assert parse("--url", "http://h:4321", "--job", "J", "--devices", "1", "--trainer", trainer).trainer == trainer


async def test_main_runs_prints_the_summary_and_writes_the_report(
    start_feg: StartFeg, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feg, url = await start_feg(tasks_per_device=1, retry_first_task=False)
    out = tmp_path / "report.json"
    args = parse(
        "--url",
        url + "/some/prefix",
        "--job",
        JOB_NAME,
        "--devices",
        "2",
        "--codec",
        "msgpack",
        "--device-prefix",
        "cli",
        "--report-json",
        str(out),
        "--duration",
        "60",
    )
    assert await main_async(args) == 0

    report = json.loads(out.read_text())
    assert (report["devices"], report["results_accepted"], report["device_prefix"]) == (2, 2, "cli")
    assert set(report["latency_ms"]) == {"job", "task", "result"}
    printed = capsys.readouterr().out
    assert "results accepted" in printed and "/task p50 / p99" in printed
    assert sorted(feg.events) == ["cli-0", "cli-1"]


async def test_main_fails_when_no_device_joins(start_feg: StartFeg) -> None:
    _, url = await start_feg(scripts={"job": lambda device, n: {"status": "ERROR", "message": "no"}})
    assert await main_async(parse("--url", url, "--job", JOB_NAME, "--devices", "1")) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ("--url", "http://h:4321", "--job", "J", "--devices", "0"),
        ("--url", "h:4321", "--job", "J", "--devices", "1"),
        ("--url", "http://h:4321", "--job", "J", "--devices", "1", "--duration", "-1"),
    ],
)
async def test_main_refuses_bad_settings(argv: tuple[str, ...]) -> None:
    assert await main_async(parse(*argv)) == 2


def test_transport_and_abort_rate() -> None:
    defaults = parse("--url", "http://h:4321", "--job", "J", "--devices", "3")
    assert (defaults.transport, defaults.abort_rate) == ("http", 0.0)
    args = parse("--url", "http://h:4321", "--job", "J", "--devices", "3", "--transport", "ws", "--abort-rate", "0.2")
    assert (args.transport, args.abort_rate) == ("ws", 0.2)
    with pytest.raises(SystemExit):
        parse("--url", "http://h:4321", "--job", "J", "--devices", "3", "--transport", "grpc")
