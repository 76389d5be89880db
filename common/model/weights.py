"""Where the model's weights come from: torchvision's ImageNet weights, a file, or random, loudly.

``load_backbone`` returns torchvision's ResNet50 with the requested weights; ``weights="auto"`` falls back to
random weights once per kernel with a banner that says how to supply the real ones (a file, Kaggle's attached
datasets, torch's hub cache).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from common.runtime import KAGGLE_INPUT, loud, walk_kaggle_input


IMAGENET_WEIGHTS = ResNet50_Weights.IMAGENET1K_V2


# The file torchvision downloads for IMAGENET_WEIGHTS (under torch.hub.get_dir()/checkpoints/).
IMAGENET_FILE = Path(IMAGENET_WEIGHTS.url).name


_UNAVAILABLE: dict[str, WeightsInfo] = {}  # weights="auto" that fell back, remembered for the rest of the kernel


class WeightsError(RuntimeError):
    """The requested weights cannot be had; the message says how to supply them."""


@dataclass
class WeightsInfo:
    source: str  # "imagenet", "file:<path>" or "random"
    fallback: str | None = None  # set when something other than the request was used
    notes: list[str] = field(default_factory=list)


def imagenet_normalisation() -> tuple[list[float], list[float]]:
    """Mean and std that the ImageNet weights were trained with (from the weights enum)."""
    t = IMAGENET_WEIGHTS.transforms()
    return list(t.mean), list(t.std)


def _how_to_supply() -> str:
    hub = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE
    return (f"Expected file: {IMAGENET_FILE} (torchvision ResNet50 {IMAGENET_WEIGHTS.name}).\n"
            f"Either put it at {hub}\n"
            f"or use load_config(weights=\"/path/to/{IMAGENET_FILE}\") (or TL_WEIGHTS; on Kaggle with internet off: "
            f"attach the file as a dataset, it is found under {KAGGLE_INPUT}),\n"
            f"or weights=\"random\" to continue without pretrained weights (transfer is then not meaningful).")


def _imagenet_backbone(weights_dir: Path | None) -> nn.Module:
    """ResNet50 with ImageNet weights: from torch's hub cache if the file is already there, else from
    ``weights_dir`` (downloading into it), so the suite writes nothing outside the project's folders. The
    weights are fetched before any network is built: a download that fails has then drawn no random numbers,
    and the random fallback is the same network on the first call as on every later one."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE
    model_dir = None if weights_dir is None or cached.is_file() else str(weights_dir)
    target = Path(model_dir) / IMAGENET_FILE if model_dir else cached
    if target.is_file():
        state = IMAGENET_WEIGHTS.get_state_dict(progress=False, model_dir=model_dir)
    else:
        # torch announces "Downloading: ..." before it knows whether the network answers; offline, that line would
        # stand right above the fallback's banner. Its own line comes once the file is here.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # torch: stdout
            state = IMAGENET_WEIGHTS.get_state_dict(progress=False, model_dir=model_dir)
        print(f"ImageNet weights downloaded into {target.parent}.")
    model = resnet50(weights=None)
    model.load_state_dict(state)
    return model


def load_backbone(weights: str = "auto", weights_dir: Path | None = None) -> tuple[nn.Module, WeightsInfo]:
    """A torchvision ResNet50 with the requested weights.

    ``weights``: ``"imagenet"`` (the torchvision enum; cached file, else downloaded into ``weights_dir``),
    ``"auto"`` (imagenet, else random weights with a loud warning), ``"random"``,
    or a path to a ``.pth`` state dict.
    """
    if weights in ("random", "none"):
        return resnet50(weights=None), WeightsInfo("random")
    if weights == "auto" and "imagenet" in _UNAVAILABLE:  # failed once in this kernel: don't try (and print) again
        return resnet50(weights=None), _UNAVAILABLE["imagenet"]
    if weights in ("imagenet", "auto"):
        attached = find_attached_weights()
        if attached is not None:  # e.g. a Kaggle notebook with internet off and the file attached
            return load_weights_file(attached), WeightsInfo(f"imagenet (file:{attached})")
        try:
            return _imagenet_backbone(weights_dir), WeightsInfo("imagenet")
        except Exception as exc:  # no network, proxy, corrupt cache, ...
            problem = f"The ImageNet weights could not be loaded ({type(exc).__name__}: {exc})."
            if weights == "imagenet":
                raise WeightsError(f"{problem}\n{_how_to_supply()}") from exc
            folder = weights_dir or Path(torch.hub.get_dir()) / "checkpoints"
            loud(f"no ImageNet weights ({type(exc).__name__}): using RANDOM weights, so the 'transfer' runs transfer "
                 "nothing.", f"To supply them: put {IMAGENET_FILE} in {folder} (on Kaggle: attach it as input) or "
                 f"load_config(weights=\"/path/to/{IMAGENET_FILE}\"); weights=\"random\" silences this.")
            _UNAVAILABLE["imagenet"] = WeightsInfo("random", fallback="imagenet weights unavailable: random weights used")
            return resnet50(weights=None), _UNAVAILABLE["imagenet"]
    return load_weights_file(Path(weights)), WeightsInfo(f"file:{weights}")


def find_attached_weights() -> Path | None:
    """``resnet50-11ad3fa6.pth`` attached to a Kaggle notebook, wherever it is mounted."""
    return next((folder / IMAGENET_FILE for folder, files in walk_kaggle_input() if IMAGENET_FILE in files), None)


def load_weights_file(path: Path) -> nn.Module:
    """A ResNet50 with weights from a local state-dict file (loaded with ``weights_only=True``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist.\n{_how_to_supply()}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable PyTorch state dict ({type(exc).__name__}: {exc}). "
                           f"It may be truncated or not a weights file.\n{_how_to_supply()}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    model = resnet50(weights=None)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict.\n{_how_to_supply()}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise WeightsError(f"{path} does not hold ResNet50 weights: {' '.join(first)[:400]}\n{_how_to_supply()}") from None
    return model
