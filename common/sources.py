"""Where a dataset comes from: the offline demo, the Kaggle vegetables, or any folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Config, detect_runtime
from .demo_data import make_demo_dataset
from .model import loud

VEGETABLES_SLUG = "misrakahmed/vegetable-image-dataset"
VEGETABLES_FOLDER = "vegetable-images"


class DataUnavailableError(RuntimeError):
    """The requested dataset is not here; the message says how to get it."""


@dataclass
class DataSource:
    name: str  # short id used in folder names and figure labels
    root: Path
    is_demo: bool = False
    fallback: str | None = None


def demo_source(cfg: Config) -> DataSource:
    size = max(64, cfg.image_size)
    name = f"toy-vegetables-{cfg.demo_images_per_class}x{size}px"
    root = make_demo_dataset(cfg.data_dir / name, cfg.demo_images_per_class, size, seed=cfg.seed)
    return DataSource("demo", root, is_demo=True)


def find_vegetables(cfg: Config) -> Path | None:
    """A local or Kaggle-attached copy of the vegetable dataset, if there is one."""
    local = cfg.data_dir / VEGETABLES_FOLDER
    if local.is_dir() and any(local.iterdir()):
        return local
    kaggle_input = Path("/kaggle/input")
    if kaggle_input.is_dir():  # Kaggle mounts attached data at varying depths
        for hit in sorted(kaggle_input.rglob("Vegetable Images")):
            if hit.is_dir():
                return hit
    return None


def _vegetables_help(cfg: Config) -> str:
    return (f"The Kaggle Vegetable Image Dataset ({VEGETABLES_SLUG}) was not found in "
            f"{cfg.data_dir / VEGETABLES_FOLDER} or under /kaggle/input.\n"
            f"Download it from https://www.kaggle.com/datasets/{VEGETABLES_SLUG} and unzip it into "
            f"{cfg.data_dir / VEGETABLES_FOLDER}, or on Kaggle attach it with 'Add Input'.\n"
            "Or set TL_DATASET=demo to run on the offline demo data.")


def resolve_dataset(cfg: Config) -> DataSource:
    """The dataset the configuration asks for. ``auto`` prefers the real data and
    falls back to the demo data with a loud notice."""
    choice = cfg.dataset
    if choice == "demo":
        return demo_source(cfg)
    if choice in ("vegetables", "auto"):
        found = find_vegetables(cfg)
        if found is not None:
            return DataSource("vegetables", found)
        if choice == "vegetables":
            raise DataUnavailableError(_vegetables_help(cfg))
        loud("FALLBACK: using the OFFLINE DEMO dataset (procedurally drawn toy vegetables), "
             "not the real one.\n" + _vegetables_help(cfg))
        source = demo_source(cfg)
        source.fallback = "real dataset unavailable: offline demo data used"
        return source
    root = Path(choice).expanduser()
    if not root.is_dir():
        raise DataUnavailableError(f"TL_DATASET={choice!r} is neither demo, vegetables, auto nor an existing folder.")
    return DataSource(root.name, root)


__all__ = ["DataSource", "DataUnavailableError", "resolve_dataset", "find_vegetables", "detect_runtime"]
