"""What `local` checks before it starts a process, and the address it tells phones to use."""

from __future__ import annotations

import argparse
import errno
import socket
from typing import Any

from pydantic import ValidationError

from .jobs import JobSpec
from .user_errors import UserError


def positive_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return value


def port_number(text: str) -> int:
    value = int(text) if text.isdigit() else None
    if value is None or value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def check_job(spec: dict[str, Any]) -> None:
    """Refuse, before anything starts, a job the server would refuse."""
    try:
        JobSpec.model_validate(spec)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in exc.errors())
        raise UserError(f"invalid job: {problems}") from None


def check_port_free(host: str, port: int) -> None:
    """Refuse a proxy address that is in use or not this machine's, before the stack starts."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host {host!r} is not an address of this machine: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # SO_REUSEADDR as servers set it: only a listener, not a closing connection, makes bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is in use; pick another with --port (0 picks a free one)"
                ) from None
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def lan_address() -> str | None:
    """This machine's address on its default route, for phones on the LAN; None when it has none.

    Connecting a UDP socket only picks a route: no packet is sent.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def phone_url(host: str, port: int, scheme: str = "http") -> str | None:
    """The URL phones on the LAN should use, when the proxy listens beyond loopback."""
    if host in ("0.0.0.0", "::", ""):
        address = lan_address()
        return f"{scheme}://{address}:{port}" if address else None
    if host.startswith("127.") or host in ("localhost", "::1"):
        return None
    return f"{scheme}://{host}:{port}"
