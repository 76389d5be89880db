"""Using a trained model: rebuild it from its run record, predict on your own images, an upload widget."""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.models import resnet50

from .datasets import build_transforms
from .io import write_text_atomic
from .model import TransferResNet, imagenet_normalisation, resolve_mode
from .records import RunMeta, RunRecord, predictions_frame
from .runtime import visible_gpus
from .scan import RGB_MODES, check_image, open_rgb
from .split import IMAGE_EXTENSIONS

FOLDER_RESULTS = "classified.csv"  # written into a folder of your own images that was classified


@dataclass
class ModelInfo:
    """What using a trained model needs to know about the run that trained it."""
    record: RunRecord
    class_names: list[str]
    init: str  # "transfer" or "scratch"
    image_size: int
    mean: list[float]
    std: list[float]
    dataset_root: Path
    meta: RunMeta  # the whole record's metadata, for captions and fallbacks

    @property
    def transform(self):
        """The evaluation transform the run used (resize to 8/7, centre crop, normalise)."""
        return build_transforms(self.image_size, self.mean, self.std)["test"]


def load_model(record: RunRecord, device: torch.device | str = "cpu") -> tuple[TransferResNet, ModelInfo]:
    """A fresh network built from a run record's metadata (class names, which blocks trained, image size,
    normalisation) with its best weights loaded (``weights_only=True``), in eval mode, on ``device`` (a GPU
    where there is one: predicting a whole test split on Colab's two CPU cores takes minutes)."""
    meta = record.meta
    model = TransferResNet(resnet50(weights=None), len(meta.class_names), meta.config["dropout"],
                           trainable=resolve_mode(meta.init, meta.config.get("trainable")))
    model.load_state_dict(record.load_best())
    mean, std = imagenet_normalisation()
    info = ModelInfo(record, list(meta.class_names), meta.init, meta.image_size, mean, std, Path(meta.dataset_root), meta)
    return model.to(device).eval(), info


# ---------------------------------------------------------------- predicting


def list_images(source) -> list[Path]:
    """The files to classify: one file, a list of files, or every file directly inside a folder."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return sorted(p for p in Path(source).iterdir() if p.is_file() and not p.name.startswith("."))
    return [Path(p) for p in ([source] if isinstance(source, (str, Path)) else source)]


def _check(path: Path) -> tuple[str | None, str]:
    """(problem or None, note) for one file, by the suite's scan."""
    if not path.is_file():
        return "no such file", ""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image file (skipped)", ""
    problem, mode = check_image(path)
    return problem, "" if problem or mode in RGB_MODES else f"colour mode {mode}, converted to RGB"


@torch.inference_mode()
def predict_tensors(model: torch.nn.Module, x: torch.Tensor, tta: bool = False, batch_size: int = 32) -> np.ndarray:
    """Softmax probabilities for a batch of prepared images, computed where the model is; ``tta``: averaged with
    the mirrored images."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for part in x.split(batch_size):
        part = part.to(device)
        probs = torch.softmax(model(part).float(), dim=1)
        if tta:
            probs = (probs + torch.softmax(model(part.flip(-1)).float(), dim=1)) / 2
        out.append(probs.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def prepare_images(paths: list[Path], info: ModelInfo) -> torch.Tensor:
    """Open and transform images as the run's evaluation did (readable images only)."""
    transform = info.transform
    size = info.image_size
    tensors = [transform(open_rgb(p, max_side=1024)) for p in paths]
    return torch.stack(tensors) if tensors else torch.zeros((0, 3, size, size))


def predict_images(model: torch.nn.Module, info: ModelInfo, source, k: int = 3, tta: bool = False,
                   csv: Path | None = None) -> pd.DataFrame:
    """Top-k classes for a file, a list of files or a folder; unreadable or odd files get a ``problem``.

    For a folder the table is also written (atomically) to ``csv``, by default :data:`FOLDER_RESULTS` in it."""
    folder = Path(source) if isinstance(source, (str, Path)) and Path(source).is_dir() else None
    csv = Path(csv) if csv else (folder / FOLDER_RESULTS if folder else None)
    paths = [p for p in list_images(source) if csv is None or p.resolve() != csv.resolve()]
    checks = [_check(p) for p in paths]
    good = [p for p, (problem, _) in zip(paths, checks) if problem is None]
    probs = predict_tensors(model, prepare_images(good, info), tta)
    table = _results(good, probs, info.class_names, k)
    bad = pd.DataFrame({"file": [str(p) for p, (problem, _) in zip(paths, checks) if problem],
                        "problem": [problem for problem, _ in checks if problem]})
    table = pd.concat([table, bad], ignore_index=True) if len(bad) else table
    notes = {str(p): note for p, (_, note) in zip(paths, checks)}
    table["problem"] = table["problem"].fillna("") if "problem" in table else ""
    table["note"] = table["file"].map(notes).fillna("")
    if csv is not None:
        write_text_atomic(csv, table.to_csv(index=False))
    return table


def _results(paths: list[Path], probs: np.ndarray, class_names: list[str], k: int) -> pd.DataFrame:
    """One row per image: the predicted class and the top-k classes with probabilities."""
    if not paths:
        return pd.DataFrame(columns=["file", "pred"])
    df = predictions_frame([str(p) for p in paths], np.zeros(len(paths), dtype=int), probs, class_names, k)
    return df.drop(columns="true")


def problems(table: pd.DataFrame) -> list[str]:
    """One line per file that could not be classified, saying why."""
    return [f"{Path(f).name}: {p}" for f, p in zip(table["file"], table["problem"]) if p]


# ---------------------------------------------------------------- the record's test split again


# How far a reproduction may drift from the record, by the precision the record was computed in: what a
# reduced mantissa leaves in softmax probabilities (bf16 keeps 8 bits, fp16 10, and "fp32" on a recent NVIDIA
# GPU runs its convolutions in TF32, 10 bits too) against fp32 on the CPU; and, recomputed in the same precision
# on a GPU, what kernels autotuned per run leave. The same computation on the CPU must match to the record's
# 6 decimals. Set from the precisions' mantissas, not yet measured on a GPU (scripts/gpu_check.sh checks them).
TOLERANCE = {"fp32": 0.01, "fp16": 0.01, "bf16": 0.05}
SAME_GPU_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-3, "bf16": 0.02}
EXACT = 2e-6
SENSITIVITY_IMAGES = 64
LOOSE = 0.5  # an allowed probability difference this large cannot tell one model from another


@dataclass(frozen=True)
class Reproduction:
    """How a run's recorded test predictions are recomputed, and how close they must come."""
    device: torch.device
    precision: str  # the autocast of the recomputation: fp32, bf16 or fp16
    tolerance: float  # the largest probability difference allowed
    reason: str  # one sentence for the learner

    @classmethod
    def plan(cls, meta: RunMeta, here: torch.device) -> "Reproduction":
        """Like with like where this machine can: a record made on the CPU again on the CPU, in its precision
        (bf16 autocast runs on any CPU); one made on a GPU on a GPU of this machine that runs its precision natively
        (within :data:`SAME_GPU_TOLERANCE`: autotuned kernels differ in the last bits); else on the CPU in fp32,
        within what the record's precision leaves (:data:`TOLERANCE`)."""
        made, tolerance = torch.device(meta.device).type, TOLERANCE.get(meta.precision, TOLERANCE["bf16"])
        if made == "cpu":
            return cls(torch.device("cpu"), meta.precision, EXACT, f"made on the CPU in {meta.precision}, recomputed "
                       "the same way, so it must match to the record's 6 decimals")
        native = meta.precision != "bf16" or here.type != "cuda" or visible_gpus().all_at_least((8, 0))
        if made == here.type and native:  # a T4 would emulate an A100's bf16: slowly, and not the same computation
            same = SAME_GPU_TOLERANCE.get(meta.precision, SAME_GPU_TOLERANCE["bf16"])
            return cls(here, meta.precision, same, f"made on a GPU in {meta.precision}, recomputed the same way on "
                       f"this one: within {same:g} (GPU kernels chosen per run differ in the last bits)")
        return cls(torch.device("cpu"), "fp32", tolerance, f"made on a GPU in {meta.precision}, recomputed here on the "
                   f"CPU in fp32: within {tolerance:g}, the difference {meta.precision} leaves")

    def autocast(self, precision: str | None = None):
        """Autocast as the plan says (or in ``precision``), on the plan's device."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision or self.precision)
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def for_model(self, model: torch.nn.Module, info: ModelInfo, recorded: pd.DataFrame) -> "Reproduction":
        """This plan, its tolerance raised to twice what ``model``'s own answers move between fp32 and the record's
        precision on the first :data:`SENSITIVITY_IMAGES` test images (measured on the plan's device): a model
        whose frozen features are random (an offline run) amplifies rounding far beyond the table's figures. An
        exact plan stays exact; a measured gap that leaves the check unable to tell anything is said."""
        precision = info.meta.precision
        if self.tolerance == EXACT or precision == "fp32":
            return self
        home = next(model.parameters()).device
        x = prepare_images([info.dataset_root / f for f in recorded["file"][:SENSITIVITY_IMAGES]], info)
        try:
            full = predict_tensors(model.to(self.device), x)
            with self.autocast(precision):
                reduced = predict_tensors(model, x)
        finally:
            model.to(home)
        gap = float(np.abs(full - reduced).max()) if len(x) else 0.0
        if 2 * gap <= self.tolerance:
            return self
        note = (f"; this model's answers move by up to {gap:.2g} between fp32 and {precision} (on {len(x)} test "
                f"images), so within {2 * gap:.2g}")
        return dataclasses.replace(self, tolerance=2 * gap, reason=self.reason + note)


@dataclass(frozen=True)
class ReproductionCheck:
    """A reproduction of the recorded test predictions against the record."""
    plan: Reproduction
    rows: int
    max_prob_diff: float
    changed: int  # images with a kept class changed where the record's neighbouring probabilities were further apart
    near_ties: int  # images whose only changes swapped classes within the tolerance of each other

    @property
    def ok(self) -> bool:
        return self.changed == 0 and self.max_prob_diff <= self.plan.tolerance

    def describe(self) -> str:
        ties = f", {self.near_ties} near tie(s) swapped (allowed)" if self.near_ties else ""
        changed = f"{self.changed} image(s) with a class changed" if self.changed else "no class changed"
        verdict = ("predictions NOT reproduced" if not self.ok else "consistent, though too loose a check to confirm it"
                   if self.plan.tolerance > LOOSE else "predictions reproduced")
        return (f"{verdict}: {self.rows} test images, largest probability difference {self.max_prob_diff:.1e}, "
                f"{changed}{ties} ({self.plan.reason})")


def reproduce_test(model: torch.nn.Module, info: ModelInfo, recorded: pd.DataFrame,
                   plan: Reproduction | None = None) -> pd.DataFrame:
    """The test predictions again, for the files and classes of a run's recorded test predictions, as ``plan``
    says (default: :meth:`Reproduction.plan` for where the model is), in batches of the run's size (other batch
    shapes change the last float bits, and the record keeps 6 decimals)."""
    home = next(model.parameters()).device
    plan = plan or Reproduction.plan(info.meta, home)
    paths = [info.dataset_root / f for f in recorded["file"]]
    try:
        with plan.autocast():
            probs = predict_tensors(model.to(plan.device), prepare_images(paths, info),
                                    batch_size=info.meta.config["batch_size"])
    finally:
        model.to(home)
    targets = np.asarray([info.class_names.index(t) for t in recorded["true"]])
    k = sum(c.endswith("_prob") for c in recorded.columns)
    return predictions_frame(list(recorded["file"]), targets, probs, info.class_names, k)


def check_reproduction(recorded: pd.DataFrame, again: pd.DataFrame, plan: Reproduction) -> ReproductionCheck:
    """Compare the recomputed predictions with the record, rank by rank: every kept probability within
    ``plan.tolerance``, and every kept class the same, except where the record's probability at that rank lies
    within twice the tolerance of a neighbouring rank's (a near tie that reduced precision may swap; at the
    last kept rank, of the recomputed probability there: the class that came in was just below it)."""
    k = sum(c.endswith("_prob") for c in recorded.columns)
    p = recorded[[f"top{i}_prob" for i in range(1, k + 1)]].to_numpy(dtype=float)
    q = again[[f"top{i}_prob" for i in range(1, k + 1)]].to_numpy(dtype=float)
    same = recorded[[f"top{i}_class" for i in range(1, k + 1)]].to_numpy() == again[[f"top{i}_class" for i in range(1, k + 1)]].to_numpy()
    gaps = np.full((len(p), k, 2), np.inf)
    gaps[:, 1:, 0], gaps[:, :-1, 1] = np.abs(np.diff(p, axis=1)), np.abs(np.diff(p, axis=1))
    gaps[:, -1, 1] = np.abs(p[:, -1] - q[:, -1])
    tie = gaps.min(axis=2) <= 2 * plan.tolerance
    changed, swapped = (~same & ~tie).any(axis=1), (~same & tie).any(axis=1)
    diff = float(np.abs(p - q).max()) if len(p) else 0.0
    return ReproductionCheck(plan, len(recorded), diff, int(changed.sum()), int((swapped & ~changed).sum()))


# ---------------------------------------------------------------- figures


def plot_topk(table: pd.DataFrame, k: int = 3, caption: str = "", size: float = 2.2, title: str = "Top classes"):
    """Each classified image beside a bar chart of its top-k classes and probabilities."""
    import matplotlib.pyplot as plt

    rows = table[table["problem"] == ""].reset_index(drop=True)
    fig, axes = plt.subplots(max(1, len(rows)), 2, figsize=(2.4 * size, max(1, len(rows)) * size * 0.8),
                             squeeze=False, gridspec_kw={"width_ratios": [1, 1.3]})
    for (ax_img, ax_bar), row in zip(axes, rows.itertuples()):
        ax_img.imshow(open_rgb(Path(row.file), max_side=512))
        ax_img.set_title(Path(row.file).name, fontsize=8)
        ax_img.axis("off")
        names = [getattr(row, f"top{i}_class") for i in range(1, k + 1)][::-1]
        values = [getattr(row, f"top{i}_prob") for i in range(1, k + 1)][::-1]
        ax_bar.barh(names, values, color="#1f77b4")
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(labelsize=8)
    axes[-1][1].set_xlabel("probability")
    from .plots import finish_figure
    return finish_figure(fig, title, caption)


# ---------------------------------------------------------------- upload widget


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
            for line in problems(table):
                print(line)
            if (table["problem"] == "").any():
                display(plot_topk(table, k, caption))
                plt.close("all")

    upload.observe(upload_handler(model, info, k, folder, show=show), names="value")
    return widgets.VBox([upload, output])
