"""Child processes of the local launcher: start, wait for readiness, stop by PID."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .user_errors import UserError

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for children that cannot report theirs)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def reserved_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A free port, held until the block ends: unlike `free_port`'s, no outgoing connection takes
    it as its local port meanwhile (the kernel skips ports a socket is bound to), while a child
    told to listen on it still can (asyncio's servers bind with SO_REUSEADDR, as this socket does,
    and it never listens)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                log.warning("%s (pid %d) did not stop in %.0f s: killing it", self.name, self.pid, grace)
                self.process.kill()
                await self.process.wait()
        return int(self.process.returncode or 0)


class ChildFailed(UserError):
    """A process of the stack died or never became ready; names its log, quotes its last line."""

    def __init__(self, child: Child, what: str) -> None:
        code = child.process.returncode
        status = f"{what} (exit {code})" if code is not None else what
        last = tail(child.log_path, 1)
        super().__init__(f"{child.name} {status}{f': {last}' if last else ''}; log: {child.log_path}")


async def spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> Child:
    """Start `python -m <args>` with its output in `log_dir/<name>.log`."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *args,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **env},
        )
    log.debug("started %s (pid %d): %s", name, process.pid, " ".join(args))
    return Child(name, process, log_path)


async def wait_ready_file(child: Child, path: Path, timeout: float = 60.0) -> dict[str, Any]:
    """Wait for a child's ready file; fail early with its log tail if it dies."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if path.exists():
            return dict(orjson.loads(path.read_bytes()))
        if not child.alive():
            raise ChildFailed(child, "exited")
        await asyncio.sleep(0.05)
    raise ChildFailed(child, f"not ready after {timeout:.0f} s")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
