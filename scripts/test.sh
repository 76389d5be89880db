#!/usr/bin/env bash
# Set up, then run every test. The tests execute each notebook once, in a fresh kernel as nbmake does, on a tiny
# smoke budget (tests/conftest.py, executed_suite), and check what it printed and wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser test (tests/test_browser.py) drives headless Chromium: Debian's package where apt can install it
# (Playwright's own browser download is not reachable from CI). Elsewhere it skips, saying how to get one.
if ! command -v chromium >/dev/null 2>&1 && [ -z "${TL_CHROMIUM:-}" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  mkdir -p runs; echo "Installing Debian's chromium for the browser test"
  { $SUDO apt-get install -y -q chromium || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium; }; } \
    > runs/apt-chromium.log 2>&1 || echo "Could not install chromium (see runs/apt-chromium.log): the browser test will say so."
fi
export TL_BUDGET=smoke TL_PROGRESS=off TL_RUNS_DIR="$PWD/runs/test" TL_DATA_DIR="$PWD/runs/test-data"
rm -rf "$TL_RUNS_DIR"
.venv/bin/python -m pytest tests "$@"
