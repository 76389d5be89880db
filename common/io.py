"""Files: atomic writes, folders swapped in once, disk-full messages; nothing half-done ever looks complete."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


def write_atomic(path: Path, write) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place.

    A kill mid-write leaves the old file (or none), never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_csv_atomic(path: Path, frame) -> Path:
    """A DataFrame as CSV, without its index."""
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_state(path: Path, state: dict) -> Path:
    """Save a state dict (tensors and plain values only) atomically."""
    return write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    """Load a state dict saved by :func:`save_state`, refusing pickled code (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def folder_swapped_in(dest: Path):
    """Build a folder once: yield a temporary sibling to fill, and rename it to ``dest`` only when the
    block succeeds (replacing an old ``dest``). On any failure nothing is left behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disk_full_message(folder: Path) -> str:
    folder = Path(folder)
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free / 2**30
    return (f"The disk holding {folder} is full ({free:.1f} GiB free). Free some space, or point "
            f"TL_DATA_DIR at a larger disk, and run again.")


def is_disk_full(exc: OSError) -> bool:
    return exc.errno == errno.ENOSPC


def read_csv_as_text(path: Path, numeric: tuple[str, ...] = ()) -> "pd.DataFrame":
    """A CSV whose every column is read as written (no guessing of numbers or missing values), except the
    columns whose names end with one of ``numeric``, read as numbers."""
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in (c for c in df.columns if numeric and c.endswith(numeric)):
        df[column] = pd.to_numeric(df[column])
    return df


def read_or_make(path: Path, key: dict, make) -> dict:
    """The JSON record at ``path`` when it was made with ``key``; else ``key`` updated with ``make()``, saved
    atomically before it is returned. A run cut short keeps every record it finished, and a rerun with other
    settings (another ``key``) makes them again."""
    path = Path(path)
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if {name: saved.get(name) for name in key} == key:
        return saved
    record = {**key, **make()}
    write_text_atomic(path, json.dumps(record))
    return record
