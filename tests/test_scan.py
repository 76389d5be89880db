"""Messy image folders and leakage: every kind of bad file, made here, and duplicates across splits."""
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data import datasets as D
from common.data import split as SP
from common.config import load_config
from common.data.datasets import prepare_data
from common.data.scan import check_image, cross_split_duplicates, open_rgb


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims huge dimensions: a decompression bomb must be refused before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


@pytest.fixture()
def messy(tmp_path, flat_root):
    root = Path(shutil.copytree(flat_root, tmp_path / "messy"))
    tomato = root / "tomato"
    good = next(tomato.glob("*.jpg"))
    (tomato / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tomato / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tomato / "notes.txt").write_text("picked on monday")
    (tomato / "empty.jpg").write_bytes(b"")
    (tomato / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    (tomato / "not_really.jpg").write_text("<html>404 Not Found</html>")
    _png_header_only(tomato / "bomb.png", 30000, 30000)
    rgb = Image.open(good).convert("RGB")
    rgb.convert("L").save(tomato / "gray.png")
    rgb.convert("P").save(tomato / "palette.png", transparency=0)
    rgb.convert("RGBA").save(tomato / "rgba.png")
    rgb.convert("CMYK").save(tomato / "cmyk.jpg")
    Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)).save(tomato / "sixteen.png")
    rgb.resize((6000, 4000)).save(tomato / "huge.jpg", quality=60)
    return root


def test_the_scan_names_every_bad_file_and_what_it_did(messy):
    manifest = SP.build_split(messy, seed=0)
    findings = {f["path"].split("/")[-1]: f for f in manifest.findings.to_dict("records")}
    for name in (".DS_Store", "Thumbs.db", "notes.txt"):
        assert findings[name]["action"] == "skipped"
    for name in ("empty.jpg", "truncated.jpg", "not_really.jpg", "bomb.png"):
        assert findings[name]["action"] == "excluded", findings[name]
    assert "0 bytes" in findings["empty.jpg"]["finding"] and "too large" in findings["bomb.png"]["finding"]
    for name in ("gray.png", "palette.png", "rgba.png", "cmyk.jpg", "sixteen.png"):
        assert findings[name]["action"] == "converted to RGB"
    used = set(manifest.frame["path"].str.split("/").str[-1])
    assert not used & {"empty.jpg", "truncated.jpg", "not_really.jpg", "bomb.png", "notes.txt", ".DS_Store"}
    assert {"gray.png", "cmyk.jpg", "sixteen.png", "huge.jpg"} <= used


def test_every_kept_image_loads_as_8_bit_rgb(messy):
    manifest = SP.build_split(messy, seed=0)
    tf = D.build_transforms(32, [0.5] * 3, [0.25] * 3)
    ds = D.make_datasets(manifest, tf)
    for split in SP.SPLITS:
        for i in range(len(ds[split])):
            x, _ = ds[split][i]
            assert x.shape == (3, 32, 32)


def test_odd_modes_convert_faithfully_and_huge_jpegs_decode_small(messy):
    sixteen = open_rgb(messy / "tomato" / "sixteen.png")
    gray = open_rgb(messy / "tomato" / "gray.png")
    assert sixteen.mode == "RGB" and np.abs(np.asarray(sixteen, int) - np.asarray(gray, int)).max() <= 1
    white = open_rgb(messy / "tomato" / "rgba.png")
    assert white.mode == "RGB"
    assert max(open_rgb(messy / "tomato" / "huge.jpg", max_side=1024).size) <= 3000  # decoded at reduced scale, never 6000 x 4000
    assert check_image(messy / "tomato" / "cmyk.jpg") == (None, "CMYK")


def test_identical_images_across_splits_are_reported_and_can_be_dropped(presplit_root, tmp_path, capsys):
    root = Path(shutil.copytree(presplit_root, tmp_path / "leaky"))
    source = next((root / "train" / "carrot").glob("*.jpg"))
    shutil.copy(source, root / "test" / "carrot" / "copy_of_train.jpg")
    shutil.copy(source, root / "validation" / "carrot" / "another_copy.jpg")
    manifest = SP.build_split(root, seed=0)
    dupes = cross_split_duplicates(manifest.frame, root)
    assert set(dupes["split"]) == {"train", "validation", "test"} and dupes["digest"].nunique() == 1

    cfg = load_config(budget="smoke", dataset=str(root), data_dir=tmp_path / "data")
    kept = prepare_data(cfg)
    assert "occur in more than one split" in capsys.readouterr().out
    assert kept.manifest.scan_summary()["cross_split_duplicates"] == 1
    dropped = prepare_data(load_config(budget="smoke", dataset=str(root), data_dir=tmp_path / "data", drop_duplicates=True))
    paths = set(dropped.manifest.frame["path"])
    assert "test/carrot/copy_of_train.jpg" not in paths and "validation/carrot/another_copy.jpg" not in paths
    assert source.relative_to(root).as_posix() in paths
    assert dropped.manifest.scan_summary()["duplicates_dropped"]


def test_findings_are_saved_with_the_manifest(messy, tmp_path):
    cfg = load_config(budget="smoke", dataset=str(messy), data_dir=tmp_path / "data")
    first = prepare_data(cfg)
    again = prepare_data(cfg)  # reused from the saved manifest
    assert first.manifest.scan_summary()["actions"] == again.manifest.scan_summary()["actions"]
    assert again.manifest.scan_summary()["actions"]["excluded"] == 4
