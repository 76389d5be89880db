"""Several devices: each engine trains with 2 processes (gloo on the CPU), each with half of every batch, and
computes what 1 process computes with the whole batch; a killed 2-process run resumes; where several processes
cannot work, one device is used, loudly."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch
from conftest import ENGINE_NOTEBOOKS, NOTEBOOKS, run_notebook, tiny_env
from test_resume import notebook_as_script

from common import runtime
from common.results.compare import assert_engines_agree
from common.config import load_config
from common.data.datasets import EpochShuffleSampler, RankShard, prepare_data
from common.results.records import INITS, RunRecord
from common.train.run import start_run

COMPARED = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
# Only the head trains (no BatchNorm in training mode: on the CPU torch cannot synchronise it across processes)
# and no dropout (each process draws its own masks): then 2 processes must compute what 1 computes.
EXACT = dict(trainable="head", dropout=0.0)


def train_cell(runs, **settings) -> str:
    """A cell for the end of an engine notebook: its final `train` (the variations') with ``settings``, records in ``runs``."""
    given = "".join(f"{name}={value!r}, " for name, value in settings.items())
    return f"for init in INITS:\n    train(load_config({given}runs_dir={str(runs)!r}), data, init)\n"


@pytest.fixture(scope="session")
def two_processes_executed(tiny_base):
    """The engine notebooks with cells appended, progress bars on (as in Jupyter): 2 processes with the EXACT
    settings, 2 processes with the recipe's own (layer4 and dropout), and in 01 first the EXACT settings on one
    process. The executed notebooks, the indices of their 2-process cells, and what each kernel process wrote to
    its own stderr."""
    import nbformat
    executed = {}
    for engine, name in ENGINE_NOTEBOOKS.items():
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        if engine == "plain":
            nb.cells.append(nbformat.v4.new_code_cell(train_cell(tiny_base / "parallel-1", **EXACT)))
        two = [len(nb.cells), len(nb.cells) + 1]
        nb.cells.append(nbformat.v4.new_code_cell(train_cell(tiny_base / "parallel-2", devices=2, **EXACT)))
        nb.cells.append(nbformat.v4.new_code_cell(train_cell(tiny_base / "parallel-2-recipe", devices=2)))
        log = tiny_base / f"parallel-2-{engine}-kernel.log"
        with log.open("w") as kernel_log:
            env = dict(tiny_env(tiny_base, tiny_base / f"parallel-{engine}-notebook"), TL_PROGRESS="on")
            nb = run_notebook(nb, env, kernel_log)
        executed[engine] = (nb, two, log.read_text())
    return executed


@pytest.fixture(scope="session")
def one_process(tiny_base, two_processes_executed):
    return {init: RunRecord(tiny_base / "parallel-1", "demo", "plain", init).check_complete() for init in INITS}


@pytest.fixture(scope="session")
def two_processes(tiny_base, two_processes_executed):
    runs = tiny_base / "parallel-2"
    return {(e, i): RunRecord(runs, "demo", e, i).check_complete() for e in ENGINE_NOTEBOOKS for i in INITS}


@pytest.mark.parametrize("engine", list(ENGINE_NOTEBOOKS))
def test_forked_processes_draw_no_progress_widgets(engine, two_processes_executed):
    """A forked process cannot talk to the notebook's frontend: ipykernel drops what it sends ("attempted to send
    message from fork"), so its bars would be blank lines. The notebook's own process may draw (decoding the images)."""
    nb, two, kernel_log = two_processes_executed[engine]
    assert "send message from fork" not in kernel_log
    outputs = [o for i in two for o in nb.cells[i].outputs]  # the 2-process cells (the recipe above drew its bars)
    widgets = [o["data"].get("text/plain", "") for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not [w for w in widgets if "epoch" in w.lower()], widgets
    printed = "".join(o.get("text", "") for o in outputs)
    assert "transfer epoch 2:" in printed  # rank 0 still says how each epoch went


@pytest.mark.parametrize("engine", list(ENGINE_NOTEBOOKS))
def test_two_processes_with_half_batches_compute_what_one_process_computes(engine, one_process, two_processes):
    two, one = two_processes[(engine, "transfer")], one_process["transfer"]
    assert (two.meta.world, one.meta.world) == (2, 1)
    np.testing.assert_allclose(two.history[COMPARED].to_numpy(), one.history[COMPARED].to_numpy(), rtol=1e-5)
    # rank 0 evaluated the same best weights on test (to float rounding: one thread per process here, two in one)
    assert two.predictions["pred"].equals(one.predictions["pred"])
    np.testing.assert_allclose(two.predictions["top1_prob"], one.predictions["top1_prob"], atol=1e-5)


def test_the_engines_agree_with_two_processes_and_batchnorm_shows_it_ran_split(one_process, two_processes):
    assert_engines_agree({k: r.history for k, r in two_processes.items()})
    # Scratch trains BatchNorm, which normalises each process's half-batch on its own (unsynchronised on the
    # CPU): its numbers must differ from one process's. Were the two processes one in disguise, they would not.
    split, whole = two_processes[("plain", "scratch")].history, one_process["scratch"].history
    assert not np.allclose(split["train_loss"], whole["train_loss"], rtol=1e-5)


def test_the_engines_agree_on_two_processes_for_the_recipe_itself(tiny_base, two_processes_executed):
    """layer4 (its BatchNorm normalising each process's half-batch) and dropout on: every process seeds its own
    stream alike in every engine, so the three engines still compute the same numbers."""
    runs = {(e, i): RunRecord(tiny_base / "parallel-2-recipe", "demo", e, i).check_complete() for e in ENGINE_NOTEBOOKS for i in INITS}
    assert {(r.meta.world, r.meta.trainable, r.meta.config["dropout"]) for r in runs.values()} == \
        {(2, "layer4", 0.2), (2, "scratch", 0.2)}
    table = assert_engines_agree({k: r.history for k, r in runs.items()})
    assert table["agrees"].all()
    for init in INITS:
        assert len({runs[(e, init)].meta.test_acc for e in ENGINE_NOTEBOOKS}) == 1, init


def test_a_killed_two_process_run_resumes_and_leaves_no_orphans(two_processes, tiny_base, tmp_path):
    runs = tmp_path / "runs"
    env = tiny_env(tiny_base, tmp_path / "notebook-runs")
    script = tmp_path / "plain_as_script.py"
    script.write_text(notebook_as_script(ENGINE_NOTEBOOKS["plain"]) + "\n" + train_cell(runs, devices=2, **EXACT))
    marker = RunRecord(runs, "demo", "plain", "transfer").resume
    proc = subprocess.Popen([sys.executable, str(script)], cwd=NOTEBOOKS, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no resume point appeared"
        time.sleep(0.01)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2, "the run did not start two processes"
    proc.kill()  # SIGKILL to the notebook's process only: its training processes must end with it
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"orphaned training processes: {alive}"
    assert not RunRecord(runs, "demo", "plain", "transfer").history_file.exists(), "killed too late"

    done = subprocess.run([sys.executable, str(script)], cwd=NOTEBOOKS, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming" in done.stdout
    for init in INITS:
        resumed, reference = RunRecord(runs, "demo", "plain", init).history, two_processes[("plain", init)].history
        np.testing.assert_allclose(resumed[COMPARED].to_numpy(), reference[COMPARED].to_numpy(), rtol=1e-6)


def test_the_shares_of_every_batch_are_the_batches_of_one_process():
    whole = [list(range(i, i + 8)) for i in range(0, 16, 8)]
    order = [i for batch in torch.utils.data.BatchSampler(EpochShuffleSampler(21, 3), 8, True) for i in batch]
    shards = [list(RankShard(EpochShuffleSampler(21, 3), 8, rank, 2)) for rank in range(2)]
    assert [shards[0][i:i + 4] + shards[1][i:i + 4] for i in (0, 4)] == [order[b[0]:b[-1] + 1] for b in whole]
    with pytest.raises(ValueError, match="multiple of 3"):
        RankShard(EpochShuffleSampler(21, 3), 8, 0, 3)


def test_devices_resolve_to_one_loudly_where_several_processes_cannot_work(monkeypatch, capsys):
    assert runtime.resolve_devices("1") == 1 and runtime.resolve_devices("auto") == 1  # no GPU here
    assert runtime.resolve_devices("2") == 2  # gloo processes on the CPU
    monkeypatch.setattr(runtime.platform, "system", lambda: "Windows")
    assert runtime.resolve_devices("2") == 1
    assert "FALLBACK" in capsys.readouterr().out
    with pytest.raises(ValueError, match="devices"):
        load_config(devices="two")


def test_early_stopping_and_two_stages_are_refused_together():
    with pytest.raises(ValueError, match="early_stopping with head_epochs"):
        load_config(budget="smoke", epochs=3, head_epochs=1, early_stopping=1)


def test_two_stage_on_several_devices_is_refused_with_a_reason(tiny_base, tmp_path):
    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, demo_images_per_class=12,
                      epochs=2, head_epochs=1, data_dir=tiny_base / "data", runs_dir=tmp_path / "runs")
    with pytest.raises(ValueError, match="Two-stage .* several devices"):
        start_run(cfg, prepare_data(cfg), "plain", "transfer", rank=0, world=2)
