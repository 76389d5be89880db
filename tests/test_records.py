"""The run record: one type names every file, the metadata is typed and versioned, writes are atomic."""
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_meta

from common.results import records as R

ROOT = Path(__file__).resolve().parent.parent


def test_history_rows_are_one_type_with_every_column(tmp_path):
    record = R.RunRecord(tmp_path, "demo", "plain", "transfer")
    record.folder.mkdir(parents=True)
    with pytest.raises(TypeError, match="val_acc"):
        R.EpochRow(epoch=1, stage=1, train_loss=1.0, train_acc=0.5, val_loss=1.1, lr=1e-3, epoch_seconds=2.0)
    rows = [R.EpochRow(epoch=1, stage=1, train_loss=1.0, train_acc=0.5, val_loss=1.1, val_acc=0.4, lr=1e-3, epoch_seconds=2.0)]
    df = record.write_history(rows)
    assert list(df.columns) == R.HISTORY_COLUMNS and list(record.history.columns) == R.HISTORY_COLUMNS
    assert record.history.iloc[0].to_dict() == pytest.approx(dataclasses.asdict(rows[0]))
    assert list(record.write_history([]).columns) == R.HISTORY_COLUMNS  # a run stopped before its first epoch
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_history_key_is_spelled_outside_the_row_type():
    """Engines, loops and readers build EpochRow: a key such as epoch_seconds= is written in records.py alone."""
    places = [*ROOT.glob("common/**/*.py"), *ROOT.glob("notebooks/*.ipynb")]
    spelled = sorted(p.name for p in places if re.search(r'\bdict\(epoch=|["\']epoch_seconds["\']\s*:', p.read_text()))
    assert spelled == []


def test_predictions_keep_topk_in_order():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    df = R.predictions_frame(["a.jpg", "b.jpg"], np.array([2, 0]), probs, ["x", "y", "z"], k=5)
    assert list(df["pred"]) == ["y", "x"] and list(df["true"]) == ["z", "x"]
    assert list(df.loc[0, ["top1_class", "top2_class", "top3_class"]]) == ["y", "z", "x"]
    assert df.loc[0, "top1_prob"] == pytest.approx(0.7) and "top4_class" not in df


def test_missing_record_names_the_notebook(tmp_path):
    with pytest.raises(R.MissingRunError, match="02_ignite.ipynb"):
        R.RunRecord(tmp_path, "demo", "ignite", "transfer").history


def test_meta_round_trips_and_an_old_record_says_what_to_do(tmp_path):
    record = R.RunRecord(tmp_path, "toy", "plain", "transfer")
    record.write_history([])  # an empty history is still a history
    record.write_predictions(R.predictions_frame([], np.zeros(0, int), np.zeros((0, 3)), ["a", "b", "c"], 3))
    record.write_meta(make_meta(top_k=3))
    again = R.RunRecord(tmp_path, "toy", "plain", "transfer")
    assert again.meta == make_meta(top_k=3) and again.meta.train_counts().to_dict() == {"a": 5, "b": 7, "c": 9}
    old = json.loads(record.meta_file.read_text())
    del old["schema"], old["top_k"]
    old["test_top5"] = 1.0
    record.meta_file.write_text(json.dumps(old))
    with pytest.raises(R.OldRecordError, match="another version of the suite.*01_plain_pytorch.ipynb"):
        R.RunRecord(tmp_path, "toy", "plain", "transfer").meta


def test_records_are_found_for_every_dataset_without_a_list(tmp_path):
    for dataset in ("caltech-like", "my-photos"):
        record = R.RunRecord(tmp_path, dataset, "ignite", "scratch")
        record.write_history([])
        record.write_predictions(R.predictions_frame([], np.zeros(0, int), np.zeros((0, 2)), ["a", "b"], 2))
        record.write_meta(make_meta(dataset=dataset, engine="ignite", init="scratch"))
    assert set(R.datasets_with_records(tmp_path)) == {"caltech-like", "my-photos"}
    assert R.pick_dataset(tmp_path, "caltech-like") == "caltech-like"
    assert R.pick_dataset(tmp_path, "not-trained") in {"caltech-like", "my-photos"}
    assert list(R.find_records(tmp_path, "my-photos")) == [("ignite", "scratch")]
    with pytest.raises(R.MissingRunError, match="01_plain_pytorch.ipynb"):
        R.pick_dataset(tmp_path / "empty")


def test_state_round_trip_is_weights_only(tmp_path):
    import torch
    record = R.RunRecord(tmp_path, "demo", "plain", "transfer")
    record.folder.mkdir(parents=True)
    record.save_best({"w": torch.ones(2)})
    assert torch.equal(record.load_best()["w"], torch.ones(2))
    torch.save({"obj": object()}, record.best)
    with pytest.raises(Exception):
        record.load_best()


RECORD_FILES = ("best.pt", "last.pt", "resume.pt", "last.ckpt", "history.csv", "predictions.csv", "meta.json", "calibration.json")


def test_no_file_name_of_the_record_is_spelled_outside_its_module():
    """records.py owns the record's file names: notebooks, common/, the benchmark and the tests use RunRecord."""
    owner = ROOT / "common" / "results" / "records.py"
    places = [*ROOT.glob("common/**/*.py"), *ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("benchmarks/*.py"),
              *ROOT.glob("tests/*.py")]
    pattern = re.compile("|".join(re.escape(f'"{n}') for n in RECORD_FILES) + r'|/ "figures"|"figures" /')
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in places if p != owner and p != Path(__file__)
                 for m in pattern.finditer(p.read_text())]
    assert owner.read_text().count('"best.pt"') == 1 and not offenders, offenders


def test_the_engine_to_notebook_map_is_spelled_once():
    """Which notebook writes each engine's records lives in records.ENGINE_NOTEBOOKS alone."""
    places = [*ROOT.glob("common/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/*.py"), ROOT / "scripts" / "gpu_check.sh"]
    names = [f'"{n}.ipynb"' for n in ("01_plain_pytorch", "02_ignite", "03_lightning")]
    spelled = [p.relative_to(ROOT).as_posix() for p in places if all(n in p.read_text() for n in names)]
    assert spelled == ["common/results/records.py"]


def test_dataframe_attrs_are_not_used():
    places = [*ROOT.glob("common/**/*.py"), *ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("tests/*.py")]
    assert not [p.name for p in places if p != Path(__file__) and ".attrs" in p.read_text()]


def test_the_record_counts_the_images_training_used_and_keeps_top_k(tmp_path):
    """Caps that bind: the record's per-class counts are those trained (not the whole split), and
    top_k=3 reaches the predictions, the metric and the summary."""
    from common.results.compare import summary_table
    from common.config import load_config
    from common.data.datasets import prepare_data
    from common.data.split import Manifest
    from common.train.run import finish_run, start_run

    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, demo_images_per_class=12,
                      train_per_class=4, eval_per_class=2, top_k=3, data_dir=tmp_path / "data",
                      runs_dir=tmp_path / "runs")
    data = prepare_data(cfg)
    whole = Manifest.load(data.full_manifest_path)
    assert whole.counts()["train"].min() > 4  # the caps bind
    run = start_run(cfg, data, "plain", "scratch")
    row = R.EpochRow(epoch=1, stage=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=1e-3, epoch_seconds=1.0)
    finish_run(run, [row], run.model.state_dict())
    record = R.RunRecord(cfg.runs_dir, "demo", "plain", "scratch")
    assert record.meta.train_counts().eq(4).all() and len(record.meta.train_counts()) == 6
    assert Manifest.load(record.meta.split_manifest).counts()["train"].eq(4).all()
    assert record.meta.top_k == 3 and "top3_class" in record.predictions and "top4_class" not in record.predictions
    assert "test top-3 accuracy" in summary_table({("plain", "scratch"): record}).columns


NUMBER_LIKE = ["0", "6", "001", "2019", "NA", "None"]  # class folders people name by numbers, and pandas' "missing" words


def test_class_names_that_look_like_numbers_stay_strings_in_every_table(tmp_path):
    from common.data.demo import make_demo_dataset
    from common.data.split import Manifest, build_split

    probs = np.eye(len(NUMBER_LIKE))[[2, 4, 5, 0]] * 0.9 + 0.1 / len(NUMBER_LIKE)
    record = R.RunRecord(tmp_path, "demo", "plain", "transfer")
    record.folder.mkdir(parents=True)
    files = ["001/a.jpg", "2019/b.jpg", "None/c.jpg", "0/d.jpg"]
    record.write_predictions(R.predictions_frame(files, np.array([2, 3, 5, 0]), probs, NUMBER_LIKE, k=3))
    back = record.predictions
    assert list(back["true"]) == ["001", "2019", "None", "0"] and list(back["pred"]) == ["001", "NA", "None", "0"]
    assert list(back["file"]) == files and back["top1_prob"].dtype == float
    assert [NUMBER_LIKE.index(t) for t in back["true"]] == [2, 3, 5, 0]  # what 06 does with them

    root = make_demo_dataset(tmp_path / "numbers", images_per_class=6, image_size=32, classes=tuple(NUMBER_LIKE))
    manifest = build_split(root, seed=0)
    again = Manifest.load(manifest.save(tmp_path / "split.csv"))
    assert sorted(again.frame["class_name"].unique()) == sorted(NUMBER_LIKE) and again.frame["label"].dtype.kind == "i"
    assert again.fingerprint == manifest.fingerprint
