#!/usr/bin/env bash
# Set up, then run every test: unit tests, then every notebook under the smoke budget (nbmake).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TL_BUDGET=smoke TL_PROGRESS=off TL_RUNS_DIR="$PWD/runs/test" TL_DATA_DIR="$PWD/runs/test-data"
rm -rf "$TL_RUNS_DIR"
.venv/bin/python -m pytest tests --nbmake notebooks --nbmake-timeout=600 "$@"
