"""The status page is package data: a wheel built from the project (as pip builds it on a fresh
machine or in the container images) holds it, and the server finds it installed that way."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge_gateway.status_api import PAGE_FILE

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_built_wheel_ships_the_status_page(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ behind
    for package in ("device_protocol", "internal_link", "routing_proxy", "edge_gateway"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(tmp_path / "dist"), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("edgefl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read(f"edge_gateway/{PAGE_FILE}")
    assert shipped == (REPO / "edge_gateway" / PAGE_FILE).read_bytes()
