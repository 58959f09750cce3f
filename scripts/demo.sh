#!/usr/bin/env bash
# Install what the demo needs, then run it: a digits job with 100 non-IID simulated devices
# through the proxy and 2 leaves, to completion, printing test accuracy per round.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh train
exec .venv/bin/python -m edge_gateway local --demo --port "${PORT:-4321}" "$@"
