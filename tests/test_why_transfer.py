"""Notebook 08's pieces: the training subsets of the curve, the probes behind the feature pictures, and the curve's
resume. The notebook itself runs in the executed suite (tests/test_lessons.py)."""
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.config import load_config
from common.data.datasets import prepare_data, train_subset
from common.data.split import Manifest
from common.results import why_transfer
from common.results.records import RunRecord
from common.results.wording import describe_data_curve
from common.results.why_transfer import head_curve, knn_accuracy, ladder_sizes, linear_probe, recipe_curve


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    base = tmp_path_factory.mktemp("why")
    cfg = load_config(budget="smoke", dataset="demo", weights="random", image_size=32, batch_size=8, epochs=1,
                      demo_images_per_class=12, progress=False, data_dir=base / "data", runs_dir=base / "runs")
    return cfg, prepare_data(cfg)


def train_files(subset):
    return subset.manifest.files("train")


def test_subsets_are_stratified_nested_within_a_repeat_reproducible_and_saved(setting, tmp_path):
    cfg, data = setting
    sizes = ladder_sizes(data)
    assert sizes == [1, 2, 5]  # 8 or 9 training images per class at 12 per class: 10 is too many
    classes = len(data.class_names)
    for repeat in range(3):
        subsets = [train_subset(data, k, repeat, tmp_path, cfg.seed) for k in sizes]
        for k, subset in zip(sizes, subsets):
            files = train_files(subset)
            assert (files["label"].value_counts().reindex(range(classes)) == k).all()  # exactly k of every class
            assert len(subset.datasets["train"]) == k * classes
            for split in ("validation", "test"):  # untouched
                assert subset.datasets[split] is data.datasets[split]
            assert set(files["path"]) <= set(data.manifest.files("train")["path"])
            assert Manifest.load(subset.manifest_path).fingerprint == subset.fingerprint  # saved, and loads back
        for smaller, larger in zip(subsets, subsets[1:]):
            assert set(train_files(smaller)["path"]) < set(train_files(larger)["path"])  # nested
    again = train_subset(data, 2, 1, tmp_path, cfg.seed)
    assert train_files(again)["path"].tolist() == train_files(train_subset(data, 2, 1, tmp_path, cfg.seed))["path"].tolist()
    draws = {tuple(sorted(train_files(train_subset(data, 2, r, tmp_path, cfg.seed))["path"])) for r in range(3)}
    assert len(draws) == 3  # each repeat draws its own subset
    with pytest.raises(ValueError, match="has fewer: use at most"):
        train_subset(data, 50, 0, tmp_path, cfg.seed)


def blobs(classes=5, per_class=40, dims=64, seed=0, spread=0.1):
    """Features that separate the classes by construction: a distinct centre per class, a little noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)) * 3
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + rng.normal(size=(len(labels), dims)) * spread).astype(np.float32), labels


def test_the_probes_are_scikit_learns_on_the_same_features():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(120, 32)), rng.integers(0, 4, 120)
    train, test = (x[:80], y[:80]), (x[80:], y[80:])
    expected = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cg", max_iter=2000)).fit(*train).score(*test)
    assert linear_probe(train, test) == pytest.approx(expected, abs=0)
    assert knn_accuracy(train, test) == KNeighborsClassifier(5, metric="cosine").fit(*train).score(*test)
    assert knn_accuracy(train, test, k=1) == KNeighborsClassifier(1, metric="cosine").fit(*train).score(*test)
    assert knn_accuracy((x[:3], y[:3]), test) == KNeighborsClassifier(3, metric="cosine").fit(x[:3], y[:3]).score(*test)


def test_the_probes_read_separable_classes_and_find_nothing_in_shuffled_labels():
    x, y = blobs(seed=2)
    order = np.random.default_rng(3).permutation(len(y))
    x, y = x[order], y[order]
    train, test = (x[:100], y[:100]), (x[100:], y[100:])
    assert linear_probe(train, test) > 0.95 and knn_accuracy(train, test) > 0.95
    shuffled = np.random.default_rng(4).permutation(train[1])
    chance = 1 / 5
    scores = [linear_probe((train[0], shuffled), test), knn_accuracy((train[0], shuffled), test)]
    assert all(abs(s - chance) < 0.2 for s in scores), scores  # 100 test images: chance plus noise


def fake_features(data, dims=16):
    """Per split, features that follow the labels (so the probe has something to find), in dataset order."""
    out = {}
    for split, ds in data.datasets.items():
        labels = np.asarray(ds.labels)
        rng = np.random.default_rng(len(labels))
        out[split] = (np.eye(len(data.class_names), dims)[labels] * 3 + rng.normal(size=(len(labels), dims)), labels)
    return out


def test_the_head_curve_resumes_after_a_kill_from_the_points_it_has(setting, tmp_path, monkeypatch):
    cfg, data = setting
    features = {"ImageNet": fake_features(data), "random": fake_features(data, dims=8)}
    whole = head_curve(features, cfg, data, tmp_path / "whole", [1, 2])
    assert len(whole) == 2 * 2 * 3 and whole["test_acc"].between(0, 1).all()
    calls, kill_at = [], [5]

    def killed_after_five(train, test):
        if len(calls) in kill_at:
            raise KeyboardInterrupt  # a kill between two points
        calls.append(1)
        return linear_probe(train, test)

    monkeypatch.setattr(why_transfer, "linear_probe", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        head_curve(features, cfg, data, tmp_path / "cut", [1, 2])
    calls.clear(), kill_at.clear()
    resumed = head_curve(features, cfg, data, tmp_path / "cut", [1, 2])
    assert len(calls) == len(whole) - 5  # only the points not yet made
    pd.testing.assert_frame_equal(resumed, whole)
    saved = sorted((tmp_path / "cut" / data.source.name / "head-curve").glob("*.json"))
    assert len(saved) == len(whole) and json.loads(saved[0].read_text())["split"]
    calls.clear()
    head_curve(features, cfg.replace(image_size=48), data, tmp_path / "cut", [1])  # other settings: made again
    assert len(calls) == 2 * 3


def test_the_recipe_curve_keeps_finished_runs_without_their_weights(setting, tmp_path, monkeypatch):
    cfg, data = setting
    trained = []
    train = why_transfer.loop.train

    def killed_after_three(cfg, data, init, name=None):
        if len(trained) == 3:
            raise KeyboardInterrupt
        trained.append(name)
        return train(cfg, data, init, name=name)

    monkeypatch.setattr(why_transfer.loop, "train", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        recipe_curve(cfg, data, tmp_path, [1], repeats=2)
    record = RunRecord(tmp_path, data.source.name, "plain", "transfer-1-per-class-0")
    assert record.complete and not record.best.exists() and not record.last.exists()  # numbers kept, weights gone
    monkeypatch.setattr(why_transfer.loop, "train", train)
    curve = recipe_curve(cfg, data, tmp_path, [1], repeats=2)
    assert len(curve) == 4 and set(curve["way"]) == {"recipe (layer4), transfer", "recipe, scratch"}
    assert curve.loc[0, "test_acc"] == record.meta.test_acc  # the run finished before the kill: read back
    batch = RunRecord(tmp_path, data.source.name, "plain", "scratch-1-per-class-1").meta.config["batch_size"]
    assert batch == len(data.class_names)  # at most the subset: one image per class


def test_the_curve_words_name_where_the_lead_is_large_and_where_it_is_within_the_spread():
    rows = [dict(way=way, per_class=k, repeat=r, test_acc=acc + 0.01 * r)
            for way, accs in (("head on ImageNet features", {1: 0.6, 10: 0.9}), ("head on random features", {1: 0.2, 10: 0.88}))
            for k, acc in accs.items() for r in range(3)]
    words = describe_data_curve(pd.DataFrame(rows), random_weights=False)
    assert words == ["Head on cached features: transfer's lead is largest at 1 image(s) per class (+40 points), "
                     "smallest at 10 (+2 points); at 10 image(s) per class it is within the subsets' own spread."]
    assert "chance and spread" in describe_data_curve(pd.DataFrame(rows), random_weights=True)[-1]
    trained_once = [dict(row, way=row["way"].replace("head on ImageNet features", "recipe (layer4), transfer")
                         .replace("head on random features", "recipe, scratch")) for row in rows if row["per_class"] == 1]
    assert describe_data_curve(pd.DataFrame(trained_once), random_weights=False)[0] == (
        "Trained networks: transfer's lead is +40 points at 1 image(s) per class, the one size trained; larger than the "
        "subsets' own spread.")
    twins = [dict(row, way="head on random features") for row in rows if row["way"] == "head on ImageNet features"]
    level = describe_data_curve(pd.DataFrame([dict(way=w, per_class=1, repeat=0, test_acc=acc) for w, acc in
                                              (("recipe (layer4), transfer", 0.502), ("recipe, scratch", 0.5))]), random_weights=True)
    assert level[0].startswith("Trained networks: transfer's lead is 0 points at 1 image(s) per class")
    same = describe_data_curve(pd.DataFrame([r for r in rows if r["way"] == "head on ImageNet features"] + twins), random_weights=True)
    assert same[0] == ("Head on cached features: the two rows are equal at every size and subset: offline they are one network. "
                       "Its test accuracy goes from 61% at 1 to 91% at 10 image(s) per class.")
    at_chance = describe_data_curve(pd.DataFrame([dict(way=w, per_class=1, repeat=r, test_acc=acc) for r in range(3) for w, acc in
                                                  (("recipe (layer4), transfer", 1 / 6), ("recipe, scratch", 0.18))]),
                                    random_weights=True, chance=1 / 6)
    assert at_chance[0].startswith("Trained networks: both stayed at chance (17%) at every size trained: 1 image(s) per class")
    assert len(at_chance) == 1  # no lead was stated, so no sentence on what leads mean offline
    alike = describe_data_curve(pd.DataFrame([dict(way=w, per_class=1, repeat=r, test_acc=0.5) for r in range(3) for w in
                                              ("recipe (layer4), transfer", "recipe, scratch")]), random_weights=True, chance=1 / 6)
    assert alike == ["Trained networks: the two rows are equal at every size and subset: no lead either way."]


def test_the_feature_score_words_say_what_random_weights_show_and_why_standardised_random_features_score():
    from common.results.wording import describe_feature_scores
    scores = pd.DataFrame({"linear probe": [0.49, 0.49, 0.46, 0.75], "5 nearest neighbours": [0.36, 0.36, 0.36, 0.72]},
                          index=["random init", "ImageNet", "fine-tuned", "from scratch"])
    words = describe_feature_scores(scores, chance=1 / 6, random_weights=True, same_network=True, transfer_collapsed=True)
    assert words[0] == "Chance is 17%. The best linear probe reads 75% off the features of the network 'from scratch'; the lowest, 46% ('fine-tuned')."
    assert "here the very same one: those two rows are equal" in words[1] and "cannot show what pretraining gives" in words[1]
    assert "no paradox" in words[2]
    assert words[3].startswith("The random features score 49% here") and "standardises each feature first" in words[3]
    learned = describe_feature_scores(scores, chance=1 / 6, random_weights=True, same_network=True)
    assert not any("random features score" in w for w in learned)  # 01's transfer run did not fall back on one class
    near_chance = scores.assign(**{"linear probe": [0.2, 0.2, 0.3, 0.75]})
    assert not any("random features score" in w for w in describe_feature_scores(near_chance, 1 / 6, True, True, True))
    real = describe_feature_scores(scores.assign(**{"linear probe": [0.3, 0.9, 0.95, 0.6]}), 1 / 6, False, False)
    assert real[1] == "The ImageNet features, before any training on these images, give a probe +60 points against random ones: what pretraining brings before fine-tuning starts."


def test_the_feature_maps_give_every_class_its_own_hue():
    import matplotlib.colors as mcolors
    from common.results.plots import plot_feature_maps
    points = {"PCA": {"random init": np.random.default_rng(0).normal(size=(10, 2))}}
    fig = plot_feature_maps(points, np.arange(10), [f"class {i}" for i in range(10)])
    colours = {mcolors.to_hex(h.get_color()) for h in fig.legends[0].legend_handles}
    assert len(colours) == 10 and colours == {mcolors.to_hex(c) for c in plt.get_cmap("tab10").colors}


def test_the_data_curve_draws_identical_ways_once_and_a_way_trained_at_one_size_as_a_marker_with_its_range():
    from common.results.plots import identical_ways, plot_data_curve
    head = [dict(way="head on ImageNet features", per_class=k, repeat=r, test_acc=0.2 * k + 0.01 * r)
            for k in (1, 2, 5) for r in range(3)]
    twins = [dict(row, way="head on random features") for row in head]
    trained = [dict(way=way, per_class=1, repeat=r, test_acc=acc + 0.05 * r)
               for way, acc in (("recipe (layer4), transfer", 0.4), ("recipe, scratch", 0.3)) for r in range(3)]
    curve = pd.DataFrame(head + twins + trained)
    assert [ways for ways, _ in identical_ways(curve)] == [
        ["head on ImageNet features", "head on random features"], ["recipe (layer4), transfer"], ["recipe, scratch"]]
    apart = pd.DataFrame(head + [dict(row, test_acc=row["test_acc"] / 2) for row in twins])
    assert len(identical_ways(apart)) == 2

    ax = plot_data_curve(curve, chance=0.1).axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[0] == "head on ImageNet features\n= head on random features\n(identical: drawn once)"
    assert len(ax.get_lines()) >= 1 and "head on random features" not in labels
    bars = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    assert len(bars) == 2  # transfer and scratch: one marker each, with a bar from the lowest subset to the highest
    xs = [bar.lines[0].get_xdata()[0] for bar in bars]
    assert xs[0] < 1 < xs[1]  # side by side around their size, not on top of each other
    lows, highs = zip(*[(seg[0][1], seg[1][1]) for bar in bars for seg in bar.lines[2][0].get_segments()])
    assert np.allclose(lows, [0.4, 0.3]) and np.allclose(highs, [0.5, 0.4])
    equal = [dict(row, test_acc=0.1) for row in trained]  # three equal subsets: their mean is 0.1 plus a rounding step
    plot_data_curve(pd.DataFrame(head + equal))
    plt.close("all")


def test_a_feature_map_frames_its_bulk_and_says_how_many_outliers_it_leaves_out():
    from common.results.plots import plot_feature_maps
    rng = np.random.default_rng(0)
    bulk = rng.normal(size=(102, 2))
    spiky = np.vstack([bulk[:100], [[80.0, 0.0], [0.0, -90.0]]])  # two far outliers, as PCA of raw features gives
    fig = plot_feature_maps({"PCA": {"calm": bulk, "spiky": spiky}}, np.arange(102) % 3, ["a", "b", "c"])
    calm, spiky_ax = fig.axes[:2]
    assert [t.get_text() for t in calm.texts] == [] and calm.get_xlim()[1] > bulk[:, 0].max()  # nothing left out
    assert [t.get_text() for t in spiky_ax.texts] == ["2 off the panel"]
    assert spiky_ax.get_xlim()[1] < 10 and spiky_ax.get_ylim()[0] > -10  # the bulk fills the panel
    plt.close(fig)


def test_notebook_08_says_what_its_offline_run_can_and_cannot_show(executed_suite):
    text = "".join("".join(o.get("text", "")) for cell in executed_suite["08_why_transfer_works.ipynb"].cells
                   for o in cell.get("outputs", []))
    assert "the same weights as the random init: one network, its features computed once" in text  # random weights
    assert "this run cannot show what pretraining gives" in text
    assert "the two rows are equal at every size and subset: offline they are one network" in text  # the head pair
    # the trained pair: a lead explained as chance, or no lead at all (both at chance, or the same numbers)
    assert any(words in text for words in ("these leads are chance and spread, not transfer", "so this pair shows nothing here",
                                           "Trained networks: the two rows are equal at every size and subset: no lead"))
