"""Records like those a GPU makes, through every notebook that reads records: a run trained under bf16
autocast (the reduced precision of an A100, L4 or H100; bf16 autocast runs on the CPU) on a dataset whose
classes are named by numbers (folders 0, 1, 2, 001, 2019, NA). 01 trains, then 04, 05 and 06 read it."""
from __future__ import annotations

import pytest
import torch
from conftest import RECIPE_CELL, notebook_until, run_notebook, tiny_env
from test_lessons import NOISE, _texts

from common.data.demo import make_demo_dataset
from common.use.predict import load_model
from common.use.reproduce import TOLERANCE, Reproduction, check_reproduction, reproduce_test
from common.results.records import INITS, RunRecord

CLASSES = ("0", "1", "2", "001", "2019", "NA")
READERS = ("04_compare.ipynb", "05_how_much_to_unfreeze.ipynb", "06_use_the_model.ipynb")


@pytest.fixture(scope="session")
def bf16_numbered(tmp_path_factory):
    base = tmp_path_factory.mktemp("bf16-numbers")
    root = make_demo_dataset(base / "numbers", images_per_class=12, image_size=48, seed=5, classes=CLASSES)
    env = dict(tiny_env(base), TL_DATASET=str(root), TL_PRECISION="bf16")
    run_notebook(notebook_until("01_plain_pytorch.ipynb", RECIPE_CELL), env)  # the records; its variations run in bf16
    executed = {name: run_notebook(name, env) for name in READERS}             # in test_engines' mixed precision test
    return executed, {init: RunRecord(base / "runs", root.name, "plain", init) for init in INITS}


def test_the_record_was_made_in_bf16_with_classes_named_by_numbers(bf16_numbered):
    _, records = bf16_numbered
    for record in records.values():
        assert record.meta.precision == "bf16" and sorted(record.meta.class_names) == sorted(CLASSES)
        assert set(record.predictions["true"]) <= set(CLASSES)


@pytest.mark.parametrize("name", READERS)
def test_every_reader_of_the_record_runs_clean(name, bf16_numbered):
    executed, _ = bf16_numbered
    problems = [f"cell {i} ({kind}): {text[:300]!r}" for i, cell in enumerate(executed[name].cells)
                for kind, text in _texts(cell) if kind in ("stderr", "error") or NOISE.search(text)]
    assert not problems, "\n".join(problems)


def test_06_reproduces_the_bf16_record_like_with_like(bf16_numbered):
    executed, _ = bf16_numbered
    printed = "".join(text for cell in executed["06_use_the_model.ipynb"].cells for kind, text in _texts(cell))
    for init in INITS:
        assert f"{init}: " in printed
    assert printed.count("predictions reproduced: ") == 2 and printed.count("made on the CPU in bf16, recomputed the same way") == 2


def test_the_bf16_tolerance_passes_the_model_in_fp32_and_fails_other_weights(bf16_numbered):
    """What 06 does with a GPU's bf16 record on a machine without that GPU: fp32 on the CPU, within TOLERANCE."""
    _, records = bf16_numbered
    record = records["transfer"]
    plan = Reproduction(torch.device("cpu"), "fp32", TOLERANCE["bf16"], "bf16 against fp32")
    model, info = load_model(record)
    assert check_reproduction(record.predictions, reproduce_test(model, info, record.predictions, plan), plan).ok
    with torch.no_grad():
        model.classifier.weight.add_(torch.randn_like(model.classifier.weight))
    assert not check_reproduction(record.predictions, reproduce_test(model, info, record.predictions, plan), plan).ok


def test_the_tolerance_widens_to_what_the_model_itself_moves_between_precisions(bf16_numbered):
    _, records = bf16_numbered
    record = records["scratch"]
    model, info = load_model(record)
    tight = Reproduction(torch.device("cpu"), "fp32", 1e-5, "bf16 against fp32")
    widened = tight.for_model(model, info, record.predictions)
    assert widened.tolerance > 1e-5 and "move by up to" in widened.reason  # bf16 moves a model by more than 1e-5
    assert check_reproduction(record.predictions, reproduce_test(model, info, record.predictions, widened), widened).ok
    exact = Reproduction.plan(record.meta, torch.device("cpu"))
    assert exact.for_model(model, info, record.predictions) == exact  # the same computation stays exact
