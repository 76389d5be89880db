"""The run record: the one contract between the engines, the comparison and the notebooks that use a model.

A run (one dataset, one engine, one initialisation) lives in ``runs/<dataset>/<engine>-<name>/``, its name
being its initialisation (or, in notebook 05, the mode it trained). :class:`RunRecord` is keyed by those
fields, never parsed back out of a folder's name, and names every file in the folder (history, test predictions, metadata, best and last
weights, the resume point, each engine's own folder) and reads and writes them; no other module or
notebook spells those names. :class:`RunMeta` is the metadata, typed and versioned: a record
written by an older version of the suite gives a clear message instead of a KeyError.

Every file is written to a temporary name and renamed into place, so a run killed mid-write
never leaves a file that looks complete but isn't.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import load_state, read_csv_as_text, save_state, write_csv_atomic, write_text_atomic

ENGINES = ("plain", "ignite", "lightning")
INITS = ("transfer", "scratch")  # listed in this order everywhere: figures, tables, loops
ENGINE_NOTEBOOKS = {"plain": "01_plain_pytorch.ipynb", "ignite": "02_ignite.ipynb", "lightning": "03_lightning.ipynb"}  # who writes each engine's records
SCHEMA_VERSION = 4  # 4: init is transfer or scratch only, world (was world_size), the linear layer is "classifier"
FIGURES = "figures"
EXPORTS = "exports"


@dataclass(frozen=True, kw_only=True)
class EpochRow:
    """One epoch of a run: a row of its history, written alike by every engine (``history.csv``)."""
    epoch: int  # counted from 1
    stage: int = 1  # 2 after a two-stage run's boundary (notebook 01's variations)
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float  # the head's learning rate at the epoch's start
    epoch_seconds: float  # training and validation, wall clock


HISTORY_COLUMNS = [f.name for f in dataclasses.fields(EpochRow)]


@dataclass(frozen=True)
class Calibration:
    """How far a run's probabilities can be trusted, fitted on its validation split by notebook 06
    (``calibration.json``): the temperature that divides its logits, and the confidence below which an image is
    answered "none of these"."""
    temperature: float  # logits / temperature: fitted to the validation split's negative log-likelihood
    threshold: float  # the calibrated top probability that keeps `acceptance` of the validation images
    acceptance: float  # the share of known (validation) images the threshold was chosen to keep
    validation_images: int


class MissingRunError(FileNotFoundError):
    """A run record that is needed has not been written (completely) yet; the message names the notebook."""


class OldRecordError(ValueError):
    """A run record written by another version of the suite; the message says how to renew it."""


@dataclass
class RunMeta:
    """What a run was: its settings, data, model and outcome (``meta.json``)."""
    engine: str
    init: str  # transfer | scratch: how the weights started (how much then trained: trainable)
    dataset: str
    dataset_root: str
    is_demo_data: bool
    split_fingerprint: str
    split_manifest: str  # the split as trained (caps and duplicate drop applied)
    class_counts: dict[str, dict[str, int]]  # split -> class -> images, as trained
    class_names: list[str]
    scan: dict
    weights_source: str
    parameters: dict  # trainable and total counts, and per block ("blocks")
    device: str
    precision: str
    seed: int
    budget: str
    image_size: int
    fallbacks: list[str]
    config: dict
    versions: dict[str, str]
    started: str
    finished: str
    epochs_run: int
    best_epoch: int | None
    best_val_acc: float | None
    test_acc: float
    top_k: int
    test_topk_acc: float
    trainable: str  # what trained (at the end, for two stages): head | layer4 | layer3 | all | scratch
    block_lrs: dict[str, float] = field(default_factory=dict)  # each block that trained -> its rate, stem first
    schedule: str = "constant"  # constant | cosine (per epoch) | onecycle (per batch)
    clip_grad_norm: float = 0.0  # 0: no clipping
    stages: list[dict] = field(default_factory=list)  # common.train.run.Stage as dicts: epochs, what trained, head lr
    steps_per_epoch: int = 0  # optimizer steps (batches) per training epoch: what a per-batch schedule counts
    world: int = 1  # processes that trained the run together (torch: world_size), each on its share of every batch
    schema: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)  # anything an engine or a later lesson adds

    @property
    def random_transfer(self) -> bool:
        """A run meant to transfer (any mode but scratch) that had no pretrained weights: it transferred nothing."""
        return self.trainable != "scratch" and self.weights_source == "random"

    def train_counts(self) -> pd.Series:
        """Training images per class, as trained."""
        return pd.Series(self.class_counts.get("train", {}), dtype=int).reindex(self.class_names, fill_value=0)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, default=str)

    @classmethod
    def from_json(cls, text: str, source: Path) -> "RunMeta":
        raw = json.loads(text)
        if raw.get("schema") != SCHEMA_VERSION:
            engine = raw.get("engine", "")
            raise OldRecordError(f"{source} was written by another version of the suite (schema "
                                 f"{raw.get('schema', 1)}, this one reads {SCHEMA_VERSION}). Run notebooks/"
                                 f"{ENGINE_NOTEBOOKS.get(engine, ENGINE_NOTEBOOKS['plain'])} again to renew it.")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True)
class RunRecord:
    """One run's folder and every file in it. Paths are attributes; the contents load on first use."""
    runs_dir: Path
    dataset: str
    engine: str  # one of ENGINES
    name: str  # the run's initialisation (INITS), or the name a lesson gave it ("layer3", "two-stage")

    @property
    def folder(self) -> Path:
        return Path(self.runs_dir) / self.dataset / f"{self.engine}-{self.name}"

    # ------------------------------------------------------------ what is in the folder
    @property
    def history_file(self) -> Path:
        return self.folder / "history.csv"

    @property
    def predictions_file(self) -> Path:
        return self.folder / "predictions.csv"

    @property
    def calibration_file(self) -> Path:
        """The run's :class:`Calibration`, once notebook 06 has fitted it."""
        return self.folder / "calibration.json"

    @property
    def meta_file(self) -> Path:
        return self.folder / "meta.json"

    @property
    def best(self) -> Path:
        """The model's weights at its best validation accuracy (never chosen on test): a state dict."""
        return self.folder / "best.pt"

    @property
    def last(self) -> Path:
        """The model's weights after the last epoch: a state dict."""
        return self.folder / "last.pt"

    @property
    def resume(self) -> Path:
        """The plain loop's resume point (model, optimizer, schedule, scaler, progress)."""
        return self.folder / "resume.pt"

    @property
    def engine_dir(self) -> Path:
        """Where an engine keeps its own checkpoints, in its own format (Ignite's, Lightning's)."""
        return self.folder / self.engine

    @property
    def engine_checkpoints(self) -> Path | None:
        """The folder of the engine's own checkpoints (Ignite's, Lightning's; the plain loop has none)."""
        return {"ignite": self.engine_dir, "lightning": self.lightning_checkpoints}.get(self.engine)

    @property
    def lightning_checkpoints(self) -> Path:
        """Where Lightning's ModelCheckpoint callbacks write (apart from its logger's folder)."""
        return self.engine_dir / "checkpoints"

    @property
    def lightning_last(self) -> Path:
        """Lightning's full checkpoint after the last epoch: its resume point."""
        return self.lightning_checkpoints / "last.ckpt"

    @property
    def exports(self) -> Path:
        """Where notebook 06 exports the model (beside the runs: a run's folder keeps its weights once):
        ``runs/<dataset>/exports/<engine>-<name>/``."""
        return Path(self.runs_dir) / self.dataset / EXPORTS / self.folder.name

    @property
    def exported_program(self) -> Path:
        """The model as a ``torch.export`` program (notebook 06)."""
        return self.exports / "model.pt2"

    @property
    def onnx_model(self) -> Path:
        """The model as an ONNX file (notebook 06)."""
        return self.exports / "model.onnx"

    @property
    def latency(self) -> Path:
        """Latency of eager PyTorch against ONNX Runtime (notebook 06)."""
        return self.exports / "latency.csv"

    @property
    def figures(self) -> Path:
        """The dataset's figures folder, shared by every run of the dataset."""
        return figures_dir(self.runs_dir, self.dataset)

    @property
    def label(self) -> str:
        return f"{self.engine} / {self.name}"

    # ------------------------------------------------------------ writing
    def start_fresh(self) -> None:
        """A new run never mixes with an old record: drop the old history, predictions and metadata."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in (self.history_file, self.predictions_file, self.meta_file, self.calibration_file):
            stale.unlink(missing_ok=True)
        self.__dict__.pop("history", None), self.__dict__.pop("predictions", None), self.__dict__.pop("meta", None)

    def write_history(self, rows: list[EpochRow]) -> pd.DataFrame:
        df = pd.DataFrame([dataclasses.asdict(row) for row in rows], columns=HISTORY_COLUMNS)
        write_csv_atomic(self.history_file, df)
        return df

    def write_predictions(self, df: pd.DataFrame) -> None:
        write_csv_atomic(self.predictions_file, df)

    def write_meta(self, meta: RunMeta) -> None:
        write_text_atomic(self.meta_file, meta.to_json())

    def write_calibration(self, calibration: Calibration) -> None:
        write_text_atomic(self.calibration_file, json.dumps(dataclasses.asdict(calibration), indent=1))

    def save_best(self, state: dict) -> None:
        save_state(self.best, state)

    def save_last(self, state: dict) -> None:
        save_state(self.last, state)

    def drop_resume_state(self) -> None:
        """Once a run has finished, its resume point and the engine's own checkpoints go: they hold the weights
        again, and the optimizer's state that only an unfinished run needs (a run's folder keeps each thing once)."""
        self.resume.unlink(missing_ok=True)
        if self.engine_checkpoints is not None:
            shutil.rmtree(self.engine_checkpoints, ignore_errors=True)

    def drop_weights(self) -> None:
        """For a finished run kept for its numbers alone (notebook 08's curve trains dozens of small runs): its best
        and last weights go, about 190 MB each time; history, predictions and metadata stay, so it still counts as
        finished."""
        self.best.unlink(missing_ok=True)
        self.last.unlink(missing_ok=True)

    def load_best(self) -> dict:
        """The best weights, loaded with ``weights_only=True``."""
        return load_state(self.best)

    # ------------------------------------------------------------ reading
    @property
    def complete(self) -> bool:
        return all(p.is_file() for p in (self.history_file, self.predictions_file, self.meta_file))

    def check_complete(self, *files: Path) -> "RunRecord":
        """Raise :class:`MissingRunError`, naming the notebook to run, unless ``files`` (default: all) exist."""
        missing = [p.name for p in files or (self.history_file, self.predictions_file, self.meta_file) if not p.is_file()]
        if missing:
            raise MissingRunError(f"Run record {self.folder} is incomplete (missing {', '.join(missing)}). "
                                  f"Run notebooks/{ENGINE_NOTEBOOKS.get(self.engine, ENGINE_NOTEBOOKS['plain'])} first.")
        return self

    @cached_property
    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.check_complete(self.history_file).history_file)

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """The test predictions as written: file and class names stay strings (classes named "6", "001" or "NA"
        would otherwise come back as numbers or missing), probabilities are floats."""
        return read_csv_as_text(self.check_complete(self.predictions_file).predictions_file, numeric=("_prob",))

    @property
    def calibration(self) -> Calibration | None:
        """The fitted :class:`Calibration`, or None for a run that notebook 06 has not calibrated (older records)."""
        if not self.calibration_file.is_file():
            return None
        return Calibration(**json.loads(self.calibration_file.read_text()))

    @cached_property
    def meta(self) -> RunMeta:
        return RunMeta.from_json(self.check_complete(self.meta_file).meta_file.read_text(), self.meta_file)


def predictions_frame(files: list[str], targets: np.ndarray, probs: np.ndarray,
                      class_names: list[str], k: int) -> pd.DataFrame:
    """One row per test image: true and predicted class and the top-k classes with probabilities."""
    k = min(k, len(class_names))
    top = np.argsort(-probs, axis=1)[:, :k]
    names = np.asarray(class_names)
    df = pd.DataFrame({"file": files, "true": names[targets], "pred": names[top[:, 0]]})
    for i in range(k):
        df[f"top{i + 1}_class"] = names[top[:, i]]
        df[f"top{i + 1}_prob"] = probs[np.arange(len(probs)), top[:, i]].round(6)
    return df


def figures_dir(runs_dir: Path, dataset: str) -> Path:
    """Where the figures of ``dataset`` go (beside its run records)."""
    return Path(runs_dir) / dataset / FIGURES


def datasets_with_records(runs_dir: Path) -> list[str]:
    """Every dataset that has at least one complete run record of the engine notebooks, most recently written last."""
    folders = [p for p in Path(runs_dir).iterdir() if p.is_dir()] if Path(runs_dir).is_dir() else []
    latest = {folder.name: max(r.meta_file.stat().st_mtime for r in found.values())
              for folder in folders if (found := find_records(runs_dir, folder.name))}
    return sorted(latest, key=latest.get)


def pick_dataset(runs_dir: Path, wanted: str | None = None) -> str:
    """``wanted`` if it has records, else the dataset trained most recently; a clear error when there is none."""
    found = datasets_with_records(runs_dir)
    if not found:
        raise MissingRunError(f"No run records under {runs_dir}. Run notebooks/{ENGINE_NOTEBOOKS['plain']} (and "
                              f"{ENGINE_NOTEBOOKS['ignite']}, {ENGINE_NOTEBOOKS['lightning']}) first.")
    return wanted if wanted in found else found[-1]


def find_records(runs_dir: Path, dataset: str) -> dict[tuple[str, str], RunRecord]:
    """All complete run records of ``dataset``, keyed by (engine, init), in the suite's order."""
    out = {}
    for engine in ENGINES:
        for init in INITS:
            record = RunRecord(runs_dir, dataset, engine, init)
            if record.complete:
                out[(engine, init)] = record
    return out
