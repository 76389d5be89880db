"""One typed configuration for the whole suite, read in exactly one place.

Every field can be overridden by an environment variable named ``TL_<FIELD>``
(for example ``TL_BUDGET=smoke`` or ``TL_EPOCHS=3``). The budget switch
``TL_BUDGET`` picks a preset for everything that decides how much work a run
does; explicit overrides win over the preset.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import random
import sys
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

# How much work a run does. "smoke" is for CI (seconds per notebook on 2 CPU
# cores), "cpu" for a learner's laptop (minutes), "full" is the source article's
# recipe for a GPU (224 px, ImageNet normalisation, several epochs).
BUDGETS: dict[str, dict] = {
    "smoke": dict(image_size=64, epochs=2, batch_size=16, demo_images_per_class=24,
                  train_per_class=None, eval_per_class=None, num_workers=0),
    "cpu": dict(image_size=112, epochs=3, batch_size=32, demo_images_per_class=80,
                train_per_class=60, eval_per_class=20, num_workers=None),
    "full": dict(image_size=224, epochs=10, batch_size=64, demo_images_per_class=200,
                 train_per_class=None, eval_per_class=None, num_workers=None),
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
    image_size: int = field(default=FROM_BUDGET, **_help("training crop size in pixels (from the budget)"))
    epochs: int = field(default=FROM_BUDGET, **_help("epochs per run (from the budget)"))
    batch_size: int = field(default=FROM_BUDGET, **_help("images per batch (from the budget)"))
    lr: float = field(default=1e-3, **_help("Adam learning rate, cosine-annealed over the epochs"))
    weight_decay: float = field(default=1e-4, **_help("Adam weight decay"))
    dropout: float = field(default=0.2, **_help("dropout before the new linear head"))
    val_fraction: float = field(default=0.15, **_help("validation share when the split is made here"))
    test_fraction: float = field(default=0.15, **_help("test share when the split is made here"))
    train_per_class: int | None = field(default=FROM_BUDGET, **_help("cap on training images per class (from the budget)"))
    eval_per_class: int | None = field(default=FROM_BUDGET, **_help("cap on validation/test images per class (from the budget)"))
    demo_images_per_class: int = field(default=FROM_BUDGET, **_help("size of the offline demo dataset (from the budget)"))
    num_workers: int | None = field(default=FROM_BUDGET, **_help("DataLoader workers; empty means pick for this machine"))
    precision: str = field(default="auto", **_help("auto (bf16 where the GPU has it, fp16 on other CUDA GPUs, fp32 on CPU) | fp32 | bf16 | fp16"))
    channels_last: str = field(default="auto", **_help("auto (on with CUDA) | 1 | 0: NHWC memory layout for the convolutions"))
    cache_images: str = field(default="auto", **_help("auto (when the decoded images fit in a third of the free memory) | 1 | 0: decode each image once into memory, later epochs only augment"))
    resume: int = field(default=1, **_help("1: continue an interrupted run from its last complete epoch; 0: start over"))
    drop_duplicates: int = field(default=0, **_help("1: drop evaluation copies of images that also occur in train"))
    deterministic: int = field(default=0, **_help("1: ask for repeatable kernels (warn where none exist; slower on GPU)"))
    early_stopping: int = field(default=0, **_help("stop after this many epochs without a better validation accuracy (0: off)"))
    top_k: int = field(default=5, **_help("how many class probabilities each test prediction keeps"))

    def __post_init__(self) -> None:
        if self.budget == "auto":
            self.budget = auto_budget()
        if self.budget not in BUDGETS:
            raise ValueError(f"Unknown budget {self.budget!r}: set TL_BUDGET to one of {', '.join(BUDGETS)} or auto.")
        for name, value in BUDGETS[self.budget].items():
            if getattr(self, name) is FROM_BUDGET:
                setattr(self, name, value)
        if self.num_workers is None:
            self.num_workers = default_num_workers()
        for name, allowed in _CHOICES.items():
            text = str(getattr(self, name)).strip().lower()
            value = _SWITCH_WORDS.get(text, text)
            if value not in allowed:
                raise ValueError(f"TL_{name.upper()}={getattr(self, name)!r} is not one of {', '.join(allowed)}: "
                                 f"{CONFIG_HELP[name]}")
            setattr(self, name, value)
        self.data_dir, self.runs_dir = Path(self.data_dir), Path(self.runs_dir)

    def as_dict(self) -> dict:
        """Plain, JSON-friendly values (paths as strings) for run records."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def show(self) -> None:
        """Print the configuration, marking values that came from the environment."""
        print("Configuration (override any field with TL_<FIELD>, e.g. TL_BUDGET=smoke):")
        for f in fields(self):
            source = "  <- env" if f"TL_{f.name.upper()}" in os.environ else ""
            print(f"  {f.name:<22} {getattr(self, f.name)!s:<28}{source}")
        print(f"  runtime: {detect_runtime()}, device: {pick_device(self.device)}, python {platform.python_version()}")


_CHOICES = {"precision": ("auto", "fp32", "bf16", "fp16"), "channels_last": ("auto", "1", "0"),
            "cache_images": ("auto", "1", "0")}
_SWITCH_WORDS = {"true": "1", "yes": "1", "on": "1", "false": "0", "no": "0", "off": "0"}
CONFIG_HELP = {f.name: f.metadata["help"] for f in fields(Config)}


def _parse(text: str, kind) -> object:
    kind = str(kind)
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


def loud(message: str) -> None:
    """Print a banner no one can miss, and raise a warning for logs."""
    bar = "!" * 78
    print(f"{bar}\n{message}\n{bar}", flush=True)
    warnings.warn(message.splitlines()[0], stacklevel=2)


def auto_budget() -> str:
    if os.environ.get("CI"):
        return "smoke"
    return "full" if torch.cuda.is_available() else "cpu"


KAGGLE_INPUT = Path("/kaggle/input")  # where Kaggle mounts a notebook's attached datasets and models
_SPLIT_FOLDERS = ("train", "training", "validation", "val", "valid", "test", "testing")


def walk_kaggle_input(max_depth: int = 6):
    """(folder, file names) under Kaggle's attached inputs, however deep Kaggle mounted them (newer
    mounts nest as datasets/<owner>/<slug>/versions/<n>), never descending into split folders:
    listing the 21,000 images of an attached dataset would take a while."""
    if not KAGGLE_INPUT.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(KAGGLE_INPUT):
        here = Path(dirpath)
        yield here, filenames
        depth = len(here.relative_to(KAGGLE_INPUT).parts)
        dirnames[:] = [] if depth >= max_depth else [d for d in dirnames if d.lower() not in _SPLIT_FOLDERS]


def detect_runtime() -> str:
    """'colab', 'kaggle' or 'local'."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or Path("/kaggle/working").is_dir():
        return "kaggle"
    return "local"


def pick_device(preference: str = "auto") -> torch.device:
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(choice: str, device: torch.device) -> str:
    """Mixed precision on CUDA (bf16 where native, else fp16 with a gradient scaler); fp32 elsewhere,
    because bf16 emulated on a CPU without native support is several times slower."""
    if choice == "fp16" and device.type == "cpu":
        # Lightning runs "16-mixed" on the CPU as bf16 (with a warning); doing the same in every engine keeps
        # the three computing one thing.
        print("TL_PRECISION=fp16 is for CUDA GPUs: on the CPU every engine uses bf16 instead (as Lightning does).")
        return "bf16"
    if choice != "auto":
        return choice
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def resolve_channels_last(choice: str, device: torch.device) -> bool:
    """``choice`` is already "auto", "1" or "0" (the configuration normalises it)."""
    return device.type == "cuda" if choice == "auto" else choice == "1"


def default_num_workers() -> int:
    """Workers that help without oversubscribing: leave one core for the training process.

    Safe under spawn (Windows, macOS) because the datasets and transforms live in
    importable modules of ``common``.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
