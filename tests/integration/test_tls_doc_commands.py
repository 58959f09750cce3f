"""Every command in docs/TLS.md's ```sh blocks, run in order and as written.

Only the addresses change (the proxy's, the server's and the leaf's LAN addresses become
127.0.0.1) and the fixed ports become free ones, so nothing listens beyond loopback nor on a port
another test may use. The commands run with bash in a temporary directory, the interpreter
running the tests first on PATH (`python`). The commands that start a process (server, leaf,
proxy) start it in the background, as the doc's "own terminal", and the next command runs once
its port takes connections; a second proxy replaces the first, as §4 says. Every process is
stopped by its PID at the end.

So the recipe's certificates, made by its own `openssl` commands, carry a real stack: the device
request at the end is answered `OK` only if the proxy reached the leaf over TLS (it has the CA:
it refuses a plain leaf) and the leaf fetched the job from the server over TLS (`--server-ca`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import orjson
import pytest

from edge_gateway.processes import free_port, tail

TLS_DOC = Path(__file__).resolve().parents[2] / "docs" / "TLS.md"
ADDRESSES = ("192.168.1.20", "192.168.1.30", "192.168.1.31")
FIXED_PORTS = ("4321", "8443", "8002", "9003")
# The process a command starts, and the port (before localising) that says it is up.
STARTS = {
    "python -m edge_gateway server": "8443",
    "python -m edge_gateway leaf": "9003",
    "python -m routing_proxy": "4321",
}
FAILS_ON_PURPOSE = {"curl https://192.168.1.20:4321/health": 60}  # no CA: curl refuses the proxy
ASKED_AGAIN = "curl --cacert ca.pem https://192.168.1.20:4321/job"  # RETRY until the leaf has the job
WAIT = 60.0  # seconds a process may take to listen, on a loaded machine


def doc_commands() -> list[str]:
    """The commands of TLS.md's ```sh blocks: continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", TLS_DOC.read_text(), re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def localised(command: str, ports: dict[str, str]) -> str:
    for address in ADDRESSES:
        command = command.replace(address, "127.0.0.1")
    return re.sub(r"(?<![\d.])(4321|8443|8002|9003)(?!\d)", lambda m: ports[m.group(1)], command)


def started(command: str) -> str | None:
    return next((start for start in STARTS if start in command), None)


async def run(command: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr (where curl writes its progress meter)."""
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0), out.decode(errors="replace"), err.decode(errors="replace")


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def wait_listening(proc: asyncio.subprocess.Process, port: str, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while loop.time() < deadline:
        assert proc.returncode is None, f"exited {proc.returncode}: {tail(log)}"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", int(port))
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise AssertionError(f"not listening on {port} after {WAIT:.0f} s: {tail(log)}")


async def check(original: str, command: str, tmp_path: Path, env: dict[str, str]) -> None:
    code, out, err = await run(command, tmp_path, env)
    for _ in range(40):
        if original != ASKED_AGAIN or code != 0 or orjson.loads(out)["status"] != "RETRY":
            break
        await asyncio.sleep(0.5)
        code, out, err = await run(command, tmp_path, env)
    assert code == FAILS_ON_PURPOSE.get(original, 0), f"{command}\n{out}\n{err}"
    if original == ASKED_AGAIN:
        assert orjson.loads(out)["status"] == "OK", out
    elif original.startswith("curl --cacert ca.pem") and original.endswith("/health"):
        assert orjson.loads(out)["status"] in ("OK", "RETRY"), out
    elif original.startswith("openssl verify"):
        assert out.strip() == "proxy.pem: OK"


@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("openssl"), reason="scripts/install.sh installs them")
async def test_every_tls_doc_command_runs_as_written(tmp_path: Path) -> None:
    ports = {port: str(free_port()) for port in FIXED_PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFL_LINK_SECRET", "EDGEFL_PROXY_"))}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "EDGEFL_PROXY_HOST": "127.0.0.1"}
    running: dict[str, asyncio.subprocess.Process] = {}
    commands = doc_commands()
    assert sum(started(c) is not None for c in commands) == 4  # §2's proxy, then §4's three
    try:
        for original in commands:
            command = localised(original, ports)
            start = started(original)
            if start is None:
                await check(original, command, tmp_path, env)
                continue
            if start in running:
                await stop(running.pop(start))  # the proxy of §4 replaces the one of §2
            log = tmp_path / f"{start.split()[-1]}.log"
            with open(log, "ab") as out:
                running[start] = await asyncio.create_subprocess_exec(
                    "bash",
                    "-c",
                    command.replace("python -m", "exec python -m", 1),  # so that its PID is python's
                    cwd=tmp_path,
                    env=env,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                )
            await wait_listening(running[start], ports[STARTS[start]], log)
    finally:
        for proc in running.values():
            await stop(proc)
