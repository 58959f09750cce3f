"""The job API's token and bind address (issue 11, item 5), through a real server process and the
real `job` CLI: every route but health and version answers 401 JSON without the token, the CLI
sends it from a flag, a file or the environment, the API listens on its own address, and a server
whose API would listen beyond loopback without a token refuses to start."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson

from .helpers import stop_launcher
from .test_cli_errors import ENV, assert_one_line_error, cli

TOKEN = "job-api-test-token-0123456789"


@asynccontextmanager
async def server(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[dict[str, int]]:
    """A server process on loopback with `args`; its bound ports. Stopped by PID."""
    ready = tmp_path / "server.ready"
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "edge_gateway", "server", "--http-port", "0", "--link-port", "0", *args],
        *["--data-dir", str(tmp_path / "server"), "--ready-file", str(ready)],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env or ENV,
    )
    try:
        for _ in range(600):
            if ready.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert ready.exists(), "the server did not start"
        yield dict(orjson.loads(ready.read_bytes()))
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def call(method: str, url: str, token: str | None = None, body: bytes | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers, data=body) as reply:
        return reply.status, orjson.loads(await reply.read())


async def test_every_route_but_health_needs_the_token(tmp_path: Path) -> None:
    async with server(tmp_path, env={**ENV, "EDGEFL_API_TOKEN": TOKEN}) as ports:
        api = f"http://127.0.0.1:{ports['http_port']}/api"
        spec = orjson.dumps({"name": "xor", "model": "xor", "rounds": 2, "devices_per_round": 1, "evaluate": False})
        status, job = await call("POST", f"{api}/jobs", TOKEN, spec)
        assert status == 201, job
        routes = [
            ("POST", f"{api}/jobs", spec),
            ("GET", f"{api}/jobs", None),
            ("GET", f"{api}/jobs/{job['job_id']}", None),
            ("GET", f"{api}/jobs/{job['job_id']}/model", None),
            ("GET", f"{api}/jobs/{job['job_id']}/model.pte", None),
            ("POST", f"{api}/jobs/{job['job_id']}/end", None),
            ("GET", f"{api}/no-such-route", None),
        ]
        refused = 0
        for method, url, body in routes:
            for token, message in [
                (None, "this job API needs a token: Authorization: Bearer <token>"),
                ("not-" + TOKEN, "wrong API token"),
                (TOKEN[:-1], "wrong API token"),
            ]:
                assert await call(method, url, token, body) == (401, {"status": "UNAUTHORIZED", "message": message})
                refused += 1
        # The status page's shell is open (it holds no data); what it shows needs the token.
        async with aiohttp.ClientSession() as session, session.get(f"{api[:-4]}/status") as page:
            assert page.status == 200 and "#token=" in await page.text()
        assert (await call("GET", f"{api}/status"))[0] == 401
        refused += 1
        status, shown = await call("GET", f"{api}/status", TOKEN)
        assert status == 200 and shown["jobs"][0]["job_id"] == job["job_id"], shown
        for path in ("/version", "/health"):  # probes hold no token
            status, answer = await call("GET", f"{api}{path}")
            assert status == 200 and "edgefl" in answer, answer
        assert answer["unauthorized"] == refused  # /health counts every refusal
        # Nothing a refused request asked for happened: the job is still running, no second job.
        status, jobs = await call("GET", f"{api}/jobs", TOKEN)
        assert status == 200 and [j["status"] for j in jobs["jobs"]] == ["running"], jobs
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(f"{api}/jobs/{job['job_id']}/model") as reply,
        ):
            assert reply.status == 200 and (await reply.read()).startswith(b"PK")  # an .npz


async def test_the_job_cli_sends_the_token_from_a_flag_a_file_or_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "api.token"
    token_file.write_text(TOKEN + "\n")  # as `echo` writes it
    async with server(tmp_path, "--api-token-file", str(token_file)) as ports:
        api = f"http://127.0.0.1:{ports['http_port']}"
        code, _, err = await cli("job", "list", "--api", api)
        assert_one_line_error(code, err, "needs a token")
        code, _, err = await cli("job", "list", "--api", api, "--api-token", "guess")
        assert_one_line_error(code, err, "wrong API token")
        for args, env in [
            (["job", "--api-token", TOKEN, "list", "--api", api], ENV),
            (["job", "list", "--api", api, "--api-token-file", str(token_file)], ENV),
            (["job", "list", "--api", api], {**ENV, "EDGEFL_API_TOKEN": TOKEN}),
        ]:
            code, out, err = await cli(*args, env=env)
            assert code == 0 and orjson.loads(out) == {"jobs": []}, (args, err)
        code, _, err = await cli("job", "list", "--api", api, "--api-token-file", str(tmp_path / "missing"))
        assert_one_line_error(code, err, "cannot read the API token file", "missing")


async def test_the_job_api_listens_on_its_own_address(tmp_path: Path) -> None:
    # 127.0.0.2 is loopback too (Linux routes all of 127/8 to lo): two addresses, one machine.
    async with server(tmp_path, "--host", "127.0.0.2", "--api-host", "127.0.0.1") as ports:
        status, answer = await call("GET", f"http://127.0.0.1:{ports['http_port']}/api/health")
        assert status == 200 and answer["status"] == "OK"
        for host, port in [("127.0.0.2", ports["http_port"]), ("127.0.0.1", ports["link_port"])]:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except ConnectionRefusedError:
                continue
            writer.close()
            raise AssertionError(f"something listens on {host}:{port}")
        _, writer = await asyncio.open_connection("127.0.0.2", ports["link_port"])  # the leaves' link
        writer.close()


async def test_an_api_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: were the refusal missing, binding it
    # would fail with another message, and nothing would ever listen beyond loopback.
    args = ["server", "--api-host", "192.0.2.1", "--http-port", "0", "--link-port", "0"]
    code, out, err = await cli(*args, "--data-dir", str(tmp_path / "server"))
    assert_one_line_error(code, err, "'192.0.2.1' without a token", "EDGEFL_API_TOKEN")
    assert code == 1 and out == ""
    assert not (tmp_path / "server").exists()  # refused before anything was written


async def test_local_sends_the_token_its_server_inherits(tmp_path: Path) -> None:
    # A shell that followed README's cross-machine recipe holds EDGEFL_API_TOKEN: the stack `local`
    # starts inherits it, so its own job submission and status polls must present it.
    args = ["local", "--port", "0", "--leaves", "1", "--job", "xor", "--rounds", "1", "--devices-per-round", "2"]
    args += ["--simulated", "2", "--retry-wait", "1", "--exit-when-done", "--data-dir", str(tmp_path)]
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "edge_gateway", *args],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env={**ENV, "EDGEFL_API_TOKEN": TOKEN},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 180)
    finally:
        await stop_launcher(proc)
    assert proc.returncode == 0 and "job done" in out.decode(), out.decode()[-3000:]
