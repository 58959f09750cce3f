"""Which of our packages may import which (docs/ARCHITECTURE.md "Packages and who may import what").

`device_protocol` imports none of ours; `internal_link` at most `device_protocol`; neither
service imports the other. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

MAY_IMPORT: dict[str, frozenset[str]] = {
    "device_protocol": frozenset(),
    "internal_link": frozenset({"device_protocol"}),
    "routing_proxy": frozenset({"device_protocol", "internal_link"}),
    "edge_gateway": frozenset({"device_protocol", "internal_link"}),
}


def forbidden_imports(package: str, source: str) -> list[str]:
    """The modules of ours that `source`, a module of `package`, imports against the rules."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names = [node.module]
        else:
            continue  # a relative import stays inside its own package
        for name in names:
            top = name.partition(".")[0]
            if top in MAY_IMPORT and top != package and top not in MAY_IMPORT[package]:
                found.append(name)
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_packages_import_only_what_they_may(package: str) -> None:
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules found under {package}/"
    violations = {
        str(path.relative_to(REPO)): bad
        for path in modules
        if (bad := forbidden_imports(package, path.read_text(encoding="utf-8")))
    }
    assert violations == {}


def test_the_checker_finds_an_offending_import() -> None:
    source = """
import asyncio
import device_protocol.codecs
from internal_link.client import LinkClient
from edge_gateway.rpc import RpcClient
from . import forwarding

def later():
    import edge_gateway.leaf
"""
    assert forbidden_imports("routing_proxy", source) == ["edge_gateway.rpc", "edge_gateway.leaf"]
    assert forbidden_imports("edge_gateway", "from routing_proxy import server") == ["routing_proxy"]
    assert forbidden_imports("device_protocol", "import internal_link.frames") == ["internal_link.frames"]
    assert forbidden_imports("internal_link", "from edge_gateway.processes import free_port") == [
        "edge_gateway.processes"
    ]
    assert forbidden_imports("internal_link", source.replace("edge_gateway", "json")) == []
