"""The split: dataset layouts, the seeded stratified split, and the :class:`Manifest` that records it.

Two layouts are understood:

* ``presplit``: ``root/train/<class>/``, ``root/validation/<class>/`` (or
  ``val/``, ``valid/``) and optionally ``root/test/<class>/``, as the Kaggle
  vegetable dataset ships;
* ``flat``: ``root/<class>/``, split here by a stratified, seeded split.

Either way the result is a :class:`Manifest` (one row per file: split, path, label,
class name, plus the dataset's root, layout, classes, the scan's findings and
cross-split duplicates), saved under ``data/splits/`` so that every notebook,
engine and re-run uses exactly the same files. It is saved and loaded here only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from common.io import read_csv_as_text, write_csv_atomic, write_text_atomic
from common.data.scan import DUPLICATE_COLUMNS, FINDING_COLUMNS, cross_split_duplicates, scan_folder

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


def list_classes(folder: Path, exclude: frozenset = frozenset()) -> dict[str, list[Path]]:
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


@dataclass
class Manifest:
    """Which file is in which split (``frame``: one row per file, :data:`MANIFEST_COLUMNS`), and what is
    known about the dataset it came from: its root, layout, classes, the scan's findings (skipped,
    excluded, converted files) and identical files found in different splits."""
    frame: pd.DataFrame
    root: Path
    layout: str  # "presplit" or "flat"
    classes: list[str]
    findings: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FINDING_COLUMNS))
    duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DUPLICATE_COLUMNS))
    duplicates_dropped: bool = False

    @property
    def fingerprint(self) -> str:
        """A short hash naming exactly which files are in which split."""
        return fingerprint(self.frame)

    def files(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split]

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) and split (columns)."""
        table = self.frame.groupby(["class_name", "split"]).size().unstack(fill_value=0)
        return table.reindex(index=self.classes, columns=list(SPLITS), fill_value=0)

    def check_disjoint(self) -> None:
        """Raise if any file appears in more than one split."""
        check_disjoint(self.frame)

    def limit_per_class(self, split: str, cap: int | None, seed: int) -> "Manifest":
        """At most ``cap`` seeded-random files per class in ``split`` (the CPU budget uses this)."""
        if cap is None:
            return self
        part = self.files(split)
        kept = part.sample(frac=1.0, random_state=seed).groupby("label").head(cap)
        return dataclasses.replace(self, frame=pd.concat([self.frame[self.frame["split"] != split], kept]).sort_index())

    def drop_leaked(self) -> "Manifest":
        """Without the evaluation copies of images that also occur in train (or, failing that, in validation)."""
        drop = set()
        for _, group in self.duplicates.groupby("digest"):
            keep = "train" if (group["split"] == "train").any() else "validation"
            drop.update(group.loc[group["split"] != keep, "path"])
        return dataclasses.replace(self, frame=self.frame[~self.frame["path"].isin(drop)], duplicates_dropped=True)

    def scan_summary(self) -> dict:
        """What the scan found, for run records: counts per action and the files concerned."""
        actions = self.findings["action"].value_counts().to_dict() if len(self.findings) else {}
        return dict(actions=actions, files=self.findings.to_dict("records")[:200],
                    cross_split_duplicates=int(self.duplicates["digest"].nunique()) if len(self.duplicates) else 0,
                    duplicates_dropped=bool(len(self.duplicates) and self.duplicates_dropped))

    def save(self, path: Path, settings: dict | None = None) -> Path:
        """The frame as CSV at ``path`` and everything else beside it as JSON (``.json``), atomically."""
        path = Path(path)
        write_csv_atomic(path, self.frame[MANIFEST_COLUMNS])
        info = dict(settings=settings, root=str(self.root), layout=self.layout, classes=self.classes,
                    fingerprint=self.fingerprint, counts=self.counts().to_dict("index"),
                    findings=self.findings.to_dict("records"), duplicates=self.duplicates.to_dict("records"),
                    duplicates_dropped=self.duplicates_dropped)
        write_text_atomic(path.with_suffix(".json"), json.dumps(info, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        path = Path(path)
        info = json.loads(path.with_suffix(".json").read_text())
        return cls(read_csv_as_text(path, numeric=("label",)), Path(info["root"]), info["layout"], list(info["classes"]),
                   pd.DataFrame(info["findings"], columns=FINDING_COLUMNS),
                   pd.DataFrame(info["duplicates"], columns=DUPLICATE_COLUMNS), bool(info.get("duplicates_dropped")))


def build_split(root: Path, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15) -> Manifest:
    """Scan ``root``, then split it: the given split of a pre-split layout, else a stratified seeded one."""
    layout = detect_layout(root)
    findings = _scan_findings(layout.root)
    bad = frozenset(layout.root / p for p in findings.loc[findings["action"] == "excluded", "path"])
    if layout.kind == "flat":
        classes = list_classes(layout.root, bad)
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
        scanned = {split: list_classes(folder, bad) for split, folder in layout.split_dirs.items()}
        names = sorted(scanned["train"])
        for split, classes in scanned.items():
            if sorted(classes) != names:
                diff = sorted(set(classes) ^ set(names))
                raise DatasetError(f"The classes in {layout.split_dirs[split].name}/ differ from train/: {', '.join(diff)}. "
                                   "Every split folder must hold the same class folders.")
        parts = {split: pd.DataFrame(_rows(split, classes, names, layout.root)) for split, classes in scanned.items()}
        if "test" not in parts:  # no test folder: hold out part of train, never touch validation
            parts["train"], parts["test"] = _stratified(parts["train"], test_fraction, seed)
    frame = pd.concat([parts[s].assign(split=s) for s in SPLITS], ignore_index=True)[MANIFEST_COLUMNS]
    return Manifest(frame, layout.root, layout.kind, names, findings)


def _scan_findings(root: Path) -> pd.DataFrame:
    images = sorted(p for p in root.rglob("*") if _is_image(p))
    skipped = pd.DataFrame([dict(path=p.relative_to(root).as_posix(), finding="not an image file", action="skipped",
                                 detail="") for p in non_image_files(root)], columns=FINDING_COLUMNS)
    return pd.concat([skipped, scan_folder(images, root)], ignore_index=True)


def non_image_files(root: Path) -> list[Path]:
    """Files inside split or class folders that are not images (.DS_Store, Thumbs.db, notes): skipped."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not _is_image(p) and len(p.relative_to(root).parts) >= 2)


def check_disjoint(frame: pd.DataFrame) -> None:
    """Raise if any file of a manifest frame appears in more than one split."""
    dupes = frame[frame.duplicated("path", keep=False)]
    if not dupes.empty:
        raise DatasetError(f"{dupes['path'].nunique()} file(s) appear in more than one split, e.g. {dupes['path'].iloc[0]}.")


def fingerprint(frame: pd.DataFrame) -> str:
    text = frame[MANIFEST_COLUMNS].to_csv(index=False)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_or_make_split(root: Path, manifest_path: Path, seed: int, val_fraction: float = 0.15,
                       test_fraction: float = 0.15) -> Manifest:
    """Reuse the saved manifest if it describes the same data and settings, else make and save it."""
    root, manifest_path = Path(root), Path(manifest_path)
    layout_root = detect_layout(root).root.resolve()
    settings = dict(root=str(layout_root), seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    if manifest_path.is_file() and manifest_path.with_suffix(".json").is_file():
        try:
            saved = Manifest.load(manifest_path)
            info = json.loads(manifest_path.with_suffix(".json").read_text())
        except (OSError, ValueError, KeyError):
            saved, info = None, {}
        if saved is not None and info.get("settings") == settings and saved.fingerprint == info.get("fingerprint") \
                and _files_exist(saved):
            return saved
    manifest = build_split(root, seed, val_fraction, test_fraction)
    manifest.check_disjoint()
    manifest = dataclasses.replace(manifest, root=layout_root,
                                   duplicates=cross_split_duplicates(manifest.frame, layout_root))
    manifest.save(manifest_path, settings)
    return manifest


def _files_exist(manifest: Manifest) -> bool:
    frame = manifest.frame
    return all((manifest.root / p).is_file() for p in frame["path"].iloc[:: max(1, len(frame) // 50)])
