#!/usr/bin/env bash
# The main job: set up, then execute every notebook in order, headless. Executed copies
# land in runs/notebooks/, figures and run records in runs/<dataset>/.
# TL_BUDGET (smoke | cpu | full | auto) and the other TL_* variables pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs/notebooks
# Saved notebooks keep only a progress bar's first frame: headless runs show the per-epoch lines instead.
export TL_PROGRESS=${TL_PROGRESS:-off}
for nb in notebooks/[0-9]*.ipynb; do
  echo "== $(date +%T) running $nb"
  start=$(date +%s)
  .venv/bin/jupyter nbconvert --to notebook --execute "$nb" --output-dir runs/notebooks \
    --ExecutePreprocessor.timeout=-1 --log-level=WARN
  echo "   done in $(( $(date +%s) - start )) s -> runs/notebooks/$(basename "$nb")"
done
echo "Figures and run records: $(ls -d runs/*/ | grep -v notebooks | tr '\n' ' ')"
