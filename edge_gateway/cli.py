"""`python -m edge_gateway server|leaf|job|simulate|local` — the only place that configures logging
and picks the event loop."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from internal_link import process
from internal_link.log_format import LOG_FORMAT_ENV, LOG_FORMATS, use_log_format
from internal_link.versions import version_line

from . import runtime
from .config import LeafConfig, ServerConfig
from .job_api_auth import TOKEN_ENV, authorization, environment_token, read_token_file
from .models.demo import training_defaults
from .user_errors import OneLineParser, UserError, fail

PROG = "python -m edge_gateway"


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    from .local_arguments import add_local_arguments
    from .simulator.cli import add_arguments as add_simulate_arguments

    parser = OneLineParser(prog=PROG, description=__doc__)
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument(
        "--log-format",
        default=os.environ.get(LOG_FORMAT_ENV, "text"),
        choices=LOG_FORMATS,
        help=f"json: one JSON object a line (or env {LOG_FORMAT_ENV}; `local` passes it to its processes)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser("server", help="run the FedAvg server (job API and /metrics + leaf link)")
    server.add_argument("--host", default=None, help="where the leaves' link listens (default 127.0.0.1)")
    server.add_argument(
        "--api-host", default=None, help="where the job API listens (default 127.0.0.1; beyond it, a token is needed)"
    )
    server.add_argument("--http-port", type=int, default=None)
    _add_token_arguments(server, "the token the job API asks for")
    server.add_argument("--link-port", type=int, default=None)
    server.add_argument(
        "--metrics-port", type=int, default=None, help="also serve /metrics on this port (always on --http-port)"
    )
    server.add_argument("--metrics-host", default=None, help="address --metrics-port listens on (default: --host)")
    server.add_argument("--data-dir", type=Path, default=None)
    server.add_argument(
        "--retire-after",
        type=float,
        default=None,
        help="seconds a finished job stays in memory and leaf syncs, then on disk only (default 3600)",
    )
    server.add_argument("--ready-file", type=Path, default=None, help="write the bound ports here once serving")
    server.add_argument("--proxy", default=None, help="the routing proxy's URL: the status page shows its /health")
    _add_link_tls_arguments(server)

    leaf = commands.add_parser("leaf", help="run a leaf aggregator")
    leaf.add_argument("--name", default=None)
    leaf.add_argument("--host", default=None)
    leaf.add_argument("--port", type=int, default=None, help="where the proxy connects (0 picks one)")
    leaf.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (0 picks one)"
    )
    leaf.add_argument("--metrics-host", default=None, help="address /metrics listens on (default: --host)")
    leaf.add_argument("--server", type=_host_port, default=None, help="server link address HOST:PORT")
    leaf.add_argument("--data-dir", type=Path, default=None, help="where this leaf's result log lives")
    leaf.add_argument(
        "--payload-cache-bytes",
        type=int,
        default=None,
        help="task payloads held, all jobs together (default 1 GiB); the least recently served are evicted",
    )
    leaf.add_argument(
        "--session-heartbeat",
        type=float,
        default=None,
        help="seconds between a live session's messages, told at `accept` (default 30; silent 3x: gone)",
    )
    leaf.add_argument("--ready-file", type=Path, default=None)
    leaf.add_argument("--xain-host", default=None, help="address of the xain-sdk 0.6 ports (default: --host)")
    leaf.add_argument("--xain-grpc-port", type=int, default=None, help="open the xain-sdk 0.6 gRPC coordinator here")
    leaf.add_argument("--xain-object-port", type=int, default=None, help="and its S3-compatible object endpoint here")
    _add_link_tls_arguments(leaf)
    leaf.add_argument("--server-ca", type=Path, default=None, help="CA of the server's --link-cert: TLS to the server")

    job = commands.add_parser("job", help="submit, list, inspect, end or delete jobs on a server")
    api_help = "the server's job API (default http://127.0.0.1:8443)"
    job.add_argument("--api", default="http://127.0.0.1:8443", help=api_help)
    _add_token_arguments(job, "the job API's token")
    job_commands = job.add_subparsers(dest="job_command", required=True)
    submit = job_commands.add_parser("submit", help="submit a job from a JSON spec file or flags")
    submit.add_argument("--spec", type=Path, help="JSON job spec (see edge_gateway/jobs.py)")
    submit.add_argument("--name")
    submit.add_argument("--model")
    submit.add_argument("--rounds", type=int)
    submit.add_argument("--devices-per-round", type=int)
    submit.add_argument("--mode", choices=("sync", "async"))
    submit.add_argument("--concurrency", type=int)
    submit.add_argument("--buffer-size", type=int)
    submit.add_argument("--max-staleness", type=int)
    job_commands.add_parser("list", help="list jobs")
    status = job_commands.add_parser("status", help="one job's status")
    status.add_argument("job_id")
    end = job_commands.add_parser("end", help="end a job")
    end.add_argument("job_id")
    delete = job_commands.add_parser("delete", help="delete a finished job and its checkpoints")
    delete.add_argument("job_id")
    for command in job_commands.choices.values():
        # Also after the subcommand, as people type it; SUPPRESS keeps the value given before it.
        command.add_argument("--api", default=argparse.SUPPRESS, help=api_help)
        _add_token_arguments(command, "the job API's token", default=argparse.SUPPRESS)

    add_simulate_arguments(commands.add_parser("simulate", help="run simulated devices against a proxy"))
    add_local_arguments(commands.add_parser("local", help="start a whole stack on this machine"))
    return parser


def _add_link_tls_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--link-cert", type=Path, default=None, help="serve the link port with TLS: certificate (PEM)")
    command.add_argument("--link-key", type=Path, default=None, help="the --link-cert's private key")


def _check_link_settings(config: LeafConfig | ServerConfig, hosts: list[str]) -> None:
    """Refuse what would expose the links: the public secret beyond loopback, unusable TLS files."""
    exposed = config.public_secret_host(hosts)
    if exposed is not None:
        raise UserError(
            f"refusing to use the public development link secret on {exposed!r}, beyond loopback: "
            "set EDGEFL_LINK_SECRET (docs/TLS.md)"
        )
    if config.link_key is not None and config.link_cert is None:
        raise UserError("--link-key needs --link-cert")
    try:
        config.link_tls()
        if isinstance(config, LeafConfig):
            config.server_tls()
    except OSError as exc:
        raise UserError(f"cannot use the link's TLS files: {exc.strerror or exc}") from None


def _add_token_arguments(parser: argparse.ArgumentParser, what: str, default: Any = None) -> None:
    # The flag shows in `ps`: the environment variable or a file keep the token out of sight.
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--api-token", default=default, help=f"{what} (or env {TOKEN_ENV})")
    tokens.add_argument("--api-token-file", type=Path, default=default, help=f"a file holding {what}")


def _api_token(args: argparse.Namespace) -> str | None:
    """The token from --api-token or --api-token-file; None: neither was given."""
    if args.api_token_file is not None:
        return read_token_file(args.api_token_file)
    return str(args.api_token) if args.api_token is not None else None


def _overrides(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None}


async def _serve_server(args: argparse.Namespace) -> int:
    from .server import Server

    names = {
        "host": "host",
        "api_host": "api_host",
        "http_port": "http_port",
        "link_port": "link_port",
        "metrics_port": "metrics_port",
        "metrics_host": "metrics_host",
        "data_dir": "data_dir",
        "proxy": "proxy_url",
        "retire_after": "retire_after",
    }
    fields = _overrides(args, names | {"link_cert": "link_cert", "link_key": "link_key"})
    token = _api_token(args)
    if token is not None:
        fields["api_token"] = token
    config = ServerConfig(**fields)
    _check_link_settings(config, [config.host])
    with process.stop_signals() as stop:
        server = Server(config)
        await server.start()
        process.freeze_startup_objects()
        ports = {"http_port": server.http_port, "link_port": server.link_port, "metrics_port": server.metrics_port}
        runtime.write_ready_file(args.ready_file, ports)
        await stop.wait()
        await server.stop()
    return 0


def leaf_config(args: argparse.Namespace) -> LeafConfig:
    """The leaf's configuration: flags, then EDGEFL_LEAF_* env vars, then defaults."""
    names = {
        "name": "name",
        "host": "host",
        "port": "port",
        "metrics_port": "metrics_port",
        "metrics_host": "metrics_host",
        "data_dir": "data_dir",
        "payload_cache_bytes": "payload_cache_bytes",
        "server_ca": "server_ca",
        "session_heartbeat": "session_heartbeat",
    }
    fields = _overrides(args, names | {"link_cert": "link_cert", "link_key": "link_key"})
    fields |= _overrides(
        args, {"xain_host": "xain_host", "xain_grpc_port": "xain_grpc_port", "xain_object_port": "xain_object_port"}
    )
    if args.server is not None:
        fields["server_host"], fields["server_port"] = args.server
    return LeafConfig(**fields)


async def _serve_leaf(args: argparse.Namespace) -> int:
    from .leaf import Leaf

    config = leaf_config(args)
    _check_link_settings(config, [config.host, config.server_host])
    with process.stop_signals() as stop:
        leaf = Leaf(config)
        port = await leaf.start()
        process.freeze_startup_objects()
        ready: dict[str, Any] = {"port": port, "name": leaf.name, "metrics_port": leaf.metrics_port}
        if leaf.xain06_ports is not None:
            ready["xain_grpc_port"], ready["xain_object_port"] = leaf.xain06_ports
        runtime.write_ready_file(args.ready_file, ready)
        await stop.wait()
        await leaf.stop()
    return 0


def read_spec_file(path: Path) -> dict[str, Any]:
    """A job spec from a JSON file, or a `UserError` saying why it cannot be one."""
    try:
        spec = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise UserError(f"cannot read job spec {path}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise UserError(f"job spec {path} is not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise UserError(f"job spec {path} must be a JSON object, not {type(spec).__name__}")
    return spec


def submitted_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec `job submit` sends: the file, then the flags, then the model's training defaults."""
    spec = read_spec_file(args.spec) if args.spec else {}
    spec.update(
        _overrides(
            args,
            {
                "name": "name",
                "model": "model",
                "rounds": "rounds",
                "devices_per_round": "devices_per_round",
                "mode": "mode",
                "concurrency": "concurrency",
                "buffer_size": "buffer_size",
                "max_staleness": "max_staleness",
            },
        )
    )
    return {**training_defaults(str(spec.get("model", "digits"))), **spec}


async def _job_command(args: argparse.Namespace) -> int:
    api = args.api.rstrip("/")
    if not api.startswith(("http://", "https://")):
        raise UserError(f"--api {args.api!r} is not an http:// or https:// URL")
    spec = submitted_spec(args) if args.job_command == "submit" else None
    token = _api_token(args)
    headers = authorization(environment_token() if token is None else token)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=headers) as session:
            if spec is not None:
                request = session.post(
                    f"{api}/api/jobs", data=orjson.dumps(spec), headers={"Content-Type": "application/json"}
                )
            elif args.job_command == "list":
                request = session.get(f"{api}/api/jobs")
            elif args.job_command == "status":
                request = session.get(f"{api}/api/jobs/{args.job_id}")
            elif args.job_command == "delete":
                request = session.delete(f"{api}/api/jobs/{args.job_id}")
            else:
                request = session.post(f"{api}/api/jobs/{args.job_id}/end")
            async with request as reply:
                body = await reply.read()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UserError(f"cannot reach the job API at {api}: {str(exc) or type(exc).__name__}") from None
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UserError(f"{api} answered HTTP {reply.status} without JSON: is it a job API?") from None
    sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    if reply.status >= 400:
        errors = answer.get("errors") if isinstance(answer, dict) else None
        message = answer.get("message") if isinstance(answer, dict) else None
        return fail(PROG, "; ".join([str(message or f"HTTP {reply.status}"), *map(str, errors or [])]))
    return 0


async def _check_proxy(url: str) -> None:
    """Refuse to start devices against a URL nothing answers at (devices would retry forever)."""
    if not url.startswith(("http://", "https://")):
        raise UserError(f"--url {url!r} is not an http:// or https:// URL")
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{url.rstrip('/')}/health") as reply,
        ):
            await reply.read()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UserError(f"cannot reach the proxy at {url}: {str(exc) or type(exc).__name__}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    process.configure_logging(args.log_level)
    use_log_format(args.log_format)
    os.environ[LOG_FORMAT_ENV] = args.log_format  # the processes `local` starts log alike
    try:
        return _run(args)
    except UserError as exc:
        return fail(PROG, exc)
    except OSError as exc:  # a port in use, an address not ours, a directory we may not write
        return fail(PROG, exc)
    except ValidationError as exc:  # settings from EDGEFL_* environment variables
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return fail(PROG, f"invalid settings: {problems}")
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "server":
        return process.run(_serve_server(args))
    if args.command == "leaf":
        return process.run(_serve_leaf(args))
    if args.command == "job":
        return process.run(_job_command(args))
    if args.command == "simulate":
        from .simulator.cli import main_async

        process.run(_check_proxy(args.url))
        return process.run(main_async(args))
    from .launcher import run_local

    return process.run(run_local(args))


if __name__ == "__main__":
    sys.exit(main())
