"""Why transfer works: notebook 08's cells marked ``#| export`` (feature probes, the accuracy-against-data curve).

Generated: edit the notebook, not this file. The tests check its probes against scikit-learn's and its curve's resume.
"""
from __future__ import annotations

from common.model.resnet import build_model
from common.results.records import RunRecord
from common.runtime import seed_everything
from common.use.predict import load_model


def four_networks(cfg, data):
    """The networks whose features are compared, by name."""
    classes = len(data.class_names)
    seed_everything(cfg.seed)
    random_init, _ = build_model(classes, "scratch", dropout=cfg.dropout)
    seed_everything(cfg.seed)  # the same draw: with random "ImageNet" weights, the same network
    imagenet, _ = build_model(classes, "transfer", cfg.weights, cfg.dropout, cfg.data_dir / "weights")
    trained = {init: load_model(RunRecord(cfg.runs_dir, data.source.name, "plain", init))[0] for init in ("transfer", "scratch")}
    return {"random init": random_init, "ImageNet": imagenet, "fine-tuned": trained["transfer"],
            "from scratch": trained["scratch"]}


import torch

from common.train.features import extract_features, without_augmentation


def split_features(model, data, device, splits=("train", "validation", "test")):
    """The pooled features and labels of each of `splits`, as NumPy arrays."""
    model.to(device)
    out = {}
    for split, dataset in without_augmentation(data).items():
        if split in splits:
            x, y = extract_features(model, dataset, device)
            out[split] = (x.cpu().numpy(), y.cpu().numpy())
    return out


def same_weights(a, b):
    """Whether two networks hold the very same parameters and buffers."""
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def linear_probe(train, test):
    """Accuracy on `test` of a logistic regression fitted on `train`, each (features, labels)."""
    # newton-cg: the same optimum as the default lbfgs (the problem is convex) in about a dozen steps where lbfgs
    # took hundreds on 2048 features: 0.1 s instead of 3.5 s per probe on 2 CPU cores
    probe = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cg", max_iter=2000))
    return float(probe.fit(*train).score(*test))


def knn_accuracy(train, test, k=5):
    """Accuracy on `test` of a vote among each image's `k` nearest `train` images (cosine distance)."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train[1])), metric="cosine")
    return float(knn.fit(*train).score(*test))


import contextlib
import io

import pandas as pd

from common.data.datasets import train_subset
from common.io import read_or_make
from common.train import loop

LADDER = (1, 2, 5, 10, 20, 50)  # training images per class
REPEATS = 3  # subsets per size


def ladder_sizes(data):
    """The sizes of LADDER that every class's training split has."""
    return [k for k in LADDER if k <= data.manifest.counts()["train"].min()]


def head_curve(features, cfg, data, folder, sizes, repeats=REPEATS):
    """Test accuracy of the linear probe on each feature set's cached features, per size and subset."""
    folder = folder / data.source.name
    position = {path: i for i, path in enumerate(data.datasets["train"].paths)}  # a training image's row of features
    rows = []
    for name, f in features.items():
        x, y = f["train"]
        for k in sizes:
            for repeat in range(repeats):
                subset = train_subset(data, k, repeat, folder / "subsets", cfg.seed)
                picked = [position[path] for path in subset.datasets["train"].paths]
                point = dict(way=f"head on {name} features", per_class=k, repeat=repeat, split=subset.fingerprint,
                             image_size=cfg.image_size, weights=cfg.weights)
                # read back when saved with these settings, else fitted and saved: a rerun resumes
                rows.append(read_or_make(folder / "head-curve" / f"{name}-{k}-per-class-{repeat}.json", point,
                                         lambda: dict(test_acc=linear_probe((x[picked], y[picked]), f["test"]))))
    return pd.DataFrame(rows)


def recipe_curve(cfg, data, folder, sizes, repeats=REPEATS):
    """Test accuracy of the recipe (transfer) and of scratch trained on each subset; one line per subset."""
    rows = []
    for k in sizes:
        for repeat in range(repeats):
            subset = train_subset(data, k, repeat, folder / data.source.name / "subsets", cfg.seed)
            small = cfg.replace(runs_dir=folder, batch_size=min(cfg.batch_size, len(subset.datasets["train"])), progress=False)
            accuracy = {}
            for init in ("transfer", "scratch"):
                name = f"{init}-{k}-per-class-{repeat}"
                with contextlib.redirect_stdout(io.StringIO()):  # its epoch lines: one line per subset below
                    meta = loop.train(small, subset, init, name=name)  # a finished run's record is kept
                RunRecord(folder, data.source.name, "plain", name).drop_weights()
                accuracy[init] = meta.test_acc
            rows += [dict(way="recipe (layer4), transfer", per_class=k, repeat=repeat, test_acc=accuracy["transfer"]),
                     dict(way="recipe, scratch", per_class=k, repeat=repeat, test_acc=accuracy["scratch"])]
            print(f"{k} per class, subset {repeat + 1}: test accuracy transfer {accuracy['transfer']:.3f}, "
                  f"scratch {accuracy['scratch']:.3f} ({meta.epochs_run} epochs, {meta.steps_per_epoch} step(s) each)")
    return pd.DataFrame(rows)
