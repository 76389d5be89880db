"""Run records: the one schema every engine writes and the comparison reads.

A run (one dataset, one engine, one initialisation) lives in
``runs/<dataset>/<engine>-<init>/`` and holds:

* ``history.csv``: :data:`HISTORY_COLUMNS`, one row per epoch;
* ``predictions.csv``: file, true and predicted class, top-k classes and probabilities on test;
* ``meta.json``: configuration, dataset and split identity, classes, weights source,
  parameter counts, device, library versions, seed, fallbacks, test metrics;
* ``best.pt`` (chosen on validation) and ``last.pt``: model state dicts.

Every file is written to a temporary name and renamed into place, so a run
killed mid-write never leaves a file that looks complete but isn't.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"]
ENGINES = ("plain", "ignite", "lightning")
INITS = ("transfer", "scratch")


def run_dir(runs_dir: Path, dataset: str, engine: str, init: str) -> Path:
    return Path(runs_dir) / dataset / f"{engine}-{init}"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_text(text))


def save_state(path: Path, state: dict) -> None:
    """Save a state dict (tensors and plain values only) atomically."""
    _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    """Load a state dict saved by :func:`save_state`, refusing pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_history(folder: Path, rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    missing = set(HISTORY_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"History rows lack {sorted(missing)}; every engine must record {HISTORY_COLUMNS}.")
    df = df[HISTORY_COLUMNS]
    _atomic(Path(folder) / "history.csv", lambda tmp: df.to_csv(tmp, index=False))
    return df


def predictions_frame(files: list[str], targets: np.ndarray, probs: np.ndarray,
                      class_names: list[str], k: int = 5) -> pd.DataFrame:
    """One row per test image: true and predicted class and the top-k classes with probabilities."""
    k = min(k, len(class_names))
    top = np.argsort(-probs, axis=1)[:, :k]
    names = np.asarray(class_names)
    df = pd.DataFrame({"file": files, "true": names[targets], "pred": names[top[:, 0]]})
    for i in range(k):
        df[f"top{i + 1}_class"] = names[top[:, i]]
        df[f"top{i + 1}_prob"] = probs[np.arange(len(probs)), top[:, i]].round(6)
    return df


def write_predictions(folder: Path, df: pd.DataFrame) -> None:
    _atomic(Path(folder) / "predictions.csv", lambda tmp: df.to_csv(tmp, index=False))


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "pytorch-ignite", "lightning", "scikit-learn", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def write_meta(folder: Path, meta: dict) -> None:
    write_text_atomic(Path(folder) / "meta.json", json.dumps(meta, indent=1, default=str))


@dataclass
class Run:
    folder: Path
    history: pd.DataFrame
    predictions: pd.DataFrame
    meta: dict

    @property
    def label(self) -> str:
        return f"{self.meta['engine']} / {self.meta['init']}"


PRODUCER = {"plain": "01_plain_pytorch.ipynb", "ignite": "02_ignite.ipynb", "lightning": "03_lightning.ipynb"}


class MissingRunError(FileNotFoundError):
    """A run record the comparison needs has not been written yet."""


def load_run(folder: Path) -> Run:
    folder = Path(folder)
    needed = [folder / n for n in ("history.csv", "predictions.csv", "meta.json")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        engine = folder.name.split("-")[0]
        raise MissingRunError(f"Run record {folder} is incomplete (missing {', '.join(missing)}). "
                              f"Run notebooks/{PRODUCER.get(engine, 'the engine notebook')} first.")
    return Run(folder, pd.read_csv(needed[0]), pd.read_csv(needed[1]), json.loads(needed[2].read_text()))


def latest_dataset(runs_dir: Path) -> str:
    """The dataset whose run records were written most recently."""
    metas = sorted(Path(runs_dir).glob("*/*-*/meta.json"), key=lambda p: p.stat().st_mtime)
    if not metas:
        raise MissingRunError(f"No run records under {runs_dir}. Run notebooks/{PRODUCER['plain']} (and "
                              f"{PRODUCER['ignite']}, {PRODUCER['lightning']}) first.")
    return metas[-1].parent.parent.name


def find_runs(runs_dir: Path, dataset: str) -> dict[tuple[str, str], Run]:
    """All complete runs for ``dataset``, keyed by (engine, init)."""
    out = {}
    for engine in ENGINES:
        for init in INITS:
            folder = run_dir(runs_dir, dataset, engine, init)
            if (folder / "meta.json").is_file():
                out[(engine, init)] = load_run(folder)
    return out
