#!/usr/bin/env bash
# Create .venv (if missing) and install edgefl into it. Usage: scripts/install.sh [EXTRAS]
# torch goes first and pinned: a looser range, or torch pulled in by another package, brings a
# multi-GB CUDA build; torch 2.13.0's CPU build is what the project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train}"
python="${PYTHON:-python3}"
# openssl and curl: docs/TLS.md's recipe, which tests/integration/test_tls_doc_commands.py runs.
missing=()
for tool in openssl curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if [[ "$extras" == *train* ]]; then
  python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".[${extras}]"
