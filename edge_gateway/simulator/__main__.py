"""`python -m edge_gateway.simulator ...`: the simulator on its own, on uvloop when installed."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from collections.abc import Callable

from .cli import add_arguments, main_async


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    return uvloop.new_event_loop


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_gateway.simulator", description="Simulated FEG devices.")
    add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            return runner.run(main_async(args))
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
