"""`python -m edge_gateway server|leaf|job|simulate|local` — the only place that configures logging
and picks the event loop."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from internal_link import process

from . import runtime
from .config import LeafConfig, ServerConfig


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    from .launcher import add_local_arguments
    from .simulator.cli import add_arguments as add_simulate_arguments

    parser = argparse.ArgumentParser(prog="python -m edge_gateway", description=__doc__)
    parser.add_argument("--log-level", default="info")
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser("server", help="run the FedAvg server (job API + leaf link)")
    server.add_argument("--host", default=None)
    server.add_argument("--http-port", type=int, default=None)
    server.add_argument("--link-port", type=int, default=None)
    server.add_argument("--data-dir", type=Path, default=None)
    server.add_argument("--ready-file", type=Path, default=None, help="write the bound ports here once serving")

    leaf = commands.add_parser("leaf", help="run a leaf aggregator")
    leaf.add_argument("--name", default=None)
    leaf.add_argument("--host", default=None)
    leaf.add_argument("--port", type=int, default=None, help="where the proxy connects (0 picks one)")
    leaf.add_argument("--server", type=_host_port, default=None, help="server link address HOST:PORT")
    leaf.add_argument("--data-dir", type=Path, default=None, help="where this leaf's result log lives")
    leaf.add_argument("--ready-file", type=Path, default=None)

    job = commands.add_parser("job", help="submit, list, inspect or end jobs on a server")
    job.add_argument("--api", default="http://127.0.0.1:8443", help="the server's job API")
    job_commands = job.add_subparsers(dest="job_command", required=True)
    submit = job_commands.add_parser("submit", help="submit a job from a JSON spec file or flags")
    submit.add_argument("--spec", type=Path, help="JSON job spec (see edge_gateway/jobs.py)")
    submit.add_argument("--name")
    submit.add_argument("--model")
    submit.add_argument("--rounds", type=int)
    submit.add_argument("--devices-per-round", type=int)
    job_commands.add_parser("list", help="list jobs")
    status = job_commands.add_parser("status", help="one job's status")
    status.add_argument("job_id")
    end = job_commands.add_parser("end", help="end a job")
    end.add_argument("job_id")

    add_simulate_arguments(commands.add_parser("simulate", help="run simulated devices against a proxy"))
    add_local_arguments(commands.add_parser("local", help="start a whole stack on this machine"))
    return parser


def _overrides(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None}


async def _serve_server(args: argparse.Namespace) -> int:
    from .server import Server

    config = ServerConfig(
        **_overrides(args, {"host": "host", "http_port": "http_port", "link_port": "link_port", "data_dir": "data_dir"})
    )
    with process.stop_signals() as stop:
        server = Server(config)
        await server.start()
        process.freeze_startup_objects()
        runtime.write_ready_file(args.ready_file, {"http_port": server.http_port, "link_port": server.link_port})
        await stop.wait()
        await server.stop()
    return 0


async def _serve_leaf(args: argparse.Namespace) -> int:
    from .leaf import Leaf

    fields = _overrides(args, {"name": "name", "host": "host", "port": "port", "data_dir": "data_dir"})
    if args.server is not None:
        fields["server_host"], fields["server_port"] = args.server
    with process.stop_signals() as stop:
        leaf = Leaf(LeafConfig(**fields))
        port = await leaf.start()
        process.freeze_startup_objects()
        runtime.write_ready_file(args.ready_file, {"port": port, "name": leaf.name})
        await stop.wait()
        await leaf.stop()
    return 0


async def _job_command(args: argparse.Namespace) -> int:
    api = args.api.rstrip("/")
    async with aiohttp.ClientSession() as session:
        if args.job_command == "submit":
            spec = orjson.loads(args.spec.read_bytes()) if args.spec else {}
            spec.update(
                _overrides(
                    args,
                    {"name": "name", "model": "model", "rounds": "rounds", "devices_per_round": "devices_per_round"},
                )
            )
            request = session.post(
                f"{api}/api/jobs", data=orjson.dumps(spec), headers={"Content-Type": "application/json"}
            )
        elif args.job_command == "list":
            request = session.get(f"{api}/api/jobs")
        elif args.job_command == "status":
            request = session.get(f"{api}/api/jobs/{args.job_id}")
        else:
            request = session.post(f"{api}/api/jobs/{args.job_id}/end")
        async with request as reply:
            body = await reply.read()
    sys.stdout.write(orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if reply.status < 400 else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    process.configure_logging(args.log_level)
    if args.command == "server":
        return process.run(_serve_server(args))
    if args.command == "leaf":
        return process.run(_serve_leaf(args))
    if args.command == "job":
        return process.run(_job_command(args))
    if args.command == "simulate":
        from .simulator.cli import main_async

        return process.run(main_async(args))
    from .launcher import run_local

    return process.run(run_local(args))


if __name__ == "__main__":
    sys.exit(main())
