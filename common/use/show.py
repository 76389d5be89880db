"""Showing predictions to a person: each image beside its top classes, and an upload button that classifies photos."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import torch

from common.data.scan import open_rgb
from common.use.predict import ModelInfo, predict_images, problems

ANSWER_PREFIX = "answer for"  # how each classified upload's line begins under the button


def plot_topk(table: pd.DataFrame, k: int = 3, caption: str = "", size: float = 2.2, title: str = "Top classes"):
    """Each classified image beside a bar chart of its top-k classes and probabilities."""
    import matplotlib.pyplot as plt

    rows = table[table["problem"] == ""].reset_index(drop=True)
    fig, axes = plt.subplots(max(1, len(rows)), 2, figsize=(2.4 * size, max(1, len(rows)) * size * 0.8),
                             squeeze=False, gridspec_kw={"width_ratios": [1, 1.3]})
    for (ax_img, ax_bar), row in zip(axes, rows.itertuples()):
        ax_img.imshow(open_rgb(Path(row.file), max_side=512))
        answer = getattr(row, "answer", row.pred)  # "none of these" below a calibrated run's threshold
        ax_img.set_title(f"{Path(row.file).name}\nanswer: {answer if answer == row.pred else 'none of these'}", fontsize=8)
        ax_img.axis("off")
        names = [getattr(row, f"top{i}_class") for i in range(1, k + 1)][::-1]
        values = [getattr(row, f"top{i}_prob") for i in range(1, k + 1)][::-1]
        ax_bar.barh(names, values, color="#1f77b4")
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(labelsize=8)
    axes[-1][1].set_xlabel("probability")
    from common.results.plots import finish_figure
    return finish_figure(fig, title, caption)


def describe_answers(table: pd.DataFrame, k: int = 3) -> list[str]:
    """One line per classified image: its answer, then its top-k classes with their probabilities."""
    rows = table[table["problem"] == ""]
    return [f"{ANSWER_PREFIX} {Path(row['file']).name}: {row.get('answer', row['pred'])} ("
            + ", ".join(f"{row[f'top{i}_class']} {row[f'top{i}_prob']:.0%}" for i in range(1, k + 1) if f"top{i}_class" in row)
            + ")" for _, row in rows.iterrows()]


def save_uploads(value, folder: Path) -> list[Path]:
    """Write a ``FileUpload`` value (ipywidgets 8: a tuple of dicts with name and content) to files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in value:
        name = Path(item.get("name") or "upload").name  # the name only: an upload cannot write outside folder
        path = folder / name
        path.write_bytes(bytes(item["content"]))
        paths.append(path)
    return paths


def upload_handler(model: torch.nn.Module, info: ModelInfo, k: int = 3, folder: Path | None = None, show=None):
    """The upload widget's callback, a plain function: ``handler({"new": value})`` classifies the uploads,
    passes the table to ``show`` and returns it (None when nothing was uploaded)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="uploads-"))

    def on_upload(change: dict) -> pd.DataFrame | None:
        if not change.get("new"):
            return None
        table = predict_images(model, info, save_uploads(change["new"], folder), k=k)
        if show is not None:
            show(table)
        return table
    return on_upload


def upload_widget(model: torch.nn.Module, info: ModelInfo, k: int = 3, caption: str = "", folder: Path | None = None):
    """A ``FileUpload`` button (Colab, JupyterLab) whose uploads are saved to ``folder`` and classified below it."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    upload = widgets.FileUpload(accept="image/*", multiple=True, description="Upload photos")
    output = widgets.Output()

    def show(table: pd.DataFrame) -> None:
        with output:
            output.clear_output()
            for line in problems(table) + describe_answers(table, k):
                print(line)
            if (table["problem"] == "").any():
                display(plot_topk(table, k, caption))
                plt.close("all")

    upload.observe(upload_handler(model, info, k, folder, show=show), names="value")
    return widgets.VBox([upload, output])
