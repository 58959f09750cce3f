"""Every command in README.md's ```bash blocks, run exactly as written.

Only placeholders change: SERVER_HOST, LEAF_HOST, PROXY_HOST become loopback addresses (three
different ones for the cross-machine recipe: 127.0.0.2, .3 and .4 stand in for the machines, so a
command that reached the wrong one, or a default of 127.0.0.1, would fail), JOB_ID the id the
README's `job submit` printed, and the README's fixed ports (4321, 8443, 8002, 9003) free ones, so
that the test neither needs nor disturbs those ports on a shared machine. The proxy, which listens
on 0.0.0.0 by default, gets EDGEFL_PROXY_HOST=PROXY_HOST from the environment (as README says any
setting may), so nothing listens beyond loopback. Commands run in a temporary directory, with the
interpreter running the tests first on PATH (`python`, `routing-proxy`).

Exercised: `local ... --exit-when-done` to completion; the three ways to start the proxy (each
serves /health, then stops on SIGTERM); the cross-machine recipe, its whole block in order — the
secrets written by the shell and exported (the environment the shell then holds is what later
commands get), server, leaf, `lcp_map.json` written by the shell, proxy, then `job submit`,
`simulate` (to the job's end), `job status`, `job list`, `job end`, each exit 0, and the job API
refusing a `job list` without the token.
Excluded, with the reason, in EXCLUDED below. The inline phone command of "Connecting a phone" is
not in a bash block: it binds every interface and waits for a phone; test_local_keeps_serving runs
the same `local --simulated 0` on loopback.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from edge_gateway.processes import free_port
from internal_link.messages import JobStatus

README = Path(__file__).resolve().parents[2] / "README.md"
EXCLUDED = {
    "./scripts/demo.sh": "installs packages into .venv (network) first; the demo itself, `local --demo`, "
    "is test_local_cli.py::test_demo_reaches_the_accuracy_target",
    "./scripts/test.sh": "runs this very suite",
}
# "Pointing XAIN participants at edgefl": the same flow (a stack, the SDK in a venv of its own,
# participant08.py) is test_xain08_participants.py, with the venv cached between runs.
XAIN_REASON = "the XAIN flow, run by test_xain08_participants.py with the SDK's venv cached"
EXCLUDED |= dict.fromkeys(
    (
        "python3 -m venv /tmp/xain08 && /tmp/xain08/bin/pip install xain-sdk==0.8.0",
        "python -m edge_gateway local --port 4321 --job xor --rounds 3 --devices-per-round 2 --simulated 0 &",
        "/tmp/xain08/bin/python tests/xain/participant08.py http://127.0.0.1:4321 0.5 &",
        "/tmp/xain08/bin/python tests/xain/participant08.py http://127.0.0.1:4321 -0.25",
        "kill %1",
    ),
    XAIN_REASON,
)
XAIN06_REASON = (
    "the 0.6 flow, run by test_xain06_participants.py::test_readme_xain06_commands (free ports, cached venv)"
)
EXCLUDED |= dict.fromkeys(
    (
        'python3 -m venv /tmp/xain06 && /tmp/xain06/bin/pip install xain-sdk==0.6.0 "schema==0.7.4"',
        "python -m edge_gateway local --port 4321 --job xor --rounds 2 --devices-per-round 2 --simulated 0"
        " --xain-grpc-port 50051 --xain-object-port 9000 &",
        "/tmp/xain06/bin/python tests/xain/participant06.py 127.0.0.1 50051 http://127.0.0.1:9000 edgefl 0.5"
        " --samples 10 &",
        "/tmp/xain06/bin/python tests/xain/participant06.py 127.0.0.1 50051 http://127.0.0.1:9000 edgefl -0.25"
        " --samples 30",
    ),
    XAIN06_REASON,
)
PROXY_STARTS = ("python -m routing_proxy ", "routing-proxy ", "scripts/start_rp.sh ")
LONG_RUNNING = ("python -m edge_gateway server", "python -m edge_gateway leaf", *PROXY_STARTS)
LOCAL = "python -m edge_gateway local "
FIXED_PORTS = ("4321", "8443", "8002", "9003")


def readme_commands() -> list[str]:
    """The commands of README's ```bash blocks: continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def commands_starting(*prefixes: str) -> list[str]:
    """Those commands, each once (the recipe starts the proxy as its section does)."""
    return list(dict.fromkeys(c for c in readme_commands() if c.startswith(prefixes) and c not in EXCLUDED))


def recipe_commands() -> list[str]:
    """The commands of "Leaves and server across machines", in order."""
    section = README.read_text().split("### Leaves and server across machines", 1)[1]
    block = re.search(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert block is not None
    return [" ".join(line.split()) for line in block.group(1).splitlines() if line.strip()]


def test_every_readme_command_is_run_or_excluded_with_a_reason() -> None:
    commands, recipe = readme_commands(), recipe_commands()
    unclaimed = [
        c for c in commands if c not in EXCLUDED and c not in recipe and not c.startswith((LOCAL, *PROXY_STARTS))
    ]
    assert not unclaimed, f"README commands no test runs: {unclaimed}"
    assert set(EXCLUDED) <= set(commands), "an exclusion for a command README no longer shows"
    assert len(commands_starting(LOCAL)) == 1 and len(commands_starting(*PROXY_STARTS)) == 3
    assert len(recipe) == 12 and set(recipe) <= set(commands)


class Placeholders:
    def __init__(self, **hosts: str) -> None:
        self.values = {"SERVER_HOST": "127.0.0.1", "LEAF_HOST": "127.0.0.1", "PROXY_HOST": "127.0.0.1", **hosts}
        self.values.update({port: str(free_port()) for port in FIXED_PORTS})

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def substitute(self, command: str) -> str:
        names = "|".join(map(re.escape, self.values))
        return re.sub(rf"\b({names})\b", lambda m: self.values[m.group(1)], command)

    def fill(self, command: str) -> list[str]:
        return shlex.split(self.substitute(command))


def environment(tmp_path: Path) -> dict[str, str]:
    repo = str(README.parent)
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    python_path = repo + os.pathsep + os.environ.get("PYTHONPATH", "") if os.environ.get("PYTHONPATH") else repo
    return {
        **os.environ,
        "PATH": path,
        "PYTHONPATH": python_path,
        "EDGEFL_PROXY_HOST": "127.0.0.1",
        "EDGEFL_LINK_SECRET": "readme-test-secret",
    }


async def start(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with open(log, "ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
        )


async def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0), out.decode(errors="replace"), err.decode(errors="replace")


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0)


async def wait_answering(url: str, proc: asyncio.subprocess.Process, log: Path, timeout: float = 60.0) -> None:
    """Until `url` gives any HTTP answer (a proxy without leaves answers its /health too)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            assert proc.returncode is None, log.read_text(errors="replace")[-2000:]
            try:
                async with session.get(url) as reply:
                    await reply.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
    raise AssertionError(f"{url} did not answer:\n{log.read_text(errors='replace')[-2000:]}")


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_readme_local_stack_runs_its_job_and_exits(tmp_path: Path) -> None:
    (command,) = commands_starting(LOCAL)
    code, out, err = await run(Placeholders().fill(command), tmp_path, environment(tmp_path), timeout=280)
    assert code == 0, out + err
    assert len(re.findall(r"^round +\d+ +model v\d+ .* test accuracy", out, re.M)) == 5, out
    assert "job done" in out and "Traceback" not in err, out + err


async def test_readme_proxy_commands_serve_until_sigterm(tmp_path: Path) -> None:
    places, env = Placeholders(), environment(tmp_path)
    (tmp_path / "lcp_map.json").write_bytes(orjson.dumps({"C11": {"host": "127.0.0.1", "port": free_port()}}))
    for command in commands_starting(*PROXY_STARTS):
        argv = places.fill(command)
        if argv[0].startswith("scripts/"):
            argv[0] = str(README.parent / argv[0])  # as written, from the repository's root
        log = tmp_path / "proxy.log"
        proc = await start(argv, tmp_path, env, log)
        try:
            await wait_answering(f"http://127.0.0.1:{places['4321']}/health", proc, log)
        finally:
            code = await stop(proc)
        assert code == 0, (command, log.read_text(errors="replace")[-2000:])


async def exported(command: str, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment a shell holds after running `command` (an `export` line) in `cwd`."""
    code, out, err = await run(["bash", "-c", f"{command} && env -0"], cwd, env, 30)
    assert code == 0, err
    return dict(entry.split("=", 1) for entry in out.split("\0") if "=" in entry)


@pytest.mark.slow  # devices not selected wait the job's default retry_wait (30 s) between rounds
@pytest.mark.timeout(300)
async def test_readme_cross_machine_recipe(tmp_path: Path) -> None:
    places = Placeholders(SERVER_HOST="127.0.0.2", LEAF_HOST="127.0.0.3", PROXY_HOST="127.0.0.4")
    # The recipe's own export must supply the secrets: none comes from the test.
    env = {k: v for k, v in environment(tmp_path).items() if k not in ("EDGEFL_LINK_SECRET", "EDGEFL_API_TOKEN")}
    env["EDGEFL_PROXY_HOST"] = places["PROXY_HOST"]
    api = f"http://{places['SERVER_HOST']}:{places['8443']}"
    running: list[asyncio.subprocess.Process] = []
    try:
        for command in recipe_commands():
            text = places.substitute(command)
            if command.startswith("export "):
                env = await exported(text, tmp_path, env)
                assert re.fullmatch("[0-9a-f]{64}", env["EDGEFL_LINK_SECRET"]), env["EDGEFL_LINK_SECRET"]
                assert re.fullmatch("[0-9a-f]{64}", env["EDGEFL_API_TOKEN"]), env["EDGEFL_API_TOKEN"]
            elif " > " in command:  # writes a file: the shell runs it as written
                code, out, err = await run(["bash", "-c", text], tmp_path, env, 60)
                assert code == 0 and err == "", out + err
            elif command.startswith(LONG_RUNNING):
                log = tmp_path / f"{len(running)}.log"
                running.append(await start(shlex.split(text), tmp_path, env, log))
                if "edge_gateway server" in command:
                    await wait_answering(f"{api}/api/health", running[-1], log)
                    without_token = {k: v for k, v in env.items() if k != "EDGEFL_API_TOKEN"}
                    code, out, err = await run(
                        places.fill(f"python -m edge_gateway job list --api {api}"), tmp_path, without_token, 60
                    )
                    assert code == 1 and "needs a token" in err, out + err
                elif "routing_proxy" in command:
                    proxy_url = f"http://{places['PROXY_HOST']}:{places['4321']}"
                    await wait_answering(f"{proxy_url}/health", running[-1], log)
            else:
                await run_job_command(command, places, tmp_path, env)
    finally:
        for proc in reversed(running):
            await stop(proc)
    assert [proc.returncode for proc in running] == [0, 0, 0]


async def run_job_command(command: str, places: Placeholders, cwd: Path, env: dict[str, str]) -> None:
    """One of the recipe's job or simulate commands, checked for what it must print."""
    timeout = 240 if " simulate " in command else 60
    code, out, err = await run(places.fill(command), cwd, env, timeout)
    assert code == 0 and "Traceback" not in err, (command, out + err)
    if " job submit " in command:
        assert err == "", err
        places.values["JOB_ID"] = orjson.loads(out)["job_id"]
    elif " job status " in command or " job end " in command:
        assert orjson.loads(out)["status"] == JobStatus.DONE, out
    elif " job list " in command:
        assert [j["job_id"] for j in orjson.loads(out)["jobs"]] == [places["JOB_ID"]], out
