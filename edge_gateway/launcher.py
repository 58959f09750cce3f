"""`python -m edge_gateway local`: a whole stack on this machine — server, leaves, proxy, devices.

Every part runs as its own process, exactly as it would across machines; the launcher writes the
leaves' `lcp_map.json`, submits the job, runs the simulated devices in its own process and prints
each round's accuracy. When the job ends the stack keeps serving, so devices from outside (phones,
NVFlare's simulator) hear that it is over, until SIGTERM/Ctrl-C; with `--exit-when-done` (and
`--demo`) it stops everything by PID as soon as the job ends.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import time
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from internal_link import process
from internal_link.messages import JobStatus

from .job_api_auth import authorization, environment_token
from .local_checks import check_job, check_port_free, phone_url
from .models.demo import training_defaults
from .processes import Child, ChildFailed, reserved_port, spawn, wait_ready_file
from .user_errors import UserError

log = logging.getLogger(__name__)

# Seconds a finished job's last versions may take to be evaluated before they print without numbers.
EVALUATION_GRACE = 30.0


@dataclass
class Stack:
    """The processes of one local stack and where to reach them."""

    proxy_url: str
    api_url: str
    lcp_map: Path
    env: dict[str, str]  # what every process of the stack shares (the link secret)
    children: list[Child] = field(default_factory=list)
    xain06: tuple[str, str] | None = None  # xain-sdk 0.6: gRPC "host:port", object endpoint URL (leaf-0)
    metrics: dict[str, str] = field(default_factory=dict)  # process name -> its /metrics URL

    async def stop(self) -> dict[str, int]:
        codes = {}
        for child in reversed(self.children):  # proxy first, server last: nothing new comes in
            codes[child.name] = await child.stop()
        return codes


async def start_stack(
    run_dir: Path, leaves: int, proxy_host: str, proxy_port: int, xain06_ports: tuple[int, int] | None = None
) -> Stack:
    """Server, leaves and proxy; with `xain06_ports` (gRPC, objects), leaf-0 opens the xain-sdk 0.6 doors."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {"EDGEFL_LINK_SECRET": os.environ.get("EDGEFL_LINK_SECRET") or secrets.token_hex(16)}
    children: list[Child] = []
    # Ports chosen up front are held until every child listens: the leaves' connections, made
    # meanwhile, could otherwise take one as their local port (a proxy then failed to bind).
    reservations = ExitStack()
    # Chosen first: the server's status page shows the proxy's /health.
    port = proxy_port or reservations.enter_context(reserved_port(proxy_host))
    connect_host = "127.0.0.1" if proxy_host in ("0.0.0.0", "::") else proxy_host
    proxy_url = f"http://{connect_host}:{port}"
    # Chosen here too, so that the leaves start beside the server instead of after it.
    link_port = reservations.enter_context(reserved_port())
    try:
        server = await spawn(
            "server",
            [
                "edge_gateway",
                "server",
                "--http-port",
                "0",
                "--link-port",
                str(link_port),
                "--data-dir",
                str(run_dir / "server"),
                "--ready-file",
                str(run_dir / "server.ready"),
                "--proxy",
                proxy_url,
            ],
            logs,
            env,
        )
        children.append(server)
        for i in range(leaves):
            name = f"leaf-{i}"
            xain = [] if i or xain06_ports is None else ["--xain-host", proxy_host]
            if xain and xain06_ports is not None:
                xain += ["--xain-grpc-port", str(xain06_ports[0]), "--xain-object-port", str(xain06_ports[1])]
            child = await spawn(
                name,
                [
                    "edge_gateway",
                    "leaf",
                    "--name",
                    name,
                    "--port",
                    "0",
                    "--metrics-port",
                    "0",
                    "--server",
                    f"127.0.0.1:{link_port}",
                    "--data-dir",
                    str(run_dir / name),
                    "--ready-file",
                    str(run_dir / f"{name}.ready"),
                    *xain,
                ],
                logs,
                env,
            )
            children.append(child)
        ready = await wait_ready_file(server, run_dir / "server.ready")
        lcp: dict[str, dict[str, Any]] = {}
        metrics = {"server": f"http://127.0.0.1:{ready['http_port']}/metrics"}
        xain06 = None
        for child in children[1:]:
            info = await wait_ready_file(child, run_dir / f"{child.name}.ready")
            lcp[child.name] = {"host": "127.0.0.1", "port": info["port"]}
            if "xain_grpc_port" in info:
                xain06 = (
                    f"{_connect_host(proxy_host)}:{info['xain_grpc_port']}",
                    f"http://{_connect_host(proxy_host)}:{info['xain_object_port']}",
                )
            metrics[child.name] = f"http://127.0.0.1:{info['metrics_port']}/metrics"
        lcp_map = run_dir / "lcp_map.json"
        lcp_map.write_bytes(orjson.dumps(lcp, option=orjson.OPT_INDENT_2))
        # On loopback, as the leaves' and the server's: the proxy may face a LAN, its counts need not.
        metrics_port = reservations.enter_context(reserved_port())
        proxy_args = ["routing_proxy", str(port), str(lcp_map), "--host", proxy_host]
        proxy_args += ["--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)]
        proxy = await spawn("proxy", proxy_args, logs, env)
        children.append(proxy)
        metrics["proxy"] = f"http://127.0.0.1:{metrics_port}/metrics"
        stack = Stack(proxy_url, f"http://127.0.0.1:{ready['http_port']}", lcp_map, env, children, xain06, metrics)
        await _wait_http(proxy, f"{stack.proxy_url}/health")
        return stack
    except BaseException:
        for child in reversed(children):
            await child.stop()
        raise
    finally:
        reservations.close()


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


async def _wait_http(child: Child, url: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if not child.alive():
                raise ChildFailed(child, "exited")
            try:
                async with session.get(url) as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise ChildFailed(child, f"did not answer {url} within {timeout:.0f} s")


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The job the launcher submits, from flags (or the demo's tuned settings)."""
    if args.demo:
        from .models.demo import DigitsDemo

        demo = DigitsDemo()
        return {
            "name": "digits-demo",
            "model": "digits",
            "rounds": demo.rounds,
            "devices_per_round": demo.devices_per_round,
            "over_selection": 0.0,
            "epochs": demo.epochs,
            "lr": demo.lr,
            "batch_size": demo.batch_size,
            "retry_wait": 1,
            "seed": demo.seed,
            "task_timeout": 60.0,
            "round_timeout": 120.0,
        }
    model = args.model or next((m for m in ("xor", "cifar10", "digits") if m in args.job), "digits")
    trains = args.runtime or ("executorch" if args.job.endswith("_et") else "pytorch")
    spec: dict[str, Any] = {
        "name": args.job,
        "model": model,
        "runtime": trains,
        "rounds": args.rounds,
        "devices_per_round": args.devices_per_round,
        "seed": args.seed,
        **training_defaults(model),
    }
    if trains == "executorch" and model in ("xor", "cifar10"):
        # The example apps' data sets: XOR one sample at a time, CIFAR-10 in batches of 4.
        spec["batch_size"] = 1 if model == "xor" else 4
    for flag, key in (("epochs", "epochs"), ("lr", "lr"), ("batch_size", "batch_size"), ("retry_wait", "retry_wait")):
        if getattr(args, flag) is not None:
            spec[key] = getattr(args, flag)
    if args.mode == "async":
        spec["mode"] = "async"
        for key in ("concurrency", "buffer_size", "max_staleness"):
            if getattr(args, key) is not None:
                spec[key] = getattr(args, key)
    return spec


def _describe(spec: dict[str, Any]) -> str:
    if spec.get("mode") == "async":
        settings = ", ".join(f"{k} {spec[k]}" for k in ("concurrency", "buffer_size", "max_staleness") if k in spec)
        return f"async, {spec['rounds']} versions" + (f" ({settings})" if settings else "")
    return f"{spec['rounds']} rounds, {spec['devices_per_round']} devices per round"


async def _submit(api_url: str, spec: dict[str, Any]) -> str:
    async with (
        # The server inherits this environment: a token set in it (README's recipe exports one) guards its API.
        aiohttp.ClientSession(headers=authorization(environment_token())) as session,
        session.post(
            f"{api_url}/api/jobs", data=orjson.dumps(spec), headers={"Content-Type": "application/json"}
        ) as reply,
    ):
        body = orjson.loads(await reply.read())
        if reply.status != 201:
            raise UserError(f"job refused: {body.get('message')}: {'; '.join(body.get('errors', []))}")
        return str(body["job_id"])


def _number(value: Any) -> str:
    # A destroyed model evaluates to NaN, which JSON carries as null.
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def round_line(entry: dict[str, Any]) -> str:
    """One evaluated model version of a job's history, as the launcher prints it."""
    return (
        f"round {entry['round']:>3}  model v{entry['version']:<3} results {entry['results']:>5}  "
        f"test accuracy {_number(entry.get('accuracy'))}  loss {_number(entry.get('loss'))}"
    )


async def watch_job(api_url: str, job_id: str, stop: asyncio.Event, out: Any = print) -> dict[str, Any]:
    """Print each new model version's accuracy; return the final status when the job is done."""
    printed = 0
    status: dict[str, Any] = {}
    loop = asyncio.get_running_loop()
    done_at: float | None = None
    async with aiohttp.ClientSession(headers=authorization(environment_token())) as session:
        while not stop.is_set():
            try:
                async with session.get(f"{api_url}/api/jobs/{job_id}") as reply:
                    status = orjson.loads(await reply.read())
            except aiohttp.ClientError as exc:
                log.warning("server status unavailable: %s", exc)
                await asyncio.sleep(1.0)
                continue
            history = status.get("history", [])
            if status.get("status") == JobStatus.DONE and done_at is None:
                done_at = loop.time()
            # A version is printed once evaluated; one never evaluated (evaluation off, or it
            # failed on a destroyed model) is printed without numbers rather than waited for forever.
            unevaluated = not status.get("spec", {}).get("evaluate", True) or (
                done_at is not None and loop.time() - done_at > EVALUATION_GRACE
            )
            while printed < len(history) and ("accuracy" in history[printed] or unevaluated):
                out(round_line(history[printed]))
                printed += 1
            if done_at is not None and printed == len(history):
                return status
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
    return status


async def run_local(args: argparse.Namespace) -> int:
    if args.demo:
        args.leaves, args.simulated, args.trainer, args.alpha = 2, 100, "pytorch", 0.5
        args.exit_when_done = True
    run_dir = args.data_dir or Path("edgefl-data") / time.strftime("local-%Y%m%d-%H%M%S")
    spec = job_spec(args)
    xain06 = None
    if args.xain_grpc_port is not None or args.xain_object_port is not None:
        xain06 = (args.xain_grpc_port or 0, args.xain_object_port or 0)
        spec["xain"] = True
    check_job(spec)
    for port in (args.port, *(xain06 or ())):
        check_port_free(args.host, port)
    started = time.monotonic()
    async with AsyncExitStack() as cleanup:
        stop = cleanup.enter_context(process.stop_signals())
        stack = await start_stack(run_dir, args.leaves, args.host, args.port, xain06)
        cleanup.push_async_callback(_stop_stack, stack)
        if stack.xain06 is not None:
            print(f"xain-sdk 0.6: coordinator {stack.xain06[0]}  storage endpoint {stack.xain06[1]}", flush=True)
        print(
            f"proxy {stack.proxy_url}  job API {stack.api_url}  lcp_map {stack.lcp_map}  logs {run_dir / 'logs'}",
            flush=True,
        )
        print(f"status page {stack.api_url}/status", flush=True)
        print(f"metrics (Prometheus): {'  '.join(f'{k} {v}' for k, v in stack.metrics.items())}", flush=True)
        lan = phone_url(args.host, int(stack.proxy_url.rsplit(":", 1)[1]))
        if lan is not None:
            print(f"phones on the LAN: serverURL = {lan}", flush=True)
        job_id = await _submit(stack.api_url, spec)
        print(
            f"job {spec['name']!r} ({job_id}): {_describe(spec)}",
            flush=True,
        )
        devices = None
        if args.simulated > 0:
            devices = asyncio.get_running_loop().create_task(_simulate(args, stack.proxy_url, spec))
        status = await watch_job(stack.api_url, job_id, stop, out=lambda line: print(line, flush=True))
        if devices is not None:
            devices.cancel()
            await asyncio.gather(devices, return_exceptions=True)
        history = status.get("history", [])
        if status.get("status") != JobStatus.DONE:
            print("stopped before the job finished", flush=True)
            return 0 if stop.is_set() else 1
        final = _number(history[-1].get("accuracy")) if history else "n/a"
        print(
            f"job done in {time.monotonic() - started:.1f} s: final test accuracy {final}, "
            f"results counted {status['results_counted']}, refused {status['refused']}, late {status['late']}",
            flush=True,
        )
        if not args.exit_when_done:
            # Devices from outside keep polling: they must hear the job is over, not "connection refused".
            print(
                f"still serving {stack.proxy_url} (devices hear the job is over); Ctrl-C or SIGTERM stops it",
                flush=True,
            )
            await stop.wait()
        return 0
    return 1


async def _stop_stack(stack: Stack) -> None:
    codes = await stack.stop()
    log.info("stopped: %s", ", ".join(f"{k} exit {v}" for k, v in codes.items()))


async def _simulate(args: argparse.Namespace, url: str, spec: dict[str, Any]) -> Any:
    from .simulator.runner import run_simulation

    trainer = args.trainer or ("executorch" if spec.get("runtime") == "executorch" else "pytorch")
    return await run_simulation(
        url=url,
        job=spec["name"],
        devices=args.simulated,
        trainer=trainer,
        codec=args.codec,
        alpha=args.alpha,
        seed=args.seed,
        slow_fraction=args.slow_fraction,
        slow_factor=args.slow_factor,
        transport=args.transport,
        abort_rate=args.abort_rate,
        train_seconds=args.train_seconds,
    )
