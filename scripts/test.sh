#!/usr/bin/env bash
# Install what the tests need (NVFlare's own device simulator included), then run them: ruff and
# mypy, unit tests, then the integration tests that start real processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh train,test,executorch,xain
.venv/bin/python -m pip install --quiet "nvflare==2.9.0"
# Lint, format and types first: they take seconds and name the line.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy device_protocol internal_link routing_proxy edge_gateway
# Browser tests have their own step (scripts/test_browser.sh): they need chromium.
.venv/bin/python -m pytest -m "not integration and not browser" "$@"
.venv/bin/python -m pytest -m "integration and not browser" "$@"
