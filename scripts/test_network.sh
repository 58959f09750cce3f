#!/usr/bin/env bash
# The shaped-network tests (tests/shaped), as CI's own step: hosts in network namespaces on veth
# links shaped with tc tbf, latency added by a relay. Needs root; installs iproute2 if missing.
# Run after scripts/test.sh (it uses that venv). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi
EDGEFL_SHAPED_TESTS=1 .venv/bin/python -m pytest -m shaped tests/shaped "$@"
