"""Dataset layouts, the seeded split and its manifest, transforms and DataLoaders.

Two layouts are understood:

* ``presplit``: ``root/train/<class>/``, ``root/validation/<class>/`` (or
  ``val/``, ``valid/``) and optionally ``root/test/<class>/``, as the Kaggle
  vegetable dataset ships;
* ``flat``: ``root/<class>/``, split here by a stratified, seeded split.

Either way the result is a manifest (one row per file: split, path, label,
class name) saved under ``data/splits/`` so that every notebook, engine and
re-run uses exactly the same files.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from .records import write_text_atomic
from .scan import FINDING_COLUMNS, cross_split_duplicates, open_rgb, scan_folder

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train", "training"), "validation": ("validation", "val", "valid"),
                  "test": ("test", "testing")}
MANIFEST_COLUMNS = ["split", "path", "label", "class_name"]


class DatasetError(ValueError):
    """A dataset folder that cannot be used as it is; the message says how to fix it."""


@dataclass
class Layout:
    kind: str  # "presplit" or "flat"
    root: Path
    split_dirs: dict[str, Path]  # presplit only: split name -> folder


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def detect_layout(root: Path) -> Layout:
    """Find the layout of ``root``, descending through a single wrapper folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Dataset folder {root} does not exist. Check the path (TL_DATASET) or download the data first.")
    subdirs = _class_dirs(root)
    if len(subdirs) == 1 and not any(_is_image(p) for p in subdirs[0].iterdir()):
        return detect_layout(subdirs[0])  # e.g. Kaggle's "Vegetable Images/" top folder
    by_name = {p.name.lower(): p for p in subdirs}
    found = {split: next((by_name[a] for a in aliases if a in by_name), None)
             for split, aliases in _SPLIT_ALIASES.items()}
    if found["train"] is not None and found["validation"] is not None:
        return Layout("presplit", root, {k: v for k, v in found.items() if v is not None})
    if found["train"] is not None:
        raise DatasetError(f"{root} has a train/ folder but no validation/ (or val/) folder beside it. "
                           "Add one, or put the class folders directly under the root to have the suite split them.")
    if not subdirs:
        raise DatasetError(f"{root} has no class folders. Expected root/<class>/*.jpg or root/train|validation/<class>/.")
    return Layout("flat", root, {})


def scan_classes(folder: Path, exclude: frozenset = frozenset()) -> dict[str, list[Path]]:
    """Class name -> sorted image files under ``folder/<class>/``; empty classes are an error."""
    classes = {d.name: sorted(p for p in d.rglob("*") if _is_image(p) and p not in exclude) for d in _class_dirs(folder)}
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DatasetError(f"Class folder(s) {', '.join(empty)} under {folder} contain no readable images. "
                           "Remove the empty folders or add images to them.")
    if not classes:
        raise DatasetError(f"No class folders under {folder}.")
    return classes


def _rows(split: str, classes: dict[str, list[Path]], class_names: list[str], root: Path) -> list[dict]:
    index = {name: i for i, name in enumerate(class_names)}
    return [dict(split=split, path=p.relative_to(root).as_posix(), label=index[name], class_name=name)
            for name, files in classes.items() for p in files]


def _stratified(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off ``fraction`` of ``df``, stratified by label; returns (rest, part)."""
    rest, part = train_test_split(df, test_size=fraction, stratify=df["label"], random_state=seed)
    return rest, part


def build_split(root: Path, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15) -> pd.DataFrame:
    """The manifest for ``root`` as a DataFrame with :data:`MANIFEST_COLUMNS`."""
    layout = detect_layout(root)
    findings = _scan_findings(layout.root)
    bad = frozenset(layout.root / p for p in findings.loc[findings["action"] == "excluded", "path"])
    if layout.kind == "flat":
        classes = scan_classes(layout.root, bad)
        names = sorted(classes)
        df = pd.DataFrame(_rows("", classes, names, layout.root))
        too_small = [n for n, files in classes.items() if len(files) < 3]
        if too_small:
            raise DatasetError(f"Class(es) {', '.join(too_small)} have fewer than 3 images: "
                               "a train/validation/test split needs at least one of each.")
        rest, test = _stratified(df, test_fraction, seed)
        train, val = _stratified(rest, val_fraction / (1 - test_fraction), seed)
        parts = {"train": train, "validation": val, "test": test}
    else:
        scanned = {split: scan_classes(folder, bad) for split, folder in layout.split_dirs.items()}
        names = sorted(scanned["train"])
        for split, classes in scanned.items():
            if sorted(classes) != names:
                diff = sorted(set(classes) ^ set(names))
                raise DatasetError(f"The classes in {layout.split_dirs[split].name}/ differ from train/: {', '.join(diff)}. "
                                   "Every split folder must hold the same class folders.")
        parts = {split: pd.DataFrame(_rows(split, classes, names, layout.root)) for split, classes in scanned.items()}
        if "test" not in parts:  # no test folder: hold out part of train, never touch validation
            parts["train"], parts["test"] = _stratified(parts["train"], test_fraction, seed)
    frames = [parts[s].assign(split=s) for s in SPLITS]
    manifest = pd.concat(frames, ignore_index=True)[MANIFEST_COLUMNS]
    manifest.attrs.update(root=str(layout.root), layout=layout.kind, classes=names, findings=findings.to_dict("records"))
    return manifest


def _scan_findings(root: Path) -> pd.DataFrame:
    images = sorted(p for p in root.rglob("*") if _is_image(p))
    skipped = pd.DataFrame([dict(path=p.relative_to(root).as_posix(), finding="not an image file", action="skipped",
                                 detail="") for p in non_image_files(root)], columns=FINDING_COLUMNS)
    return pd.concat([skipped, scan_folder(images, root)], ignore_index=True)


def non_image_files(root: Path) -> list[Path]:
    """Files inside split or class folders that are not images (.DS_Store, Thumbs.db, notes): skipped."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not _is_image(p) and len(p.relative_to(root).parts) >= 2)


def check_disjoint(manifest: pd.DataFrame) -> None:
    """Raise if any file appears in more than one split."""
    dupes = manifest[manifest.duplicated("path", keep=False)]
    if not dupes.empty:
        raise DatasetError(f"{dupes['path'].nunique()} file(s) appear in more than one split, e.g. {dupes['path'].iloc[0]}.")


def fingerprint(manifest: pd.DataFrame) -> str:
    """A short hash naming exactly which files are in which split."""
    text = manifest[MANIFEST_COLUMNS].to_csv(index=False)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_or_make_split(root: Path, manifest_path: Path, seed: int, val_fraction: float = 0.15,
                       test_fraction: float = 0.15) -> pd.DataFrame:
    """Reuse the saved manifest if it describes the same data and settings, else make and save it."""
    root, manifest_path = Path(root), Path(manifest_path)
    settings = dict(root=str(detect_layout(root).root.resolve()), seed=seed,
                    val_fraction=val_fraction, test_fraction=test_fraction)
    info_path = manifest_path.with_suffix(".json")
    if manifest_path.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("settings") == settings:
            manifest = pd.read_csv(manifest_path)
            if fingerprint(manifest) == info.get("fingerprint") and _files_exist(manifest, Path(settings["root"])):
                manifest.attrs.update(root=settings["root"], layout=info["layout"], classes=info["classes"],
                                      findings=info["findings"], duplicates=info["duplicates"])
                return manifest
    manifest = build_split(root, seed, val_fraction, test_fraction)
    check_disjoint(manifest)
    manifest.attrs["root"] = settings["root"]
    manifest.attrs["duplicates"] = cross_split_duplicates(manifest, Path(settings["root"])).to_dict("records")
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(manifest_path, manifest.to_csv(index=False))
    counts = manifest.groupby(["split", "class_name"]).size().unstack(fill_value=0).to_dict("index")
    info = dict(settings=settings, layout=manifest.attrs["layout"], classes=manifest.attrs["classes"],
                fingerprint=fingerprint(manifest), counts=counts,
                findings=manifest.attrs["findings"], duplicates=manifest.attrs["duplicates"])
    write_text_atomic(info_path, json.dumps(info, indent=1))
    return manifest


def _files_exist(manifest: pd.DataFrame, root: Path) -> bool:
    return all((root / p).is_file() for p in manifest["path"].iloc[:: max(1, len(manifest) // 50)])


def limit_per_class(manifest: pd.DataFrame, split: str, cap: int | None, seed: int) -> pd.DataFrame:
    """Keep at most ``cap`` seeded-random files per class in ``split`` (the CPU budget uses this)."""
    if cap is None:
        return manifest
    part = manifest[manifest["split"] == split]
    kept = part.sample(frac=1.0, random_state=seed).groupby("label").head(cap)
    out = pd.concat([manifest[manifest["split"] != split], kept]).sort_index()
    out.attrs.update(manifest.attrs)
    return out


# ---------------------------------------------------------------- transforms


@dataclass(frozen=True)
class TwoStage:
    """An image's way to the model in two stages, so that the first can be done once and kept.

    ``prepare`` is deterministic (PIL image to a uint8 tensor of a fixed square size): it is what the
    decode-once cache stores. ``augment`` runs every epoch on that tensor (random crop and flip for
    training) and ends in normalised floats. Cached or not, the numbers are the same.
    """
    prepare: v2.Compose
    augment: v2.Compose

    def __call__(self, img):
        return self.augment(self.prepare(img))


def build_transforms(image_size: int, mean, std) -> dict[str, TwoStage]:
    """Training: centre square at ``image_size``, then random resized crop and flip every epoch.
    Evaluation: resize to 8/7 of the size and centre crop (the ImageNet convention), done once."""
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    square = v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), v2.PILToTensor()])
    train = TwoStage(square, v2.Compose([v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
                                         v2.RandomHorizontalFlip(), *finish]))
    evaluate = TwoStage(v2.Compose([v2.Resize(image_size * 8 // 7, antialias=True), v2.CenterCrop(image_size),
                                    v2.PILToTensor()]), v2.Compose(finish))
    return {"train": train, "validation": evaluate, "test": evaluate}


# ---------------------------------------------------------------- datasets and loaders


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers, the same on every platform and Python version."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part) + 1) % 2**63
    return value


class ImageListDataset(Dataset):
    """Images listed by a manifest. Lives in a module so worker processes can import it.

    With ``seed`` set, random transforms are seeded per sample from (seed, epoch,
    index), where :class:`EpochShuffleSampler` passes the epoch inside the index.
    Augmentation then depends on nothing else: not on the global RNG, not on worker
    processes, not on how many iterators an engine creates or how far it prefetches.

    With a :class:`TwoStage` transform, :meth:`cache_in_memory` decodes every image once;
    later epochs only augment. Without a transform, items are the PIL images.
    """

    def __init__(self, root: Path, paths: list[str], labels: list[int], transform=None, seed: int | None = None):
        self.root, self.paths, self.labels, self.transform = Path(root), list(paths), list(labels), transform
        self.seed = seed
        self.cache: torch.Tensor | None = None  # uint8 (N, 3, size, size) once cache_in_memory has run

    def __len__(self) -> int:
        return len(self.paths)

    def prepared(self, index: int):
        """The image after its deterministic first stage (from the cache when there is one)."""
        if self.cache is not None:
            return self.cache[index]
        img = open_rgb(self.root / self.paths[index], max_side=1024)
        return self.transform.prepare(img) if isinstance(self.transform, TwoStage) else img

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), len(self.paths))
        img = self.prepared(index)
        if self.transform is not None:
            augment = self.transform.augment if isinstance(self.transform, TwoStage) else self.transform
            if self.seed is None:
                img = augment(img)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(mix_seed(self.seed, epoch, index))
                    img = augment(img)
        return img, self.labels[index]

    def cache_bytes(self) -> int:
        """Memory the decode-once cache of this dataset takes."""
        return len(self) * self.prepared(0).numel() if len(self) else 0

    def cache_in_memory(self, num_workers: int = 0, progress: bool = True) -> None:
        """Decode and prepare every image once (in parallel workers) into one uint8 tensor.

        One tensor, not a list: worker processes share it (copy-on-write under fork, shared
        memory under spawn) instead of each holding a copy."""
        if self.cache is not None or not len(self):
            return
        if not isinstance(self.transform, TwoStage):
            raise TypeError("Only a dataset with a TwoStage transform can be cached (its first stage is what is kept).")
        from tqdm.auto import tqdm
        first = self.prepared(0)
        cache = torch.empty((len(self), *first.shape), dtype=torch.uint8)
        loader = DataLoader(_Prepared(self), batch_size=64, num_workers=num_workers)
        done = 0
        for batch in tqdm(loader, desc=f"decoding {len(self)} images once", disable=not progress,
                          mininterval=5, leave=False):
            cache[done:done + len(batch)] = batch
            done += len(batch)
        self.cache = cache


class _Prepared(Dataset):
    """The first stage of each image of a dataset, for filling its cache in worker processes."""

    def __init__(self, dataset: ImageListDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset.prepared(index)


def available_memory() -> int:
    """Memory free for new allocations, in bytes (psutil: the same on Linux, macOS and Windows). Free,
    not total: a second notebook's kernel holding its own cache leaves less for this one."""
    import psutil
    return psutil.virtual_memory().available


def cache_fits(datasets: dict[str, ImageListDataset], share: float = 1 / 3) -> bool:
    """Whether the decoded images of every split fit in ``share`` of the free memory."""
    return sum(ds.cache_bytes() for ds in datasets.values()) <= share * available_memory()


def make_datasets(manifest: pd.DataFrame, transforms: dict, seed: int = 0) -> dict[str, ImageListDataset]:
    """One dataset per split; the training set's augmentation is seeded per sample."""
    root = Path(manifest.attrs["root"])
    out = {}
    for split in SPLITS:
        part = manifest[manifest["split"] == split]
        out[split] = ImageListDataset(root, part["path"], part["label"], transforms[split],
                                      seed=seed if split == "train" else None)
    return out


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch) and tags each index with its epoch.

    The epoch advances only when an iteration actually starts (the body of a
    generator runs at the first ``next``), so an iterator that an engine creates
    and never uses does not shift the order. ``epoch`` can be set to resume.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Fix the (0-based) epoch of the next pass, as Lightning does and as DistributedSampler expects."""
        self.epoch = epoch

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        yield from (i + epoch * self.size for i in order.tolist())


def make_loaders(datasets: dict[str, Dataset], batch_size: int, num_workers: int, seed: int,
                 pin_memory: bool = False) -> dict[str, DataLoader]:
    """Loaders whose batch order and augmentation depend on ``seed`` and the epoch alone.

    Training batches come from an :class:`EpochShuffleSampler`; every loader also gets
    its own seeded generator, so creating an iterator never touches the global RNG."""
    out = {}
    for split, ds in datasets.items():
        is_train = split == "train"
        out[split] = DataLoader(
            ds, batch_size=batch_size, sampler=EpochShuffleSampler(len(ds), seed) if is_train else None,
            drop_last=is_train and len(ds) > batch_size, num_workers=num_workers,
            persistent_workers=num_workers > 0, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
    return out
