"""Every user error the CLIs meet is one line on stderr and a non-zero exit status, never a
traceback, and nothing is left running: bad flag values, an unknown model, a job the server
refuses, a port in use, an address not ours, unreadable files, an unreachable job API."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

ENV = {**os.environ, "EDGEFL_LINK_SECRET": "cli-errors-test"}  # no warning about the public secret


async def cli(*args: str, module: str = "edge_gateway", env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env or ENV,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0), out.decode(errors="replace"), err.decode(errors="replace")


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and (": error: " in lines[0] or lines[0].startswith("routing-proxy: ")), err
    for word in words:
        assert word in lines[0], (word, err)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a listener on it (this test's), for "port in use"."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens once closed


@pytest.fixture
async def server_api(tmp_path: Path) -> AsyncIterator[str]:
    ready = tmp_path / "server.ready"
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "edge_gateway", "server", "--http-port", "0", "--link-port", "0"],
        *["--data-dir", str(tmp_path / "server"), "--ready-file", str(ready)],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=ENV,
    )
    try:
        for _ in range(600):
            if ready.exists():
                break
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{orjson.loads(ready.read_bytes())['http_port']}"
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["lcoal"], 2, ["invalid choice"]),
        (["--log-level", "loud", "job", "list"], 2, ["--log-level"]),
        (["local", "--model", "resnet"], 2, ["--model", "resnet"]),
        (["local", "--leaves", "0"], 2, ["--leaves"]),
        (["local", "--simulated", "-1"], 2, ["--simulated"]),
        (["local", "--port", "99999"], 2, ["--port"]),
        (["local", "--rounds", "0", "--port", "0"], 1, ["invalid job", "rounds"]),
        (["local", "--job", "x", "--devices-per-round", "many"], 2, ["--devices-per-round"]),
        (["local", "--host", "192.0.2.1", "--port", "4999"], 1, ["192.0.2.1"]),
        (["leaf", "--server", "server-without-port"], 2, ["HOST:PORT"]),
        (["server", "--proxy", "proxy-without-scheme:4321", "--http-port", "0"], 1, ["proxy_url", "https?://"]),
        (["leaf", "--port", "0", "--xain-grpc-port", "0"], 1, ["xain_grpc_port and xain_object_port go together"]),
        (["local", "--xain-object-port", "99999"], 2, ["--xain-object-port"]),
        (["job", "submit", "--spec", "/no/such/spec.json"], 1, ["/no/such/spec.json"]),
        (["job", "list", "--api", "server:8443"], 1, ["--api"]),
    ],
)
async def test_bad_input_is_one_line(args: list[str], status: int, words: list[str]) -> None:
    code, _, err = await cli(*args)
    assert code == status, err
    assert_one_line_error(code, err, *words)


async def test_local_port_in_use_is_refused_before_anything_starts(busy_port: int, tmp_path: Path) -> None:
    code, out, err = await cli("local", "--port", str(busy_port), "--data-dir", str(tmp_path / "run"))
    assert_one_line_error(code, err, "in use", str(busy_port))
    assert not (tmp_path / "run").exists() and out == ""


async def test_xain06_ports_in_use_are_refused(busy_port: int, tmp_path: Path) -> None:
    code, out, err = await cli("local", "--port", "0", "--xain-grpc-port", str(busy_port), "--data-dir", str(tmp_path))
    assert_one_line_error(code, err, "in use", str(busy_port))
    assert out == ""  # refused before anything started
    code, _, err = await cli(
        "leaf",
        "--port",
        "0",
        "--xain-grpc-port",
        str(busy_port),
        "--xain-object-port",
        "0",
        "--data-dir",
        str(tmp_path),
    )
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if ": error: " in line]  # after its own start-up log
    assert "cannot listen for xain-sdk 0.6 gRPC" in line and str(busy_port) in line


async def test_local_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = await cli("local", "--port", "0", "--data-dir", str(blocker / "run"))
    assert_one_line_error(code, err, "a-file")


async def test_server_port_in_use(busy_port: int, tmp_path: Path) -> None:
    code, _, err = await cli("server", "--http-port", str(busy_port), "--link-port", "0", "--data-dir", str(tmp_path))
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if ": error: " in line]  # after its own start-up log
    assert "address already in use" in line


async def test_invalid_setting_from_the_environment(tmp_path: Path) -> None:
    code, _, err = await cli("server", "--data-dir", str(tmp_path), env={**ENV, "EDGEFL_SERVER_HTTP_PORT": "many"})
    assert_one_line_error(code, err, "http_port")


async def test_job_spec_files(tmp_path: Path, server_api: str) -> None:
    not_json = tmp_path / "spec.json"
    not_json.write_text("{name: digits")
    code, _, err = await cli("job", "submit", "--spec", str(not_json), "--api", server_api)
    assert_one_line_error(code, err, "not JSON")
    not_an_object = tmp_path / "list.json"
    not_an_object.write_text("[1, 2]")
    code, _, err = await cli("job", "submit", "--spec", str(not_an_object), "--api", server_api)
    assert_one_line_error(code, err, "JSON object")


async def test_refused_job_and_unknown_job(server_api: str) -> None:
    code, out, err = await cli("job", "submit", "--api", server_api, "--name", "x", "--model", "resnet")
    assert_one_line_error(code, err, "invalid job spec", "model")
    assert orjson.loads(out)["status"] == "INVALID_REQUEST"  # the whole answer stays on stdout
    code, out, err = await cli("job", "status", "no-such-job", "--api", server_api)  # --api after: as README
    assert_one_line_error(code, err, "no job 'no-such-job'")


async def test_unreachable_job_api() -> None:
    api = f"http://127.0.0.1:{closed_port()}"
    for args in (
        ["job", "list", "--api", api],
        ["job", "--api", api, "end", "j"],
        ["job", "status", "j", "--api", api],
    ):
        code, _, err = await cli(*args)
        assert_one_line_error(code, err, "cannot reach the job API", api)


async def test_unreachable_proxy_for_simulated_devices() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, _, err = await cli("simulate", "--url", url, "--job", "j", "--devices", "1", "--trainer", "synthetic")
    assert_one_line_error(code, err, "cannot reach the proxy", url)


async def test_proxy_user_errors(tmp_path: Path, busy_port: int) -> None:
    lcp = tmp_path / "lcp_map.json"
    lcp.write_bytes(orjson.dumps({"C11": {"host": "127.0.0.1", "port": closed_port()}}))
    cases = [
        (["many"], "port"),
        (["0", str(tmp_path / "missing.json")], "missing.json"),
        (["0", str(lcp), "--workers", "0"], "workers"),
        (["0", str(lcp), "--ssl-cert", str(tmp_path / "c.pem"), "--ssl-key", str(tmp_path / "k.pem")], "c.pem"),
        (["0", str(lcp), "--auth-tokens-file", str(tmp_path / "tokens")], "tokens"),
        ([str(busy_port), str(lcp), "--host", "127.0.0.1"], str(busy_port)),
    ]
    for args, word in cases:
        code, _, err = await cli(*args, module="routing_proxy")
        assert code == 2, (args, err)
        assert_one_line_error(code, err, word)
