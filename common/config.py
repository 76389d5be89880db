"""The configuration: one typed object for the whole suite, read in exactly one place.

Every field can be overridden by an environment variable named ``TL_<FIELD>``
(for example ``TL_BUDGET=smoke`` or ``TL_EPOCHS=3``), or in a notebook by
``load_config(epochs=3)``. The budget switch picks a preset for everything that
decides how much work a run does; explicit values win over the preset.

Switches are booleans (``TL_RESUME=0``, ``load_config(resume=False)``; the words
1/0, true/false, yes/no, on/off all work). A switch with an automatic choice takes
``auto`` too, held as ``None`` and shown as ``auto``.
"""
from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path

from common.runtime import default_num_workers, detect_runtime, pick_device, visible_gpus

REPO_ROOT = Path(__file__).resolve().parent.parent

# How much work a run does. "smoke" is for CI (seconds per notebook on 2 CPU
# cores), "cpu" for a learner's laptop (minutes), "full" is the source article's
# recipe for a GPU (224 px, ImageNet normalisation, several epochs).
BUDGETS: dict[str, dict] = {
    "smoke": dict(image_size=64, epochs=2, batch_size=16, demo_images_per_class=24,
                  train_per_class=None, eval_per_class=None, num_workers=0, curve_trained_up_to=1),
    "cpu": dict(image_size=96, epochs=3, batch_size=32, demo_images_per_class=80,
                train_per_class=60, eval_per_class=20, num_workers=None, curve_trained_up_to=1),
    "full": dict(image_size=224, epochs=10, batch_size=64, demo_images_per_class=200,
                 train_per_class=None, eval_per_class=None, num_workers=None, curve_trained_up_to=20),
}


class _FromBudget:
    """Marks a field whose value comes from the budget preset unless it is set explicitly
    (0 workers and "no cap" are real choices, so neither 0 nor None can mean "unset")."""

    def __repr__(self) -> str:
        return "<from budget>"


FROM_BUDGET = _FromBudget()


def _help(text: str, **kwargs) -> dict:
    return dict(metadata={"help": text}, **kwargs)


@dataclass
class Config:
    """Everything a run depends on. Build it with :func:`load_config`."""

    budget: str = field(default="auto", **_help("smoke | cpu | full | auto (smoke under CI, full on a GPU, else cpu)"))
    dataset: str = field(default="auto", **_help("demo | vegetables | auto | a folder of class folders"))
    weights: str = field(default="auto", **_help("imagenet | auto (imagenet, else random, loudly) | random | path to a .pth"))
    seed: int = field(default=42, **_help("seeds the split, the initial weights and the batch order"))
    data_dir: Path = field(default=REPO_ROOT / "data", **_help("where datasets and split manifests live"))
    runs_dir: Path = field(default=REPO_ROOT / "runs", **_help("where run records, figures and executed notebooks go"))
    device: str = field(default="auto", **_help("auto | cpu | cuda | mps"))
    devices: str = field(default="1", **_help("how many devices a run trains on: 1 | a number | auto (every visible GPU); above 1, one process each, started from the notebook (data-parallel)"))
    image_size: int = field(default=FROM_BUDGET, **_help("training crop size in pixels (from the budget)"))
    epochs: int = field(default=FROM_BUDGET, **_help("epochs per run (from the budget)"))
    batch_size: int = field(default=FROM_BUDGET, **_help("images per batch (from the budget)"))
    lr: float = field(default=1e-3, **_help("Adam learning rate of the head (the peak rate with schedule=onecycle)"))
    trainable: str = field(default="layer4", **_help("what a transfer run trains: head | layer4 | layer3 | all (scratch runs train everything)"))
    block_lr_ratio: float = field(default=1.0, **_help("each block's learning rate is this times the rate of the block above it (1: one rate for all)"))
    schedule: str = field(default="constant", **_help("constant (lr throughout: the recipe) | cosine (annealed over the epochs, stepped per epoch) | onecycle (torch's OneCycleLR, stepped per batch)"))
    clip_grad_norm: float = field(default=0.0, **_help("clip the gradients' total norm to this (0: off)"))
    head_epochs: int = field(default=0, **_help("two-stage fine-tuning: train only the head for this many epochs, then unfreeze to `trainable` for the rest (0: one stage)"))
    finetune_lr_ratio: float = field(default=0.1, **_help("two-stage: after unfreezing, the head's learning rate is lr times this (the blocks below follow block_lr_ratio)"))
    weight_decay: float = field(default=1e-4, **_help("Adam weight decay"))
    dropout: float = field(default=0.2, **_help("dropout before the new linear head"))
    val_fraction: float = field(default=0.15, **_help("validation share when the split is made here"))
    test_fraction: float = field(default=0.15, **_help("test share when the split is made here"))
    train_per_class: int | None = field(default=FROM_BUDGET, **_help("cap on training images per class (from the budget)"))
    eval_per_class: int | None = field(default=FROM_BUDGET, **_help("cap on validation/test images per class (from the budget)"))
    demo_images_per_class: int = field(default=FROM_BUDGET, **_help("size of the offline demo dataset (from the budget)"))
    num_workers: int | None = field(default=FROM_BUDGET, **_help("DataLoader workers; empty means pick: 0 when training on the CPU, else up to 4"))
    precision: str = field(default="auto", **_help("auto (bf16 where the GPU has it, fp16 on other CUDA GPUs, fp32 on CPU) | fp32 | bf16 | fp16"))
    channels_last: bool | None = field(default=None, **_help("auto (on with CUDA) | on | off: NHWC memory layout for the convolutions"))
    cache_images: bool | None = field(default=None, **_help("auto (when the decoded images fit in a third of the free memory) | on | off: decode each image once into memory, later epochs only augment"))
    resume: bool = field(default=True, **_help("on: continue an interrupted run from its last complete epoch; off: start over"))
    drop_duplicates: bool = field(default=False, **_help("on: drop evaluation copies of images that also occur in train"))
    deterministic: bool = field(default=False, **_help("on: ask for repeatable kernels (warn where none exist; slower on GPU)"))
    progress: bool = field(default=True, **_help("on: progress bars while training; the main job turns them off (a saved notebook keeps a bar's first frame only)"))
    early_stopping: int = field(default=0, **_help("stop after this many epochs without a better validation accuracy (0: off)"))
    top_k: int = field(default=5, **_help("how many class probabilities each test prediction keeps"))
    curve_trained_up_to: int = field(default=FROM_BUDGET, **_help("notebook 08: the largest training set, in images per class, at which the recipe and scratch are trained (the head on cached features goes to every size; from the budget)"))

    def __post_init__(self) -> None:
        if self.budget == "auto":
            self.budget = auto_budget()
        if self.budget not in BUDGETS:
            raise ValueError(f"Unknown budget {self.budget!r}: set TL_BUDGET to one of {', '.join(BUDGETS)} or auto.")
        for name, value in BUDGETS[self.budget].items():
            if getattr(self, name) is FROM_BUDGET:
                setattr(self, name, value)
        if self.num_workers is None:
            self.num_workers = default_num_workers(pick_device(self.device))
        from common.model.resnet import TRAINABLE  # imports torchvision: only when a configuration is made
        modes = [mode for mode in TRAINABLE if mode != "scratch"]  # scratch is an init, not how much a transfer run trains
        if self.trainable not in modes:
            raise ValueError(f"TL_TRAINABLE={self.trainable!r} is not one of {', '.join(modes)}: "
                             f"{CONFIG_HELP['trainable']}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TL_SCHEDULE={self.schedule!r} is not one of {', '.join(SCHEDULES)}: {CONFIG_HELP['schedule']}")
        if not self.block_lr_ratio > 0:
            raise ValueError(f"TL_BLOCK_LR_RATIO={self.block_lr_ratio!r} must be above 0: {CONFIG_HELP['block_lr_ratio']}")
        if not self.clip_grad_norm >= 0:
            raise ValueError(f"TL_CLIP_GRAD_NORM={self.clip_grad_norm!r} must be 0 (off) or above: {CONFIG_HELP['clip_grad_norm']}")
        if self.head_epochs and not 0 < self.head_epochs < self.epochs:
            raise ValueError(f"TL_HEAD_EPOCHS={self.head_epochs!r} must leave epochs for the second stage: between 1 and "
                             f"epochs - 1 = {self.epochs - 1} (or 0 for one stage). {CONFIG_HELP['head_epochs']}")
        if self.head_epochs and self.trainable == "head":
            raise ValueError("head_epochs > 0 trains the head first, then unfreezes to `trainable`: with trainable='head' "
                             "there is nothing to unfreeze. Choose trainable='layer4', 'layer3' or 'all'.")
        if self.head_epochs and self.early_stopping:
            raise ValueError("early_stopping with head_epochs is not supported: the patience would count across the "
                             "stage boundary and could end a run before, or right after, it unfreezes. Use one of them.")
        if not self.finetune_lr_ratio > 0:
            raise ValueError(f"TL_FINETUNE_LR_RATIO={self.finetune_lr_ratio!r} must be above 0: {CONFIG_HELP['finetune_lr_ratio']}")
        self.devices = str(self.devices).strip().lower()
        if self.devices != "auto" and not (self.devices.isdigit() and int(self.devices) >= 1):
            raise ValueError(f"TL_DEVICES={self.devices!r} is not 1, a number or auto: {CONFIG_HELP['devices']}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TL_PRECISION={self.precision!r} is not one of {', '.join(PRECISIONS)}: {CONFIG_HELP['precision']}")
        for f in fields(self):
            if _is_switch(f):
                setattr(self, f.name, parse_switch(getattr(self, f.name), f))
        self.data_dir, self.runs_dir = Path(self.data_dir), Path(self.runs_dir)

    def replace(self, **changes) -> "Config":
        """These settings with ``changes``, checked like any configuration: ``cfg.replace(schedule="onecycle")``."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """Plain, JSON-friendly values (paths as strings) for run records."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def show(self, everything: bool = False) -> None:
        """Print the settings a learner usually changes (``everything=True``: all of them), marking values
        that came from the environment."""
        names = [f.name for f in fields(self)] if everything else list(MAIN_SETTINGS)
        for name in names:
            f = next(f for f in fields(self) if f.name == name)
            value = getattr(self, name)
            shown = "auto" if value is None and _is_switch(f) else value
            source = "  (from TL_" + name.upper() + ")" if f"TL_{name.upper()}" in os.environ else ""
            print(f"  {name:<15} {shown!s:<12}{source}")
        print(f"  runtime: {detect_runtime()}, device: {pick_device(self.device)}, python {platform.python_version()}")
        if not everything:
            print(f"  ({len(fields(self)) - len(names)} more: cfg.show(everything=True); change any with "
                  "load_config(name=value))")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine", "onecycle")
MAIN_SETTINGS = ("budget", "dataset", "weights", "epochs", "image_size", "batch_size", "lr", "trainable", "seed", "devices")
CONFIG_HELP = {f.name: f.metadata["help"] for f in fields(Config)}
_SWITCH_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _is_switch(f) -> bool:
    return str(f.type).startswith("bool")


def parse_switch(value, f) -> bool | None:
    """True, False, or None (auto, only where the field has an automatic choice); a clear error otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _SWITCH_WORDS:
        return _SWITCH_WORDS[text]
    if text in ("auto", "none") and "None" in str(f.type):
        return None
    allowed = "on, off" + (", auto" if "None" in str(f.type) else "")
    raise ValueError(f"TL_{f.name.upper()}={value!r} is not one of {allowed}: {f.metadata['help']}")


def _parse(text: str, kind) -> object:
    kind = str(kind)
    if kind.startswith("bool"):
        return text  # parse_switch reads it, with a clear error for a wrong word
    if text.strip().lower() in ("", "none") and "None" in kind:
        return None
    if "int" in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    if "Path" in kind:
        return Path(text).expanduser()
    return text


def load_config(**overrides) -> Config:
    """Build the configuration: defaults < budget preset < ``TL_*`` env vars < ``overrides``."""
    values = {}
    for f in fields(Config):
        env = os.environ.get(f"TL_{f.name.upper()}")
        if env is not None:
            try:
                values[f.name] = _parse(env, f.type)
            except ValueError:
                raise ValueError(f"TL_{f.name.upper()}={env!r} is not a valid {f.type}: {f.metadata['help']}") from None
    values.update(overrides)
    return Config(**values)


def auto_budget() -> str:
    if os.environ.get("CI"):
        return "smoke"
    return "full" if visible_gpus().count else "cpu"
