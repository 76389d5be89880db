"""Where the code runs: platform, device, precision, memory layout, workers, seeding, library versions, and the loud banner."""
from __future__ import annotations

import io
import logging
import os
import platform
import random
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

KAGGLE_INPUT = Path("/kaggle/input")  # where Kaggle mounts a notebook's attached datasets and models
_SPLIT_FOLDERS = ("train", "training", "validation", "val", "valid", "test", "testing")


_SHOWN_BANNERS: set[str] = set()


def loud(problem: str, remedy: str) -> None:
    """A fallback's banner, in two lines no one can miss: what is missing and what is used instead, then how to
    supply it. Once per process: one banner per fallback in a notebook, however many runs take it (the run
    records and figure captions keep it for later). Printed only, not also warned."""
    if "\n" in problem + remedy:
        raise ValueError("A fallback banner is two lines: the problem and the remedy, each without a line break.")
    if (problem, remedy) in _SHOWN_BANNERS:
        return
    _SHOWN_BANNERS.add((problem, remedy))
    print(f"!! FALLBACK: {problem}\n!! {remedy}", flush=True)


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


@dataclass(frozen=True)
class Gpus:
    """The GPUs this process may use, learnt without initialising CUDA (a notebook that did can no longer fork):
    their names and compute capabilities (None where the driver's NVML library could not say)."""
    names: tuple[str, ...] = ()
    capabilities: tuple[tuple[int, int], ...] | None = None

    @property
    def count(self) -> int:
        return len(self.names)

    def all_at_least(self, capability: tuple[int, int]) -> bool | None:
        """Whether every GPU has at least ``capability``: one answer for all, so that every process of a run makes
        the same choice (None: unknown)."""
        return None if self.capabilities is None else all(c >= capability for c in self.capabilities)


def visible_gpus() -> Gpus:
    """The GPUs of this process (``CUDA_VISIBLE_DEVICES`` respected), asked of NVML, never of the CUDA runtime."""
    return _gpus(os.environ.get("CUDA_VISIBLE_DEVICES"))


@lru_cache(maxsize=4)
def _gpus(visible: str | None) -> Gpus:
    count = torch.cuda.device_count()  # NVML first in current torch; never initialises CUDA where NVML answers
    if not count:
        return Gpus()
    found = _nvml_gpus()
    if found is None or len(found) < count:
        if torch.cuda.is_initialized():  # asking the runtime costs nothing more now
            return Gpus(tuple(torch.cuda.get_device_name(i) for i in range(count)),
                        tuple(torch.cuda.get_device_capability(i) for i in range(count)))
        return Gpus(("GPU",) * count)
    indices = [int(i) for i in visible.split(",")] if visible and all(i.strip().isdigit() for i in visible.split(",")) else range(count)
    chosen = [found[i] for i in indices if i < len(found)][:count]
    return Gpus(tuple(name for name, _ in chosen), tuple(cap for _, cap in chosen))


def _nvml_gpus() -> list[tuple[str, tuple[int, int]]] | None:
    """(name, compute capability) of every GPU the NVIDIA driver shows, from NVML through ctypes (as torch itself
    counts them); None where NVML is missing or fails. No library wraps this without a new dependency."""
    import ctypes
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return None
    except (OSError, AttributeError):  # no NVIDIA driver, or one too old for these calls
        return None
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return None
        found = []
        for index in range(count.value):
            handle, name = ctypes.c_void_p(), ctypes.create_string_buffer(96)
            major, minor = ctypes.c_int(), ctypes.c_int()
            if (nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle))
                    or nvml.nvmlDeviceGetName(handle, name, 96)
                    or nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor))):
                return None
            found.append((name.value.decode(errors="replace"), (major.value, minor.value)))
        return found
    except AttributeError:
        return None
    finally:
        nvml.nvmlShutdown()


def pick_device(preference: str = "auto") -> torch.device:
    if preference != "auto":
        return torch.device(preference)
    if visible_gpus().count:
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(choice: str, device: torch.device) -> str:
    """Mixed precision on CUDA (bf16 where every GPU has it natively, compute capability 8.0 and up: A100, L4,
    H100; else fp16 with a gradient scaler: T4, P100, V100); fp32 elsewhere, because bf16 emulated on a CPU
    without native support is several times slower. Decided from :func:`visible_gpus`, so the notebook's
    process and every process it forks, in every engine, choose the same, and nothing initialises CUDA."""
    if choice == "fp16" and device.type == "cpu":
        # Lightning runs "16-mixed" on the CPU as bf16 (with a warning); doing the same in every engine keeps
        # the three computing one thing.
        print("precision fp16 is for CUDA GPUs: on the CPU every engine uses bf16 instead (as Lightning does).")
        return "bf16"
    if choice != "auto":
        return choice
    if device.type != "cuda":
        return "fp32"
    return "bf16" if visible_gpus().all_at_least((8, 0)) else "fp16"  # unknown GPUs: fp16, which every one runs


def resolve_channels_last(choice: bool | None, device: torch.device) -> bool:
    """``choice`` None means auto: NHWC on CUDA GPUs with tensor cores (compute capability 7.0 and up), where
    cuDNN prefers it; not on a P100 (6.0), where it is often slower, nor on the CPU."""
    if choice is not None:
        return bool(choice)
    return device.type == "cuda" and visible_gpus().all_at_least((7, 0)) is not False


def default_num_workers(device: torch.device) -> int:
    """Loader workers that help. None when training on the CPU: its cores already run the network, and a worker
    only competes with them (on 2 cores, one worker made every epoch about a quarter slower; decoding and
    augmenting cost little next to a ResNet50 step there). With a GPU, workers prepare the next batches while
    it computes: up to 4, leaving one core for the training process.

    Safe under spawn (Windows, macOS) because the datasets and transforms live in
    importable modules of ``common``.
    """
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def random_state_kept():
    """Run the block, then put every random number generator that ``seed_everything`` seeds back as it was
    (Python's, NumPy's, torch's on the CPU and on every GPU in use): what the block drew leaves no trace in what
    comes after it. GPUs count only once CUDA has started, so that this never starts it (a notebook that started
    CUDA can no longer fork)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=gpus):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


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


def resolve_devices(devices: str | int, device: str = "auto") -> int:
    """How many processes a run trains on: ``devices`` is 1, a number, or ``auto`` (every visible GPU; 1 without
    one). Several processes are started by fork from the notebook, which only works on Linux, and only while
    nothing in this kernel has touched CUDA, nor, on a machine with a GPU, trained at all
    (:func:`backward_survives_fork`): elsewhere the answer is 1, with a banner saying what to do.
    On the CPU (no GPU, or ``device="cpu"``) a number above 1 runs that many gloo processes (to learn and test
    the mechanics)."""
    if str(devices) != "auto" and int(devices) <= 1:
        return 1
    gpus = visible_gpus().count if pick_device(device).type == "cuda" else 0
    wanted = (gpus or 1) if str(devices) == "auto" else int(devices)
    if wanted <= 1:
        return 1
    if gpus and wanted > gpus:
        raise ValueError(f"devices={devices!r} asks for {wanted} processes, but this machine shows {gpus} GPU(s): "
                         f"use devices='auto' (all {gpus}), a number up to {gpus}, or device='cpu' for CPU processes.")
    if platform.system() != "Linux" or "fork" not in torch.multiprocessing.get_all_start_methods():
        loud(f"devices={devices!r} needs processes forked from the notebook, which {platform.system()} notebooks do not "
             "offer safely: training on ONE device.",
             "To use several, run the training as a script under torchrun on Linux (README, 'Several devices').")
        return 1
    if gpus and visible_gpus().capabilities is None and not torch.cuda.is_initialized():
        loud(f"devices={devices!r}, but the driver's NVML library did not answer, so counting the GPUs started CUDA, "
             "after which forked processes cannot use it: training on ONE device.",
             "To use all GPUs, run the training as a script under torchrun (README, 'Several devices').")
        return 1
    if torch.cuda.is_initialized() or not backward_survives_fork():
        loud(f"devices={devices!r}, but this kernel already used the GPU, or trained on a machine that has one, and "
             "processes forked from it cannot train (not even on the CPU): training on ONE device.",
             "Restart the kernel and set devices in the first configuration cell, before anything trains.")
        return 1
    return wanted


def backward_survives_fork() -> bool:
    """Whether a process forked from this one can run a backward pass, tried in a throwaway fork. Not once this
    process ran a backward on a machine with a GPU, even on the CPU: autograd then starts a thread per GPU, and
    torch refuses autograd in a fork of it (seen on an H200). On a machine without a GPU it always can."""
    child = os.fork()
    if child == 0:  # the throwaway process: one tiny backward, then out without any of the parent's clean-up
        try:
            torch.set_num_threads(1)  # the parent's OpenMP threads did not survive the fork (as_child_process)
            torch.ones(1, requires_grad=True).sum().backward()
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0


def quiet_lightning() -> None:
    """Keep Lightning's warnings that matter, drop its chatter: its INFO-level device choices and tips (and
    "Initializing distributed: ..." with several devices), and four warnings, silenced by their message as
    Lightning's documentation shows, each for a reason:

    - "modules in eval mode at the start of training": Lightning noticing the frozen trunk, which the recipe
      keeps in eval mode on purpose so that its BatchNorm statistics stay put (notebook 00);
    - a loader with few worker processes: the suite picks them per machine (none under the smoke budget);
    - a checkpoint folder that is not empty: a new run clears it, a resumed run finds its checkpoint there;
    - a torch API that this Lightning version still uses and newer torch deprecates (a note for Lightning's
      developers, not for learners)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for message in (".*in eval mode at the start of training.*", ".*does not have many workers.*",
                    ".*exists and is not empty.*", ".*treespec, LeafSpec.* is deprecated.*"):
        warnings.filterwarnings("ignore", message)


def as_child_process() -> None:
    """First thing in a process forked from a notebook: one CPU thread (the notebook's OpenMP threads did not
    survive the fork, and a forked process that used them would hang), and, on Linux, end when the notebook's
    kernel dies (a disconnected Colab kernel must not leave orphans that keep writing the run's files)."""
    torch.set_num_threads(1)
    if platform.system() == "Linux":
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    sys.stdout = WholeLines(sys.stdout)


class WholeLines(io.TextIOBase):
    """A forked process's ``sys.stdout`` that hands on whole lines. Jupyter's output stream sends each write of a
    forked process as its own output at once, and ``print`` writes its text and its newline apart: without this,
    a saved notebook shows an empty output after every line a process prints. (io.TextIOWrapper's line buffering
    needs a binary stream, which Jupyter's is not.)"""

    def __init__(self, stream):
        self.stream, self.pending = stream, ""

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in self.pending:
            lines, _, self.pending = self.pending.rpartition("\n")
            self.stream.write(lines + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.stream.write(self.pending)
            self.pending = ""
        self.stream.flush()


@contextmanager
def processes_environment(device: str = "auto"):
    """Around the fork of a run's processes: what they inherit. CPU processes on a GPU machine see no GPU
    (``CUDA_VISIBLE_DEVICES`` empty): Ignite's ``idist.Parallel`` would otherwise put each on GPU ``local_rank``
    (an invalid device on a one-GPU Colab), and each would open a CUDA context it never uses. The notebook's own
    environment is restored afterwards."""
    hide = pick_device(device).type != "cuda" and visible_gpus().count > 0
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hide:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if hide and before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        elif hide:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def free_port() -> int:
    """A free TCP port on this machine, where the processes of one run meet (127.0.0.1 only)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_backend(device: str = "auto") -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if pick_device(device).type == "cuda" else "gloo"


def describe_devices(devices: str | int, device: str = "auto") -> str:
    """One line on how many processes a run will train on here, and how to use more where there are more."""
    gpus = visible_gpus().count if pick_device(device).type == "cuda" else 0
    world = resolve_devices(devices, device)
    if world > 1:
        return (f"Training on {world} {'GPUs' if gpus else 'CPU processes (gloo)'}, one process each (devices={devices!r}); "
                "rank 0 prints each epoch (processes forked from a notebook cannot draw progress bars in it).")
    if gpus > 1:
        return (f"Training on one of this machine's {gpus} GPUs (devices={devices!r}); load_config(devices='auto') "
                "trains on all of them (set it in the first configuration cell, before anything runs on a GPU).")
    where = "one GPU" if gpus else "no GPU"
    return (f"Training in one process (devices={devices!r}; this machine has {where}). To watch two CPU processes "
            "share every batch: load_config(devices=2, device=\"cpu\") (things to try).")
