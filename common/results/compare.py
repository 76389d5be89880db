"""Comparisons across run records: summary tables, speed ratios, time to a target, and whether the engines agree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.model.resnet import trainable_blocks
from common.results.records import ENGINES, INITS, RunRecord, find_records

COMPARED = ("train_loss", "val_loss", "train_acc", "val_acc", "lr")
TOLERANCE = 0.005  # 0.5 % relative
METRIC_WORDS = {"train_loss": "training loss", "val_loss": "validation loss", "train_acc": "training accuracy",
                "val_acc": "validation accuracy", "lr": "learning rate"}


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


def engine_agreement(runs_dir: Path, dataset: str, engines=ENGINES, names=INITS) -> pd.DataFrame | None:
    """The agreement of the runs ``names`` (default: transfer and scratch) present on disk, written for people:
    one sentence when every gap is below 0.001 %, else a table of each metric's largest per-epoch gap to the plain
    loop in percent (the learning rate only where it changed during a run); missing records are skipped, with a
    note."""
    records = {(engine, name): RunRecord(runs_dir, dataset, engine, name) for engine in engines for name in names}
    missing = [record.label for record in records.values() if not record.complete]
    if missing:
        print(f"Not compared (no run record yet): {', '.join(missing)}")
    histories = {key: record.history for key, record in records.items() if record.complete}
    table = agreement_table(histories)
    if table.empty:
        return table
    order = {name: i for i, name in enumerate(names)}
    table = table.sort_values(["engine", "init"], key=lambda c: c.map(order) if c.name == "init" else c)
    if (table[list(COMPARED)] < 1e-5).all().all():
        runs = ", ".join(f"{e} / {n}" for e, n in zip(table["engine"], table["init"]))
        print(f"{runs}: every per-epoch loss, accuracy and learning rate is within 0.001 % of the plain loop's: "
              "the same computation.")
        return None
    if any(record.meta.device.startswith("cuda") and not record.meta.config.get("deterministic")
           for record in records.values() if record.complete):
        print("These runs trained on a GPU with autotuned cuDNN kernels (deterministic off), which do not repeat "
              "exactly: two runs of the same engine differ too. Measured on an H200 with the tests' tiny settings "
              "(2 epochs): the plain loop run twice, about 9 % apart in validation loss; with "
              "load_config(deterministic=True) it repeated exactly, and Ignite agreed with it within 0.03 %.")
    scheduled = any(hist["lr"].nunique() > 1 for hist in histories.values())
    shown = table.rename(columns={"init": "run"})[["engine", "run", "epochs"]]
    for metric in COMPARED if scheduled else [m for m in COMPARED if m != "lr"]:
        shown[f"{METRIC_WORDS[metric]}, largest gap"] = table[metric].map(gap_in_percent)
    shown["agrees"] = table["agrees"]
    return shown.set_index(["engine", "run"])


def gap_in_percent(gap: float) -> str:
    """A relative gap as people read it: '0 %' when equal, '< 0.001 %' when below that, else three significant
    digits ('2 %', '24.4 %', '0.0123 %'): the gaps are measured on a few epochs, more digits would be noise."""
    if gap == 0:
        return "0 %"
    return "< 0.001 %" if gap < 1e-5 else f"{100 * gap:.3g} %" if gap < 10 else f"{100 * gap:.0f} %"


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


def time_to_target(history: pd.DataFrame, target: float) -> float | None:
    """Wall seconds of training until validation accuracy first reaches ``target`` (None if never)."""
    reached = history.index[history["val_acc"] >= target]
    if len(reached) == 0:
        return None
    return float(history["epoch_seconds"].loc[: reached[0]].sum())


def trains(meta) -> str:
    """What a run trained, from its record, block by block ("layer3, layer4, head"); each stage's for a run of
    several ("head, then everything")."""
    def blocks(mode):
        return "everything" if mode in ("all", "scratch") else ", ".join(trainable_blocks(mode))

    if len(meta.stages) > 1:
        return ", then ".join(blocks(s["trainable"]) for s in meta.stages)
    return "everything, from random weights" if meta.trainable == "scratch" else blocks(meta.trainable)


def summary_table(records: dict[tuple[str, str], RunRecord]) -> pd.DataFrame:
    """One row per run (engine, run name), written for people: what trained, test accuracy, top-k accuracy (only
    where k is at most half the classes: with 5 of 6 classes it says nothing), the best validation accuracy and its
    epoch, epochs run, seconds per epoch, trainable parameters and the weights it started from. Accuracies to
    three decimals, seconds to one.

    ``records`` maps (engine, run name) to :class:`common.results.records.RunRecord`."""
    rows = []
    for (engine, name), record in records.items():
        h, m = record.history, record.meta
        row = {"engine": engine, "run": name, "trains": trains(m), "test accuracy": round(m.test_acc, 3)}
        if 2 * m.top_k <= len(m.class_names):
            row[f"test top-{m.top_k} accuracy"] = round(m.test_topk_acc, 3)
        row.update({"best validation accuracy": round(float(h["val_acc"].max()), 3), "best epoch": m.best_epoch,
                    "epochs": len(h), "seconds per epoch (mean)": round(float(h["epoch_seconds"].mean()), 1),
                    "trainable parameters": f"{m.parameters['trainable']:,}", "weights": m.weights_source})
        rows.append(row)
    table = pd.DataFrame(rows).set_index(["engine", "run"])
    # A column with one value in every row says nothing about the difference between the runs (the caption and the
    # sentences say what the runs share).
    same = [c for c in ("epochs", "weights") if len(table) > 1 and table[c].nunique() == 1]
    return table.drop(columns=same)


def speed_ratios(records: dict[tuple[str, str], RunRecord]) -> pd.DataFrame:
    """Per engine: median transfer epoch time over median scratch epoch time (below 1: transfer is faster).
    Medians, because one slow epoch on a shared machine would otherwise decide the ratio."""
    rows = []
    for engine in dict.fromkeys(e for e, _ in records):
        if (engine, "transfer") in records and (engine, "scratch") in records:
            t = records[(engine, "transfer")].history["epoch_seconds"].median()
            s = records[(engine, "scratch")].history["epoch_seconds"].median()
            rows.append(dict(engine=engine, transfer_s=t, scratch_s=s, transfer_over_scratch=t / s))
    return pd.DataFrame(rows)


def fit_gaps(records: dict[tuple[str, str], RunRecord]) -> pd.DataFrame:
    """Per run, at its last epoch: training and validation accuracy and loss, and the gaps between them
    (training minus validation accuracy; validation minus training loss). Large gaps mean overfitting."""
    rows = []
    for record in records.values():
        last = record.history.iloc[-1]
        rows.append(dict(engine=record.engine, run=record.name, epoch=int(last["epoch"]), train_acc=last["train_acc"], val_acc=last["val_acc"],
                         acc_gap=last["train_acc"] - last["val_acc"], loss_gap=last["val_loss"] - last["train_loss"]))
    return pd.DataFrame(rows).set_index(["engine", "run"])


def once_per_result(table: pd.DataFrame) -> pd.DataFrame:
    """A table indexed by (engine, run) with the rows that several engines share shown once, their engines
    joined ("plain, ignite, lightning"): the engines compute the same numbers, and three equal rows say it badly."""
    flat = table.reset_index()
    values = [c for c in flat.columns if c != "engine"]
    joined = flat.groupby(values, sort=False, dropna=False)["engine"].agg(", ".join).reset_index()
    return joined.set_index(["engine", "run"])[[c for c in table.columns]]


def mode_table(records: dict[str, RunRecord]) -> pd.DataFrame:
    """One row per run of the unfreezing spectrum (keyed by the run's name): what trained, its cost and its accuracy.
    Epoch seconds are medians over the run's epochs (stage two's for a two-stage run, the part that differs)."""
    rows = []
    for name, record in records.items():
        meta, history = record.meta, record.history
        last = history[history["stage"] == history["stage"].max()] if "stage" in history else history
        rows.append(dict(run=name, trains=trains(meta), trainable_parameters=int(meta.parameters["trainable"]),
                         median_epoch_seconds=float(last["epoch_seconds"].median()),
                         one_off_seconds=meta.extra.get("feature_extraction_seconds", np.nan),
                         best_val_acc=meta.best_val_acc, test_acc=meta.test_acc))
    return pd.DataFrame(rows).set_index("run")


