#!/usr/bin/env bash
# Set up, then run every test. The tests execute each notebook once, in a fresh kernel as nbmake does, on a tiny
# smoke budget (tests/conftest.py, executed_suite), and check what it printed and wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TL_BUDGET=smoke TL_PROGRESS=off TL_RUNS_DIR="$PWD/runs/test" TL_DATA_DIR="$PWD/runs/test-data"
rm -rf "$TL_RUNS_DIR"
.venv/bin/python -m pytest tests "$@"
