"""Each XAIN SDK in a virtual environment of its own, made once and reused across test runs.

0.6 pins protobuf 3.x and cannot share a process with edgefl's protobuf, and neither SDK belongs in
edgefl's environment, so tests run participants with the venv's interpreter. The venvs live under
`$EDGEFL_TEST_CACHE` (default `~/.cache/edgefl-tests`); a venv is remade if its SDK does not import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SDKS = {
    "xain-sdk-0.8.0": ["xain-sdk==0.8.0"],
    # The resolver's newest `schema` breaks the 0.6 SDK's import; 0.7.4 is the last that works.
    "xain-sdk-0.6.0": ["xain-sdk==0.6.0", "schema==0.7.4"],
}
INSTALL_TIMEOUT = 600


def sdk_python(name: str) -> Path:
    """The interpreter of the venv holding SDK `name` (a key of SDKS), installing it if needed."""
    root = Path(os.environ.get("EDGEFL_TEST_CACHE", Path.home() / ".cache" / "edgefl-tests")) / name
    python = root / "bin" / "python"
    if python.exists() and _imports_sdk(python):
        return python
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *SDKS[name]],
        check=True,
        timeout=INSTALL_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if not _imports_sdk(python):
        raise RuntimeError(f"{name} installed into {root} but does not import")
    return python


def _imports_sdk(python: Path) -> bool:
    probe = subprocess.run([str(python), "-c", "import xain_sdk"], capture_output=True, timeout=60, check=False)
    return probe.returncode == 0
