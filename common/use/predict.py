"""Using a trained model: rebuild it from its run record, and predict on your own images (bad files reported)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.models import resnet50

from common.data.datasets import build_transforms
from common.io import write_text_atomic
from common.model.resnet import TransferResNet
from common.model.weights import imagenet_normalisation
from common.results.records import Calibration, RunMeta, RunRecord, predictions_frame
from common.data.scan import RGB_MODES, check_image, open_rgb
from common.data.split import IMAGE_EXTENSIONS

FOLDER_RESULTS = "classified.csv"  # written into a folder of your own images that was classified
NONE_OF_THESE = "none of these (confidence below the threshold)"


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
    calibration: Calibration | None = None  # fitted in notebook 06: a temperature and a "none of these" threshold

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
                           trainable="all" if meta.trainable == "scratch" else meta.trainable)
    model.load_state_dict(record.load_best())
    mean, std = imagenet_normalisation()
    info = ModelInfo(record, list(meta.class_names), meta.init, meta.image_size, mean, std, Path(meta.dataset_root), meta,
                     record.calibration)
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


@torch.no_grad()  # not inference_mode: temperature scaling fits on these logits with autograd
def predict_logits(model: torch.nn.Module, x: torch.Tensor, flip: bool = False, batch_size: int = 32) -> torch.Tensor:
    """The model's logits (fp32, on the CPU) for a batch of prepared images, computed where the model is;
    ``flip``: of the images mirrored left to right."""
    model.eval()
    device = next(model.parameters()).device
    out = [model((part.flip(-1) if flip else part).to(device)).float().cpu() for part in x.split(batch_size)]
    return torch.cat(out) if out else torch.zeros((0, 0))


def predict_tensors(model: torch.nn.Module, x: torch.Tensor, tta: bool = False, batch_size: int = 32,
                    temperature: float = 1.0) -> np.ndarray:
    """Softmax probabilities of the logits divided by ``temperature`` (1: as trained); ``tta``: averaged with
    the mirrored images."""
    probs = torch.softmax(predict_logits(model, x, batch_size=batch_size) / temperature, dim=1)
    if tta:
        probs = (probs + torch.softmax(predict_logits(model, x, True, batch_size) / temperature, dim=1)) / 2
    return probs.numpy() if len(x) else np.zeros((0, 0), dtype=np.float32)


def prepare_images(paths: list[Path], info: ModelInfo) -> torch.Tensor:
    """Open and transform images as the run's evaluation did (readable images only)."""
    transform = info.transform
    size = info.image_size
    tensors = [transform(open_rgb(p, max_side=1024)) for p in paths]
    return torch.stack(tensors) if tensors else torch.zeros((0, 3, size, size))


def predict_images(model: torch.nn.Module, info: ModelInfo, source, k: int = 3, tta: bool = False,
                   csv: Path | None = None) -> pd.DataFrame:
    """Top-k classes for a file, a list of files or a folder; unreadable or odd files get a ``problem``.

    With the run's :class:`Calibration` (``info.calibration``), the probabilities are calibrated (the temperature
    divides the logits) and ``answer`` is :data:`NONE_OF_THESE` where the top one is below its threshold; without
    it, ``answer`` is the top class. For a folder the table is also written (atomically) to ``csv``, by default
    :data:`FOLDER_RESULTS` in it."""
    folder = Path(source) if isinstance(source, (str, Path)) and Path(source).is_dir() else None
    csv = Path(csv) if csv else (folder / FOLDER_RESULTS if folder else None)
    paths = [p for p in list_images(source) if csv is None or p.resolve() != csv.resolve()]
    checks = [_check(p) for p in paths]
    good = [p for p, (problem, _) in zip(paths, checks) if problem is None]
    calibration = info.calibration
    probs = predict_tensors(model, prepare_images(good, info), tta, temperature=calibration.temperature if calibration else 1.0)
    table = _results(good, probs, info.class_names, k)
    table["answer"] = table["pred"]
    if calibration is not None and len(good):
        table.loc[table["top1_prob"] < calibration.threshold, "answer"] = NONE_OF_THESE
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


# ---------------------------------------------------------------- figures


# ---------------------------------------------------------------- upload widget


