#!/usr/bin/env bash
# The status page in a real headless browser (tests/browser), as CI's own step: Debian's chromium
# (installed with apt-get when missing; playwright never downloads a browser here) driven by the
# Python playwright package (the `browser` extra). Saves docs/status-page.png. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x /usr/bin/chromium ]]; then
  apt-get update -qq
  # fonts-dejavu-core: the fonts the page and its screenshot were checked with here
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
scripts/install.sh train,test,browser
EDGEFL_BROWSER_TESTS=1 .venv/bin/python -m pytest -p no:cacheprovider -m browser tests/browser -v "$@"
