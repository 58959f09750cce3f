"""The flags of `python -m edge_gateway local` (the launcher itself is `launcher.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .local_checks import non_negative_int, port_number, positive_int
from .models.specs import MODEL_NAMES
from .simulator.behaviour_flags import add_behaviour_arguments


def add_local_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=port_number, default=4321, help="the proxy's port for devices (0 picks one)")
    parser.add_argument("--host", default="127.0.0.1", help="the proxy's address (0.0.0.0 for phones on the LAN)")
    parser.add_argument("--leaves", type=positive_int, default=2)
    parser.add_argument("--job", default="digits", help="job name devices ask for")
    parser.add_argument(
        "--model", default=None, choices=MODEL_NAMES, help="default: from the job name (xor, cifar10), else digits"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--devices-per-round", type=int, default=10)
    parser.add_argument(
        "--mode", default="sync", choices=("sync", "async"), help="sync rounds, or async FedBuff (--rounds versions)"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="async: devices training at once")
    parser.add_argument("--buffer-size", type=int, default=None, help="async: results that make a new version")
    parser.add_argument("--max-staleness", type=int, default=None, help="async: versions a result may lag")
    parser.add_argument(
        "--simulated", type=non_negative_int, default=20, help="simulated devices to run (0: wait for phones)"
    )
    parser.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop the whole stack when the job ends (default: keep serving until Ctrl-C/SIGTERM)",
    )
    parser.add_argument(
        "--runtime",
        default=None,
        choices=("pytorch", "executorch"),
        help="what devices train (default: executorch for job names ending in _et, like the phone apps')",
    )
    parser.add_argument(
        "--trainer",
        default=None,
        choices=("pytorch", "synthetic", "executorch"),
        help="simulated devices' trainer (default: executorch for executorch jobs, else pytorch)",
    )
    parser.add_argument("--codec", default="json", choices=("json", "msgpack"))
    add_behaviour_arguments(parser)  # of the simulated devices
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet α of the non-IID split")
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's (digits: 10)")
    parser.add_argument("--lr", type=float, default=None, help="default: the model's (digits: 0.5)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the model's (digits: 8)")
    parser.add_argument("--retry-wait", type=int, default=None, help="seconds devices wait between polls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--xain-grpc-port", type=port_number, default=None, help="xain-sdk 0.6 gRPC coordinator port")
    parser.add_argument("--xain-object-port", type=port_number, default=None, help="and its object endpoint's port")
    parser.add_argument("--data-dir", type=Path, default=None, help="where logs and checkpoints go")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="digits, 100 non-IID devices, 2 leaves, to completion (then exits), printing accuracy per round",
    )
