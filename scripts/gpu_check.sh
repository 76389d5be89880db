#!/usr/bin/env bash
# For whoever has a GPU: run every notebook on it (synthetic data shaped like the vegetable dataset, 224 px, a
# short `full` budget), check the GPU-only paths no CPU can exercise, run the three benchmarks at GPU sizes, and
# print the figures the README's GPU table needs, labelled with the GPU, torch and CUDA. Everything lands in
# runs/gpu-check/ (executed notebooks, logs, figures); the summary is runs/gpu-check/summary.txt.
#
#   bash scripts/gpu_check.sh            # about 20-40 minutes on a T4, less on an A100 / H100
#   GPU_CHECK_QUICK=1 bash scripts/gpu_check.sh   # notebooks and checks only, no benchmarks (about 10 minutes)
#
# On Colab or Kaggle, in a terminal or a cell (`!bash scripts/gpu_check.sh`) from the repository's folder; it
# uses the runtime's own torch (colab_setup.sh installs the rest). With internet, the ImageNet weights are
# downloaded once (TL_WEIGHTS=auto; without, random weights, loudly). Exits 1 if any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${GPU_CHECK_DIR:-runs/gpu-check}")
if [ -e "$OUT" ] && [ ! -f "$OUT/summary.txt" ]; then
  echo "$OUT exists and is not an earlier GPU check's folder: choose another GPU_CHECK_DIR." >&2; exit 2
fi
rm -rf "$OUT"; mkdir -p "$OUT/notebooks"
if [ -d /content ] || [ -d /kaggle/working ]; then  # Colab, Kaggle: the runtime's own torch, the rest beside it
  bash colab_setup.sh >"$OUT/setup.log" 2>&1 || { echo "set-up failed: see $OUT/setup.log" >&2; exit 1; }
  PY=python3
else  # a clone: the suite's .venv
  bash scripts/setup.sh >"$OUT/setup.log" 2>&1 || { echo "set-up failed: see $OUT/setup.log" >&2; exit 1; }
  PY=.venv/bin/python
fi
FAILED=0
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "No CUDA GPU visible: this script checks what only a GPU can run." >&2; exit 2; }
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
LABEL=$("$PY" -c "import torch; print(f'{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}')")
echo "== $(date +%T) GPU check on $LABEL" | tee "$OUT/summary.txt"

# Synthetic data shaped like the vegetable dataset: 15 classes of 224 px JPEGs.
DATA=$("$PY" -c "
import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path
from speed import synthetic_dataset
print(synthetic_dataset(Path(sys.argv[1]), 60))" "$OUT")
export TL_DATASET="$DATA" TL_BUDGET=full TL_EPOCHS=3 TL_WEIGHTS=auto TL_RUNS_DIR="$OUT/runs" TL_DATA_DIR="$OUT/data" \
       TL_PROGRESS=off

run_nb() {  # run_nb NOTEBOOK NAME [VAR=VALUE ...]: execute in a fresh kernel, keep the copy and the kernel's log
  local nb=$1 name=$2; shift 2
  local start; start=$(date +%s)
  if env "$@" "$PY" -m jupyter nbconvert --to notebook --execute "$nb" --output-dir "$OUT/notebooks" \
       --output "$name" --ExecutePreprocessor.timeout=-1 --log-level=WARN >"$OUT/$name.log" 2>&1; then
    echo "ok    $name ($(( $(date +%s) - start )) s)" | tee -a "$OUT/summary.txt"
  else
    echo "FAIL  $name: see $OUT/$name.log" | tee -a "$OUT/summary.txt"
    FAILED=$((FAILED + 1))
  fi
}

bench() {  # bench TITLE COMMAND...: one benchmark, its table into the summary; a failure is counted, not fatal
  local title=$1; shift
  echo "== $(date +%T) $title" | tee -a "$OUT/summary.txt"
  if ! "$@" >"$OUT/bench.log" 2>&1; then
    echo "FAIL  $title: see $OUT/$title.log" | tee -a "$OUT/summary.txt"
    FAILED=$((FAILED + 1))
  fi
  cat "$OUT/bench.log" >>"$OUT/summary.txt"
  mv "$OUT/bench.log" "$OUT/$title.log"
}

# 1. Every notebook on the GPU, in order (06 then checks the reloaded model against GPU-made records).
for nb in notebooks/[0-9]*.ipynb; do run_nb "$nb" "$(basename "$nb" .ipynb)"; done

# 2. What no CPU stand-in can show.
run_nb notebooks/01_plain_pytorch.ipynb 01_deterministic TL_DETERMINISTIC=1 TL_RUNS_DIR="$OUT/runs-deterministic"
# CPU processes on a GPU machine (hidden GPUs; Ignite would put rank 1 on a GPU that a one-GPU runtime lacks),
# with progress bars on as in Jupyter (forked processes must draw none): notebook 07, every engine.
run_nb notebooks/07_several_devices.ipynb 07_cpu_processes TL_DEVICE=cpu TL_PROGRESS=on TL_RUNS_DIR="$OUT/runs-cpu-processes"
if [ "$GPUS" -ge 2 ]; then  # NCCL, SyncBatchNorm, one GPU per rank, precision per engine (07 uses the GPUs)
  run_nb notebooks/07_several_devices.ipynb 07_all_gpus TL_PROGRESS=on TL_RUNS_DIR="$OUT/runs-all-gpus"
fi
"$PY" - "$OUT" <<'EOF' | tee -a "$OUT/summary.txt" || FAILED=$((FAILED + 1))
import json, re, sys
from pathlib import Path
sys.path.insert(0, ".")
from common.results.records import find_records
out = Path(sys.argv[1])
bad = []
for path in sorted((out / "notebooks").glob("*.ipynb")):
    for cell in json.loads(path.read_text())["cells"]:
        for o in cell.get("outputs", []):
            text = "".join(o.get("text", "")) + "".join(o.get("traceback", []))
            if o.get("output_type") == "error" or o.get("name") == "stderr" or "Warning" in text:
                bad.append(f"{path.name}: {text.strip()[:160]!r}")
print("executed notebooks read clean" if not bad else "NOT CLEAN:\n  " + "\n  ".join(bad))
forks = {p.name: p.read_text().count("send message from fork") for p in out.glob("*.log")}
print("messages dropped from forked processes:", {k: v for k, v in forks.items() if v} or "none")
for runs in sorted(out.glob("runs*")):
    for dataset in sorted(d.name for d in runs.iterdir() if d.is_dir() and d.name != "unfreeze"):
        for (engine, init), record in find_records(runs, dataset).items():
            m = record.meta
            print(f"{runs.name:>18} {engine:>9}/{init:<8} device {m.device:<7} precision {m.precision:<5} "
                  f"processes {m.world}  test acc {m.test_acc:.3f}  epoch {record.history['epoch_seconds'].median():.1f} s")
sys.exit(1 if bad or any(forks.values()) else 0)
EOF

# 3. The benchmarks at GPU sizes (their tables are the README's GPU figures).
if [ -z "${GPU_CHECK_QUICK:-}" ]; then
  GPU_SIZES=(--images-per-class 200 --image-size 224 --batch-size 64 --epochs 4)
  bench speed "$PY" benchmarks/speed.py "${GPU_SIZES[@]}"
  bench speed-fp32-nchw env TL_PRECISION=fp32 TL_CHANNELS_LAST=off "$PY" benchmarks/speed.py "${GPU_SIZES[@]}" --engines plain
  bench unfreeze_speed "$PY" benchmarks/unfreeze_speed.py --images-per-class 100 --image-size 224 --batch-size 64
  if [ "$GPUS" -ge 2 ]; then bench parallel_speed "$PY" benchmarks/parallel_speed.py; fi
fi
echo "== $(date +%T) done, $FAILED step(s) failed: $OUT/summary.txt ($LABEL)" | tee -a "$OUT/summary.txt"
[ "$FAILED" -eq 0 ]
