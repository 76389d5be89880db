"""Sources: where a dataset comes from (the offline demo, a real dataset, any folder of class folders).

A real dataset is used from a local copy, attached on Kaggle, or downloaded.

A downloaded dataset appears in ``data/`` only once it is complete and verified
(``.complete.json`` inside it); interrupted downloads and extractions leave
nothing that looks complete, and their leftovers are cleaned on the next try.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from common.data.archives import download_url, remove_stale_partials, safe_extract
from common.config import Config
from common.io import folder_swapped_in
from common.runtime import KAGGLE_INPUT, detect_runtime, loud, walk_kaggle_input
from common.data.split import DatasetError, detect_layout, list_classes
from common.data.demo import make_demo_dataset

STAMP = ".complete.json"


class DataUnavailableError(RuntimeError):
    """The requested dataset is not here and cannot be fetched; the message says how to get it."""


@dataclass(frozen=True)
class RemoteDataset:
    """A real dataset the suite knows how to fetch and check."""
    name: str  # the TL_DATASET value
    folder: str  # its folder under data/
    classes: int  # number of classes expected
    counts: dict[str, int] | None = None  # images expected per split folder, if checked
    kaggle_slug: str | None = None
    url: str | None = None
    kaggle_input_marker: str | None = None  # a folder name that identifies it under /kaggle/input
    drop_classes: tuple[str, ...] = ()
    rename_classes: dict[str, str] = field(default_factory=dict)


VEGETABLES = RemoteDataset(
    "vegetables", "vegetable-images", 15, {"train": 15000, "validation": 3000, "test": 3000},
    kaggle_slug="misrakahmed/vegetable-image-dataset", kaggle_input_marker="Vegetable Images")
IMAGEWOOF = RemoteDataset(
    "imagewoof", "imagewoof2-160", 10, url="https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz",
    kaggle_input_marker="imagewoof2-160",
    rename_classes={"n02086240": "shih-tzu", "n02087394": "rhodesian_ridgeback", "n02088364": "beagle",
                    "n02089973": "english_foxhound", "n02093754": "border_terrier", "n02096294": "australian_terrier",
                    "n02099601": "golden_retriever", "n02105641": "old_english_sheepdog", "n02111889": "samoyed",
                    "n02115641": "dingo"})
CALTECH101 = RemoteDataset(
    "caltech101", "caltech-101", 101, url="https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
    kaggle_input_marker="101_ObjectCategories", drop_classes=("BACKGROUND_Google",))
REMOTE = {d.name: d for d in (VEGETABLES, IMAGEWOOF, CALTECH101)}


@dataclass
class DataSource:
    name: str  # short id used in folder names and figure labels
    root: Path
    is_demo: bool = False
    fallback: str | None = None


# ------------------------------------------------------------------ checking


def verify_dataset(root: Path, spec: RemoteDataset) -> dict:
    """Check the class count (and split counts, where known); return what was found."""
    layout = detect_layout(root)
    folders = layout.split_dirs if layout.kind == "presplit" else {"all": layout.root}
    found = {}
    for split, folder in folders.items():
        classes = list_classes(folder)
        if len(classes) != spec.classes:
            raise DatasetError(f"{folder} has {len(classes)} class folders, {spec.name} has {spec.classes}. "
                               f"The copy is incomplete or not {spec.name}: delete {root} and fetch it again.")
        found[folder.name] = sum(len(files) for files in classes.values())
    if spec.counts:
        wrong = {k: (found.get(k), v) for k, v in spec.counts.items() if found.get(k) != v}
        if wrong:
            detail = ", ".join(f"{k}: {got} found, {want} expected" for k, (got, want) in wrong.items())
            raise DatasetError(f"{root} does not hold the complete {spec.name} dataset ({detail}). "
                               f"Delete it and fetch it again.")
    return found


def find_in_kaggle_input(spec: RemoteDataset) -> Path | None:
    """An attached copy under ``/kaggle/input``, wherever Kaggle mounted it (read in place, never copied)."""
    if not spec.kaggle_input_marker:
        return None
    return next((folder for folder, _ in walk_kaggle_input() if folder.name == spec.kaggle_input_marker), None)


# ------------------------------------------------------------------ fetching


def _finish_layout(staging: Path, spec: RemoteDataset) -> Path:
    """Unpack nested archives, drop and rename classes; return the dataset root inside ``staging``."""
    for inner in list(staging.rglob("*.tar.gz")) + list(staging.rglob("*.tgz")):  # e.g. Caltech's image archive
        safe_extract(inner, inner.parent / inner.name.split(".")[0])
        inner.unlink()
    markers = sorted(staging.rglob(spec.kaggle_input_marker or "\0"), key=lambda p: len(p.parts))
    root = markers[0] if markers and markers[0].is_dir() else staging
    while True:  # descend wrapper folders (a nested archive unpacks into one more level)
        children = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(children) == 1 and children[0].is_dir():
            root = children[0]
        else:
            break
    for folder in [root, *(p for p in root.iterdir() if p.is_dir())]:
        for name in spec.drop_classes:
            shutil.rmtree(folder / name, ignore_errors=True)
        for old, new in spec.rename_classes.items():
            if (folder / old).is_dir():
                (folder / old).rename(folder / new)
    return root


def fetch_dataset(spec: RemoteDataset, data_dir: Path) -> Path:
    """Download, unpack safely, verify and move into ``data_dir/<folder>``; idempotent."""
    from common.data.kaggle import download_kaggle_dataset

    data_dir = Path(data_dir)
    final = data_dir / spec.folder
    if (final / STAMP).is_file():
        return final
    downloads = data_dir / "downloads"
    remove_stale_partials(data_dir, spec.folder)
    if spec.kaggle_slug:
        archive = download_kaggle_dataset(spec.kaggle_slug, downloads)
    else:
        archive = download_url(spec.url, downloads / Path(spec.url).name)
    with folder_swapped_in(final) as staging:  # only a verified copy ever appears at `final`
        unpacked = safe_extract(archive, staging / ".unpacked")
        for child in unpacked.iterdir():  # the archive's own top level, directly in the dataset's folder
            child.rename(staging / child.name)
        unpacked.rmdir()
        root = _finish_layout(staging, spec)
        counts = verify_dataset(root, spec)
        (staging / STAMP).write_text(json.dumps(dict(dataset=spec.name, root=str(root.relative_to(staging)),
                                                     counts=counts), indent=1))
    archive.unlink(missing_ok=True)  # the verified copy is what we keep; archives are big
    return final


def local_copy(spec: RemoteDataset, data_dir: Path) -> Path | None:
    """A complete copy in ``data_dir``: fetched by the suite (stamped) or unpacked by hand (verified)."""
    final = Path(data_dir) / spec.folder
    if (final / STAMP).is_file():
        return final / json.loads((final / STAMP).read_text()).get("root", ".")
    if final.is_dir() and any(final.iterdir()):
        verify_dataset(final, spec)  # a hand-made copy must be complete; the error says what is off
        return final
    return None


def real_dataset(spec: RemoteDataset, cfg: Config, download: bool = True) -> Path | None:
    """The dataset's root: local copy, else attached on Kaggle, else downloaded (if ``download``)."""
    found = local_copy(spec, cfg.data_dir) or find_in_kaggle_input(spec)
    if found is not None or not download:
        return found
    return local_copy(spec, fetch_dataset(spec, cfg.data_dir).parent)


# ------------------------------------------------------------------ choosing


def demo_source(cfg: Config) -> DataSource:
    size = max(64, cfg.image_size)
    name = f"toy-vegetables-{cfg.demo_images_per_class}-per-class-{size}px"
    root = make_demo_dataset(cfg.data_dir / name, cfg.demo_images_per_class, size, seed=cfg.seed)
    return DataSource("demo", root, is_demo=True)


def dataset_name(choice: str) -> str | None:
    """The name a dataset's records are filed under, without fetching anything; None for ``auto``
    (which picks at run time)."""
    if choice == "auto":
        return None
    if choice == "demo" or choice in REMOTE:
        return choice
    return Path(choice).expanduser().name


def resolve_dataset(cfg: Config) -> DataSource:
    """The dataset the configuration names. ``auto``: the real vegetables if they are here
    (or, on Colab and Kaggle, can be fetched), else the demo data with a loud notice."""
    choice = cfg.dataset
    if choice == "demo":
        return demo_source(cfg)
    if choice in REMOTE:
        return DataSource(choice, real_dataset(REMOTE[choice], cfg))
    if choice == "auto":
        on_platform = detect_runtime() in ("colab", "kaggle")
        found = real_dataset(VEGETABLES, cfg, download=on_platform)
        if found is not None:
            return DataSource("vegetables", found)
        loud(f"the Vegetable Image Dataset is not in {cfg.data_dir / VEGETABLES.folder} nor under {KAGGLE_INPUT}: "
             "using the OFFLINE DEMO data (drawn toy vegetables).",
             "To download it: load_config(dataset=\"vegetables\") or TL_DATASET=vegetables (Kaggle credentials: "
             "README, 'When something is missing'); dataset=\"demo\" silences this.")
        source = demo_source(cfg)
        source.fallback = "real dataset unavailable: offline demo data used"
        return source
    root = Path(choice).expanduser()
    if not root.is_dir():
        raise DataUnavailableError(f"TL_DATASET={choice!r} is not one of demo, auto, {', '.join(REMOTE)}, "
                                   "nor an existing folder.")
    detect_layout(root)  # a clear error now if it holds no class folders
    return DataSource(root.name, root)
