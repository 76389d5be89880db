import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from common.data import datasets as D
from common.data import split as SP
from common.data.demo import CLASSES, make_demo_dataset


def _digest(root):
    return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(root.rglob("*.jpg")))).hexdigest()


def test_demo_dataset_is_deterministic_and_idempotent(tmp_path, flat_root):
    again = make_demo_dataset(tmp_path / "again", images_per_class=20, image_size=48, seed=3)
    assert _digest(again) == _digest(flat_root)
    other = make_demo_dataset(tmp_path / "other", images_per_class=20, image_size=48, seed=4)
    assert _digest(other) != _digest(flat_root)
    mtime = (again / "dataset.json").stat().st_mtime_ns
    make_demo_dataset(tmp_path / "again", images_per_class=20, image_size=48, seed=3)
    assert (again / "dataset.json").stat().st_mtime_ns == mtime  # not redrawn
    assert sorted(p.name for p in again.iterdir() if p.is_dir()) == sorted(CLASSES)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_layouts_are_detected(flat_root, presplit_root, tmp_path, copy_of):
    assert SP.detect_layout(flat_root).kind == "flat"
    pre = SP.detect_layout(presplit_root)
    assert pre.kind == "presplit" and set(pre.split_dirs) == {"train", "validation", "test"}
    # Kaggle ships everything under one wrapper folder ("Vegetable Images/"), with "val" as an alias here
    wrapped = copy_of(presplit_root)
    (wrapped / "validation").rename(wrapped / "val")
    outer = tmp_path / "outer"
    outer.mkdir()
    wrapped.rename(outer / "Vegetable Images")
    found = SP.detect_layout(outer)
    assert found.kind == "presplit" and found.root.name == "Vegetable Images"
    assert found.split_dirs["validation"].name == "val"


def test_bad_folders_give_clear_errors(tmp_path, copy_of, presplit_root, flat_root):
    with pytest.raises(SP.DatasetError, match="does not exist"):
        SP.detect_layout(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SP.DatasetError, match="no class folders"):
        SP.detect_layout(empty)
    flat = copy_of(flat_root)
    (flat / "zucchini").mkdir()
    with pytest.raises(SP.DatasetError, match="zucchini.*no readable images"):
        SP.build_split(flat, seed=0)


def test_mismatched_split_classes_are_refused(tmp_path, presplit_root):
    import shutil
    pre = shutil.copytree(presplit_root, tmp_path / "pre")
    shutil.rmtree(pre / "validation" / "tomato")
    with pytest.raises(SP.DatasetError, match="differ from train.*tomato"):
        SP.build_split(pre, seed=0)


def test_flat_split_is_stratified_reproducible_and_disjoint(flat_root):
    a = SP.build_split(flat_root, seed=1)
    b = SP.build_split(flat_root, seed=1)
    c = SP.build_split(flat_root, seed=2)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert not a.frame.equals(c.frame)
    a.check_disjoint()
    assert a.frame["path"].is_unique and len(a.frame) == 20 * len(CLASSES)
    per_class = a.frame.groupby(["split", "class_name"]).size().unstack()
    for split, expected in (("train", 14), ("validation", 3), ("test", 3)):
        assert per_class.loc[split].between(expected - 1, expected + 1).all(), per_class


def test_presplit_keeps_the_given_split(presplit_root, tmp_path):
    m = SP.build_split(presplit_root, seed=0).frame
    assert (m["path"].str.split("/").str[0] == m["split"]).all()
    import shutil
    no_test = shutil.copytree(presplit_root, tmp_path / "no_test")
    shutil.rmtree(no_test / "test")
    m2 = SP.build_split(no_test, seed=0).frame
    assert set(m2["split"]) == {"train", "validation", "test"}
    assert (m2.loc[m2["split"] == "test", "path"].str.startswith("train/")).all()  # test carved from train
    assert (m2.loc[m2["split"] == "validation", "path"].str.startswith("validation/")).all()


def test_check_disjoint_catches_overlap(flat_root):
    m = SP.build_split(flat_root, seed=0).frame
    leaked = pd.concat([m, m.iloc[:1].assign(split="test")])
    with pytest.raises(SP.DatasetError, match="more than one split"):
        SP.check_disjoint(leaked)


def test_manifest_is_saved_reused_and_rebuilt_when_settings_change(flat_root, tmp_path):
    path = tmp_path / "splits" / "toy-seed0.csv"
    first = SP.load_or_make_split(flat_root, path, seed=0)
    stamp = path.stat().st_mtime_ns
    again = SP.load_or_make_split(flat_root, path, seed=0)
    assert path.stat().st_mtime_ns == stamp and again.fingerprint == first.fingerprint
    assert again.root == first.root and again.classes == first.classes and again.layout == "flat"
    pd.testing.assert_frame_equal(again.frame, first.frame)
    changed = SP.load_or_make_split(flat_root, path, seed=0, val_fraction=0.3)
    assert changed.fingerprint != first.fingerprint


def test_limit_per_class_is_seeded(flat_root):
    m = SP.build_split(flat_root, seed=0)
    small = m.limit_per_class("train", 5, seed=0)
    assert small.files("train").groupby("label").size().max() == 5
    assert small.frame[small.frame["split"] != "train"].equals(m.frame[m.frame["split"] != "train"])
    pd.testing.assert_frame_equal(small.frame, m.limit_per_class("train", 5, seed=0).frame)
    assert small.counts().loc[:, "train"].max() == 5 and small.fingerprint != m.fingerprint


def _train_loader(manifest, root, seed, workers=0):
    ds = D.make_datasets(manifest, D.build_transforms(32, [0.5] * 3, [0.25] * 3), seed=seed)
    return D.make_loaders(ds, batch_size=8, num_workers=workers, seed=seed)["train"]


def test_batch_order_and_augmentation_depend_on_the_seed_alone(flat_root):
    m = SP.build_split(flat_root, seed=0)

    def first_batch(seed, workers=0, global_seed=5):
        torch.manual_seed(global_seed)  # must not matter
        return next(iter(_train_loader(m, flat_root, seed, workers)))

    x1, y1 = first_batch(0)
    x2, y2 = first_batch(0, global_seed=99)
    x3, y3 = first_batch(1)
    xw, yw = first_batch(0, workers=1)
    assert x1.shape == (8, 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1, xw) and torch.equal(y1, yw)  # worker processes change nothing
    assert not torch.equal(y1, y3)  # another seed, another order


def test_each_epoch_reshuffles_and_unused_iterators_do_not_shift_it(flat_root):
    m = SP.build_split(flat_root, seed=0)
    a, b = _train_loader(m, flat_root, 0), _train_loader(m, flat_root, 0)
    epochs_a = [[y.tolist() for _, y in a] for _ in range(2)]
    iter(b)  # an engine creating an iterator it never uses
    epochs_b = [[y.tolist() for _, y in b] for _ in range(2)]
    assert epochs_a == epochs_b
    assert epochs_a[0] != epochs_a[1]
    xs = [next(iter(loader))[0] for loader in (_train_loader(m, flat_root, 0),) for _ in range(2)]
    assert not torch.equal(xs[0], xs[1])  # new epoch, new augmentation


def test_datasets_convert_to_rgb_and_iterate_once(flat_root, tmp_path):
    from PIL import Image
    Image.new("L", (40, 30), 128).save(tmp_path / "gray.png")
    ds = D.ImageListDataset(tmp_path, ["gray.png"], [0], transform=None)
    img, label = ds[0]
    assert img.mode == "RGB" and label == 0
    assert len(list(ds)) == 1  # a loop over a dataset ends, although keys past the end carry the epoch


# ---------------------------------------------------------------- the decode-once cache


def _datasets(root, seed=0, size=32):
    manifest = SP.build_split(root, seed=0)
    return D.make_datasets(manifest, D.build_transforms(size, [0.5] * 3, [0.25] * 3), seed=seed)


def test_cached_images_give_exactly_what_decoding_gives(flat_root):
    decoded, cached = _datasets(flat_root), _datasets(flat_root)
    for ds in cached.values():
        ds.cache_in_memory(num_workers=0, progress=False)
    for split, ds in decoded.items():
        assert cached[split].cache.dtype == torch.uint8 and cached[split].cache.shape == (len(ds), 3, 32, 32)
        for key in (0, 5, len(ds) + 5, 3 * len(ds) + 1):  # other epochs, other augmentations
            (x1, y1), (x2, y2) = ds[key], cached[split][key]
            assert torch.equal(x1, x2) and y1 == y2, (split, key)
    # Through the loaders, with a worker process that reads the parent's cache.
    loaders = [D.make_loaders(d, batch_size=8, num_workers=1, seed=0)["train"] for d in (decoded, cached)]
    for _ in range(2):
        for (x1, y1), (x2, y2) in zip(*loaders, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_a_cached_dataset_never_reads_the_disk_again(flat_root, copy_of):
    root = copy_of(flat_root)
    ds = _datasets(root)["train"]
    ds.cache_in_memory(num_workers=1, progress=False)
    expected = [ds[i][0] for i in range(len(ds))]
    images = [f for f in root.rglob("*") if f.is_file()]
    assert len(images) >= len(ds)
    for image in images:
        image.unlink()
    assert all(torch.equal(ds[i][0], expected[i]) for i in range(len(ds)))
    ds.cache = None
    with pytest.raises(FileNotFoundError):
        ds[0]


def test_only_two_stage_datasets_can_be_cached(tmp_path):
    from PIL import Image
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    with pytest.raises(TypeError, match="DecodeThenAugment"):
        D.ImageListDataset(tmp_path, ["a.png"], [0]).cache_in_memory()


def test_the_cache_setting_is_obeyed(tmp_path, monkeypatch, capsys):
    from common.config import load_config

    def cached(setting, fits=True):
        monkeypatch.setattr(D, "cache_fits", lambda datasets: fits)
        cfg = load_config(budget="smoke", dataset="demo", weights="random", demo_images_per_class=6,
                          cache_images=setting, num_workers=0, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs")
        data = D.prepare_data(cfg)
        D.cache_decoded_images(cfg, data)
        return [ds.cache is not None for ds in data.datasets.values()]

    assert cached(False) == [False] * 3
    assert cached(True, fits=False) == [True] * 3  # asked for explicitly: done even where auto would not
    assert cached(None) == [True] * 3
    capsys.readouterr()
    assert cached("auto", fits=False) == [False] * 3  # the word works too
    assert "more than a third of the free memory" in capsys.readouterr().out


def test_the_cache_fits_only_in_a_share_of_memory(flat_root, monkeypatch):
    import psutil
    datasets = _datasets(flat_root)
    need = sum(ds.cache_bytes() for ds in datasets.values())
    assert need == sum(len(ds) for ds in datasets.values()) * 3 * 32 * 32
    assert 0 < D.available_memory() <= psutil.virtual_memory().total
    monkeypatch.setattr(D, "available_memory", lambda: 3 * need)
    assert D.cache_fits(datasets)
    monkeypatch.setattr(D, "available_memory", lambda: 3 * need - 3)
    assert not D.cache_fits(datasets)


def test_the_augmentation_figure_shows_the_decoded_square_and_each_epoch(flat_root):
    import matplotlib
    matplotlib.use("Agg")
    from common.results.plots import show_augmentations
    fig = show_augmentations(_datasets(flat_root, seed=1)["train"], index=2, epochs=3)
    shown = [ax.images[0].get_array() for ax in fig.axes]
    assert [ax.get_title() for ax in fig.axes] == ["decoded (kept)", "epoch 1", "epoch 2", "epoch 3"]
    assert all(a.shape == (32, 32, 3) and 0 <= a.min() and a.max() <= 1 for a in shown)
    assert not np.allclose(shown[1], shown[2])  # a new crop every epoch


def test_the_cache_reaches_spawned_workers(flat_root, copy_of):
    """Windows and macOS start workers with spawn: the cached dataset is pickled to them (its tensor
    through shared memory) and must give the same batches as in the main process, without the files."""
    from torch.utils.data import DataLoader
    root = copy_of(flat_root)
    ds = _datasets(root)["validation"]
    ds.cache_in_memory(num_workers=0, progress=False)
    for image in [f for f in root.rglob("*") if f.is_file()]:
        image.unlink()
    here = [x for x, _ in DataLoader(ds, batch_size=8)]
    spawned = [x for x, _ in DataLoader(ds, batch_size=8, num_workers=1, multiprocessing_context="spawn")]
    assert len(here) == len(spawned) and all(torch.equal(a, b) for a, b in zip(here, spawned))
