"""The three engines are one computation: run their notebooks and compare the run records.

The notebooks are executed as a learner would run them (fresh kernel, top to bottom), on a
tiny smoke configuration, so this tests the code the learner actually reads.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from conftest import ENGINE_NOTEBOOKS, RECIPE_CELL, notebook_until, run_notebook, tiny_env

from common.results.compare import assert_engines_agree
from common.results.records import INITS, RunRecord

def test_engines_agree_epoch_by_epoch(engine_runs):
    table = assert_engines_agree({k: r.history for k, r in engine_runs.items()})
    assert len(table) == 4 and table["agrees"].all()
    assert {r.meta.split_fingerprint for r in engine_runs.values()} == {engine_runs[("plain", "transfer")].meta.split_fingerprint}


def test_every_engine_writes_the_same_record_schema(engine_runs):
    reference = engine_runs[("plain", "transfer")]
    for (engine, init), run in engine_runs.items():
        assert list(run.history.columns) == list(reference.history.columns)
        assert list(run.predictions.columns) == list(reference.predictions.columns)
        assert (run.meta.engine, run.meta.init) == (engine, init)
        assert run.best.is_file() and run.last.is_file() and set(run.load_best()) == set(reference.load_best())
        assert len(run.history) == 2 and run.history["epoch_seconds"].gt(0).all()
        assert run.meta.scan and run.meta.fallbacks == []  # demo and random weights asked for: no fallback


def test_the_check_fails_when_one_engine_changes_its_learning_rate(engine_runs, tiny_base, tmp_path):
    runs = tmp_path / "runs"
    for init in INITS:  # the plain loop's records as they are
        shutil.copytree(RunRecord(tiny_base / "runs", "demo", "plain", init).folder, RunRecord(runs, "demo", "plain", init).folder)
    nb = notebook_until(ENGINE_NOTEBOOKS["ignite"], RECIPE_CELL)  # the runs compared, not the rest of the notebook
    start = 'run = start_run(cfg, data, engine="ignite", init=init'
    cell = next(c for c in nb.cells if start in c.source)
    line = next(line for line in cell.source.splitlines() if start in line)
    cell.source = cell.source.replace(line, line + '\n    run.optimizer.param_groups[0]["lr"] *= 1.2  # the drift to detect')
    run_notebook(nb, tiny_env(tiny_base, runs))
    drifted = {(e, i): RunRecord(runs, "demo", e, i).history for e in ("plain", "ignite") for i in INITS}
    with pytest.raises(AssertionError, match="ignite / .*differs from the plain loop"):
        assert_engines_agree(drifted)


def test_engines_agree_in_mixed_precision_and_channels_last(tmp_path):
    """The autocast and channels_last paths of every engine, run on the CPU. fp16 is asked for: on the CPU
    Lightning runs it as bf16, so every engine must do the same or the engines stop agreeing."""
    env = dict(tiny_env(tmp_path), TL_PRECISION="fp16", TL_CHANNELS_LAST="1")
    for name in ENGINE_NOTEBOOKS.values():
        run_notebook(name, env)
    runs = {(e, i): RunRecord(tmp_path / "runs", "demo", e, i) for e in ENGINE_NOTEBOOKS for i in INITS}
    assert {r.meta.precision for r in runs.values()} == {"bf16"}
    table = assert_engines_agree({k: r.history for k, r in runs.items()})
    assert table["agrees"].all()


def one_cycle_rates(max_lr: float, steps: int, at: list[int]) -> list[float]:
    """torch's OneCycleLR rate after ``at`` steps (of ``steps`` in all), from a scheduler of its own."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps)
    rates = []
    for step in range(max(at) + 1):
        if step in at:
            rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_engines_agree_on_the_variations_two_stages_discriminative_rates_one_cycle_and_clipping(variations_runs):
    table = assert_engines_agree({k: r.history for k, r in variations_runs.items()})
    assert table["agrees"].all()
    meta = variations_runs[("plain", "variations")].meta
    steps = meta.steps_per_epoch
    assert [s["trainable"] for s in meta.stages] == ["head", "layer4"] and meta.schedule == "onecycle"
    assert meta.clip_grad_norm == 1.0
    assert meta.block_lrs == pytest.approx({"layer4": 5e-5, "head": 1e-4})  # lr 1e-3 x 0.1, halving per block
    for (engine, _), record in variations_runs.items():
        h = record.history
        assert list(h["stage"]) == [1, 2], engine
        # the head's rate at each epoch's start is torch's OneCycleLR after that many per-batch steps, per stage
        expected = one_cycle_rates(1e-3, steps, [0]) + one_cycle_rates(1e-4, steps, [0])
        assert list(h["lr"]) == pytest.approx(expected, rel=1e-9), engine