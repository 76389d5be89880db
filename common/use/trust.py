"""Can the answer be trusted: how honest the probabilities are (calibration), and "none of these" for other images.

Calibration: the expected calibration error over 15 confidence bins (torchmetrics' ``MulticlassCalibrationError``)
and the reliability table behind its diagram; temperature scaling (Guo et al., 2017, "On Calibration of Modern
Neural Networks"): one number that divides the logits, fitted on the validation split's negative log-likelihood,
never on test. It cannot change any prediction, only how sure each one claims to be.

"None of these": a threshold on a confidence score, chosen on the validation split to keep a stated share of the
images the model knows, then tried on images of something else. Two scores side by side: the top softmax
probability of the calibrated model (Hendrycks and Gimpel, 2017) and the top logit (Vaze et al., 2022,
"Open-Set Recognition: a Good Closed-Set Classifier Is All You Need"). How well a score separates known from
unknown images, whatever the threshold, is its AUROC (scikit-learn).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from common.data.split import Manifest
from common.use.predict import ModelInfo, predict_logits, prepare_images

BINS = 15
ACCEPTANCE = 0.95  # the share of known images "none of these" must leave answered, on the validation split


def split_logits(model: torch.nn.Module, info: ModelInfo, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, class indices) of one split of the run's data, as it was trained (its saved manifest)."""
    frame = Manifest.load(info.meta.split_manifest).files(split)
    paths = [info.dataset_root / p for p in frame["path"]]
    targets = torch.tensor([info.class_names.index(c) for c in frame["class_name"]])
    return predict_logits(model, prepare_images(paths, info), batch_size=info.meta.config["batch_size"]), targets


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = BINS) -> float:
    """The mean gap between confidence and accuracy over equal-width confidence bins, weighted by their images."""
    from torchmetrics.classification import MulticlassCalibrationError

    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=bins, norm="l1")
    return float(metric(probs, targets))


def diagram_bins(images: int) -> int:
    """Bins for a reliability diagram: the ECE's 15 where there are images enough (20 a bin), fewer, down to 5, where
    there are not, so that each point stands on more than a handful of images."""
    return int(min(BINS, max(5, images // 20)))


def reliability(probs: torch.Tensor, targets: torch.Tensor, bins: int = BINS) -> pd.DataFrame:
    """Per confidence bin with images in it: the mean top probability, the accuracy, and how many images fell in it:
    the points of a reliability diagram (on its diagonal, confidence equals accuracy)."""
    confidence, predicted = probs.max(dim=1)
    which = torch.clamp(torch.ceil(confidence * bins).long() - 1, 0, bins - 1)  # (0, 1/bins] is bin 0, as torchmetrics
    frame = pd.DataFrame({"bin": which.numpy(), "confidence": confidence.numpy(),
                          "correct": (predicted == targets).numpy().astype(float)})
    table = frame.groupby("bin").agg(confidence=("confidence", "mean"), accuracy=("correct", "mean"),
                                     images=("correct", "size"))
    return table.assign(low=table.index / bins, high=(table.index + 1) / bins)


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / temperature)."""
    return float(torch.nn.functional.cross_entropy(logits / temperature, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood of ``logits`` (a validation split's): L-BFGS on its
    logarithm, so that it stays positive. Above 1 the model was overconfident, below 1 underconfident."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def choose_threshold(known_scores: np.ndarray, acceptance: float = ACCEPTANCE) -> float:
    """The largest threshold that keeps at least ``acceptance`` of ``known_scores`` at or above it."""
    scores = np.sort(np.asarray(known_scores, dtype=float))
    return float(scores[int(np.floor((1 - acceptance) * len(scores)))])


def auroc(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """How well a score ranks known images above unknown ones: 1 perfectly, 0.5 no better than chance."""
    labels = np.r_[np.ones(len(known_scores)), np.zeros(len(unknown_scores))]
    return float(roc_auc_score(labels, np.r_[known_scores, unknown_scores]))


@dataclass(frozen=True)
class OpenSetCheck:
    """One confidence score, its threshold chosen on known validation images, tried on test and unknown images."""
    score: str  # "top probability (calibrated)" or "top logit"
    threshold: float
    auroc: float
    known_kept: float  # the share of the test split's images answered (not "none of these")
    unknown_rejected: float  # the share of the other images answered "none of these"


def open_set_table(checks: dict[str, list[OpenSetCheck]]) -> pd.DataFrame:
    """The checks of every run, one row per (run, score), in words and percentages a learner reads."""
    return pd.DataFrame({(init, c.score): {"threshold": round(c.threshold, 3), "AUROC": round(c.auroc, 2),
                                           "test images answered": f"{c.known_kept:.0%}",
                                           "other images rejected": f"{c.unknown_rejected:.0%}"}
                         for init, found in checks.items() for c in found}).T


def open_set_check(score: str, validation: np.ndarray, test: np.ndarray, unknown: np.ndarray,
                   acceptance: float = ACCEPTANCE) -> OpenSetCheck:
    """A score's threshold from the validation split (keeping ``acceptance`` of it), then its effect on the test
    split and on the images of something else."""
    threshold = choose_threshold(validation, acceptance)
    return OpenSetCheck(score, threshold, auroc(test, unknown), float((test >= threshold).mean()),
                        float((unknown < threshold).mean()))


def other_images(folder: Path | None, scratch: Path, n: int, image_size: int, seed: int) -> list[Path]:
    """The images of something else to try "none of these" on: every image file in ``folder`` if given, else
    ``n`` drawn ones (polygons, stripes, noise) in ``scratch``, the same for the same seed."""
    from common.data.demo import make_other_images
    from common.data.split import IMAGE_EXTENSIONS

    if folder is not None:
        found = sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise FileNotFoundError(f"No images in {folder}: give a folder of images of something else "
                                    "(not the dataset's classes), or None for drawn ones.")
        return found
    return sorted(make_other_images(scratch, n, image_size, seed).iterdir())


def describe_trust(calibrated: pd.DataFrame, checks: dict[str, list[OpenSetCheck]], metas: dict) -> list[str]:
    """Sentences from the calibration table (init -> row) and the open-set checks (init -> checks): what they show,
    and what an offline run (random weights, demo data) cannot."""
    lines = []
    for init, row in calibrated.iterrows():
        way = ("so far from right that the best temperature flattens its probabilities to nearly equal: they carry "
               "almost no information (a model near chance)" if row["temperature"] > 100 else
               "overconfident: its top probabilities claimed more than its accuracy, so the temperature above 1 "
               "softened them" if row["temperature"] > 1.05 else
               "underconfident: its top probabilities claimed less than its accuracy, so the temperature below 1 "
               "sharpened them" if row["temperature"] < 0.95 else "about as confident as it was right")
        better = row["test NLL after"] < row["test NLL before"] and row["test ECE after"] <= row["test ECE before"]
        worse = row["test NLL after"] > row["test NLL before"] and row["test ECE after"] >= row["test ECE before"]
        barely = (abs(row["test ECE after"] - row["test ECE before"]) < 0.01
                  and abs(row["test NLL after"] - row["test NLL before"]) < 0.01 * row["test NLL before"])
        outcome = ("they barely changed (less than 0.01 in ECE, 1 % in NLL)" if barely else
                   "the probabilities became more honest" if better else
                   "they became LESS honest: validation and test disagree here, so a temperature fitted on one does not "
                   "carry over (with this few images, or a model this weak, that happens)" if worse else
                   "one measure improved while the other did not")
        lines.append(f"{init}: on validation it was {way}. On test {outcome}: test ECE {row['test ECE before']:.3f} -> "
                     f"{row['test ECE after']:.3f}, test NLL {row['test NLL before']:.3f} -> {row['test NLL after']:.3f}, "
                     f"test accuracy {row['test accuracy']:.1%} either way (a temperature cannot change the top class).")
    for init, found in checks.items():
        best = max(found, key=lambda c: c.auroc)
        tied = sum(round(c.auroc, 2) == round(best.auroc, 2) for c in found) > 1
        which = (f"both scores separate the known test images from the other images equally (AUROC {best.auroc:.2f}; "
                 "0.5 is chance)" if tied else f"'{best.score}' separates the known test images from the other images "
                 f"best (AUROC {best.auroc:.2f}; 0.5 is chance)")
        useful = ("" if best.auroc >= 0.7 else ": too close to chance for 'none of these' to be of use with this model")
        lines.append(f"{init}: {which}{useful}. With the top probability as the score, at its threshold ({found[0].threshold:.2f}; it cannot "
                     f"fall below 1/{len(metas[init].class_names)}, the probability of an even guess) it answers "
                     f"{found[0].known_kept:.0%} of the test images and says 'none of these' to "
                     f"{found[0].unknown_rejected:.0%} of the other images.")
    if any(m.is_demo_data for m in metas.values()):
        lines.append("These are the offline demo data with few validation images: the temperature and the threshold "
                     "rest on a handful of images and would move with others.")
    if any(m.random_transfer for m in metas.values()):
        lines.append("The transfer run had no ImageNet weights (random weights were used), so this run cannot show "
                     "how a pretrained model's confidence behaves: with real weights, fine-tuned networks are typically "
                     "overconfident (Guo et al., 2017) and the top logit tends to tell other images apart at least as "
                     "well as the top probability (Vaze et al., 2022).")
    return lines
