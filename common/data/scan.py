"""The scan: checking a dataset's files before training (what is there, what is broken, what is duplicated).

Real image folders hold ``.DS_Store`` and ``Thumbs.db`` files, zero-byte or truncated
downloads, grayscale, palette, CMYK and 16-bit images, and copies of the same photo
in two places. The scan finds them by file name before an epoch can trip over them:
non-images are skipped, unreadable images are excluded, odd colour modes are noted
(the loader converts them to RGB), and identical files in different splits are reported.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pandas as pd
from PIL import Image

# Refuse decompression bombs, but allow large real photographs (about 16k x 16k).
MAX_PIXELS = 256_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
RGB_MODES = {"RGB"}
FINDING_COLUMNS = ["path", "finding", "action", "detail"]
DUPLICATE_COLUMNS = ["digest", "split", "path", "class_name"]


def open_rgb(path: Path, max_side: int | None = None) -> Image.Image:
    """Open any image as 8-bit RGB. Very large JPEGs are decoded at reduced size
    (``max_side``) so they never need their full resolution in memory."""
    with Image.open(path) as img:
        if max_side and img.format == "JPEG" and max(img.size) > 2 * max_side:
            img.draft("RGB", (max_side, max_side))
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits, not clip
            img = img.point(lambda v: v * (1 / 256)).convert("L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        return img.convert("RGB")


def check_image(path: Path) -> tuple[str | None, str]:
    """(problem or None, colour mode) for one image file, decoding it cheaply."""
    if path.stat().st_size == 0:
        return "empty file (0 bytes)", ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                mode = img.mode
                img.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, enough to find truncation
                img.load()
        return None, mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return f"too large to decode safely ({exc})", ""
    except Exception as exc:  # PIL raises many types for broken files
        return f"unreadable ({type(exc).__name__}: {str(exc)[:80]})", ""


def scan_folder(files: list[Path], root: Path) -> pd.DataFrame:
    """Findings for ``files`` (relative to ``root``): one row per file that needs a word."""
    rows = []
    for path in files:
        problem, mode = check_image(path)
        rel = path.relative_to(root).as_posix()
        if problem:
            rows.append(dict(path=rel, finding=problem, action="excluded", detail=""))
        elif mode not in RGB_MODES:
            rows.append(dict(path=rel, finding=f"colour mode {mode}", action="converted to RGB", detail=""))
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def file_digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def cross_split_duplicates(manifest: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Files with identical content that sit in different splits (a leak from train into evaluation)."""
    digests = manifest.assign(digest=[file_digest(Path(root) / p) for p in manifest["path"]])
    spread = digests.groupby("digest")["split"].nunique()
    leaked = digests[digests["digest"].isin(spread[spread > 1].index)]
    return leaked.sort_values(["digest", "split"])[DUPLICATE_COLUMNS].reset_index(drop=True)
