"""Plots: the figures of the notebooks, with one colour and order for transfer and scratch across the suite.

Every figure has a title and a caption (dataset, budget, and any fallback taken), so that a figure
seen on its own still says what it shows and how far to trust it.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from PIL import Image

from common.results.records import INITS

INIT_COLOURS = {"transfer": "#1f77b4", "scratch": "#ff7f0e"}
RUN_COLOURS = {"variations": "#7b3294"}  # the engine notebooks' run with every variation on
# Notebook 05's runs, by how much trains: light to dark as more of the network trains; the recipe (layer4) in
# the transfer colour, scratch in its own.
MODE_COLOURS = {"head-cached": "#6baed6", "head": "#6baed6", "layer4": "#1f77b4", "layer3": "#08519c",
                "all": "#08306b", "two-stage": "#9467bd", "scratch": "#ff7f0e"}
ENGINE_MARKERS = {"plain": "o", "ignite": "s", "lightning": "^"}
FROZEN_COLOUR, TRAINABLE_COLOUR = "#bbbbbb", "#2ca02c"
BOUNDARY_COLOUR = "#7f7f7f"


def save_figure(fig: plt.Figure, folder: Path, name: str) -> Path:
    """Save ``fig`` as ``folder/name.png`` (folder created) and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def caption_text(dataset: str, budget: str, fallbacks=()) -> str:
    """The caption every figure carries: dataset, budget and every fallback taken."""
    text = f"dataset: {dataset} | budget: {budget}"
    if fallbacks:
        text += " | FALLBACK: " + "; ".join(sorted(set(fallbacks)))
    return text


def caption_for(*metas) -> str:
    """The caption for figures made from run records (their dataset, budget and fallbacks)."""
    return caption_text(metas[0].dataset, metas[0].budget, [f for meta in metas for f in meta.fallbacks])


def finish_figure(fig: plt.Figure, title: str, caption: str) -> plt.Figure:
    """The suite's frame for a figure: its title on top, its caption (dataset, budget, fallbacks) below."""
    fig.suptitle(title, fontsize=11, y=1.0)
    fig.tight_layout()
    if caption:
        fig.text(0.5, -0.01, caption, ha="center", va="top", fontsize=8, color="#555555", wrap=True)
    return fig


def in_suite_order(keyed: dict) -> dict:
    """(engine, init)-keyed items ordered as everywhere in the suite: engines in order, transfer before scratch."""
    engines, inits = list(ENGINE_MARKERS), [*INITS[:1], *MODE_COLOURS]  # transfer, then notebook 05's runs, scratch last
    rank = lambda key: (engines.index(key[0]) if key[0] in engines else 99, inits.index(key[1]) if key[1] in inits else 99)
    return dict(sorted(keyed.items(), key=lambda item: rank(item[0])))


def show_samples(dataset, class_names: list[str], per_class: int = 4, size: float = 1.6, caption: str = "") -> plt.Figure:
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
    return finish_figure(fig, "Training images as they are on disk", caption)


def show_augmentations(dataset, index: int, epochs: int = 5, size: float = 1.8, caption: str = "") -> plt.Figure:
    """One training image on its way to the model: the decoded square (decoded once, what the cache
    keeps), then what the augmentation makes of it in successive epochs, un-normalised for display."""
    normalise = dataset.transform.augment.transforms[-1]
    mean, std = (np.asarray(v).reshape(3, 1, 1) for v in (normalise.mean, normalise.std))
    views = [dataset.decoded(index).numpy() / 255.0]
    views += [dataset[epoch * len(dataset) + index][0].numpy() * std + mean for epoch in range(epochs)]
    titles = ["decoded (kept)"] + [f"epoch {epoch + 1}" for epoch in range(epochs)]
    fig, axes = plt.subplots(1, len(views), figsize=(len(views) * size, size * 1.3), squeeze=False)
    for ax, view, title in zip(axes[0], views, titles):
        ax.imshow(np.clip(view.transpose(1, 2, 0), 0, 1))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return finish_figure(fig, "One training image: decoded once, augmented anew every epoch", caption)


def plot_counts(counts: pd.DataFrame, caption: str = "") -> plt.Figure:
    """Images per class, stacked by split."""
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(counts)), 3.2))
    counts.plot.bar(stacked=True, ax=ax, colormap="viridis")  # not blue and orange: those mean transfer and scratch
    ax.set(ylabel="images", xlabel="")
    ax.legend(title="split", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return finish_figure(fig, "Images per class and split", caption)


def plot_trainable(summary: dict[str, int], caption: str = "") -> plt.Figure:
    """Trainable and frozen parameters per block of the model, on a linear scale."""
    blocks = {name: sizes for name, sizes in summary.items()}
    names = list(blocks)
    trainable = np.array([blocks[n]["trainable"] for n in names]) / 1e6
    frozen = np.array([blocks[n]["total"] - blocks[n]["trainable"] for n in names]) / 1e6
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(names) + 1.4))
    ax.barh(names, trainable, color=TRAINABLE_COLOUR, label="trainable")
    ax.barh(names, frozen, left=trainable, color=FROZEN_COLOUR, label="frozen")
    for i, (t, f) in enumerate(zip(trainable, frozen)):
        parts = [f"{count:.2f} M {kind}" for count, kind in ((t, "trainable"), (f, "frozen")) if count > 0]
        label = ", ".join(parts) or "no parameters"
        ax.text(t + f, i, "  " + label, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("parameters (millions)")
    ax.set_xlim(0, max(trainable + frozen) * 1.6)
    ax.legend(fontsize=8, loc="lower right")
    return finish_figure(fig, "What trains: parameters per block", caption)


def plot_history(histories: dict[tuple[str, str], pd.DataFrame], caption: str = "", chance: float | None = None) -> plt.Figure:
    """Loss, accuracy and (where some run's rate changed) learning rate per epoch. Colour: run; marker: engine;
    dashed: training, solid: validation; a grey line marks chance accuracy."""
    histories = in_suite_order(histories)
    scheduled = any(h["lr"].nunique() > 1 for h in histories.values())
    fig, axes = plt.subplots(1, 3 if scheduled else 2, figsize=(14, 3.9) if scheduled else (10, 3.9))
    ax_loss, ax_acc = axes[:2]
    for (engine, name), h in histories.items():
        style = dict(color=run_colour(name), marker=ENGINE_MARKERS.get(engine), **engine_marker_style(engine))
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            ax.plot(h["epoch"], h[f"train_{metric}"], linestyle="--", alpha=0.6, **style)
            ax.plot(h["epoch"], h[f"val_{metric}"], linestyle="-", **style)
        if scheduled:
            axes[2].plot(h["epoch"], h["lr"], linestyle="-", **style)
    boundaries = mark_stage_boundaries(axes, histories)
    if chance is not None:
        ax_acc.axhline(chance, color="grey", linewidth=1, linestyle=":")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    if scheduled:
        same = len({tuple(h["lr"].round(12)) for h in histories.values()}) == 1 and len(histories) > 1
        axes[2].set(title="Learning rate, epoch start" + (" (lines overlap)" if same else ""), xlabel="epoch",
                    ylabel="learning rate (head)")
        if all((h["lr"] > 0).all() for h in histories.values()):
            axes[2].set(yscale="log", ylabel="learning rate (head, log scale)")  # rates a decade apart both show
    losses = pd.concat([h[["train_loss", "val_loss"]] for h in histories.values()]).to_numpy()
    if losses.size and np.nanmin(losses) > 0 and np.nanmax(losses) > 10 * np.nanmin(losses):
        ax_loss.set_yscale("log")  # losses far apart (a random frozen trunk's first epochs): keep the small ones readable
        ax_loss.set_ylabel("cross-entropy (log scale)")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=run_colour(i), marker=ENGINE_MARKERS.get(e), label=f"{e} / {i}", **engine_marker_style(e))
               for e, i in histories]
    handles += [Line2D([], [], color="black", linestyle="--", label="training"),
                Line2D([], [], color="black", linestyle="-", label="validation")]
    if chance is not None:
        handles.append(Line2D([], [], color="grey", linestyle=":", label=f"chance ({chance:.2f})"))
    if boundaries:
        handles.append(Line2D([], [], color=BOUNDARY_COLOUR, linestyle="-.", label="stage 2 starts (unfrozen), run's colour"))
    if len(histories) > 4:  # many runs: the legend beside the figure, not over the curves
        axes[-1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        ax_acc.legend(handles=handles, fontsize=7, loc="best")
    return finish_figure(fig, "Learning curves", caption)


def engine_marker_style(engine: str) -> dict:
    """Engines that agree draw one curve: the plain loop's markers large and hollow, Ignite's smaller and hollow,
    Lightning's small and filled, so that every engine's marker stays visible on a shared point."""
    size = {"plain": 9, "ignite": 6.5}.get(engine)
    return dict(markersize=size, markerfacecolor="none", markeredgewidth=1.2) if size else dict(markersize=4)


def run_colour(name: str, default: str | None = None) -> str | None:
    """A run's colour by its name: transfer and scratch, the variations' run, or a mode of notebook 05."""
    return INIT_COLOURS.get(name) or RUN_COLOURS.get(name) or MODE_COLOURS.get(name, default)


def stage_boundaries(history: pd.DataFrame) -> list[float]:
    """Where a history's stages meet, on the epoch axis (half-way between the two epochs)."""
    if "stage" not in history or history.empty:
        return []
    starts = history.loc[history["stage"].diff().fillna(0).ne(0), "epoch"]
    return [float(epoch) - 0.5 for epoch in starts]


def mark_stage_boundaries(axes, histories: dict[tuple[str, str], pd.DataFrame]) -> list[float]:
    """A vertical line, in the run's colour, on every axis where a history enters a new stage; the positions."""
    drawn = []
    for (engine, init), history in histories.items():
        for x in stage_boundaries(history):
            for ax in axes:
                ax.axvline(x, color=run_colour(init, BOUNDARY_COLOUR), linestyle="-.",
                           linewidth=1)
            drawn.append(x)
    return drawn


def image_grid(paths: list[Path], titles: list[str], cols: int = 6, size: float = 2.0, title: str = "",
               caption: str = "") -> plt.Figure:
    """Images with a title each (used for misclassified examples)."""
    rows = max(1, int(np.ceil(len(paths) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * (size + 0.5)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, text in zip(axes.flat, paths, titles):
        with Image.open(path) as img:
            ax.imshow(img.convert("RGB"))
        ax.set_title(text, fontsize=7)
    return finish_figure(fig, title, caption)


def plot_epoch_times(histories: dict[tuple[str, str], pd.DataFrame], caption: str = "") -> plt.Figure:
    """Every epoch's wall time per (engine, init), as points over a box: the spread, not just a mean."""
    histories = in_suite_order(histories)
    keys = list(histories)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(keys)), 3.6))
    data = [histories[k]["epoch_seconds"].to_numpy() for k in keys]
    ax.boxplot(data, widths=0.5, showfliers=False, medianprops=dict(color="black"))
    for i, (k, values) in enumerate(zip(keys, data), start=1):
        ax.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values,
                   color=INIT_COLOURS.get(k[1]), marker=ENGINE_MARKERS.get(k[0]), zorder=3, s=18)
    ax.set_xticks(range(1, len(keys) + 1), [f"{e}\n{i}" for e, i in keys], fontsize=8)
    ax.set_ylabel("seconds per epoch")
    ax.set_ylim(bottom=0)  # from zero: the ratio between runs reads from the heights
    ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], color=INIT_COLOURS[i], marker="o", linestyle="", label=i)
               for i in INITS if any(k[1] == i for k in keys)]
    handles += [Line2D([], [], color="black", label="median; box: middle half of the epochs")]
    ax.legend(handles=handles, fontsize=7, loc="best")
    return finish_figure(fig, "Epoch wall time (training and validation), every epoch", caption)


def plot_confusions(matrices: dict[str, pd.DataFrame], caption: str = "") -> plt.Figure:
    """Row-normalised confusion matrices side by side; cell values written only while legible."""
    import seaborn as sns

    n = len(next(iter(matrices.values())))
    side = min(14, max(4.5, 0.32 * n))
    fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices), side * 0.9), squeeze=False)
    for ax, (title, cm) in zip(axes[0], matrices.items()):
        sns.heatmap(cm, ax=ax, vmin=0, vmax=1, cmap="Greys", square=True, cbar=False,
                    annot=n <= 20, fmt=".2f", annot_kws={"fontsize": 7},
                    xticklabels=True, yticklabels=True)
        ax.set_title(title)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(labelsize=max(4, min(9, 220 // n)))
    return finish_figure(fig, "Confusion matrices on the test split (rows normalised per true class)", caption)


def plot_accuracy_vs_count(per_class: pd.DataFrame, caption: str = "") -> plt.Figure:
    """Per-class test accuracy against the number of training images of that class, per initialisation."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for init in [i for i in INITS if i in set(per_class["init"])]:
        part = per_class[per_class["init"] == init]
        ax.scatter(part["train_images"], part["accuracy"], label=init, color=INIT_COLOURS.get(init), alpha=0.8)
    ax.set(xlabel="training images of the class (as trained)", ylabel="test accuracy (recall)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return finish_figure(fig, "Per-class accuracy against class size", caption)


def plot_mode_tradeoffs(table: pd.DataFrame, caption: str = "", chance: float | None = None) -> plt.Figure:
    """Test accuracy against trainable parameters and against seconds per epoch, one point per run of the
    unfreezing spectrum (``common.results.compare.mode_table``), each run its own colour and marker. Both x axes are
    logarithmic: the runs span three orders of magnitude, and no run has zero of either."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    markers = dict(zip(table.index, "os^DvPXh*"))
    for ax, column, label in ((axes[0], "trainable_parameters", "trainable parameters (log scale)"),
                              (axes[1], "median_epoch_seconds", "seconds per training epoch, median (log scale)")):
        for run, row in table.iterrows():
            ax.scatter(row[column], row["test_acc"], s=70, color=MODE_COLOURS.get(run, "#333333"), marker=markers[run],
                       edgecolor="black", linewidth=0.5, alpha=0.85, zorder=3, label=run)
        if chance is not None:
            ax.axhline(chance, color="grey", linewidth=1, linestyle=":", label=f"chance ({chance:.2f})")
        ax.set(xscale="log", xlabel=label, ylabel="test accuracy", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        label_points(ax, {run: (row[column], row["test_acc"]) for run, row in table.iterrows()})
    axes[0].set_title("Accuracy against what trains")
    axes[1].set_title("Accuracy against what an epoch costs")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return finish_figure(fig, "How much to unfreeze: accuracy and cost per run", caption)


def label_points(ax, points: dict[str, tuple[float, float]], together: float = 12.0) -> None:
    """Name each point of a scatter. Points closer than ``together`` pixels share one label ("all, scratch");
    adjustText then moves the labels off each other and off the points, joining a moved label to its point by a
    thin line, so that bunched points stay legible."""
    from adjustText import adjust_text

    ax.figure.canvas.draw()  # the final limits and scales: distances in pixels are the ones drawn
    pixels = {name: ax.transData.transform(xy) for name, xy in points.items()}
    groups: list[list[str]] = []
    for name in points:
        group = next((g for g in groups if np.hypot(*(pixels[name] - pixels[g[0]])) < together), None)
        group.append(name) if group else groups.append([name])
    texts = [ax.text(*points[group[0]], ", ".join(group), fontsize=8) for group in groups]
    xs, ys = zip(*points.values())
    adjust_text(texts, x=list(xs), y=list(ys), ax=ax, expand=(1.5, 2.2), force_text=(0.6, 1.2),
                force_static=(0.6, 1.2), force_pull=(0.002, 0.002), arrowprops=dict(arrowstyle="-", color="grey", linewidth=0.5))


def plot_memory(memory: pd.DataFrame, caption: str = "") -> plt.Figure:
    """Stacked bars per mode: MiB of weights, gradients, Adam's state and saved activations (``training_memory``)."""
    parts = [("weights", "#bbbbbb"), ("gradients", "#9ecae1"), ("adam_state", "#1f77b4"), ("activations", "#ff7f0e")]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bottom = np.zeros(len(memory))
    for column, colour in parts:
        ax.bar(memory.index, memory[column], bottom=bottom, color=colour, label=column.replace("_", " "))
        bottom += memory[column].to_numpy(dtype=float)
    ax.set(ylabel="MiB during one training step", xlabel="what trains")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return finish_figure(fig, "What each mode keeps in memory while it trains", caption)


def plot_reliability(diagrams: dict[str, dict[str, pd.DataFrame]], caption: str = "") -> plt.Figure:
    """A reliability diagram per run (``diagrams``: init -> {"before": table, "after": table}, tables from
    ``common.use.trust.reliability``): each confidence bin's accuracy against its mean confidence, before and
    after temperature scaling; on the diagonal a model is exactly as sure as it is right. Marker area: images."""
    fig, axes = plt.subplots(1, len(diagrams), figsize=(3.8 * len(diagrams) + 2.0, 3.8), squeeze=False, sharey=True)
    for ax, (init, tables) in zip(axes[0], sorted(diagrams.items(), key=lambda item: INITS.index(item[0]))):
        ax.plot([0, 1], [0, 1], color=BOUNDARY_COLOUR, lw=1, ls=":", label="as sure as right")
        colour = INIT_COLOURS.get(init, "#444444")
        for when, table in tables.items():  # points, not lines: bins are separate groups of images
            hollow = when == "before"
            ax.scatter(table["confidence"], table["accuracy"], s=12 + 250 * table["images"] / table["images"].sum(),
                       facecolors="none" if hollow else colour, edgecolors=colour, linewidths=1.2, clip_on=False,
                       zorder=3, label=f"{when} temperature scaling")
        ax.set(xlim=(-0.04, 1.04), ylim=(-0.04, 1.04), xlabel="confidence in the bin\n(mean top probability)", title=init)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    # One legend, beside the last panel: inside, it would cover bins at 0 or 1.
    legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.03, 1.0), title="marker area: images in the bin",
                       title_fontsize=7, frameon=False)
    for handle in legend.legend_handles:
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([40])  # one size and a neutral colour in the legend: there it names the style, not a bin
            handle.set_edgecolor("#444444")
            if handle.get_facecolor().size and handle.get_facecolor()[0][3] > 0:
                handle.set_facecolor("#444444")
    axes[0][0].set_ylabel("accuracy in the bin")
    return finish_figure(fig, "Reliability on the test split: below the diagonal means overconfident", caption)


def plot_curves_per_run(histories: dict[str, pd.DataFrame], caption: str = "", chance: float | None = None) -> plt.Figure:
    """Small multiples: one panel per run (``histories``: name -> history), all on the same axes, with its training
    (dashed) and validation (solid) accuracy, chance, and where a two-stage run unfreezes."""
    names = list(histories)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, names):
        h, colour = histories[name], MODE_COLOURS.get(name, INIT_COLOURS.get(name, "#333333"))
        ax.plot(h["epoch"], h["train_acc"], color=colour, linestyle="--", marker="o", markersize=3, label="training")
        ax.plot(h["epoch"], h["val_acc"], color=colour, linestyle="-", marker="o", markersize=3, label="validation")
        for boundary in stage_boundaries(h):
            ax.axvline(boundary, color=BOUNDARY_COLOUR, linestyle="-.", linewidth=1)
        if chance is not None:
            ax.axhline(chance, color="grey", linewidth=1, linestyle=":")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    handles = [Line2D([], [], color="black", linestyle="--", label="training"),
               Line2D([], [], color="black", linestyle="-", label="validation")]
    if chance is not None:
        handles.append(Line2D([], [], color="grey", linestyle=":", label=f"chance ({chance:.2f})"))
    if any(stage_boundaries(h) for h in histories.values()):
        handles.append(Line2D([], [], color=BOUNDARY_COLOUR, linestyle="-.", label="stage 2 starts (unfrozen)"))
    spare = axes.flat[len(names):]
    if len(spare):  # an empty panel holds the legend, clear of the curves and the caption
        spare[0].legend(handles=handles, fontsize=8, loc="center")
    else:
        axes.flat[0].legend(handles=handles, fontsize=7, loc="upper left")
    return finish_figure(fig, "Accuracy per epoch, one panel per run", caption)


def plot_feature_maps(views: dict[str, dict[str, np.ndarray]], labels: np.ndarray, class_names: list[str],
                      caption: str = "") -> plt.Figure:
    """Notebook 08: one row per 2-D view (``views``: view name -> network -> (N, 2) points), one column per network,
    each point an image coloured by its class (a qualitative colour map: the classes have no order)."""
    names = list(next(iter(views.values())))
    fig, axes = plt.subplots(len(views), len(names), figsize=(2.7 * len(names), 2.6 * len(views)), squeeze=False)
    # tab20 pairs a dark and a light shade of each hue, which read as one colour in small dots: tab10 while it has enough.
    palette = "tab10" if len(class_names) <= 10 else "tab20"
    colours = plt.get_cmap(palette)(np.arange(len(class_names)) % plt.get_cmap(palette).N)
    for row, (view, points) in zip(axes, views.items()):
        for ax, name in zip(row, names):
            ax.scatter(points[name][:, 0], points[name][:, 1], c=colours[labels], s=9, linewidths=0)
            ax.set_xticks([]), ax.set_yticks([])
            frame_bulk(ax, points[name])
            ax.set_title(name, fontsize=9)
        row[0].set_ylabel(view, fontsize=9)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[i], label=c) for i, c in enumerate(class_names)]
    fig.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return finish_figure(fig, "Validation images in each network's feature space, coloured by class", caption)


def frame_bulk(ax, points: np.ndarray, share: float = 0.96) -> None:
    """Where a few far outliers (PCA of features has them) would squash a scatter's other points into a line, limit
    that axis to where the middle ``share`` of the points lie, with a margin, and say how many are left out."""
    low, high = np.percentile(points, [50 * (1 - share), 100 - 50 * (1 - share)], axis=0)
    span = high - low + 1e-9
    squashed = (points.max(axis=0) - points.min(axis=0)) > 3 * span  # per axis
    if not squashed.any():
        return
    low, high = np.where(squashed, low - 0.3 * span, points.min(axis=0)), np.where(squashed, high + 0.3 * span, points.max(axis=0))
    outside = int(np.sum(np.any((points < low) | (points > high), axis=1)))
    margin = 0.05 * (high - low)
    ax.set_xlim(low[0] - margin[0], high[0] + margin[0]), ax.set_ylim(low[1] - margin[1], high[1] + margin[1])
    ax.text(0.98, 0.02, f"{outside} off the panel", transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
            color="#555555")


def identical_ways(curve: pd.DataFrame) -> list[tuple[list[str], pd.DataFrame]]:
    """The ways of ``curve`` grouped when their points are identical (offline, the head on ImageNet features and on
    random features are one network): each group's ways and its rows."""
    groups: list[tuple[list[str], pd.DataFrame]] = []
    for way, part in curve.groupby("way", sort=False):
        points = part[["per_class", "repeat", "test_acc"]].reset_index(drop=True)
        twin = next((ways for ways, rows in groups if rows[["per_class", "repeat", "test_acc"]].equals(points)), None)
        if twin is None:
            groups.append(([way], part.reset_index(drop=True)))
        else:
            twin.append(way)
    return groups


def plot_data_curve(curve: pd.DataFrame, caption: str = "", chance: float | None = None) -> plt.Figure:
    """Notebook 08: test accuracy against training images per class (log axis), per way of training (``curve``: rows
    of way, per_class, repeat, test_acc): the mean over the subsets as a line and their range as a band; a way
    trained at one size only is a large marker with its range as a bar. Ways with identical points are drawn once."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    styles = {"head on ImageNet features": ("#1f77b4", "-", "o"), "head on random features": ("#ff7f0e", "-", "o"),
              "recipe (layer4), transfer": ("#2ca02c", "--", "s"), "recipe, scratch": ("#d62728", "--", "D")}
    groups = identical_ways(curve)
    alone = [ways[0] for ways, part in groups if part["per_class"].nunique() == 1]
    for ways, part in groups:
        colour, line, marker = styles.get(ways[0], ("#333333", "-", "o"))
        label = ways[0] if len(ways) == 1 else "\n= ".join(ways) + "\n(identical: drawn once)"
        stats = part.groupby("per_class")["test_acc"].agg(["mean", "min", "max"])
        if ways[0] in alone:  # side by side around its size, so that two such ways do not hide each other
            shift = 1.2 ** (alone.index(ways[0]) - (len(alone) - 1) / 2)
            spread = [(stats["mean"] - stats["min"]).clip(lower=0), (stats["max"] - stats["mean"]).clip(lower=0)]  # equal
            # subsets: the mean of three equal floats can land a rounding step outside them
            ax.errorbar(stats.index * shift, stats["mean"], yerr=spread, color=colour, fmt=marker, markersize=8, capsize=4,
                        label=label, zorder=3)
        else:
            ax.plot(stats.index, stats["mean"], color=colour, linestyle=line, marker=marker, markersize=4, label=label)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.15, linewidth=0)
    if chance is not None:
        ax.axhline(chance, color="grey", linewidth=1, linestyle=":", label=f"chance ({chance:.2f})")
    ax.set_xscale("log")
    sizes = sorted(curve["per_class"].unique())
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlim(sizes[0] / 1.3, sizes[-1] * 1.3)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return finish_figure(fig, "Test accuracy against the amount of training data (mean, and range over the subsets)",
                         caption)


def plot_lr_sweep(sweep, lr: float, caption: str = "") -> plt.Figure:
    """The engine notebooks' learning-rate finder: each step's loss (dots) and its smoothed curve against the head's
    rate on a log axis, the suggestion marked, and ``lr`` (the configured rate) for reference. ``sweep``: an
    ``LRSweep`` (common.train.loop)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    smooth, suggested = sweep.smoothed(), sweep.suggestion()
    ax.scatter(sweep.rates, sweep.losses, s=10, color="#1f77b4", alpha=0.35, linewidths=0, label="loss of each step")
    ax.plot(sweep.rates, smooth, color="#1f77b4", label="smoothed")
    at = sweep.rates.index(suggested)
    ax.scatter([suggested], [smooth[at]], s=60, color="#d62728", zorder=3, label=f"suggestion: {suggested:.1e}")
    ax.axvline(suggested, color="#d62728", linewidth=1, linestyle="--")
    ax.axvline(lr, color=BOUNDARY_COLOUR, linewidth=1, linestyle=":", label=f"configured lr: {lr:.1e}")
    low, high = min(np.min(sweep.losses), smooth.min()), smooth.max()
    top = high + 0.1 * (high - low) + 1e-6
    ax.set_ylim(low - 0.05 * (high - low), top)  # the smoothed curve decides: the last steps' losses may leave the top
    above = int(np.sum(~(np.asarray(sweep.losses) <= top)))  # above the axis, or not finite
    if above:
        ax.annotate("1 step's loss is off the top" if above == 1 else f"{above} steps' losses are off the top", xy=(1, 1), xycoords="axes fraction", xytext=(-4, -4),
                    textcoords="offset points", ha="right", va="top", fontsize=8, color="#555555")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate of the head (log axis)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return finish_figure(fig, f"Learning-rate sweep: {len(sweep.rates)} steps, one batch each", caption)
