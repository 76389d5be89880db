"""Proving a reloaded model is the one that was trained: its recorded test predictions recomputed and compared."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from common.results.records import RunMeta, predictions_frame
from common.runtime import visible_gpus
from common.use.predict import ModelInfo, predict_tensors, prepare_images


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
