"""Which edgefl this is, as devices and the job API report it."""

from __future__ import annotations

from importlib import metadata

from device_protocol import PROTOCOL_VERSION


def package_version() -> str:
    """The installed `edgefl` distribution's version ("unknown" when run from a bare checkout)."""
    try:
        return metadata.version("edgefl")
    except metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    """{"edgefl": package version, "protocol": device protocol version}."""
    return {"edgefl": package_version(), "protocol": PROTOCOL_VERSION}


def version_line() -> str:
    return f"edgefl {package_version()} (device protocol {PROTOCOL_VERSION})"
