#!/usr/bin/env bash
# Install what the tests need (NVFlare's own device simulator included), then run them:
# unit tests first, then the integration tests that start real processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh train,test,executorch
.venv/bin/python -m pip install --quiet "nvflare==2.9.0"
.venv/bin/python -m pytest -m "not integration" "$@"
.venv/bin/python -m pytest -m integration "$@"
