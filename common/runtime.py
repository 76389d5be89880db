"""Where the code runs: platform, device, precision, memory layout, workers, seeding, library versions, and the loud banner."""
from __future__ import annotations

import os
import platform
import random
import sys
from pathlib import Path

import numpy as np
import torch

KAGGLE_INPUT = Path("/kaggle/input")  # where Kaggle mounts a notebook's attached datasets and models
_SPLIT_FOLDERS = ("train", "training", "validation", "val", "valid", "test", "testing")


_SHOWN_BANNERS: set[str] = set()


def loud(message: str) -> None:
    """Print a banner no one can miss, once per process: one banner per fallback in a notebook, however many
    runs take it (the run records and figure captions keep it for later). Printed only, not also warned."""
    if message in _SHOWN_BANNERS:
        return
    _SHOWN_BANNERS.add(message)
    bar = "!" * 78
    print(f"{bar}\n{message}\n{bar}", flush=True)


def detect_runtime() -> str:
    """'colab', 'kaggle' or 'local'."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or Path("/kaggle/working").is_dir():
        return "kaggle"
    return "local"


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
        print("precision fp16 is for CUDA GPUs: on the CPU every engine uses bf16 instead (as Lightning does).")
        return "bf16"
    if choice != "auto":
        return choice
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def resolve_channels_last(choice: bool | None, device: torch.device) -> bool:
    """``choice`` None means auto: NHWC on CUDA, where tensor cores and cuDNN prefer it."""
    return device.type == "cuda" if choice is None else bool(choice)


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


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run depends on (stored in every run record)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "pytorch-ignite", "lightning", "scikit-learn", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
