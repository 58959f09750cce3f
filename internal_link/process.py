"""What every process at either end of the link sets up alike: the event loop, logging, the stop
signals, the collector after start-up, and the link secret. Called by the CLI modules only."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

# The links' secret when none is configured, so that a one-machine stack works out of the box.
# Public, so every process that falls back to it says so loudly.
DEVELOPMENT_SECRET = b"edgefl-development-secret"

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed, else asyncio's default loop; no global policy change."""
    try:
        import uvloop
    except ImportError:
        return None
    new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return new_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new loop from `loop_factory`."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def configure_logging(level: str) -> None:
    # The pid tells apart the processes of one stack, and a proxy's workers, in one log.
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


@contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGTERM or SIGINT (for a graceful drain) while the block runs."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, event.set)
    try:
        yield event
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def freeze_startup_objects() -> None:
    """Move what start-up allocated out of the collector's sight: it lives as long as the process,
    and walking it in every full collection shows up as tail latency (docs/BENCHMARKS.md §1)."""
    gc.freeze()


def link_secret(value: str, file: Path | None = None) -> bytes:
    """The link secret: the file's content (stripped) when a file is given, else `value`, else
    the public development secret, with a warning."""
    if file is not None:
        return file.read_bytes().strip()
    if not value:
        logging.getLogger(__name__).warning(
            "no link secret set (EDGEFL_LINK_SECRET): the internal links use the public development secret"
        )
        return DEVELOPMENT_SECRET
    return value.encode()


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only ("localhost" or a loopback address; not "" or 0.0.0.0)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any address


def public_secret_beyond_loopback(secret: bytes, hosts: Iterable[str]) -> str | None:
    """The first of `hosts` (addresses a link is served on or reached at) that is not loopback,
    when `secret` is the public development secret; None when that is safe."""
    if secret != DEVELOPMENT_SECRET:
        return None
    return next((host for host in hosts if not is_loopback(host)), None)
