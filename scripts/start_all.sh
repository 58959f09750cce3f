#!/usr/bin/env bash
# Start a whole local stack (server, leaves, proxy on :4321, simulated devices) with one job.
# Any flag of `python -m edge_gateway local` may be given, e.g.:
#   scripts/start_all.sh --job digits --leaves 2 --rounds 10 --devices-per-round 20 --simulated 50 --exit-when-done
# Without --exit-when-done the stack keeps serving after the job until Ctrl-C/SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
exec "$py" -m edge_gateway local "$@"
