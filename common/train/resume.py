"""Resume points: what a run saves after every epoch so that it continues after a disconnect, and how it is restored.

The plain loop saves its record's resume point with :func:`save_resume_point`; Ignite saves the same
objects with its ``Checkpoint`` handler; Lightning keeps :class:`RunProgress` in a callback's state.
A resume point made under other settings, or one that cannot be read, is never used. A run that has
finished keeps no resume point (its record holds the best and last weights once); :func:`finished_run`
finds it, so that running a notebook again skips what is done.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from common.config import Config
from common.data.datasets import DataBundle
from common.io import load_state, save_state
from common.results.records import EpochRow, OldRecordError, RunMeta, RunRecord
from common.runtime import pick_device, resolve_precision
from common.train.run import TrainingRun, enter_stage

# Settings that do not change the numbers a run computes (the cache holds exactly what decoding gives).
_NOT_IN_KEY = ("runs_dir", "data_dir", "num_workers", "device", "resume", "cache_images", "devices")


def resume_key(run: TrainingRun) -> dict:
    """What a run computes: a resume point made under other settings is never reused."""
    return _key(run.cfg.as_dict(), run.precision, run.data.fingerprint, run.engine, run.init, run.world)


def _key(config: dict, precision: str, split: str, engine: str, init: str, world: int) -> dict:
    config = {k: v for k, v in config.items() if k not in _NOT_IN_KEY}
    # What was resolved, not the setting: devices="auto" can mean another number of processes, and precision="auto"
    # bf16 on one GPU and fp16 on the next runtime (whose gradient scaler state would not fit).
    config["precision"] = precision
    return json.loads(json.dumps(dict(config=config, split=split, engine=engine, init=init, world=world), default=str))


def finished_run(cfg: Config, data: DataBundle, engine: str, init: str, world: int = 1,
                 name: str | None = None) -> RunMeta | None:
    """The record of this very run (same settings, split, engine, initialisation, precision and processes) if it
    has already finished and resuming is on, else None: a notebook run again skips the runs that are done."""
    record = RunRecord(cfg.runs_dir, data.source.name, engine, name or init)
    if not cfg.resume or not record.complete:
        return None
    try:
        meta = record.meta
    except (OldRecordError, ValueError):  # another version's record, or one cut short: train again
        return None
    precision = resolve_precision(cfg.precision, pick_device(cfg.device))
    if _key(meta.config, meta.precision, meta.split_fingerprint, meta.engine, meta.init, meta.world) != \
            _key(cfg.as_dict(), precision, data.fingerprint, engine, init, world):
        return None
    print(f"{record.label}: finished earlier with these settings, its record is kept (resume=False trains it again).")
    return meta


class RunProgress:
    """What a run carries across a restart besides model, optimizer and schedule: the history so far,
    the best validation accuracy, and the random number generators' states (for dropout).

    Has ``state_dict``/``load_state_dict``, so Ignite's ``Checkpoint`` and Lightning's callback state
    can save and restore it like any other object."""

    def __init__(self, run: TrainingRun):
        self.key, self.history, self.best_val_acc = resume_key(run), [], -1.0
        self.stage_for = run.stage_for

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return len(self.history)

    def record(self, row: EpochRow) -> bool:
        """Append an epoch's row, noting the stage its epoch belongs to (1 but in a two-stage run's second part);
        True when its validation accuracy is a new best."""
        row = dataclasses.replace(row, stage=self.stage_for(row.epoch).number)
        self.history.append(row)
        improved = row.val_acc > self.best_val_acc
        self.best_val_acc = max(self.best_val_acc, row.val_acc)
        return improved

    def finished(self, cfg: Config) -> bool:
        """All epochs done, or early stopping has already ended the run."""
        return self.epoch >= cfg.epochs or bool(cfg.early_stopping and self.epochs_since_best() >= cfg.early_stopping)

    def epochs_since_best(self) -> int:
        if not self.history:
            return 0
        accs = [r.val_acc for r in self.history]
        return len(accs) - 1 - accs.index(max(accs))

    def state_dict(self) -> dict:
        # This process's GPU generator only (each process draws on its own device; their sequences are alike).
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        # Rows as plain dicts: checkpoints load with weights_only=True, which unpickles no class of ours.
        return dict(key=self.key, history=[dataclasses.asdict(row) for row in self.history], best_val_acc=self.best_val_acc,
                    rng=torch.get_rng_state(), cuda_rng=[torch.cuda.get_rng_state()] if cuda else [])

    def load_state_dict(self, state: dict) -> None:
        if state["key"] != self.key:
            raise ValueError("resume point made with other settings")
        self.history, self.best_val_acc = [EpochRow(**row) for row in state["history"]], float(state["best_val_acc"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"][0])


def read_resume_point(run: TrainingRun, path: Path, progress_of=lambda state: state["progress"]) -> dict | None:
    """The saved state at ``path`` if resuming is on and it belongs to this run's settings, else None. When it
    is used, ``run`` first enters the stage of the saved epoch (a two-stage run saved after its boundary), so that
    the optimizer and schedule being restored have the saved groups.

    A file that cannot be read (say, cut short by a kill while it was written) is ignored with a
    message, never trusted: checkpoints are written atomically, so this only happens to foreign files."""
    if not run.cfg.resume or not Path(path).is_file():
        return None
    try:
        state = load_state(path)
        key = progress_of(state)["key"]
    except Exception as exc:
        print(f"Ignoring unreadable resume point {path} ({type(exc).__name__}); starting {run.init} from scratch.")
        return None
    if key != resume_key(run):
        print(f"Resume point {path} was made with other settings; starting {run.init} over.")
        return None
    enter_stage(run, run.stage_for(epochs_done(progress_of(state))))
    return state


def save_resume_point(run: TrainingRun, progress: RunProgress) -> None:
    """Everything needed to continue after the epoch just completed, written atomically."""
    save_state(run.record.resume, dict(model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
                                              scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(),
                                              progress=progress.state_dict()))


def resume_or_start(run: TrainingRun) -> RunProgress:
    """The run's progress: restored from its resume point after a disconnect (with the model, optimizer,
    schedule and scaler), else new."""
    progress = RunProgress(run)
    load_resume_point(run, progress)
    return progress


def epochs_done(progress_state: dict) -> int:
    """How many epochs a saved :class:`RunProgress` state had completed."""
    return len(progress_state["history"])


def load_resume_point(run: TrainingRun, progress: RunProgress) -> bool:
    """Restore model, optimizer, schedule and progress from the record's resume point; True if something was
    resumed."""
    state = read_resume_point(run, run.record.resume)
    if state is None:
        return False
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    progress.load_state_dict(state["progress"])
    if run.is_main:
        print(f"Resuming {run.engine}/{run.init} after epoch {progress.epoch} of {run.cfg.epochs} "
              "(resume=False starts over).")
    return True
