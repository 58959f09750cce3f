#!/usr/bin/env bash
# Start the routing proxy like the incumbent's start_rp: start_rp.sh [PORT] [LCP_MAP] [rootCA.pem] [flags...]
set -euo pipefail

port="${1:-4321}"
lcp_map="${2:-lcp_map.json}"
shift $(( $# < 2 ? $# : 2 ))

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${repo}/.venv/bin/python"
[[ -x "${python}" ]] || python="$(command -v python3)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"

exec "${python}" -m routing_proxy "${port}" "${lcp_map}" "$@"
