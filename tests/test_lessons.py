"""The notebooks as a learner reads them: clean outputs, the lessons' own checks, exercises that work as written,
and one concept table for the three engines."""
from __future__ import annotations

import json
import re

import nbformat
import numpy as np
import pytest
from conftest import ENGINE_NOTEBOOKS, NOTEBOOKS, PROGRESS_ON, TINY, things_to_try

from common.train import loop
from common.config import load_config
from common.data.datasets import prepare_data
from common.results.records import INITS, RunRecord

COMPARED = ["epoch", "stage", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]

ROOT = NOTEBOOKS.parent
ALL = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
# What must never reach a learner's eyes in an executed notebook.
NOISE = re.compile(r"Traceback|Exception ignored|[A-Za-z]*Warning\b|warn\(|GPU available|💡|Tip:|litlogger|"
                   r"litmodels|`Trainer.fit` stopped|\d+%\||Downloading:")


WIDGET = "application/vnd.jupyter.widget-view+json"


def _texts(cell, widgets: bool = True) -> list[tuple[str, str]]:
    """(kind, text) of every output of a cell (``widgets=False``: but for live widgets, a progress bar's)."""
    out = []
    for o in cell.get("outputs", []):
        if not widgets and WIDGET in o.get("data", {}):
            continue
        if o["output_type"] == "stream":
            out.append((o["name"], o["text"]))
        elif o["output_type"] == "error":
            out.append(("error", "\n".join(o["traceback"])))
        else:
            out.append((o["output_type"], str(o.get("data", {}).get("text/plain", ""))))
    return out


@pytest.mark.parametrize("name", ALL)
def test_executed_notebooks_read_clean(name, executed_suite):
    """No traceback, warning, library advert or stale progress bar in any output, nothing on stderr."""
    problems = [f"cell {i} ({kind}): {text[:300]!r}" for i, cell in enumerate(executed_suite[name].cells)
                for kind, text in _texts(cell, widgets=name not in PROGRESS_ON)
                if kind in ("stderr", "error") or NOISE.search(text)]
    assert not problems, "\n".join(problems)


def test_the_noise_check_catches_what_it_must():
    for text in ("Exception ignored in: <function _MultiProcessingDataLoaderIter.__del__>",
                 "UserWarning: something", "GPU available: False, used: False", "  0%|          | 0/6",
                 "💡 Tip: For seamless cloud uploads"):
        assert NOISE.search(text), text
    assert not NOISE.search("transfer epoch 1: train loss 1.797 acc 0.183 | val loss 1.790 acc 0.167 | 2.1 s")


def test_notebook_00_builds_the_model_in_view_and_shows_the_batchnorm_trap(executed_suite):
    text = "".join(t for cell in executed_suite["00_data_and_model.ipynb"].cells for _, t in _texts(cell))
    assert "requires_grad_(False) alone: the frozen BatchNorm statistics moved: True" in text
    assert "with the recipe: the frozen BatchNorm statistics stayed put: True" in text
    assert "same parameter names: True; same trainable counts: True; same outputs: True" in text


@pytest.mark.parametrize("name", ALL)
def test_every_notebook_has_things_to_try_that_ran(name, executed_suite):
    """The fixture pasted each snippet into a new cell at the end and ran it; here: they exist and produced output."""
    snippets = things_to_try(nbformat.read(NOTEBOOKS / name, as_version=4))
    assert snippets, f"{name} has no runnable things to try"
    executed = executed_suite[name].cells[-len(snippets):]
    assert [c.source for c in executed] == snippets and all(c.outputs or "save_figure" in c.source for c in executed)
    assert not re.search(r"TL_[A-Z_]+=", "".join(snippets)), "exercises set values in the notebook, not in the environment"


def _concept_table(text: str) -> str:
    start = text.index("| concept | plain loop (01) |")
    return text[start:text.index("\n\n", start)].strip()


def test_one_concept_table_after_the_three_engines():
    """The table that maps each concept to each engine is read once all three are known: in notebook 03 (the
    README holds the same); 01 and 02 point to it."""
    readme = _concept_table((ROOT / "README.md").read_text())
    rows = [line.split("|")[1].strip() for line in readme.splitlines()[2:]]
    assert rows == ["data", "device", "precision and scaler", "step", "evaluation", "metrics", "schedule",
                    "learning-rate finder", "gradient clipping", "two stages", "several devices", "checkpointing", "early stopping", "resume",
                    "progress bar", "logging", "timing"]
    for engine, name in ENGINE_NOTEBOOKS.items():
        cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
        text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown") + "\n\n"
        if engine == "lightning":
            assert _concept_table(text) == readme, name
        else:
            assert "| concept |" not in text, name


# What the recipe must not mention: it is the loop alone; these come with the variations after it.
MACHINERY = re.compile(r"\b(devices|processes|multiprocessing|ranks?|world|stages?|head_epochs|schedules?|scheduler|"
                       r"one-cycle|onecycle|cosine|clip\w*|early.stopping|EarlyStopping|block_lr_ratio|"
                       r"DistributedDataParallel|sync_dist|all_reduce)\b", re.I)


@pytest.mark.parametrize("name", ENGINE_NOTEBOOKS.values())
def test_the_recipe_comes_first_and_mentions_none_of_the_machinery(name):
    """Every cell from the title to the "## Variations" heading, but for the set-up cell: no devices, processes,
    ranks, stages, schedules, clipping or early stopping (the variations after it show those)."""
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    texts = ["".join(c["source"]) for c in cells]
    end = next(i for i, text in enumerate(texts) if re.search(r"^## Variations$", text, re.M))
    setup = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    # Allowed: Lightning's own names, the DataModule hook's argument and the Trainer told to use one device (its
    # default would take every GPU).
    allowed = re.compile(r"def setup\(self, stage\)|devices=1\b")
    recipe = [(i, allowed.sub("", text.split("## Variations")[0])) for i, text in enumerate(texts[:end + 1]) if i != setup]
    found = [(i, m.group(0)) for i, text in recipe for m in MACHINERY.finditer(text)]
    assert not found, found
    assert any("train(cfg, data, init)" in text for _, text in recipe), "the recipe does not train"


def test_the_machinery_check_catches_what_it_must():
    for text in ("run.scheduler.step()", "with several devices", "enter_stage(run, stage)", "clip_grad_norm_(",
                 "EarlyStopping(patience=2)", "rank 0 writes", "world=2"):
        assert MACHINERY.search(text), text
    assert not MACHINERY.search("the model's train() is called once per epoch, on the device")


def test_a_recipe_run_refuses_what_only_the_variations_do(tiny_base):
    from common.train.run import start_run
    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, demo_images_per_class=12,
                      data_dir=tiny_base / "data", runs_dir=tiny_base / "refused")
    data = prepare_data(cfg)
    for change in (dict(schedule="onecycle"), dict(clip_grad_norm=1.0), dict(head_epochs=1), dict(early_stopping=1),
                   dict(devices="2")):
        with pytest.raises(ValueError, match=f"{next(iter(change))}=.*the recipe's loop does not do this.*Variations"):
            start_run(cfg.replace(**change), data, "plain", "transfer", recipe=True)
    assert start_run(cfg.replace(block_lr_ratio=0.5), data, "plain", "transfer", recipe=True).optimizer  # the optimizer does it


@pytest.mark.parametrize("name", ALL)
def test_every_notebook_ends_with_questions_whose_answers_are_one_click_away(name):
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    text = next("".join(c["source"]) for c in cells if "".join(c["source"]).startswith("## Check your understanding"))
    questions = re.findall(r"^\*\*\d\. .+\?\*\*$", text, flags=re.M)
    answers = re.findall(r"<details><summary>Answer</summary>\n\n.+?\n\n</details>", text, flags=re.S)
    assert 3 <= len(questions) == len(answers) <= 5, name
    assert cells.index(next(c for c in cells if "".join(c["source"]).startswith("## Check your understanding"))) == len(cells) - 2


@pytest.mark.parametrize("name", ALL)
def test_the_setup_cell_is_collapsed_with_a_title(name):
    cell = next(c for c in json.loads((NOTEBOOKS / name).read_text())["cells"] if c["cell_type"] == "code")
    assert cell["source"][0].startswith("#@title ") and cell["metadata"].get("cellView") == "form"
    assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True


def _exporter():
    import importlib.util
    spec = importlib.util.spec_from_file_location("export_lessons", ROOT / "scripts" / "export_lessons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_taught_loop_is_common_loop_and_drift_is_caught(tmp_path, monkeypatch):
    """One source: common/train/loop.py is notebook 01's cells marked for export, and a change to either is caught."""
    import shutil
    exporter = _exporter()
    assert exporter.main(check=True) == 0
    for notebook, (module, _) in exporter.EXPORTS.items():
        for path in (notebook, module):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / path, tmp_path / path)
    monkeypatch.setattr(exporter, "ROOT", tmp_path)
    taught = tmp_path / "notebooks" / "01_plain_pytorch.ipynb"
    changed = "run.net.train()  # dropout on"
    assert taught.read_text().count(changed) == 1
    taught.write_text(taught.read_text().replace(changed, "run.net.eval()  # dropout on"))
    assert exporter.main(check=True) == 1  # the lesson changed, the module did not
    assert exporter.main(check=False) == 0 and "run.net.eval()" in (tmp_path / "common/train/loop.py").read_text()
    (tmp_path / "common/train/loop.py").write_text((ROOT / "common/train/loop.py").read_text())
    assert exporter.main(check=True) == 1  # the module changed by hand


def test_common_loop_computes_what_notebook_01s_loop_computes(engine_runs, variations_runs, tiny_base, tmp_path, monkeypatch):
    """``common.train.loop`` runs as a library module what notebook 01 ran in its kernel: the same history."""
    reference = engine_runs
    for name, value in TINY.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(data_dir=tiny_base / "data", runs_dir=tmp_path / "runs")
    data = prepare_data(cfg)
    for init in INITS:
        loop.train(cfg, data, init)
        ours, theirs = RunRecord(cfg.runs_dir, "demo", "plain", init).history, reference[("plain", init)].history
        np.testing.assert_allclose(ours[COMPARED].to_numpy(), theirs[COMPARED].to_numpy(), rtol=1e-6)
    # and the variations' run, with the loop's final versions of update, fit and train
    variations = cfg.replace(head_epochs=1, trainable="layer4", block_lr_ratio=0.5, schedule="onecycle", clip_grad_norm=1.0)
    loop.train(variations, data, "transfer", name="variations")
    ours, theirs = RunRecord(cfg.runs_dir, "demo", "plain", "variations").history, variations_runs[("plain", "variations")].history
    np.testing.assert_allclose(ours[COMPARED].to_numpy(), theirs[COMPARED].to_numpy(), rtol=1e-6)
