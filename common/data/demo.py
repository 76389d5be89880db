"""The offline demo dataset: toy vegetables drawn procedurally.

Six classes that differ in shape, colour and texture, drawn on random
backgrounds at random positions, scales and rotations, with noise, so the task
is learnable but not trivial. Deterministic for a seed. It exists so that every
notebook runs anywhere without a download; it is NOT the real dataset.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.io import folder_swapped_in

CLASSES = ("broccoli", "carrot", "cucumber", "eggplant", "pumpkin", "tomato")
_CANVAS = 128  # each vegetable is drawn on a canvas this size, then placed
BOXES_FILE = "boxes.csv"
BOX_COLUMNS = ("path", "x0", "y0", "x1", "y1")  # path relative to the dataset root; pixels of the saved image


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 25) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb) + (255,)


def _leaves(draw: ImageDraw.ImageDraw, rng, cx: float, cy: float, n: int, length: float) -> None:
    for angle in np.linspace(-0.9, 0.9, n) + rng.normal(0, 0.1, n):
        x2, y2 = cx + length * np.sin(angle), cy - length * np.cos(angle)
        draw.line([(cx, cy), (x2, y2)], fill=_jitter(rng, (40, 140, 40)), width=4)


def _tomato(draw, rng):
    draw.ellipse([24, 30, 104, 106], fill=_jitter(rng, (205, 30, 30)))
    draw.ellipse([44, 44, 58, 56], fill=(255, 190, 190, 255))  # highlight
    for k in range(5):  # star-shaped calyx
        a = 2 * np.pi * k / 5
        draw.line([(64, 34), (64 + 16 * np.cos(a), 34 + 8 * np.sin(a))], fill=_jitter(rng, (30, 120, 30)), width=4)


def _pumpkin(draw, rng):
    colour = _jitter(rng, (235, 125, 20))
    for dx in (-18, 18, -6, 6):  # overlapping lobes make the ridges
        draw.ellipse([42 + dx, 36, 86 + dx, 104], fill=colour, outline=(150, 70, 10, 255), width=2)
    draw.rectangle([60, 22, 68, 38], fill=_jitter(rng, (90, 70, 30)))


def _carrot(draw, rng):
    draw.polygon([(44, 36), (84, 36), (64, 118)], fill=_jitter(rng, (240, 120, 20)))
    for y in range(48, 100, 10):  # ring texture
        draw.line([(50 + (y - 36) * 0.2, y), (78 - (y - 36) * 0.2, y)], fill=(180, 80, 10, 255), width=1)
    _leaves(draw, rng, 64, 36, 4, 26)


def _cucumber(draw, rng):
    draw.rounded_rectangle([50, 10, 78, 118], radius=14, fill=_jitter(rng, (40, 120, 40)))
    for _ in range(14):  # bumpy, light speckles
        x, y = rng.uniform(54, 74), rng.uniform(16, 112)
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(170, 220, 140, 255))


def _eggplant(draw, rng):
    colour = _jitter(rng, (90, 30, 110))
    draw.ellipse([36, 50, 96, 118], fill=colour)
    draw.ellipse([46, 28, 82, 78], fill=colour)
    draw.polygon([(50, 34), (78, 34), (64, 18)], fill=_jitter(rng, (50, 130, 50)))
    draw.arc([50, 60, 88, 108], 200, 290, fill=(200, 160, 220, 255), width=3)  # sheen


def _broccoli(draw, rng):
    draw.rectangle([56, 70, 72, 118], fill=_jitter(rng, (140, 190, 110)))
    for _ in range(22):  # clustered florets
        x, y, r = rng.uniform(34, 94), rng.uniform(22, 72), rng.uniform(7, 13)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(rng, (30, 100, 40), 20))


_DRAWERS = dict(broccoli=_broccoli, carrot=_carrot, cucumber=_cucumber,
                eggplant=_eggplant, pumpkin=_pumpkin, tomato=_tomato)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A random two-colour gradient with a few distracting strokes."""
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    grad = (a * (1 - t) + b * t).astype(np.uint8).repeat(size, axis=1)
    if rng.random() < 0.5:
        grad = grad.transpose(1, 0, 2)
    img = Image.fromarray(np.ascontiguousarray(grad))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 4)):
        pts = rng.uniform(0, size, 4)
        draw.line(list(pts), fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    return img


def draw_vegetable(class_name: str, rng: np.random.Generator, size: int = 96) -> tuple[Image.Image, tuple[int, ...]]:
    """One RGB image of ``class_name`` with random pose, scale, background and noise, and where the vegetable
    is: the box (x0, y0, x1, y1; x1 and y1 exclusive) of its non-transparent pixels, clipped to the image."""
    layer = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    _DRAWERS[class_name](ImageDraw.Draw(layer), rng)
    layer = layer.rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR)
    side = int(size * rng.uniform(0.55, 0.95))
    layer = layer.resize((side, side), Image.BILINEAR)
    img = _background(rng, size)
    x, y = rng.integers(-side // 6, size - side + side // 6 + 1, 2)
    img.paste(layer, (int(x), int(y)), layer)
    lx0, ly0, lx1, ly1 = layer.getchannel("A").getbbox()
    box = (max(0, int(x) + lx0), max(0, int(y) + ly0), min(size, int(x) + lx1), min(size, int(y) + ly1))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    noise = rng.normal(0, rng.uniform(3, 14), (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)), box


def make_demo_dataset(root: Path, images_per_class: int, image_size: int = 96, seed: int = 0,
                      layout: str = "flat", classes: tuple[str, ...] = CLASSES) -> Path:
    """Write the demo dataset under ``root`` (idempotent; written atomically).

    ``layout="flat"`` gives ``root/<class>/*.jpg`` (split later by the suite);
    ``layout="presplit"`` gives ``root/{train,validation,test}/<class>/*.jpg``
    in 70/15/15 proportions, like the Kaggle vegetable dataset.
    ``root/boxes.csv`` records where each vegetable was drawn (:data:`BOX_COLUMNS`, saved image's pixels),
    so that an explanation of a prediction can be checked against the truth.
    """
    root = Path(root)
    stamp = dict(generator="toy-vegetables-v2", images_per_class=images_per_class,
                 image_size=image_size, seed=seed, layout=layout, classes=list(classes))
    stamp_file = root / "dataset.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return root
    boxes = []
    # Drawn into a temporary sibling, then swapped in: an interrupted run never leaves a folder that looks complete.
    with folder_swapped_in(root) as tmp:
        for ci, name in enumerate(classes):
            rng = np.random.default_rng([seed, ci])
            for i in range(images_per_class):
                part = _presplit_part(i, images_per_class) if layout == "presplit" else ""
                folder = tmp / part / name
                folder.mkdir(parents=True, exist_ok=True)
                drawing = name if name in _DRAWERS else CLASSES[ci % len(CLASSES)]  # more classes reuse the drawings
                img, box = draw_vegetable(drawing, rng, image_size)
                img.save(folder / f"{name}_{i:04d}.jpg", quality=90)
                boxes.append(((folder / f"{name}_{i:04d}.jpg").relative_to(tmp).as_posix(), *box))
        (tmp / BOXES_FILE).write_text(_csv([BOX_COLUMNS, *boxes]))
        (tmp / "dataset.json").write_text(json.dumps(stamp, indent=1))
    return root


def _presplit_part(i: int, n: int) -> str:
    frac = i / n
    return "train" if frac < 0.7 else ("validation" if frac < 0.85 else "test")


def read_boxes(root: Path) -> dict[str, tuple[int, int, int, int]] | None:
    """Where each vegetable of a demo dataset was drawn: relative path -> (x0, y0, x1, y1); None if unknown."""
    path = Path(root) / BOXES_FILE
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return {row["path"]: tuple(int(row[c]) for c in BOX_COLUMNS[1:]) for row in csv.DictReader(f)}


def _csv(rows: list) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def draw_something_else(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """An image of no vegetable: a polygon, a texture of stripes or checks, or noise, on the demo's backgrounds.
    What "none of these" is tried on when no folder of real other images is given."""
    kind = rng.integers(3)
    if kind == 2:
        return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    if kind == 0:
        corners = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
        radius = size * rng.uniform(0.2, 0.45, corners)
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        draw.polygon([(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radius)], fill=colour)
    else:
        step = int(rng.integers(4, 16))
        for i in range(0, size, step * 2):
            draw.rectangle([i, 0, i + step, size] if rng.random() < 0.5 else [0, i, size, i + step], fill=colour)
    return img


def make_other_images(folder: Path, n: int, image_size: int = 96, seed: int = 0) -> Path:
    """``n`` images of something else (:func:`draw_something_else`) in ``folder``, the same for the same seed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("other_*.jpg"):  # a run with another n left them: the folder holds this draw only
        old.unlink()
    rng = np.random.default_rng(seed)
    for i in range(n):
        draw_something_else(rng, image_size).save(folder / f"other_{i:03d}.jpg", quality=90)
    return folder
