"""`routing-proxy` / `python -m routing_proxy`: the incumbent's start command, and a few flags more.

    python -m routing_proxy 4321 lcp_map.json [rootCA.pem] [--ssl-cert C --ssl-key K]
        [--host 0.0.0.0] [--workers N] [--metrics-port P] [--metrics-host H] [--link-secret-file F] [--log-level info]
        [--max-buffered-bytes B] [--max-connection-buffered-bytes B]
        [--auth-tokens-file F] [--allowed-devices-file F]
        [--device-rate N --device-window S --device-slots N] [--max-inflight N] [--max-request-rate R]

Only this module configures logging and picks the event loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from internal_link import process
from internal_link.log_format import LOG_FORMAT_ENV, use_log_format
from internal_link.versions import version_line

from .config import ProxyConfig
from .lcp_map import LcpMapError, load_lcp_map
from .server import serve, supervise

logger = logging.getLogger("routing_proxy")


class _OneLineParser(argparse.ArgumentParser):
    # A bad flag is one line on stderr (and exit 2), not the usage text.
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="routing-proxy",
        description="Route FEG device requests to leaf aggregators (values not given come from EDGEFL_PROXY_* env vars).",
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument("port", nargs="?", type=int, help="port devices connect to (default 4321)")
    parser.add_argument("lcp_map", nargs="?", type=Path, help="leaf map JSON (default lcp_map.json)")
    parser.add_argument("root_ca", nargs="?", type=Path, help="CA certificate to verify the leaves' TLS")
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--ssl-cert", type=Path, help="TLS certificate for devices")
    parser.add_argument("--ssl-key", type=Path, help="TLS private key for devices")
    parser.add_argument("--workers", type=int, help="processes sharing the port (default 1)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (0 picks one; worker i of --workers N on PORT+i)",
    )
    parser.add_argument("--metrics-host", help="address /metrics listens on (default: --host)")
    parser.add_argument(
        "--link-secret-file",
        type=Path,
        help="file holding the secret shared with the leaves (or env EDGEFL_LINK_SECRET)",
    )
    parser.add_argument("--max-body-bytes", type=int, help="largest /result body accepted (default 64 MiB)")
    parser.add_argument(
        "--max-poll-body-bytes", type=int, help="largest body of /job, /task, /selection (default 1 MiB)"
    )
    parser.add_argument(
        "--max-buffered-bytes",
        type=int,
        help="memory for request bodies, all connections together; past it bodies get RETRY (default 512 MiB)",
    )
    parser.add_argument(
        "--max-connection-buffered-bytes",
        type=int,
        help="memory for one connection's request bodies, pipelined ones together (default 128 MiB)",
    )
    parser.add_argument(
        "--upstream-timeout", type=float, help="seconds to wait for a leaf before answering RETRY (default 25)"
    )
    parser.add_argument("--log-level", help="debug, info, warning or error (default info)")
    auth = parser.add_argument_group("device authentication (off unless a file or EDGEFL_PROXY_AUTH_TOKEN is given)")
    auth.add_argument(
        "--auth-tokens-file",
        type=Path,
        help="accepted X-Flare-User-Info auth_token values, one per line (one more token: env EDGEFL_PROXY_AUTH_TOKEN)",
    )
    auth.add_argument("--allowed-devices-file", type=Path, help="device ids admitted, one per line")
    auth.add_argument(
        "--max-leases-per-token",
        type=int,
        help="unfinished tasks the devices of one auth_token may hold on one leaf (default 16, 0 = no cap)",
    )
    auth.add_argument(
        "--max-leases-per-ip",
        type=int,
        help="without a token: unfinished tasks the devices of one IP address may hold on one leaf (default 0 = no cap)",
    )
    limits = parser.add_argument_group("admission control, for the whole proxy (0 = off, the default)")
    limits.add_argument("--device-rate", type=int, help="requests one device may make per --device-window")
    limits.add_argument("--device-window", type=float, help="seconds of a device-rate window (default 60)")
    limits.add_argument("--max-inflight", type=int, help="requests in flight before new polls are refused")
    limits.add_argument("--max-request-rate", type=float, help="requests/s admitted before new polls are refused")
    limits.add_argument(
        "--device-slots",
        type=int,
        help="counters per row of the per-device rate sketch, a power of two (8 bytes each; default 65536): "
        "keep it well above the devices active in one --device-window",
    )
    limits.add_argument(
        "--refusal-retry-wait",
        type=int,
        help="seconds a refused device is told to wait, jittered up to twice that (default 5)",
    )
    return parser


def load_config(argv: Sequence[str] | None = None) -> ProxyConfig:
    """The configuration from flags and EDGEFL_PROXY_* env vars; raises pydantic's `ValidationError`."""
    args = _parser().parse_args(argv)
    return ProxyConfig(**{name: value for name, value in vars(args).items() if value is not None})


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"routing-proxy: invalid configuration: {problems}", file=sys.stderr)
        return 2
    if config.ssl_key is not None and config.ssl_cert is None:
        print("routing-proxy: --ssl-key needs --ssl-cert", file=sys.stderr)
        return 2
    if config.workers > 1 and config.port == 0:
        print("routing-proxy: several workers need a fixed port, not 0", file=sys.stderr)
        return 2
    if config.metrics_port is not None and config.workers > 1 and not 0 < config.metrics_port <= 65536 - config.workers:
        print(
            f"routing-proxy: {config.workers} workers need --metrics-port 1..{65536 - config.workers}", file=sys.stderr
        )
        return 2
    try:
        leaves = load_lcp_map(config.lcp_map)  # fail before any worker starts
    except LcpMapError as exc:
        print(f"routing-proxy: {exc}", file=sys.stderr)
        return 2
    exposed = process.public_secret_beyond_loopback(
        config.link_secret.get_secret_value().encode() or process.DEVELOPMENT_SECRET,
        [] if config.link_secret_file is not None else [leaf.host for leaf in leaves],
    )
    if exposed is not None:
        print(
            f"routing-proxy: refusing to use the public development link secret towards the leaf at {exposed!r}, "
            "beyond loopback: set --link-secret-file or EDGEFL_LINK_SECRET (docs/TLS.md)",
            file=sys.stderr,
        )
        return 2
    try:
        config.device_auth()  # unreadable or empty token/device files: fail before any worker starts
    except (OSError, ValueError) as exc:
        print(f"routing-proxy: device authentication: {exc}", file=sys.stderr)
        return 2
    problem = (
        _tls_problem(config)
        or _listen_problem(config.host, config.port)
        or (config.metrics_port and _listen_problem(config.metrics_address(), config.metrics_port))
    )
    if problem:
        print(f"routing-proxy: {problem}", file=sys.stderr)
        return 2
    _configure_logging(config)
    if config.workers == 1:
        return run_worker(config)
    return supervise(config, _worker_process)


def _configure_logging(config: ProxyConfig) -> None:
    process.configure_logging(config.log_level)
    use_log_format(os.environ.get(LOG_FORMAT_ENV, "text"))  # json: as the gateway's --log-format


def _tls_problem(config: ProxyConfig) -> str | None:
    """Why the devices' certificate and key cannot be used, before any worker starts."""
    if config.ssl_cert is None:
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(config.ssl_cert, config.ssl_key)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot use --ssl-cert {config.ssl_cert} / --ssl-key {config.ssl_key}: {exc.strerror or exc}"
    return None


def _listen_problem(host: str, port: int) -> str | None:
    """A port someone listens on, or an address not this machine's, before any worker starts."""
    if port == 0:
        return None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            # As servers bind: only a listener, not a closing connection, makes this fail.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _worker_process(config: ProxyConfig, device_counts: Any) -> None:
    # A multiprocessing target's return value is lost: the exit code must carry it.
    _configure_logging(config)
    sys.exit(run_worker(config, None if device_counts is None else memoryview(device_counts)))


def run_worker(config: ProxyConfig, device_counts: memoryview | None = None) -> int:
    """Serve in this process until SIGTERM/SIGINT; return the exit code."""
    try:
        process.run(serve(config, device_counts))
    except OSError as exc:
        logger.error("cannot serve on %s:%s: %s", config.host, config.port, exc)
        return 1
    return 0
