"""`simulate` flags and entry point, mounted by `python -m edge_gateway simulate` and `__main__`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from pydantic import ValidationError

from .behaviour_flags import add_behaviour_arguments
from .runner import SimulationConfig, run_simulation
from .summary import print_summary
from .trainers import TRAINERS
from .wire import CODECS

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to `parser`."""
    parser.add_argument("--url", required=True, help="routing proxy URL, e.g. http://127.0.0.1:4321")
    parser.add_argument("--job", required=True, help="name of the job the devices ask for")
    parser.add_argument("--devices", type=int, required=True, help="number of simulated devices")
    parser.add_argument(
        "--trainer",
        choices=TRAINERS,
        default="synthetic",
        help="pytorch: real SGD on a Dirichlet shard; synthetic: random diffs, no torch; "
        "executorch: trains the task's ExecuTorch program (APP_DEFINED) on the same "
        "shards and uploads what the iOS app uploads (et_tensor_diff JSON)",
    )
    parser.add_argument(
        "--codec",
        choices=CODECS,
        default="json",
        help="task and result encoding (the executorch trainer ignores it: always JSON, like iOS)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet label skew of the shards (pytorch, executorch)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: when every device is done)"
    )
    parser.add_argument("--connections", type=int, default=256, help="keep-alive connection pool size")
    parser.add_argument("--device-prefix", default=None, help="device ids are <prefix>-<i> (default sim-<run>)")
    parser.add_argument(
        "--keep-polling",
        action="store_true",
        help="when a job ends, go back to /job instead of stopping (until --duration)",
    )
    add_behaviour_arguments(parser)
    parser.add_argument("--report-json", type=Path, default=None, help="also write the report to this file")


async def main_async(args: argparse.Namespace) -> int:
    """Run the simulation described by `args`; exit status 0, or 1 when no device joined a job."""
    try:
        config = SimulationConfig(
            url=args.url,
            job=args.job,
            devices=args.devices,
            trainer=args.trainer,
            codec=args.codec,
            alpha=args.alpha,
            seed=args.seed,
            duration=args.duration,
            connections=args.connections,
            device_prefix=args.device_prefix,
            keep_polling=args.keep_polling,
            slow_fraction=args.slow_fraction,
            slow_factor=args.slow_factor,
            train_seconds=args.train_seconds,
            transport=args.transport,
            abort_rate=args.abort_rate,
        )
    except ValidationError as exc:
        log.error("invalid simulation settings:\n%s", exc)
        return 2
    report = await run_simulation(config, progress=True)
    print_summary(report)
    if args.report_json is not None:
        await asyncio.to_thread(args.report_json.write_bytes, report.to_json())
    if report.jobs_joined == 0:
        log.error("no device joined job %r at %s", config.job, config.url)
        return 1
    return 0
