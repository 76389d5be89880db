"""Resume after a disconnect: kill a training process mid-run (SIGKILL, no clean-up), run again,
and get exactly the history of an uninterrupted run. Checkpoints cut short are never trusted."""
from __future__ import annotations

import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ENGINE_NOTEBOOKS, NOTEBOOKS, RECIPE_CELL, VARIATIONS_CELL, notebook_until, tiny_env

from common.config import load_config
from common.data.datasets import prepare_data
from common.results.records import INITS, EpochRow, RunRecord
from common.train.resume import RunProgress, read_resume_point, save_resume_point
from common.train.run import start_run

COMPARED = ["epoch", "stage", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]


def notebook_as_script(name: str, until: str) -> str:
    """The notebook's code cells up to the first one containing ``until``, as one Python program (IPython magics
    dropped)."""
    code = [cell.source for cell in notebook_until(name, until).cells if cell.cell_type == "code"]
    return "\n\n".join("\n".join(l for l in block.splitlines() if not l.startswith("%")) for block in code)


def resume_marker(runs, engine, name):
    record = RunRecord(runs, "demo", engine, name)
    return record.lightning_last if engine == "lightning" else record.resume


@pytest.mark.parametrize("stages", ["one stage", "two-stage"])
@pytest.mark.parametrize("engine", list(ENGINE_NOTEBOOKS))
def test_a_killed_run_resumes_to_the_uninterrupted_history(engine, stages, request, tiny_base, tmp_path):
    """Killed right after its first resume point, the notebook run again: for the recipe's transfer run that is
    inside its second epoch; for the variations' two-stage run (one head epoch) it is the stage boundary, so the
    resumed run must enter stage two itself and match the uninterrupted two-stage run."""
    two = stages == "two-stage"
    names = ["variations"] if two else list(INITS)
    reference_runs = request.getfixturevalue("variations_runs" if two else "engine_runs")
    runs = tmp_path / "runs"
    env = dict(tiny_env(tiny_base, runs), TL_PROGRESS="on")  # bars' code paths, as text
    script = tmp_path / f"notebook_{engine}_as_script.py"
    script.write_text(notebook_as_script(ENGINE_NOTEBOOKS[engine], VARIATIONS_CELL if two else RECIPE_CELL))
    marker = resume_marker(runs, engine, names[0])

    proc = subprocess.Popen([sys.executable, str(script)], cwd=NOTEBOOKS, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no resume point appeared"
        time.sleep(0.01)
    # Every engine's resume point appears whole (plain and Ignite rename a temporary file; Lightning
    # commits an fsspec transaction), so kill at once: the run is now inside its second epoch.
    proc.kill()  # SIGKILL: no exception handler, no clean-up
    proc.wait()
    assert not RunRecord(runs, "demo", engine, names[0]).history_file.exists(), "killed too late to test resume"

    done = subprocess.run([sys.executable, str(script)], cwd=NOTEBOOKS, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming" in done.stdout
    for name in names:
        resumed = RunRecord(runs, "demo", engine, name).history
        reference = reference_runs[(engine, name)].history
        assert len(resumed) == len(reference)
        np.testing.assert_allclose(resumed[COMPARED].to_numpy(), reference[COMPARED].to_numpy(), rtol=1e-6)


@pytest.fixture()
def tiny_run(tiny_base, tmp_path):
    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, demo_images_per_class=12,
                      data_dir=tiny_base / "data", runs_dir=tmp_path / "runs")
    return start_run(cfg, prepare_data(cfg), "plain", "transfer")


def test_a_checkpoint_cut_short_is_never_trusted(tiny_run, capsys):
    progress = RunProgress(tiny_run)
    progress.record(EpochRow(epoch=1, stage=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=1e-3, epoch_seconds=1.0))
    save_resume_point(tiny_run, progress)
    path = tiny_run.record.resume
    assert [EpochRow(**row) for row in read_resume_point(tiny_run, path)["progress"]["history"]] == progress.history
    assert not list(tiny_run.record.folder.glob(".*.tmp"))  # written through a temporary file, then renamed
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a kill mid-write of a non-atomic saver
    assert read_resume_point(tiny_run, path) is None
    assert "unreadable" in capsys.readouterr().out


def test_a_resume_point_from_other_settings_is_not_used(tiny_run, capsys):
    save_resume_point(tiny_run, RunProgress(tiny_run))
    other = start_run(load_config(**{**tiny_run.cfg.as_dict(), "lr": 0.5}), tiny_run.data, "plain", "transfer")
    assert read_resume_point(other, other.record.resume) is None
    assert "other settings" in capsys.readouterr().out
    off = start_run(load_config(**{**tiny_run.cfg.as_dict(), "resume": False}), tiny_run.data, "plain", "transfer")
    assert read_resume_point(off, off.record.resume) is None


def test_checkpoints_load_weights_only(tmp_path):
    """A checkpoint holding a pickled object (which could be code) is refused; tensors load."""
    from common.io import load_state
    torch.save({"model": {"w": torch.ones(1)}, "payload": object()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_state(tmp_path / "evil.pt")
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "plain.pt")
    assert torch.equal(load_state(tmp_path / "plain.pt")["model"]["w"], torch.ones(1))


def test_a_finished_run_keeps_each_thing_once_and_is_not_trained_again(engine_runs, tiny_base, monkeypatch, capsys):
    """After the engine notebooks: each run's folder holds its record, best and last weights, and no resume point or
    engine checkpoint (the same weights again, and the optimizer's state); the same settings find the run done,
    other settings or resume=False do not."""
    from conftest import tiny_env

    from common.train.resume import finished_run
    for (engine, init), record in engine_runs.items():
        assert record.best.is_file() and record.last.is_file() and not record.resume.exists()
        assert record.engine_checkpoints is None or not record.engine_checkpoints.exists()
        size = sum(p.stat().st_size for p in record.folder.rglob("*") if p.is_file())
        assert size <= 250 * 2 ** 20, (record.label, size)
    for name, value in tiny_env(tiny_base).items():
        if name.startswith("TL_"):
            monkeypatch.setenv(name, value)
    cfg = load_config()
    data = prepare_data(cfg)
    for (engine, init), record in engine_runs.items():
        assert finished_run(cfg, data, engine, init) == record.meta
    assert "finished earlier with these settings" in capsys.readouterr().out
    assert finished_run(load_config(lr=cfg.lr * 2), data, "plain", "transfer") is None
    assert finished_run(load_config(resume=False), data, "plain", "transfer") is None
    assert finished_run(cfg, data, "plain", "transfer", world=2) is None
