"""The incumbent's `lcp_map.json`: `{"C11": {"host": "localhost", "port": 9003}, ...}` (PROTOCOL.md §7)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class LcpMapError(ValueError):
    """The map file is missing or does not describe at least one leaf."""


@dataclass(frozen=True, slots=True)
class Leaf:
    name: str
    host: str
    port: int


def load_lcp_map(path: Path) -> list[Leaf]:
    """Read the leaves in file order; raise `LcpMapError` saying what is wrong with a bad file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LcpMapError(f"cannot read lcp map {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LcpMapError(f"lcp map {path} is not valid JSON: {exc}") from None
    return parse_lcp_map(data, str(path))


def parse_lcp_map(data: object, source: str = "lcp map") -> list[Leaf]:
    if not isinstance(data, dict) or not data:
        raise LcpMapError(
            f'{source} must be a non-empty JSON object like {{"C11": {{"host": "localhost", "port": 9003}}}}'
        )
    leaves = []
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise LcpMapError(f"{source}: entry {name!r} must be an object with host and port")
        host = entry.get("host")
        port = entry.get("port")
        if not isinstance(host, str) or not host:
            raise LcpMapError(f"{source}: entry {name!r} needs a non-empty string host")
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        # bool is an int in Python; `true` is not a port.
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise LcpMapError(f"{source}: entry {name!r} needs a port between 1 and 65535, got {port!r}")
        leaves.append(Leaf(name, host, port))
    return leaves
