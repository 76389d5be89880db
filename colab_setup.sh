#!/usr/bin/env bash
# First version (the Colab/Kaggle issue extends it). Run once per runtime from a clone of this
# repository on Colab or Kaggle:   !git clone <this repository's URL> tl && cd tl && bash colab_setup.sh
# It installs only what the runtime lacks (never torch or torchvision, which Colab and Kaggle ship)
# and makes `common` importable. Locally it does nothing harmful: it installs nothing already present.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
missing=$("$PY" - <<'PY'
import importlib.util
need = {"ignite": "pytorch-ignite>=0.5", "lightning": "lightning>=2.2", "kaggle": "kaggle>=1.6",
        "sklearn": "scikit-learn>=1.3", "seaborn": "seaborn>=0.13", "torchvision": None, "torch": None}
absent = [spec for module, spec in need.items() if importlib.util.find_spec(module) is None]
if None in absent:
    raise SystemExit("torch/torchvision are missing: this script is for Colab/Kaggle; locally use scripts/setup.sh")
print(" ".join(absent))
PY
)
if [ -n "$missing" ]; then
  echo "Installing: $missing"
  "$PY" -m pip install --quiet $missing
fi
"$PY" -m pip install --quiet --no-deps -e .
echo "Ready: open notebooks/00_data_and_model.ipynb"
