"""Engine overhead: epoch time of Ignite and Lightning as a ratio to the plain loop.

Runs the three engine notebooks (the code learners read, each in a fresh kernel) on identical
data and settings, then reads per-epoch wall times from their run records. The first epoch is
warm-up and is left out; the figure is the median of the remaining epochs.

    .venv/bin/python benchmarks/engine_overhead.py            # CPU-sized defaults
    TL_IMAGE_SIZE=224 TL_DEMO_IMAGES_PER_CLASS=200 .venv/bin/python benchmarks/engine_overhead.py

Any TL_* variable set in the environment overrides the defaults below.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULTS = dict(TL_BUDGET="smoke", TL_DATASET="demo", TL_WEIGHTS="random", TL_IMAGE_SIZE="64",
                TL_DEMO_IMAGES_PER_CLASS="40", TL_EPOCHS="4", TL_BATCH_SIZE="16")
NOTEBOOKS = {"plain": "01_plain_pytorch.ipynb", "ignite": "02_ignite.ipynb", "lightning": "03_lightning.ipynb"}


def main() -> None:
    import nbformat
    import pandas as pd
    import torch
    from nbclient import NotebookClient

    from common.records import INITS, load_run, run_dir

    work = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TL_RUNS_DIR", str(work / "runs"))
    os.environ.setdefault("TL_DATA_DIR", str(work / "data"))
    settings = {k: v for k, v in os.environ.items() if k.startswith("TL_")}
    print("settings:", settings)
    for engine, name in NOTEBOOKS.items():
        start = time.perf_counter()
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        NotebookClient(nb, timeout=3600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        print(f"ran {name} in {time.perf_counter() - start:.0f} s")
    rows = []
    for init in INITS:
        for engine in NOTEBOOKS:
            h = load_run(run_dir(os.environ["TL_RUNS_DIR"], "demo", engine, init)).history
            steady = h["epoch_seconds"].iloc[1:] if len(h) > 1 else h["epoch_seconds"]
            rows.append(dict(init=init, engine=engine, median_epoch_s=steady.median(), min_epoch_s=steady.min(),
                             max_epoch_s=steady.max()))
    table = pd.DataFrame(rows)
    plain = table[table.engine == "plain"].set_index("init")["median_epoch_s"]
    table["ratio_to_plain"] = table.apply(lambda r: r.median_epoch_s / plain[r.init], axis=1)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"\nmachine: {platform.machine()} {device}, torch {torch.__version__}")
    print(table.round(3).to_string(index=False))
    print("\ntarget: ignite and lightning within 5 % of the plain loop (ratio <= 1.05)")


if __name__ == "__main__":
    main()
