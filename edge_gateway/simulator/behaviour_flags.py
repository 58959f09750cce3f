"""How simulated devices behave — speed, drop-outs, transport — as flags, shared by `simulate`
and `local` (argparse only: `local`'s flags are built on every command's start-up)."""

from __future__ import annotations

import argparse


def add_behaviour_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slow-fraction", type=float, default=0.0, help="this fraction of the devices is slow")
    parser.add_argument(
        "--slow-factor", type=float, default=1.0, help="a slow device takes this many times its training time"
    )
    parser.add_argument(
        "--train-seconds",
        type=float,
        default=0.0,
        help="the least a training takes, before --slow-factor (phones take seconds; digits computes in ms)",
    )
    parser.add_argument(
        "--transport",
        choices=("http", "ws"),
        default="http",
        help="http: FEG polling; ws: live sessions over WebSocket (GET /ws, pushed rounds)",
    )
    parser.add_argument(
        "--abort-rate",
        type=float,
        default=0.0,
        help="share of tasks a device gives up (ws: sends abort; http: drops it unreported, its lease runs out)",
    )
