"""Which edgefl this is, as the proxy's /health and the server's job API report it."""

from __future__ import annotations

import functools
from importlib import metadata

from device_protocol import PROTOCOL_VERSION


def package_version() -> str:
    """The installed `edgefl` distribution's version ("unknown" when run from a bare checkout)."""
    try:
        return metadata.version("edgefl")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache  # read once: /health is polled
def versions() -> dict[str, str]:
    """{"edgefl": package version, "protocol": device protocol version}."""
    return {"edgefl": package_version(), "protocol": PROTOCOL_VERSION}


def version_line() -> str:
    """What `--version` prints."""
    return f"edgefl {package_version()} (device protocol {PROTOCOL_VERSION})"
