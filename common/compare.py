"""Do the engines agree? Compare their run records epoch by epoch against the plain loop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .records import ENGINES, INITS, find_runs

COMPARED = ("train_loss", "val_loss", "train_acc", "val_acc", "lr")
TOLERANCE = 0.005  # 0.5 % relative


def relative_gap(a: pd.Series, b: pd.Series) -> float:
    """Largest relative difference between two equally long series (inf if lengths differ)."""
    if len(a) != len(b):
        return float("inf")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))) if len(a) else 0.0


def agreement_table(histories: dict[tuple[str, str], pd.DataFrame], reference: str = "plain") -> pd.DataFrame:
    """One row per (engine, init) other than the reference: the largest relative gap per metric."""
    rows = []
    for (engine, init), hist in sorted(histories.items()):
        ref = histories.get((reference, init))
        if engine == reference or ref is None:
            continue
        gaps = {m: relative_gap(hist[m], ref[m]) for m in COMPARED}
        rows.append(dict(engine=engine, init=init, epochs=len(hist), **gaps,
                         agrees=max(gaps["train_loss"], gaps["val_loss"]) <= TOLERANCE))
    return pd.DataFrame(rows)


def engine_agreement(runs_dir: Path, dataset: str, engines=ENGINES) -> pd.DataFrame:
    """The agreement table for the run records present on disk (missing ones are skipped, with a note)."""
    runs = {key: run for key, run in find_runs(runs_dir, dataset).items() if key[0] in engines}
    missing = [f"{engine}-{init}" for engine in engines for init in INITS if (engine, init) not in runs]
    if missing:
        print(f"Not compared (no run record yet): {', '.join(missing)}")
    return agreement_table({key: run.history for key, run in runs.items()})


def assert_engines_agree(histories: dict[tuple[str, str], pd.DataFrame], tolerance: float = TOLERANCE) -> pd.DataFrame:
    """Raise AssertionError naming the engine and metric when per-epoch losses drift apart."""
    table = agreement_table(histories)
    if table.empty:
        raise AssertionError("Nothing to compare: need the plain loop and at least one other engine.")
    for _, row in table.iterrows():
        for metric in ("train_loss", "val_loss"):
            if row[metric] > tolerance:
                raise AssertionError(f"{row['engine']} / {row['init']}: {metric} differs from the plain loop by "
                                     f"{row[metric]:.3%} (tolerance {tolerance:.1%})\n{table.to_string()}")
    return table
