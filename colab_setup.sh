#!/usr/bin/env bash
# Prepare a Colab or Kaggle runtime for the notebooks; the first notebook cell runs it for you.
# By hand:   !git clone <this repository's URL> tl-tutorial && bash tl-tutorial/colab_setup.sh
# On Kaggle without internet, attach the repository as input: the first cell copies it and runs this.
# It installs only what the runtime lacks (never torch or torchvision, which Colab and Kaggle ship
# with their CUDA builds) and makes `common` importable. Locally it installs nothing that is already
# there, so running it by mistake is harmless.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
missing=$("$PY" - <<'PY'
import importlib.util
need = {"torch": None, "torchvision": None, "ignite": "pytorch-ignite>=0.5", "lightning": "lightning>=2.2",
        "kaggle": "kaggle>=1.6", "sklearn": "scikit-learn>=1.3", "seaborn": "seaborn>=0.13",
        "adjustText": "adjustText>=1.0",
        "pandas": "pandas>=2.0", "tqdm": "tqdm>=4.65", "psutil": "psutil>=5.9", "captum": "captum>=0.8",
        "onnx": "onnx>=1.17", "onnxscript": "onnxscript>=0.3", "onnxruntime": "onnxruntime>=1.20"}
absent = [spec for module, spec in need.items() if importlib.util.find_spec(module) is None]
if None in absent:
    raise SystemExit("torch/torchvision are missing: this script is for Colab and Kaggle; locally use scripts/setup.sh")
print(" ".join(absent))
PY
)
if [ -n "$missing" ]; then
  echo "Installing what this runtime lacks: $missing"
  if ! "$PY" -m pip install --quiet $missing; then
    echo "Could not install: $missing. Turn the notebook's internet on (Kaggle: Settings > Internet), or attach" >&2
    echo "wheels of these packages as input and pip install them, then run the cell again." >&2
    exit 1
  fi
else
  echo "All packages present: nothing to install."
fi
# Editable install without dependencies (never touches the runtime's torch) and without build isolation,
# so that it needs no network: Colab and Kaggle ship setuptools.
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null || "$PY" -m pip install --quiet --no-deps -e .
echo "Ready: notebooks in $(pwd)/notebooks"
