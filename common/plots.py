"""Plots: the figures of the notebooks, with one colour and order for transfer and scratch across the suite."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

INIT_COLOURS = {"transfer": "#1f77b4", "scratch": "#ff7f0e"}
ENGINE_MARKERS = {"plain": "o", "ignite": "s", "lightning": "^"}


def save_figure(fig: plt.Figure, folder: Path, name: str) -> Path:
    """Save ``fig`` as ``folder/name.png`` (folder created) and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def label_text(*metas) -> str:
    """The caption every figure carries: dataset, budget and every fallback the runs took."""
    fallbacks = sorted({f for meta in metas for f in meta.fallbacks})
    text = f"dataset: {metas[0].dataset} | budget: {metas[0].budget}"
    if fallbacks:
        text += " | FALLBACK: " + "; ".join(fallbacks)
    return text


def show_samples(dataset, class_names: list[str], per_class: int = 4, size: float = 1.6) -> plt.Figure:
    """A grid of raw images (not normalised): one row per class, with labels."""
    by_class: dict[int, list[str]] = {}
    for path, label in zip(dataset.paths, dataset.labels):
        by_class.setdefault(label, []).append(path)
    rows = len(class_names)
    fig, axes = plt.subplots(rows, per_class, figsize=(per_class * size, rows * size), squeeze=False)
    for label, name in enumerate(class_names):
        for j, ax in enumerate(axes[label]):
            ax.axis("off")
            files = by_class.get(label, [])
            if j < len(files):
                with Image.open(dataset.root / files[j]) as img:
                    ax.imshow(img.convert("RGB"))
            if j == 0:
                ax.set_title(name, fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def show_augmentations(dataset, index: int, epochs: int = 5, size: float = 1.8) -> plt.Figure:
    """One training image on its way to the model: the decoded square (decoded once, what the cache
    keeps), then what the augmentation makes of it in successive epochs, un-normalised for display."""
    normalise = dataset.transform.augment.transforms[-1]
    mean, std = (np.asarray(v).reshape(3, 1, 1) for v in (normalise.mean, normalise.std))
    views = [dataset.decoded(index).numpy() / 255.0]
    views += [dataset[epoch * len(dataset) + index][0].numpy() * std + mean for epoch in range(epochs)]
    titles = ["decoded (kept)"] + [f"epoch {epoch + 1}" for epoch in range(epochs)]
    fig, axes = plt.subplots(1, len(views), figsize=(len(views) * size, size * 1.15), squeeze=False)
    for ax, view, title in zip(axes[0], views, titles):
        ax.imshow(np.clip(view.transpose(1, 2, 0), 0, 1))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return fig


def plot_counts(counts: pd.DataFrame) -> plt.Figure:
    """Images per class, stacked by split."""
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(counts)), 3))
    counts.plot.bar(stacked=True, ax=ax)
    ax.set_ylabel("images")
    ax.set_xlabel("")
    ax.set_title("Images per class and split")
    fig.tight_layout()
    return fig


def plot_history(histories: dict[tuple[str, str], pd.DataFrame], caption: str = "") -> plt.Figure:
    """Loss and accuracy per epoch, train dashed and validation solid, one colour per
    initialisation and one marker per engine. Keys are (engine, init)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for (engine, init), h in histories.items():
        style = dict(color=INIT_COLOURS.get(init), marker=ENGINE_MARKERS.get(engine), markersize=4)
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            ax.plot(h["epoch"], h[f"train_{metric}"], linestyle="--", alpha=0.6, **style)
            ax.plot(h["epoch"], h[f"val_{metric}"], linestyle="-", label=f"{engine} / {init}", **style)
    ax_loss.set(title="Loss (dashed: train, solid: validation)", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy (dashed: train, solid: validation)", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    if caption:
        fig.suptitle(caption, fontsize=9, y=1.02)
    fig.tight_layout()
    return fig


def plot_trainable(summary: dict[str, int]) -> plt.Figure:
    """Trainable parameters per block of the model (log scale)."""
    blocks = {k.removeprefix("trainable_"): v for k, v in summary.items() if k.startswith("trainable_")}
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.barh(list(blocks), [max(v, 1) for v in blocks.values()], color="#2ca02c")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale; 1 means none)")
    for i, v in enumerate(blocks.values()):
        ax.text(max(v, 1), i, f" {v:,}", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def image_grid(paths: list[Path], titles: list[str], cols: int = 6, size: float = 2.0) -> plt.Figure:
    """Images with a title each (used for misclassified examples)."""
    rows = max(1, int(np.ceil(len(paths) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * (size + 0.4)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, title in zip(axes.flat, paths, titles):
        with Image.open(path) as img:
            ax.imshow(img.convert("RGB"))
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def plot_epoch_times(histories: dict[tuple[str, str], pd.DataFrame], caption: str = "") -> plt.Figure:
    """Every epoch's wall time per (engine, init), as points over a box: the spread, not just a mean."""
    keys = list(histories)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(keys)), 3.4))
    data = [histories[k]["epoch_seconds"].to_numpy() for k in keys]
    ax.boxplot(data, widths=0.5, showfliers=False)
    for i, (k, values) in enumerate(zip(keys, data), start=1):
        ax.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values,
                   color=INIT_COLOURS.get(k[1]), marker=ENGINE_MARKERS.get(k[0]), zorder=3, s=18)
    ax.set_xticks(range(1, len(keys) + 1), [f"{e}\n{i}" for e, i in keys], fontsize=8)
    ax.set_ylabel("seconds per epoch")
    ax.set_title("Epoch wall time (train + validation)")
    ax.grid(axis="y", alpha=0.3)
    if caption:
        fig.suptitle(caption, fontsize=9, y=1.02)
    fig.tight_layout()
    return fig


def plot_confusions(matrices: dict[str, pd.DataFrame], caption: str = "") -> plt.Figure:
    """Row-normalised confusion matrices side by side; cell values written only while legible."""
    import seaborn as sns

    n = len(next(iter(matrices.values())))
    side = min(14, max(4.5, 0.32 * n))
    fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices), side * 0.9), squeeze=False)
    for ax, (title, cm) in zip(axes[0], matrices.items()):
        sns.heatmap(cm, ax=ax, vmin=0, vmax=1, cmap="Blues", square=True, cbar=False,
                    annot=n <= 20, fmt=".2f", annot_kws={"fontsize": 7},
                    xticklabels=True, yticklabels=True)
        ax.set_title(title)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(labelsize=max(4, min(9, 220 // n)))
    if caption:
        fig.suptitle(caption + " | rows normalised per true class", fontsize=9, y=1.0)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_count(per_class: pd.DataFrame, caption: str = "") -> plt.Figure:
    """Per-class test accuracy against the number of training images of that class, per initialisation."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for init, part in per_class.groupby("init"):
        ax.scatter(part["train_images"], part["accuracy"], label=init, color=INIT_COLOURS.get(init), alpha=0.8)
    ax.set(xlabel="training images of the class", ylabel="test accuracy (recall)", ylim=(-0.02, 1.02),
           title="Per-class accuracy against class size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if caption:
        fig.suptitle(caption, fontsize=9, y=1.02)
    fig.tight_layout()
    return fig
